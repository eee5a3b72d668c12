//! Status aggregation: controllers report, the server aggregates.
//!
//! Inputs are the object's generation and deletion state, the registered controllers, the stored reports and the
//! previous aggregate (for `lastTransitionTime` and `lastReadyGeneration`). The output is the object's `status`:
//!
//! - `Ready` is True iff the required set is non-empty and every required controller reported `Available=True` at the
//!   current generation; otherwise False with reason `NoControllers`, `ControllersNotAvailable` (names who did not say
//!   True) or `ControllersPending` (names who has not reported at this generation).
//! - `Degraded` is True iff a required controller reports `Degraded=True` at the current generation.
//! - `Progressing` is True while neither Ready nor Degraded.
//! - `observedGeneration` is the lowest generation the required set observed (absent until all of them reported).
//! - `phase`: `Deleting` | `Ready` | `Failed` (Degraded) | `Progressing` (some report at this generation) | `Pending`.
//! - `lastReadyGeneration` is the last generation at which Ready was True.
//!
//! The required set is the registered controllers with `required: true` whose kinds include the object's kind and
//! whose platforms include the object's platform (or are empty). A controller that filters an object out never
//! reports on it and never blocks it.

use jiff::Timestamp;

use crate::condition::{Condition, ConditionStatus, carry_transition_times, find};
use crate::kind::Kind;
use crate::resources::{ControllerReport, ControllerSpec, ObjectStatus, Phase};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";

/// A registered controller, as far as aggregation cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub kinds: Vec<String>,
    pub platforms: Vec<String>,
    pub required: bool,
}

impl Registration {
    pub fn from_spec(name: &str, spec: &ControllerSpec) -> Self {
        Registration {
            name: name.to_owned(),
            kinds: spec.kinds.clone(),
            platforms: spec.platforms.clone(),
            required: spec.required,
        }
    }

    /// Whether this controller acts on objects of `kind` on `platform`.
    pub fn covers(&self, kind: Kind, platform: &str) -> bool {
        self.kinds.iter().any(|covered| covered == kind.as_str())
            && (self.platforms.is_empty() || self.platforms.iter().any(|covered| covered == platform))
    }
}

