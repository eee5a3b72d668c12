//! Writes of specs and metadata: create, update (PUT, patches), delete with finalizers and the Cluster-to-Service
//! cascade, and controller registration. Each runs in one transaction that locks the rows it changes and writes the
//! outbox events and schedule rows of its changes; deadlocks between cascades are retried.

use std::collections::{BTreeMap, HashSet};

use cls_core::aggregate::Registration;
use cls_core::event::EventKind;
use cls_core::manifest::{Manifest, Spec};
use cls_core::resources::ControllerStatus;
use cls_core::validation::FieldError;
use cls_core::{API_VERSION, Kind};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use super::object::{ObjectRow, select_object};
use super::read::{now_seconds, push_key};
use super::{ObjectKey, Result, Store, StoreError, StoredObject, interval_seconds, with_retries};

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl Store {
    /// Creates an object from a validated manifest.
    pub async fn create(&self, manifest: &Manifest) -> Result<StoredObject> {
        with_retries(|| async {
            let mut transaction = self.pool.begin().await?;
            let uid = self.insert(&mut transaction, manifest, false).await?;
            let object = self.render(&mut transaction, uid).await?;
            record_change(&mut transaction, "ADDED", &object).await?;
            self.finish(transaction).await?;
            Ok(object)
        })
        .await
    }

    /// Registers a controller or records its heartbeat: creates the `Controller` or replaces its spec and metadata,
    /// and sets `status.lastHeartbeatTime`.
    pub async fn register_controller(&self, manifest: &Manifest) -> Result<(StoredObject, Change)> {
        let key = ObjectKey::name("", manifest.name.clone());
        with_retries(|| async {
            let mut transaction = self.pool.begin().await?;
            let object = match self.lock(&mut transaction, Kind::Controller, &key).await? {
                None => {
                    let uid = self.insert(&mut transaction, manifest, true).await?;
                    (self.render(&mut transaction, uid).await?, Change::Created)
                }
                Some(row) => {
                    let current = row.into_cached_object();
                    self.apply(&mut transaction, &current, manifest, true).await?;
                    (self.render(&mut transaction, current.uid).await?, Change::Updated)
                }
            };
            let event = if object.1 == Change::Created { "ADDED" } else { "MODIFIED" };
            record_change(&mut transaction, event, &object.0).await?;
            self.finish(transaction).await?;
            Ok(object)
        })
        .await
    }

    /// Read-modify-write of one object. `mutate` turns the current object into the desired manifest, or rejects the
    /// request with its own error `E` (the inner result); it runs again on a retry, so it must be a pure function of
    /// its input. A `metadata.resourceVersion` in the manifest is a precondition (409 when stale). Concurrent
    /// writers are serialized on the row lock, so no update is lost.
    pub async fn update<F, E>(
        &self,
        kind: Kind,
        key: &ObjectKey,
        mutate: F,
    ) -> Result<Result<(StoredObject, Change), E>>
    where
        F: Fn(&StoredObject) -> Result<Manifest, E>,
    {
        with_retries(|| async {
            let mut transaction = self.pool.begin().await?;
            let row = self.lock(&mut transaction, kind, key).await?;
            let current = row.ok_or_else(|| StoreError::NotFound { kind, name: key_name(key) })?.into_cached_object();
            let desired = match mutate(&current) {
                Ok(desired) => desired,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let change = self.apply(&mut transaction, &current, &desired, false).await?;
            if change == Change::Unchanged {
                transaction.rollback().await?;
                return Ok(Ok((self.get(kind, &ObjectKey::Uid(current.uid)).await?, change)));
            }
            let object = self.render(&mut transaction, current.uid).await?;
            let previous_labels = (object.labels != current.labels).then_some(&current.labels);
            record_change_from(&mut transaction, "MODIFIED", &object, previous_labels).await?;
            self.finalize_if_done(&mut transaction, current.uid, &mut HashSet::new()).await?;
            self.finish(transaction).await?;
            Ok(Ok((object, change)))
        })
        .await
    }

    /// Deletes an object: sets `deletionTimestamp` (cascading to a Cluster's Services) and removes it once no
    /// finalizer and no Service is left. `force` removes it (and a Cluster's Services) at once. Answers the object
    /// as it was last stored.
    pub async fn delete(&self, kind: Kind, key: &ObjectKey, force: bool) -> Result<StoredObject> {
        with_retries(|| async {
            let mut transaction = self.pool.begin().await?;
            let row = self.lock(&mut transaction, kind, key).await?;
            let row = row.ok_or_else(|| StoreError::NotFound { kind, name: key_name(key) })?;
            let uid = row.uid;
            // objects marked deleting here whose change is not logged yet: logged as MODIFIED if they stay, or
            // their resourceVersion becomes the tombstone's if they go, so a plain delete is one DELETED event
            let mut unlogged = HashSet::new();
            if force {
                let object = self.render(&mut transaction, uid).await?;
                if kind == Kind::Cluster {
                    for service in self.services_of(&mut transaction, &object.namespace, &object.name).await? {
                        self.remove(&mut transaction, service, &mut unlogged).await?;
                    }
                }
                self.remove(&mut transaction, uid, &mut unlogged).await?;
                self.finish(transaction).await?;
                return Ok(object);
            }
            if row.deletion_timestamp.is_none() && self.mark_deleting(&mut transaction, uid).await? {
                unlogged.insert(uid);
            }
            let object = self.render(&mut transaction, uid).await?;
            if kind == Kind::Cluster {
                for service in self.services_of(&mut transaction, &object.namespace, &object.name).await? {
                    if self.mark_deleting(&mut transaction, service).await? {
                        unlogged.insert(service);
                    }
                    self.finalize_if_done(&mut transaction, service, &mut unlogged).await?;
                }
            }
            self.finalize_if_done(&mut transaction, uid, &mut unlogged).await?;
            for remaining in unlogged {
                let object = self.render(&mut transaction, remaining).await?;
                record_change(&mut transaction, "MODIFIED", &object).await?;
            }
            self.finish(transaction).await?;
            Ok(object)
        })
        .await
    }

    /// Locks and reads a row (with all its reports).
    async fn lock(&self, connection: &mut PgConnection, kind: Kind, key: &ObjectKey) -> Result<Option<ObjectRow>> {
        let mut builder = QueryBuilder::new(select_object(true));
        push_key(&mut builder, kind, key);
        builder.push(" for update of o");
        Ok(builder.build_query_as().fetch_optional(connection).await?)
    }

    /// Reads a row inside the transaction and renders it with its aggregate computed in memory (not cached: the
    /// next read outside the transaction caches it).
    pub(crate) async fn render(&self, connection: &mut PgConnection, uid: Uuid) -> Result<StoredObject> {
        let mut builder = QueryBuilder::new(select_object(true));
        builder.push(" where o.uid = ").push_bind(uid);
        let row: ObjectRow = builder.build_query_as().fetch_one(&mut *connection).await?;
        if !row.kind().reconciled() {
            return Ok(row.into_cached_object());
        }
        let registrations = self.registry.get(&mut *connection, row.epoch).await?.registrations;
        let status = row.aggregate(None, &registrations, now_seconds());
        Ok(row.into_object(serde_json::to_value(status).expect("status serializes")))
    }

    /// Inserts a new object with its event, schedule and (Controllers) registration.
    async fn insert(&self, connection: &mut PgConnection, manifest: &Manifest, heartbeat: bool) -> Result<Uuid> {
        let kind = manifest.spec.kind();
        let namespace = manifest.namespace.clone().unwrap_or_default();
        let mut owner_references = manifest.owner_references.clone();
        let (platform, cluster_name) = match &manifest.spec {
            Spec::Cluster(spec) => (spec.platform.type_.clone(), None),
            Spec::Service(spec) => {
                let cluster = &spec.cluster_ref.name;
                let found: Option<(Uuid, String, bool)> = sqlx::query_as(
                    "select uid, platform, deletion_timestamp is not null from objects
                     where kind = 'Cluster' and namespace = $1 and name = $2 for share",
                )
                .bind(&namespace)
                .bind(cluster)
                .fetch_optional(&mut *connection)
                .await?;
                let invalid = |detail: &str| StoreError::Invalid {
                    kind,
                    name: manifest.name.clone(),
                    errors: vec![FieldError::invalid("spec.clusterRef.name", format!("\"{cluster}\""), detail)],
                };
                let (cluster_uid, platform, deleting) =
                    found.ok_or_else(|| invalid(&format!("no Cluster {cluster:?} in namespace {namespace:?}")))?;
                if deleting {
                    return Err(invalid("the Cluster is being deleted"));
                }
                owner_references.retain(|reference| reference.get("uid") != Some(&json!(cluster_uid.to_string())));
                owner_references.push(json!({
                    "apiVersion": API_VERSION, "kind": "Cluster", "name": cluster,
                    "uid": cluster_uid.to_string(), "controller": true, "blockOwnerDeletion": true,
                }));
                (platform, Some(cluster.clone()))
            }
            Spec::Controller(_) => (String::new(), None),
        };
        let status = if heartbeat { Some(Json(heartbeat_status())) } else { None };
        let uid = Uuid::new_v4();
        let inserted: Option<(Uuid,)> = sqlx::query_as(
            "insert into objects (uid, kind, namespace, name, labels, annotations, finalizers, owner_references,
                 spec, generation, resource_version, platform, cluster_name, status, managed_fields)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, nextval('resource_version_seq'), $10, $11, $12, $13)
             on conflict (kind, namespace, name) do nothing
             returning uid",
        )
        .bind(uid)
        .bind(kind.as_str())
        .bind(&namespace)
        .bind(&manifest.name)
        .bind(Json(&manifest.labels))
        .bind(Json(&manifest.annotations))
        .bind(&manifest.finalizers)
        .bind(Json(&owner_references))
        .bind(Json(manifest.spec.to_value()))
        .bind(&platform)
        .bind(&cluster_name)
        .bind(status)
        .bind(Json(manifest.managed_fields.clone().unwrap_or_default()))
        .fetch_optional(&mut *connection)
        .await?;
        if inserted.is_none() {
            return Err(StoreError::AlreadyExists { kind, name: manifest.name.clone() });
        }
        if kind.reconciled() {
            self.record_event(&mut *connection, uid, EventKind::Created).await?;
            self.schedule(&mut *connection, uid, true).await?;
        }
        if let Spec::Controller(spec) = &manifest.spec {
            sync_registration(&mut *connection, Some(&Registration::from_spec(&manifest.name, spec)), &manifest.name)
                .await?;
        }
        Ok(uid)
    }

    /// Writes `desired` over `current`; bumps generation on a spec change and resourceVersion on any change.
    async fn apply(
        &self,
        connection: &mut PgConnection,
        current: &StoredObject,
        desired: &Manifest,
        heartbeat: bool,
    ) -> Result<Change> {
        let kind = current.kind;
        if desired.resource_version.is_some_and(|version| version != current.resource_version) {
            return Err(StoreError::stale(kind, &current.name));
        }
        let mut errors = Vec::new();
        if desired.name != current.name {
            errors.push(FieldError::immutable("metadata.name", &desired.name));
        }
        if kind.namespaced() && desired.namespace.as_deref() != Some(current.namespace.as_str()) {
            errors.push(FieldError::immutable("metadata.namespace", desired.namespace.as_deref().unwrap_or_default()));
        }
        match &desired.spec {
            Spec::Cluster(spec) if spec.platform.type_ != current.platform => {
                errors.push(FieldError::immutable("spec.platform.type", &spec.platform.type_));
            }
            Spec::Service(spec) if Some(&spec.cluster_ref.name) != current.cluster_name.as_ref() => {
                errors.push(FieldError::immutable("spec.clusterRef.name", &spec.cluster_ref.name));
            }
            _ => {}
        }
        if current.deleting() {
            for (index, finalizer) in desired.finalizers.iter().enumerate() {
                if !current.finalizers.contains(finalizer) {
                    errors.push(FieldError::forbidden(
                        format!("metadata.finalizers[{index}]"),
                        format!("no new finalizers can be added if the object is being deleted, found new finalizer {finalizer:?}"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid { kind, name: current.name.clone(), errors });
        }

        // the server's owner reference to the Cluster stays whatever the client sends
        let mut owner_references = desired.owner_references.clone();
        if kind == Kind::Service {
            for reference in &current.owner_references {
                if reference.get("kind") == Some(&json!("Cluster")) && !owner_references.contains(reference) {
                    owner_references.retain(|other| other.get("uid") != reference.get("uid"));
                    owner_references.push(reference.clone());
                }
            }
        }
        let spec = desired.spec.to_value();
        let spec_changed = spec != current.spec;
        let managed_fields = desired.managed_fields.as_ref().unwrap_or(&current.managed_fields);
        let metadata_changed = desired.labels != current.labels
            || desired.annotations != current.annotations
            || desired.finalizers != current.finalizers
            || owner_references != current.owner_references
            || *managed_fields != current.managed_fields;
        if !spec_changed && !metadata_changed && !heartbeat {
            return Ok(Change::Unchanged);
        }
        let status = if heartbeat { Some(Json(heartbeat_status())) } else { None };
        sqlx::query(
            "update objects set labels = $2, annotations = $3, finalizers = $4, owner_references = $5, spec = $6,
                 generation = generation + $7, status_seq = status_seq + $7,
                 resource_version = nextval('resource_version_seq'),
                 status = coalesce($8, status), managed_fields = $9, updated_at = now()
             where uid = $1",
        )
        .bind(current.uid)
        .bind(Json(&desired.labels))
        .bind(Json(&desired.annotations))
        .bind(&desired.finalizers)
        .bind(Json(&owner_references))
        .bind(Json(&spec))
        .bind(i64::from(spec_changed))
        .bind(status)
        .bind(Json(managed_fields))
        .execute(&mut *connection)
        .await?;
        if spec_changed && kind.reconciled() {
            self.record_event(&mut *connection, current.uid, EventKind::Updated).await?;
            self.schedule(&mut *connection, current.uid, true).await?;
        }
        if let (true, Spec::Controller(spec)) = (spec_changed, &desired.spec) {
            sync_registration(&mut *connection, Some(&Registration::from_spec(&current.name, spec)), &current.name)
                .await?;
        }
        Ok(Change::Updated)
    }

    /// Sets `deletionTimestamp` and bumps generation, unless already deleting; answers whether it did. The caller
    /// logs the change (see [`Store::delete`]).
    async fn mark_deleting(&self, connection: &mut PgConnection, uid: Uuid) -> Result<bool> {
        let marked = sqlx::query(
            "update objects set deletion_timestamp = now(), generation = generation + 1, status_seq = status_seq + 1,
                 resource_version = nextval('resource_version_seq'), updated_at = now()
             where uid = $1 and deletion_timestamp is null",
        )
        .bind(uid)
        .execute(&mut *connection)
        .await?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        let (kind,): (String,) =
            sqlx::query_as("select kind from objects where uid = $1").bind(uid).fetch_one(&mut *connection).await?;
        if Kind::from_kind_name(&kind).is_some_and(Kind::reconciled) {
            self.record_event(&mut *connection, uid, EventKind::Deleting).await?;
            self.schedule(&mut *connection, uid, true).await?;
        }
        Ok(true)
    }

    /// Removes a deleting object once no finalizer (and, for a Cluster, no Service) is left; a removed Service may
    /// in turn let its deleting Cluster go.
    async fn finalize_if_done(
        &self,
        connection: &mut PgConnection,
        uid: Uuid,
        unlogged: &mut HashSet<Uuid>,
    ) -> Result<()> {
        let done: Option<(String, String, Option<String>)> = sqlx::query_as(
            "select o.kind, o.namespace, o.cluster_name from objects o
             where o.uid = $1 and o.deletion_timestamp is not null and o.finalizers = '{}'
               and not (o.kind = 'Cluster' and exists (select 1 from objects s
                        where s.kind = 'Service' and s.namespace = o.namespace and s.cluster_name = o.name))",
        )
        .bind(uid)
        .fetch_optional(&mut *connection)
        .await?;
        let Some((kind, namespace, cluster_name)) = done else {
            return Ok(());
        };
        self.remove(&mut *connection, uid, unlogged).await?;
        if let ("Service", Some(cluster)) = (kind.as_str(), cluster_name) {
            let cluster: Option<(Uuid,)> = sqlx::query_as(
                "select uid from objects where kind = 'Cluster' and namespace = $1 and name = $2
                   and deletion_timestamp is not null for update",
            )
            .bind(&namespace)
            .bind(&cluster)
            .fetch_optional(&mut *connection)
            .await?;
            if let Some((cluster_uid,)) = cluster {
                Box::pin(self.finalize_if_done(connection, cluster_uid, unlogged)).await?;
            }
        }
        Ok(())
    }

    /// Removes the row and writes the `deleted` event. Its tombstone takes a resourceVersion of its own, or the one
    /// the object got in this transaction when that change is in `unlogged`.
    async fn remove(&self, connection: &mut PgConnection, uid: Uuid, unlogged: &mut HashSet<Uuid>) -> Result<()> {
        let reuse_version = unlogged.remove(&uid);
        let mut last = self.render(&mut *connection, uid).await?;
        let removed: Option<(String, String, i64)> = sqlx::query_as(
            "with gone as (delete from objects where uid = $1
                           returning uid, kind, namespace, name, generation, platform, resource_version),
             event as (insert into outbox (event_id, event_type, kind, uid, namespace, name, generation, platform)
                       select $2, lower(gone.kind) || '.deleted', gone.kind, gone.uid, gone.namespace, gone.name,
                              gone.generation, gone.platform
                       from gone where gone.kind <> 'Controller')
             select kind, name,
                    case when $3 then resource_version else nextval('resource_version_seq') end
             from gone",
        )
        .bind(uid)
        .bind(Uuid::new_v4())
        .bind(reuse_version)
        .fetch_optional(&mut *connection)
        .await?;
        let Some((kind, name, tombstone_version)) = removed else {
            return Ok(());
        };
        last.resource_version = tombstone_version;
        record_change(&mut *connection, "DELETED", &last).await?;
        if kind == Kind::Controller.as_str() {
            sync_registration(connection, None, &name).await?;
        }
        Ok(())
    }

    async fn services_of(&self, connection: &mut PgConnection, namespace: &str, cluster: &str) -> Result<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "select uid from objects where kind = 'Service' and namespace = $1 and cluster_name = $2
             order by name for update",
        )
        .bind(namespace)
        .bind(cluster)
        .fetch_all(&mut *connection)
        .await?;
        Ok(rows.into_iter().map(|(uid,)| uid).collect())
    }

    /// Writes an outbox row for the object as it is now in this transaction.
    pub(crate) async fn record_event(&self, connection: &mut PgConnection, uid: Uuid, event: EventKind) -> Result<()> {
        sqlx::query(
            "insert into outbox (event_id, event_type, kind, uid, namespace, name, generation, platform)
             select $2, lower(kind) || '.' || $3, kind, uid, namespace, name, generation, platform
             from objects where uid = $1",
        )
        .bind(uid)
        .bind(Uuid::new_v4())
        .bind(event.as_str())
        .execute(connection)
        .await?;
        Ok(())
    }

    /// Moves the object to the fast (`attention`) or slow cadence; the next tick moves only when the cadence does.
    pub(crate) async fn schedule(&self, connection: &mut PgConnection, uid: Uuid, attention: bool) -> Result<()> {
        let interval = if attention { self.schedule.attention_interval } else { self.schedule.stable_interval };
        sqlx::query(
            "insert into schedules (uid, next_at, attention) values ($1, now() + make_interval(secs => $2), $3)
             on conflict (uid) do update set
                 next_at = case when schedules.attention = excluded.attention then schedules.next_at
                                else excluded.next_at end,
                 attention = excluded.attention, updated_at = now()",
        )
        .bind(uid)
        .bind(interval_seconds(interval))
        .bind(attention)
        .execute(connection)
        .await?;
        Ok(())
    }
}

