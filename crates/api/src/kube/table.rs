//! `Table` responses for `kubectl get`: useful columns per kind, priority-1 columns for `-o wide`.

use chrono::{DateTime, Utc};
use cls_core::Kind;
use serde_json::{Value, json};

use crate::store::StoredObject;

/// Whether the client asked for a `Table` (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').next().is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
    })
}

pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// How much of each object a row carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn column(name: &str, type_: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

fn columns(kind: Kind) -> Vec<Value> {
    let name = column("Name", "string", 0, "Name of the object");
    let age = column("Age", "string", 0, "Time since creation");
    match kind {
        Kind::Cluster => vec![
            name,
            column("Platform", "string", 0, "spec.platform.type"),
            column("Region", "string", 0, "spec.platform.region"),
            column("Version", "string", 0, "spec.release.version"),
            column("Phase", "string", 0, "status.phase"),
            column("Ready", "string", 0, "Ready condition"),
            age,
            column("Channel", "string", 1, "spec.release.channel"),
            column("Generation", "integer", 1, "metadata.generation"),
            column("Observed", "integer", 1, "status.observedGeneration"),
            column("Reason", "string", 1, "reason of the Ready condition"),
        ],
        Kind::Service => vec![
            name,
            column("Cluster", "string", 0, "spec.clusterRef.name"),
            column("Phase", "string", 0, "status.phase"),
            column("Ready", "string", 0, "Ready condition"),
            column("Ports", "string", 0, "spec.ports"),
            age,
            column("Replicas", "integer", 1, "spec.replicas"),
            column("Run", "string", 1, "spec.image or spec.run.command"),
            column("Generation", "integer", 1, "metadata.generation"),
            column("Observed", "integer", 1, "status.observedGeneration"),
        ],
        Kind::Controller => vec![
            name,
            column("Kinds", "string", 0, "spec.kinds"),
            column("Platforms", "string", 0, "spec.platforms"),
            column("Required", "string", 0, "spec.required"),
            column("Heartbeat", "string", 0, "time since status.lastHeartbeatTime"),
            age,
            column("Description", "string", 1, "spec.description"),
        ],
    }
}

/// Kubernetes' short age format: `45s`, `12m`, `3h5m`, `4d`.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - since).num_seconds().max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..600 => format!("{}m{}s", seconds / 60, seconds % 60),
        600..10800 => format!("{}m", seconds / 60),
        10800..86400 => format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60),
        86400..691200 => format!("{}d{}h", seconds / 86400, (seconds % 86400) / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

fn text(value: &Value) -> Value {
    match value {
        Value::Null => json!(""),
        Value::String(_) => value.clone(),
        other => json!(other.to_string()),
    }
}

fn ready(object: &StoredObject) -> (Value, Value) {
    let condition = object.status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == "Ready"));
    match condition {
        Some(condition) => (text(&condition["status"]), text(&condition["reason"])),
        None => (json!(""), json!("")),
    }
}

fn list(value: &Value) -> Value {
    match value.as_array() {
        Some(items) => json!(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
        None => json!(""),
    }
}

fn cells(object: &StoredObject, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &object.spec;
    let age = json!(age(object.creation_timestamp, now));
    let name = json!(object.name);
    match object.kind {
        Kind::Cluster => {
            let (ready, reason) = ready(object);
            vec![
                name,
                text(&spec["platform"]["type"]),
                text(&spec["platform"]["region"]),
                text(&spec["release"]["version"]),
                text(&object.status["phase"]),
                ready,
                age,
                text(&spec["release"]["channel"]),
                json!(object.generation),
                object.status["observedGeneration"].clone(),
                reason,
            ]
        }
        Kind::Service => {
            let (ready, _) = ready(object);
            let ports = spec["ports"]
                .as_array()
                .map(|ports| {
                    ports
                        .iter()
                        .map(|port| format!("{}/{}", port["port"], port["protocol"].as_str().unwrap_or("TCP")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let run = if spec["image"].is_string() { text(&spec["image"]) } else { list(&spec["run"]["command"]) };
            vec![
                name,
                text(&spec["clusterRef"]["name"]),
                text(&object.status["phase"]),
                ready,
                json!(ports),
                age,
                spec["replicas"].clone(),
                run,
                json!(object.generation),
                object.status["observedGeneration"].clone(),
            ]
        }
        Kind::Controller => {
            let heartbeat = object.status["lastHeartbeatTime"]
                .as_str()
                .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
                .map(|time| self::age(time.with_timezone(&Utc), now))
                .unwrap_or_default();
            let platforms = if spec["platforms"].as_array().is_none_or(Vec::is_empty) {
                json!("*")
            } else {
                list(&spec["platforms"])
            };
            vec![
                name,
                list(&spec["kinds"]),
                platforms,
                text(&spec["required"]),
                json!(heartbeat),
                age,
                text(&spec["description"]),
            ]
        }
    }
}

fn row_object(object: &StoredObject, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.to_json(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object.metadata_json(),
        }),
    }
}

/// A `Table` of `objects`.
pub fn table(kind: Kind, objects: &[StoredObject], metadata: Value, include: IncludeObject) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| json!({"cells": cells(object, now), "object": row_object(object, include)}))
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
        "columnDefinitions": columns(kind), "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(45), now), "45s");
        assert_eq!(age(now - chrono::Duration::seconds(300), now), "5m0s");
        assert_eq!(age(now - chrono::Duration::seconds(3 * 3600 + 300), now), "3h5m");
        assert_eq!(age(now - chrono::Duration::days(10), now), "10d");
    }

    #[test]
    fn only_a_table_first_accept_header_asks_for_a_table() {
        assert!(wants_table(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")));
        assert!(!wants_table(Some("application/json")));
        assert!(!wants_table(None));
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        for kind in Kind::ALL {
            let object = StoredObject {
                kind,
                uid: uuid::Uuid::nil(),
                namespace: "default".into(),
                name: "x".into(),
                labels: Default::default(),
                annotations: Default::default(),
                finalizers: vec![],
                owner_references: vec![],
                managed_fields: vec![],
                spec: json!({}),
                generation: 1,
                resource_version: 1,
                platform: String::new(),
                cluster_name: None,
                creation_timestamp: Utc::now(),
                deletion_timestamp: None,
                status: json!({}),
            };
            assert_eq!(cells(&object, Utc::now()).len(), columns(kind).len(), "{kind}");
        }
    }
}