/// Names of the controllers whose `Available=True` an object of `kind` on `platform` waits for, sorted.
pub fn required_set(registrations: &[Registration], kind: Kind, platform: &str) -> Vec<String> {
    let mut names: Vec<String> = registrations
        .iter()
        .filter(|registration| registration.required && registration.covers(kind, platform))
        .map(|registration| registration.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Everything the aggregate depends on.
#[derive(Clone, Copy, Debug)]
pub struct AggregateInput<'a> {
    pub generation: i64,
    pub deleting: bool,
    pub required: &'a [String],
    pub reports: &'a [ControllerReport],
    pub previous: Option<&'a ObjectStatus>,
    pub now: Timestamp,
}

/// Computes the aggregate status. Pure: the same input gives the same output.
pub fn aggregate(input: AggregateInput<'_>) -> ObjectStatus {
    let report_of = |name: &str| input.reports.iter().find(|report| report.controller == name);
    let current = |name: &str| report_of(name).filter(|report| report.observed_generation == input.generation);
    let says = |report: &ControllerReport, type_: &str, status: ConditionStatus| {
        find(&report.conditions, type_).is_some_and(|condition| condition.status == status)
    };

    let pending: Vec<&str> = input.required.iter().map(String::as_str).filter(|name| current(name).is_none()).collect();
    let not_available: Vec<&str> = input
        .required
        .iter()
        .map(String::as_str)
        .filter(|name| current(name).is_some_and(|report| !says(report, AVAILABLE, ConditionStatus::True)))
        .collect();
    // who said not available, with what it said: `local-process (waiting for Service default/web)`
    let not_available_said: Vec<String> = not_available
        .iter()
        .map(|name| {
            let said = current(name)
                .and_then(|report| find(&report.conditions, AVAILABLE))
                .and_then(|condition| condition.message.as_deref())
                .filter(|message| !message.is_empty());
            match said {
                Some(message) => format!("{name} ({message})"),
                None => (*name).to_owned(),
            }
        })
        .collect();
    let degraded: Vec<&str> = input
        .required
        .iter()
        .map(String::as_str)
        .filter(|name| current(name).is_some_and(|report| says(report, DEGRADED, ConditionStatus::True)))
        .collect();

    let ready = !input.required.is_empty() && pending.is_empty() && not_available.is_empty();
    let is_degraded = !degraded.is_empty();

    let ready_condition = if ready {
        Condition::new(READY, ConditionStatus::True, "ControllersAvailable", "all required controllers are available")
    } else if input.required.is_empty() {
        Condition::new(READY, ConditionStatus::False, "NoControllers", "no registered controller acts on this object")
    } else if !not_available.is_empty() {
        let mut message = format!("not available: {}", not_available_said.join(", "));
        if !pending.is_empty() {
            message.push_str(&format!("; waiting for: {}", pending.join(", ")));
        }
        Condition::new(READY, ConditionStatus::False, "ControllersNotAvailable", message)
    } else {
        Condition::new(
            READY,
            ConditionStatus::False,
            "ControllersPending",
            format!("waiting for: {} at generation {}", pending.join(", "), input.generation),
        )
    };
    let degraded_condition = if is_degraded {
        Condition::new(
            DEGRADED,
            ConditionStatus::True,
            "ControllersDegraded",
            format!("degraded: {}", degraded.join(", ")),
        )
    } else {
        Condition::new(DEGRADED, ConditionStatus::False, "AsExpected", "no required controller reports degraded")
    };
    let progressing_condition = if ready || is_degraded {
        let reason = if ready { "Ready" } else { "Degraded" };
        Condition::new(PROGRESSING, ConditionStatus::False, reason, "not progressing")
    } else if input.deleting {
        Condition::new(PROGRESSING, ConditionStatus::True, "Deleting", "waiting for finalizers")
    } else {
        Condition::new(PROGRESSING, ConditionStatus::True, "Reconciling", "waiting for required controllers")
    };

    let mut conditions = vec![ready_condition, degraded_condition, progressing_condition];
    for condition in &mut conditions {
        condition.observed_generation = Some(input.generation);
    }
    let previous_conditions = input.previous.map(|status| status.conditions.as_slice()).unwrap_or_default();
    carry_transition_times(previous_conditions, &mut conditions, input.now);

    let observed_generation = if input.required.is_empty() {
        None
    } else {
        input
            .required
            .iter()
            .map(|name| report_of(name).map(|report| report.observed_generation))
            .collect::<Option<Vec<i64>>>()
            .and_then(|generations| generations.into_iter().min())
    };

    let some_report_current = input.required.iter().any(|name| current(name).is_some());
    let phase = if input.deleting {
        Phase::Deleting
    } else if ready {
        Phase::Ready
    } else if is_degraded {
        Phase::Failed
    } else if some_report_current {
        Phase::Progressing
    } else {
        Phase::Pending
    };

    let last_ready_generation =
        if ready { Some(input.generation) } else { input.previous.and_then(|status| status.last_ready_generation) };

    let mut controllers = input.reports.to_vec();
    controllers.sort_by(|left, right| left.controller.cmp(&right.controller));

    ObjectStatus { phase: Some(phase), conditions, observed_generation, last_ready_generation, controllers }
}

/// Whether an object with this aggregate needs attention (the scheduler's fast cadence): not Ready at its current
/// generation, Degraded, or being deleted.
pub fn needs_attention(status: &ObjectStatus, deleting: bool) -> bool {
    let holds = |type_: &str| find(&status.conditions, type_).is_some_and(|c| c.status == ConditionStatus::True);
    deleting || !holds(READY) || holds(DEGRADED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn registration(name: &str, kinds: &[&str], platforms: &[&str], required: bool) -> Registration {
        Registration {
            name: name.into(),
            kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
            platforms: platforms.iter().map(|platform| platform.to_string()).collect(),
            required,
        }
    }

    fn report(
        controller: &str,
        generation: i64,
        available: ConditionStatus,
        degraded: Option<bool>,
    ) -> ControllerReport {
        let mut conditions = vec![Condition::new(AVAILABLE, available, "R", "")];
        if let Some(degraded) = degraded {
            conditions.push(Condition::new(DEGRADED, ConditionStatus::from_bool(degraded), "R", ""));
        }
        ControllerReport {
            controller: controller.into(),
            observed_generation: generation,
            conditions,
            data: None,
            last_report_time: None,
        }
    }

    fn run(
        generation: i64,
        required: &[&str],
        reports: &[ControllerReport],
        previous: Option<&ObjectStatus>,
    ) -> ObjectStatus {
        let required: Vec<String> = required.iter().map(|name| name.to_string()).collect();
        aggregate(AggregateInput { generation, deleting: false, required: &required, reports, previous, now: at(1000) })
    }

    fn condition<'a>(status: &'a ObjectStatus, type_: &str) -> &'a Condition {
        find(&status.conditions, type_).expect("condition present")
    }

    #[test]
    fn required_set_matches_kind_platform_and_required_flag() {
        let registrations = vec![
            registration("gke", &["Cluster"], &["gcp"], true),
            registration("ports", &["Cluster", "Service"], &[], true),
            registration("observer", &["Cluster"], &[], false),
            registration("local", &["Service"], &["local"], true),
        ];
        assert_eq!(required_set(&registrations, Kind::Cluster, "gcp"), vec!["gke", "ports"]);
        assert_eq!(required_set(&registrations, Kind::Cluster, "aws"), vec!["ports"]);
        assert_eq!(required_set(&registrations, Kind::Service, "local"), vec!["local", "ports"]);
    }

    #[test]
    fn no_required_controllers_means_not_ready_with_no_controllers() {
        let status = run(1, &[], &[], None);
        assert_eq!(condition(&status, READY).status, ConditionStatus::False);
        assert_eq!(condition(&status, READY).reason.as_deref(), Some("NoControllers"));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.observed_generation, None);
    }

    #[test]
    fn all_three_conditions_are_always_present() {
        for status in [run(1, &[], &[], None), run(1, &["a"], &[report("a", 1, ConditionStatus::True, None)], None)] {
            for type_ in [READY, DEGRADED, PROGRESSING] {
                assert!(find(&status.conditions, type_).is_some(), "{type_} missing");
            }
        }
    }

    #[test]
    fn ready_when_every_required_controller_is_available_at_the_current_generation() {
        let reports = [report("a", 2, ConditionStatus::True, None), report("b", 2, ConditionStatus::True, Some(false))];
        let status = run(2, &["a", "b"], &reports, None);
        assert_eq!(condition(&status, READY).status, ConditionStatus::True);
        assert_eq!(condition(&status, PROGRESSING).status, ConditionStatus::False);
        assert_eq!(condition(&status, DEGRADED).status, ConditionStatus::False);
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.last_ready_generation, Some(2));
    }

    #[test]
    fn a_report_at_an_older_generation_leaves_the_object_pending_and_named() {
        let reports = [report("a", 2, ConditionStatus::True, None), report("b", 1, ConditionStatus::True, None)];
        let status = run(2, &["a", "b"], &reports, None);
        let ready = condition(&status, READY);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some("ControllersPending"));
        assert!(ready.message.as_deref().unwrap().contains('b'));
        assert!(!ready.message.as_deref().unwrap().contains("a,"));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.phase, Some(Phase::Progressing));
        assert_eq!(condition(&status, PROGRESSING).status, ConditionStatus::True);
    }

    #[test]
    fn a_controller_that_says_not_available_is_named() {
        let reports = [report("a", 1, ConditionStatus::False, None), report("b", 1, ConditionStatus::True, None)];
        let ready = condition(&run(1, &["a", "b"], &reports, None), READY).clone();
        assert_eq!(ready.reason.as_deref(), Some("ControllersNotAvailable"));
        assert_eq!(ready.message.as_deref(), Some("not available: a"));
    }

    #[test]
    fn a_not_available_controller_is_named_with_what_it_said() {
        let mut waiting = report("a", 1, ConditionStatus::False, None);
        waiting.conditions[0].message = Some("waiting for Service default/web".into());
        let ready = condition(&run(1, &["a"], &[waiting], None), READY).clone();
        assert_eq!(ready.message.as_deref(), Some("not available: a (waiting for Service default/web)"));
    }

    #[test]
    fn degraded_at_the_current_generation_fails_the_object() {
        let reports = [report("a", 3, ConditionStatus::False, Some(true))];
        let status = run(3, &["a"], &reports, None);
        assert_eq!(condition(&status, DEGRADED).status, ConditionStatus::True);
        assert_eq!(condition(&status, DEGRADED).message.as_deref(), Some("degraded: a"));
        assert_eq!(condition(&status, PROGRESSING).status, ConditionStatus::False);
        assert_eq!(status.phase, Some(Phase::Failed));
    }

    #[test]
    fn degraded_at_an_older_generation_does_not_count() {
        let reports = [report("a", 1, ConditionStatus::False, Some(true))];
        let status = run(2, &["a"], &reports, None);
        assert_eq!(condition(&status, DEGRADED).status, ConditionStatus::False);
        assert_eq!(status.phase, Some(Phase::Pending));
    }

    #[test]
    fn reports_of_controllers_outside_the_required_set_are_listed_but_do_not_count() {
        let reports =
            [report("optional", 1, ConditionStatus::False, Some(true)), report("a", 1, ConditionStatus::True, None)];
        let status = run(1, &["a"], &reports, None);
        assert_eq!(status.phase, Some(Phase::Ready));
        let names: Vec<&str> = status.controllers.iter().map(|report| report.controller.as_str()).collect();
        assert_eq!(names, vec!["a", "optional"]);
    }

    #[test]
    fn deleting_objects_are_in_phase_deleting() {
        let required = vec!["a".to_string()];
        let status = aggregate(AggregateInput {
            generation: 2,
            deleting: true,
            required: &required,
            reports: &[],
            previous: None,
            now: at(5),
        });
        assert_eq!(status.phase, Some(Phase::Deleting));
        assert!(needs_attention(&status, true));
    }

    #[test]
    fn last_transition_time_is_kept_unless_the_status_flips() {
        let first = run(1, &["a"], &[report("a", 1, ConditionStatus::True, None)], None);
        let mut previous = first.clone();
        for condition in &mut previous.conditions {
            condition.last_transition_time = Some(at(10));
        }
        let same = run(1, &["a"], &[report("a", 1, ConditionStatus::True, None)], Some(&previous));
        assert_eq!(condition(&same, READY).last_transition_time, Some(at(10)));
        let flipped = run(1, &["a"], &[report("a", 1, ConditionStatus::False, None)], Some(&previous));
        assert_eq!(condition(&flipped, READY).last_transition_time, Some(at(1000)));
        assert_eq!(condition(&flipped, DEGRADED).last_transition_time, Some(at(10)));
    }

    #[test]
    fn last_ready_generation_survives_a_new_generation() {
        let ready = run(1, &["a"], &[report("a", 1, ConditionStatus::True, None)], None);
        let next = run(2, &["a"], &[report("a", 1, ConditionStatus::True, None)], Some(&ready));
        assert_eq!(next.last_ready_generation, Some(1));
        assert_eq!(condition(&next, READY).status, ConditionStatus::False);
    }

    #[test]
    fn ready_stable_objects_need_no_attention_and_others_do() {
        let ready = run(1, &["a"], &[report("a", 1, ConditionStatus::True, None)], None);
        assert!(!needs_attention(&ready, false));
        let pending = run(1, &["a"], &[], None);
        assert!(needs_attention(&pending, false));
    }
}
