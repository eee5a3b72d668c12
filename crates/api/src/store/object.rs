//! Rows of the `objects` table and their rendering as Kubernetes-shaped JSON.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use cls_core::aggregate::{AggregateInput, Registration, aggregate, required_set};
use cls_core::resources::{ControllerReport, ObjectStatus};
use cls_core::{API_VERSION, Kind};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use uuid::Uuid;

/// The columns every object query selects, `e` being `registry_epoch`. `FORCE` becomes `true` where the caller
/// needs the reports anyway; otherwise they come only when the cached aggregate is stale.
const SELECT_OBJECT: &str = "select o.uid, o.kind, o.namespace, o.name, o.labels, o.annotations,
    o.finalizers, o.owner_references, o.managed_fields, o.spec, o.generation, o.resource_version, o.platform,
    o.cluster_name, o.creation_timestamp, o.deletion_timestamp, o.status_seq, o.status, o.last_ready_generation,
    e.epoch,
    case when o.kind <> 'Controller'
          and (FORCE or o.status_cached_seq is distinct from o.status_seq or o.status_epoch is distinct from e.epoch)
      then (select coalesce(jsonb_agg(jsonb_build_object('controller', r.controller,
                  'observedGeneration', r.observed_generation, 'conditions', r.conditions, 'data', r.data,
                  'lastReportTime', to_char(r.reported_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
                  order by r.controller), '[]'::jsonb)
            from reports r where r.uid = o.uid)
    end as reports
    from objects o cross join registry_epoch e";

static SELECT_STALE_REPORTS: LazyLock<String> = LazyLock::new(|| SELECT_OBJECT.replace("FORCE", "false"));
static SELECT_ALL_REPORTS: LazyLock<String> = LazyLock::new(|| SELECT_OBJECT.replace("FORCE", "true"));

/// `select ... from objects o cross join registry_epoch e`, fetching the reports always or only when the cached
/// aggregate is stale.
pub(crate) fn select_object(all_reports: bool) -> &'static str {
    if all_reports { &SELECT_ALL_REPORTS } else { &SELECT_STALE_REPORTS }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ObjectRow {
    pub uid: Uuid,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub labels: Json<BTreeMap<String, String>>,
    pub annotations: Json<BTreeMap<String, String>>,
    pub finalizers: Vec<String>,
    pub owner_references: Json<Vec<Value>>,
    pub managed_fields: Json<Vec<Value>>,
    pub spec: Json<Value>,
    pub generation: i64,
    pub resource_version: i64,
    pub platform: String,
    pub cluster_name: Option<String>,
    pub creation_timestamp: DateTime<Utc>,
    pub deletion_timestamp: Option<DateTime<Utc>>,
    pub status_seq: i64,
    pub status: Option<Json<Value>>,
    pub last_ready_generation: Option<i64>,
    pub epoch: i64,
    pub reports: Option<Json<Vec<ControllerReport>>>,
    /// Set by list queries only.
    #[sqlx(default)]
    pub list_resource_version: Option<i64>,
}

/// A cache write that a read owes: the aggregate computed at `status_seq` with the registry at `epoch`.
#[derive(Debug)]
pub(crate) struct CacheWrite {
    pub uid: Uuid,
    pub status_seq: i64,
    pub epoch: i64,
    pub status: Value,
}

impl ObjectRow {
    pub fn kind(&self) -> Kind {
        Kind::from_kind_name(&self.kind).unwrap_or(Kind::Cluster)
    }

    /// Whether the cached aggregate must be recomputed (the query fetched the reports for it).
    pub fn needs_aggregate(&self) -> bool {
        self.reports.is_some()
    }

    /// Computes the aggregate from `reports` (or the fetched ones) and the registry at `epoch`.
    pub fn aggregate(
        &self,
        reports: Option<&[ControllerReport]>,
        registrations: &[Registration],
        now: jiff::Timestamp,
    ) -> ObjectStatus {
        let mut previous: Option<ObjectStatus> =
            self.status.as_ref().and_then(|status| serde_json::from_value(status.0.clone()).ok());
        if let Some(reported) = self.last_ready_generation {
            let previous = previous.get_or_insert_with(ObjectStatus::default);
            previous.last_ready_generation = previous.last_ready_generation.max(Some(reported));
        }
        let reports = reports.or(self.reports.as_ref().map(|reports| reports.0.as_slice())).unwrap_or_default();
        let required = required_set(registrations, self.kind(), &self.platform);
        aggregate(AggregateInput {
            generation: self.generation,
            deleting: self.deletion_timestamp.is_some(),
            required: &required,
            reports,
            previous: previous.as_ref(),
            now,
        })
    }

    /// The object with `status` as given.
    pub fn into_object(self, status: Value) -> StoredObject {
        StoredObject {
            kind: self.kind(),
            uid: self.uid,
            namespace: self.namespace,
            name: self.name,
            labels: self.labels.0,
            annotations: self.annotations.0,
            finalizers: self.finalizers,
            owner_references: self.owner_references.0,
            managed_fields: self.managed_fields.0,
            spec: self.spec.0,
            generation: self.generation,
            resource_version: self.resource_version,
            platform: self.platform,
            cluster_name: self.cluster_name,
            creation_timestamp: self.creation_timestamp,
            deletion_timestamp: self.deletion_timestamp,
            status,
        }
    }

    /// The object with its cached status (Controllers' own status, or a clean aggregate).
    pub fn into_cached_object(self) -> StoredObject {
        let status = self.status.as_ref().map(|status| status.0.clone()).unwrap_or_else(|| json!({}));
        self.into_object(status)
    }
}

/// One object as stored, with its status resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredObject {
    pub kind: Kind,
    pub uid: Uuid,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub finalizers: Vec<String>,
    pub owner_references: Vec<Value>,
    pub managed_fields: Vec<Value>,
    pub spec: Value,
    pub generation: i64,
    pub resource_version: i64,
    pub platform: String,
    pub cluster_name: Option<String>,
    pub creation_timestamp: DateTime<Utc>,
    pub deletion_timestamp: Option<DateTime<Utc>>,
    pub status: Value,
}

fn timestamp(time: &DateTime<Utc>) -> Value {
    Value::String(time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

impl StoredObject {
    /// Reads back an object rendered by [`StoredObject::to_json`] (for watch events shown as Tables).
    pub fn from_json(kind: Kind, object: &Value) -> Option<StoredObject> {
        let metadata = &object["metadata"];
        let time = |field: &str| {
            metadata[field]
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.with_timezone(&Utc))
        };
        fn owned<T: serde::de::DeserializeOwned + Default>(metadata: &Value, field: &str) -> T {
            serde_json::from_value(metadata[field].clone()).unwrap_or_default()
        }
        Some(StoredObject {
            kind,
            uid: metadata["uid"].as_str()?.parse().ok()?,
            namespace: metadata["namespace"].as_str().unwrap_or_default().to_owned(),
            name: metadata["name"].as_str()?.to_owned(),
            labels: owned(metadata, "labels"),
            annotations: owned(metadata, "annotations"),
            finalizers: owned(metadata, "finalizers"),
            owner_references: owned(metadata, "ownerReferences"),
            managed_fields: owned(metadata, "managedFields"),
            spec: object["spec"].clone(),
            generation: metadata["generation"].as_i64().unwrap_or(1),
            resource_version: metadata["resourceVersion"].as_str()?.parse().ok()?,
            platform: String::new(),
            cluster_name: None,
            creation_timestamp: time("creationTimestamp")?,
            deletion_timestamp: time("deletionTimestamp"),
            status: object["status"].clone(),
        })
    }

    pub fn deleting(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    /// The Kubernetes metadata object.
    pub fn metadata_json(&self) -> Value {
        let mut metadata = Map::new();
        metadata.insert("name".into(), Value::String(self.name.clone()));
        if self.kind.namespaced() {
            metadata.insert("namespace".into(), Value::String(self.namespace.clone()));
        }
        metadata.insert("uid".into(), Value::String(self.uid.to_string()));
        metadata.insert("resourceVersion".into(), Value::String(self.resource_version.to_string()));
        metadata.insert("generation".into(), Value::from(self.generation));
        metadata.insert("creationTimestamp".into(), timestamp(&self.creation_timestamp));
        if let Some(deletion) = &self.deletion_timestamp {
            metadata.insert("deletionTimestamp".into(), timestamp(deletion));
            metadata.insert("deletionGracePeriodSeconds".into(), Value::from(0));
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), json!(self.annotations));
        }
        if !self.finalizers.is_empty() {
            metadata.insert("finalizers".into(), json!(self.finalizers));
        }
        if !self.owner_references.is_empty() {
            metadata.insert("ownerReferences".into(), json!(self.owner_references));
        }
        if !self.managed_fields.is_empty() {
            metadata.insert("managedFields".into(), json!(self.managed_fields));
        }
        Value::Object(metadata)
    }

    /// The whole object: `{apiVersion, kind, metadata, spec, status}`.
    pub fn to_json(&self) -> Value {
        json!({
            "apiVersion": API_VERSION,
            "kind": self.kind.as_str(),
            "metadata": self.metadata_json(),
            "spec": self.spec,
            "status": self.status,
        })
    }
}