/// Writes the watch log row of a change: the object as it is after the change, under its resourceVersion.
pub(crate) async fn record_change(connection: &mut PgConnection, event: &str, object: &StoredObject) -> Result<()> {
    record_change_from(connection, event, object, None).await
}

/// [`record_change`] for a change that moved the labels away from `previous_labels`.
pub(crate) async fn record_change_from(
    connection: &mut PgConnection,
    event: &str,
    object: &StoredObject,
    previous_labels: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    sqlx::query(
        "insert into changes (resource_version, event_type, kind, namespace, uid, object, previous_labels)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(object.resource_version)
    .bind(event)
    .bind(object.kind.as_str())
    .bind(&object.namespace)
    .bind(object.uid)
    .bind(Json(object.to_json()))
    .bind(previous_labels.map(Json))
    .execute(connection)
    .await?;
    Ok(())
}

fn key_name(key: &ObjectKey) -> String {
    key.describe()
}

fn heartbeat_status() -> Value {
    serde_json::to_value(ControllerStatus { last_heartbeat_time: Some(now_seconds()) }).expect("status serializes")
}

/// Writes (or with `None`, deletes) a controller's registration and moves the registry epoch.
async fn sync_registration(
    connection: &mut PgConnection,
    registration: Option<&Registration>,
    name: &str,
) -> Result<()> {
    match registration {
        Some(registration) => {
            sqlx::query(
                "insert into controller_registrations (name, kinds, platforms, required) values ($1, $2, $3, $4)
                 on conflict (name) do update set kinds = excluded.kinds, platforms = excluded.platforms,
                     required = excluded.required, updated_at = now()",
            )
            .bind(&registration.name)
            .bind(&registration.kinds)
            .bind(&registration.platforms)
            .bind(registration.required)
            .execute(&mut *connection)
            .await?;
            // the objects it covers are due now: a new controller learns of them without waiting a stable interval
            sqlx::query(
                "update schedules s set attention = true, next_at = now(), updated_at = now()
                 from objects o
                 where o.uid = s.uid and o.kind = any($1) and (cardinality($2::text[]) = 0 or o.platform = any($2))",
            )
            .bind(&registration.kinds)
            .bind(&registration.platforms)
            .execute(&mut *connection)
            .await?;
        }
        None => {
            sqlx::query("delete from controller_registrations where name = $1")
                .bind(name)
                .execute(&mut *connection)
                .await?;
        }
    }
    sqlx::query("update registry_epoch set epoch = epoch + 1, updated_at = now()").execute(&mut *connection).await?;
    Ok(())
}
