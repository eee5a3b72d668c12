//! The event envelope: what the outbox stores and the bus carries.
//!
//! Events are thin: they say which object changed and how; controllers always read the current object.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kind::Kind;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Created,
    Updated,
    Deleting,
    Deleted,
    Status,
    Reconcile,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleting => "deleting",
            EventKind::Deleted => "deleted",
            EventKind::Status => "status",
            EventKind::Reconcile => "reconcile",
        }
    }
}

/// `cluster.created`, `service.status`, ...
pub fn event_type(kind: Kind, event: EventKind) -> String {
    format!("{}.{}", kind.singular(), event.as_str())
}

/// Why a reconcile event was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileReason {
    GenerationMismatch,
    NotReady,
    Degraded,
    Deleting,
    Periodic,
}

impl fmt::Display for ReconcileReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ReconcileReason::GenerationMismatch => "generation_mismatch",
            ReconcileReason::NotReady => "not_ready",
            ReconcileReason::Degraded => "degraded",
            ReconcileReason::Deleting => "deleting",
            ReconcileReason::Periodic => "periodic",
        })
    }
}

/// The message data: `{"id","type","kind","uid","namespace","name","generation","reason","time"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub type_: String,
    pub kind: String,
    pub uid: Uuid,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub time: Timestamp,
}

impl Event {
    /// The message attributes: the CloudEvents Pub/Sub binding plus plain filter attributes.
    pub fn attributes(&self, platform: &str, source: &str) -> BTreeMap<String, String> {
        let kind_lowercase = self.kind.to_lowercase();
        let event = self.type_.rsplit('.').next().unwrap_or_default();
        BTreeMap::from([
            ("ce-specversion".into(), "1.0".into()),
            ("ce-id".into(), self.id.to_string()),
            ("ce-type".into(), format!("dev.cls.{kind_lowercase}.{event}")),
            ("ce-source".into(), source.to_owned()),
            ("ce-time".into(), self.time.to_string()),
            ("ce-subject".into(), format!("{}/{}", self.namespace, self.name)),
            ("event_type".into(), self.type_.clone()),
            ("kind".into(), self.kind.clone()),
            ("platform".into(), platform.to_owned()),
            ("namespace".into(), self.namespace.clone()),
            ("name".into(), self.name.clone()),
            ("uid".into(), self.uid.to_string()),
            ("generation".into(), self.generation.to_string()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_and_attributes_follow_the_contract() {
        assert_eq!(event_type(Kind::Cluster, EventKind::Created), "cluster.created");
        let event = Event {
            id: Uuid::nil(),
            type_: event_type(Kind::Service, EventKind::Status),
            kind: "Service".into(),
            uid: Uuid::nil(),
            namespace: "default".into(),
            name: "web".into(),
            generation: 3,
            reason: None,
            time: Timestamp::UNIX_EPOCH,
        };
        let attributes = event.attributes("local", "/cls");
        assert_eq!(attributes["ce-type"], "dev.cls.service.status");
        assert_eq!(attributes["event_type"], "service.status");
        assert_eq!(attributes["platform"], "local");
        assert_eq!(attributes["generation"], "3");
        assert_eq!(ReconcileReason::GenerationMismatch.to_string(), "generation_mismatch");
    }
}
