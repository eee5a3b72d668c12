//! Kubernetes-style conditions, as controllers report them and as the aggregate carries them.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(value: bool) -> Self {
        if value { ConditionStatus::True } else { ConditionStatus::False }
    }
}

/// One condition. `reason`, `message` and `lastTransitionTime` are optional on input; the server fills
/// `lastTransitionTime` and keeps it unless the status flips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_transition_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message.into()),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// Equal in everything but `lastTransitionTime`.
    pub fn same_ignoring_time(&self, other: &Condition) -> bool {
        self.type_ == other.type_
            && self.status == other.status
            && self.reason == other.reason
            && self.message == other.message
            && self.observed_generation == other.observed_generation
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// Sets `lastTransitionTime` on every condition of `incoming`: kept from `previous` when the condition of the same
/// type had the same status there, `now` when it flipped or is new. A time the caller sent is kept when it flipped.
pub fn carry_transition_times(previous: &[Condition], incoming: &mut [Condition], now: Timestamp) {
    for condition in incoming.iter_mut() {
        match find(previous, &condition.type_) {
            Some(before) if before.status == condition.status => {
                condition.last_transition_time = before.last_transition_time.or(Some(now));
            }
            _ => {
                condition.last_transition_time = condition.last_transition_time.or(Some(now));
            }
        }
    }
}

/// Equal lists ignoring `lastTransitionTime` and order.
pub fn same_conditions_ignoring_time(left: &[Condition], right: &[Condition]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .all(|condition| find(right, &condition.type_).is_some_and(|other| condition.same_ignoring_time(other)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let mut previous = vec![Condition::new("Available", ConditionStatus::True, "Up", "")];
        previous[0].last_transition_time = Some(at(100));
        let mut incoming = vec![Condition::new("Available", ConditionStatus::True, "StillUp", "other message")];
        carry_transition_times(&previous, &mut incoming, at(200));
        assert_eq!(incoming[0].last_transition_time, Some(at(100)));
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let mut previous = vec![Condition::new("Available", ConditionStatus::True, "Up", "")];
        previous[0].last_transition_time = Some(at(100));
        let mut incoming = vec![Condition::new("Available", ConditionStatus::False, "Down", "")];
        carry_transition_times(&previous, &mut incoming, at(200));
        assert_eq!(incoming[0].last_transition_time, Some(at(200)));
    }

    #[test]
    fn new_condition_gets_now_unless_it_carries_a_time() {
        let mut incoming = vec![
            Condition::new("Available", ConditionStatus::True, "Up", ""),
            Condition::new("Degraded", ConditionStatus::False, "Fine", ""),
        ];
        incoming[1].last_transition_time = Some(at(50));
        carry_transition_times(&[], &mut incoming, at(200));
        assert_eq!(incoming[0].last_transition_time, Some(at(200)));
        assert_eq!(incoming[1].last_transition_time, Some(at(50)));
    }

    #[test]
    fn condition_lists_compare_without_times_or_order() {
        let mut left = vec![
            Condition::new("Available", ConditionStatus::True, "Up", ""),
            Condition::new("Degraded", ConditionStatus::False, "Fine", ""),
        ];
        let right = vec![left[1].clone(), left[0].clone()];
        left[0].last_transition_time = Some(at(1));
        assert!(same_conditions_ignoring_time(&left, &right));
        let mut changed = right.clone();
        changed[0].message = Some("different".into());
        assert!(!same_conditions_ignoring_time(&left, &changed));
        assert!(!same_conditions_ignoring_time(&left, &right[..1]));
    }
}
