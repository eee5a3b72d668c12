//! Rows of the `objects` table and their rendering as Kubernetes-shaped JSON.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use cls_core::aggregate::{AggregateInput, Registration, aggregate, required_set};
use cls_core::resources::{ControllerReport, ObjectStatus};
use cls_core::{API_VERSION, Kind};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};
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

/// `YYYY-MM-DDTHH:MM:SSZ` of a `timestamptz` column, as [`timestamp`] writes it (truncated to seconds).
fn sql_timestamp(column: &str) -> String {
    format!(r#"to_char({column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"#)
}

/// A text expression rendering the object `o` as JSON exactly as [`StoredObject`]'s `Serialize` does (same keys,
/// same order, empty metadata fields left out), with the cached `status`. Only the whitespace and the key order
/// inside the stored JSON documents (spec, status, labels, ...) differ: PostgreSQL prints `jsonb` its own way.
fn render_object_sql(kind: Kind) -> String {
    let json = |text: &str| serde_json::to_string(text).expect("strings serialize");
    let head = format!(r#"{{"apiVersion":{},"kind":{},"metadata":{{"name":"#, json(API_VERSION), json(kind.as_str()));
    let namespace = if kind.namespaced() { r#" || ',"namespace":' || to_json(o.namespace)::text"# } else { "" };
    let created = sql_timestamp("o.creation_timestamp");
    let deleted = sql_timestamp("o.deletion_timestamp");
    format!(
        r#"'{head}' || to_json(o.name)::text{namespace}
    || ',"uid":"' || o.uid::text || '","resourceVersion":"' || o.resource_version::text
    || '","generation":' || o.generation::text || ',"creationTimestamp":"' || {created} || '"'
    || case when o.deletion_timestamp is null then ''
       else ',"deletionTimestamp":"' || {deleted} || '","deletionGracePeriodSeconds":0' end
    || case when o.labels = '{{}}'::jsonb then '' else ',"labels":' || o.labels::text end
    || case when o.annotations = '{{}}'::jsonb then '' else ',"annotations":' || o.annotations::text end
    || case when cardinality(o.finalizers) = 0 then '' else ',"finalizers":' || to_json(o.finalizers)::text end
    || case when o.owner_references = '[]'::jsonb then ''
       else ',"ownerReferences":' || o.owner_references::text end
    || case when o.managed_fields = '[]'::jsonb then '' else ',"managedFields":' || o.managed_fields::text end
    || '}},"spec":' || o.spec::text || ',"status":' || coalesce(o.status::text, '{{}}') || '}}'"#
    )
}

/// The query of GETs of one kind and key shape. Each key comes with the version of the body its GET holds (null
/// when it holds none); a row answers `position` (the key's, from 1), `namespace`, `name`, `row_version` (`xmin`),
/// `resource_version`, `fresh` (whether the cached aggregate is fresh) and `body`: the object's JSON rendered by
/// PostgreSQL when it is fresh and the version differs, null otherwise (the caller then answers the body it holds,
/// or takes the aggregating path when stale). A missing object has no row; a key given twice gets two.
///
/// Without `render`, `body` is always null: the statement only tells which held bodies are still current. It costs
/// PostgreSQL ~15-25% less than the rendering one even when that one renders nothing (pgbench, prepared, generic
/// plans: 42,000-49,000 vs 38,000 statements/s), because starting the executor compiles the whole rendering
/// expression either way.
///
/// Parameters: one GET (`batch` false) binds `$1` the uid, or `$1, $2` the namespace and name, then the held
/// version's transaction and resourceVersion; a batch binds the same as arrays of equal length.
fn select_json_sql(kind: Kind, by_uid: bool, batch: bool, render: bool) -> String {
    let fresh = fresh_sql(kind);
    let epoch = if kind.reconciled() { " cross join registry_epoch e" } else { "" };
    let keys = match (by_uid, batch) {
        (true, false) => {
            "(select $1::uuid as uid, $2::bigint as row_version, $3::bigint as resource_version, 1::bigint as position) k"
        }
        (false, false) => {
            "(select $1::text as namespace, $2::text as name, $3::bigint as row_version, \
             $4::bigint as resource_version, 1::bigint as position) k"
        }
        (true, true) => {
            "unnest($1::uuid[], $2::bigint[], $3::bigint[]) with ordinality as k(uid, row_version, resource_version, position)"
        }
        (false, true) => {
            "unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) \
             with ordinality as k(namespace, name, row_version, resource_version, position)"
        }
    };
    let key = if by_uid { "o.uid = k.uid" } else { "o.namespace = k.namespace and o.name = k.name" };
    // each key looks its object up with the index (a key names at most one object): the `limit` keeps the planner
    // from turning the lookups into a join of every object of the kind, which it did on a table without
    // statistics yet (a GET cost ~4 times as much)
    let body = if render {
        format!(
            "case when {fresh} and (o.row_version, o.resource_version) is distinct from (k.row_version, k.resource_version)
              then {} end",
            render_object_sql(kind)
        )
    } else {
        "null::text".to_owned()
    };
    format!(
        "select k.position, o.namespace, o.name, o.row_version, o.resource_version,
            coalesce({fresh}, false) as fresh, {body} as body
         from {keys} cross join lateral (select o.*, o.xmin::text::bigint as row_version from objects o
            where o.kind = '{}' and {key} limit 1) o{epoch}",
        kind.as_str()
    )
}

/// Whether the cached aggregate of the row `o` is fresh, `e` being `registry_epoch` (kinds without an aggregate:
/// always).
fn fresh_sql(kind: Kind) -> &'static str {
    if kind.reconciled() { "o.status_cached_seq = o.status_seq and o.status_epoch = e.epoch" } else { "true" }
}

/// The list query's columns when PostgreSQL renders the items: `namespace`, `name` and `body`, the item's JSON
/// when its cached aggregate is fresh (null otherwise), `from objects o cross join registry_epoch e`.
fn select_list_json_sql(kind: Kind) -> String {
    let fresh = fresh_sql(kind);
    format!(
        "select o.namespace, o.name, case when {fresh} then {} end as body
         from objects o cross join registry_epoch e",
        render_object_sql(kind)
    )
}

static SELECT_LIST_JSON: LazyLock<[String; 3]> = LazyLock::new(|| Kind::ALL.map(select_list_json_sql));

/// The columns of a list that PostgreSQL renders (see [`select_list_json_sql`]).
pub(crate) fn select_list_json(kind: Kind) -> &'static str {
    let index = Kind::ALL.iter().position(|each| *each == kind).unwrap_or_default();
    &SELECT_LIST_JSON[index]
}

/// The GET queries, one per kind, key shape, batching and rendering, built once (they are prepared once per
/// connection).
type SelectJson = [[[[String; 2]; 2]; 2]; 3];
static SELECT_JSON: LazyLock<SelectJson> = LazyLock::new(|| {
    Kind::ALL.map(|kind| {
        [true, false].map(|by_uid| {
            [false, true].map(|batch| [false, true].map(|render| select_json_sql(kind, by_uid, batch, render)))
        })
    })
});

/// The GET query of `kind` by uid or by namespace and name, for one GET or a batch, rendering bodies or only
/// checking held ones (see [`select_json_sql`]).
pub(crate) fn select_json(kind: Kind, by_uid: bool, batch: bool, render: bool) -> &'static str {
    let index = Kind::ALL.iter().position(|each| *each == kind).unwrap_or_default();
    &SELECT_JSON[index][usize::from(!by_uid)][usize::from(batch)][usize::from(render)]
}

/// One object as a GET answers it: its JSON body, and the fields that authorization needs.
#[derive(Clone, Debug)]
pub struct ObjectJson {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// `{apiVersion, kind, metadata, spec, status}`, UTF-8 JSON.
    pub body: bytes::Bytes,
}

#[derive(Clone, Debug, sqlx::FromRow)]
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
    pub fn into_cached_object(mut self) -> StoredObject {
        let status = self.status.take().map(|status| status.0).unwrap_or_else(|| json!({}));
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

fn timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
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
        serde_json::to_value(Metadata(self)).expect("metadata serializes")
    }

    /// The whole object: `{apiVersion, kind, metadata, spec, status}`. Responses serialize the object directly
    /// (it implements `Serialize`), without this intermediate value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("objects serialize")
    }
}

impl Serialize for StoredObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("apiVersion", API_VERSION)?;
        map.serialize_entry("kind", self.kind.as_str())?;
        map.serialize_entry("metadata", &Metadata(self))?;
        map.serialize_entry("spec", &self.spec)?;
        map.serialize_entry("status", &self.status)?;
        map.end()
    }
}

/// Serializes an object's metadata as Kubernetes does, leaving out empty fields.
struct Metadata<'a>(&'a StoredObject);

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let object = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &object.name)?;
        if object.kind.namespaced() {
            map.serialize_entry("namespace", &object.namespace)?;
        }
        map.serialize_entry("uid", &object.uid)?;
        map.serialize_entry("resourceVersion", &object.resource_version.to_string())?;
        map.serialize_entry("generation", &object.generation)?;
        map.serialize_entry("creationTimestamp", &timestamp(&object.creation_timestamp))?;
        if let Some(deletion) = &object.deletion_timestamp {
            map.serialize_entry("deletionTimestamp", &timestamp(deletion))?;
            map.serialize_entry("deletionGracePeriodSeconds", &0)?;
        }
        if !object.labels.is_empty() {
            map.serialize_entry("labels", &object.labels)?;
        }
        if !object.annotations.is_empty() {
            map.serialize_entry("annotations", &object.annotations)?;
        }
        if !object.finalizers.is_empty() {
            map.serialize_entry("finalizers", &object.finalizers)?;
        }
        if !object.owner_references.is_empty() {
            map.serialize_entry("ownerReferences", &object.owner_references)?;
        }
        if !object.managed_fields.is_empty() {
            map.serialize_entry("managedFields", &object.managed_fields)?;
        }
        map.end()
    }
}
