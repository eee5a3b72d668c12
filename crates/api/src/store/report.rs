//! Controller reports: the hot write path.
//!
//! One read (the object and its reports), checks and the in-memory aggregate (for the schedule's cadence and the
//! response), then one statement that stores the report, bumps `resourceVersion` and `status_seq` (which marks the
//! cached aggregate stale), writes the `<kind>.status` event and moves the schedule. No explicit transaction: the
//! statement is atomic on its own. Both statements run on kept connections (see `connections.rs`), without the
//! pool's round trips around each.
//!
//! Guarantees: the statement is guarded by the `resourceVersion` that was read (every change of the object moves
//! it) and by the registry epoch the aggregate was computed with; when either moved in between, it changes nothing
//! and the report is checked again against a fresh read. So the stored report, the event and the watch log's copy
//! of the object all follow from the object exactly as it was when the report took effect.
//!
//! Skipping the read: after a report, the object as that report left it is kept in [`Reported`] (bounded by size).
//! The next report on the object in this process starts from it instead of reading. The guard makes that safe
//! whatever happened meanwhile (another process wrote, the registry changed): a stale copy makes the statement
//! change nothing, and the report continues with a read. Only a report that writes is decided from a kept copy;
//! anything else (404, 409, 422, a no-op) is decided from a fresh read. The copy's cached aggregate, the previous
//! status the aggregate keeps `lastTransitionTime` from, can be older than the one a GET cached meanwhile; both are
//! lazily computed views of the same reports (a report never writes the cached aggregate).

use cls_core::Kind;
use cls_core::aggregate::needs_attention;
use cls_core::condition::{carry_transition_times, same_conditions_ignoring_time};
use cls_core::resources::ControllerReport;
use cls_core::validation::{FieldError, validate_report};
use sqlx::QueryBuilder;
use sqlx::types::Json;
use uuid::Uuid;

use super::object::{ObjectRow, select_object};
use super::read::{now_seconds, push_key};
use super::{ObjectKey, Result, Store, StoreError, StoredObject, interval_seconds};

/// How often a report is re-checked when other writers keep moving the object.
const MAX_ATTEMPTS: usize = 16;
/// Memory the kept copies may take (by the size of their JSON), and their expected number.
const REPORTED_BYTES: u64 = 64 << 20;
const REPORTED_ITEMS: usize = 16_384;

/// The objects as this process's last report on each left them (see the module documentation).
#[derive(Clone)]
pub(crate) struct Reported(std::sync::Arc<quick_cache::sync::Cache<Uuid, Kept, KeptWeight>>);

#[derive(Clone)]
pub(crate) struct Kept {
    row: ObjectRow,
    /// The size of the object's JSON, roughly what the copy takes in memory.
    bytes: u64,
}

#[derive(Clone)]
pub(crate) struct KeptWeight;

impl quick_cache::Weighter<Uuid, Kept> for KeptWeight {
    fn weight(&self, _uid: &Uuid, kept: &Kept) -> u64 {
        kept.bytes.max(1)
    }
}

impl Default for Reported {
    fn default() -> Self {
        Reported(std::sync::Arc::new(quick_cache::sync::Cache::with_weighter(
            REPORTED_ITEMS,
            REPORTED_BYTES,
            KeptWeight,
        )))
    }
}

impl Reported {
    /// Takes the copy out: two reports at once on one object do not both start from it.
    fn take(&self, uid: Uuid) -> Option<ObjectRow> {
        self.0.remove(&uid).map(|(_, kept)| kept.row)
    }

    fn keep(&self, row: ObjectRow, bytes: usize) {
        self.0.insert(row.uid, Kept { row, bytes: bytes as u64 });
    }
}

/// What a report does to the object as read.
enum Decision {
    /// Store `report` (conditions carried over, report time set); `reports` is the object's set with it.
    Write { report: ControllerReport, reports: Vec<ControllerReport> },
    /// The report changes nothing.
    Unchanged,
}

impl Store {
    /// Stores a controller's report on object `uid` of `kind` and answers the object with the new aggregate.
    /// A report that changes nothing (same generation, conditions ignoring timestamps, and data) is a no-op.
    pub async fn report(&self, kind: Kind, uid: Uuid, report: ControllerReport) -> Result<StoredObject> {
        Ok(self.report_visible(kind, uid, report, |_| true).await?.0)
    }

    /// [`Store::report`] on behalf of a caller that sees only the namespaces `visible` accepts (others answer
    /// 404 and store nothing); also answers the object's resourceVersion before the report.
    pub async fn report_visible(
        &self,
        kind: Kind,
        uid: Uuid,
        report: ControllerReport,
        visible: impl Fn(&str) -> bool,
    ) -> Result<(StoredObject, i64)> {
        let errors = validate_report(&report);
        if !errors.is_empty() {
            return Err(StoreError::Invalid { kind, name: uid.to_string(), errors });
        }
        let mut kept = if self.dry_run { None } else { self.reported.take(uid) };
        for _ in 0..MAX_ATTEMPTS {
            let from_copy = kept.is_some();
            let row = match kept.take() {
                Some(row) if row.kind == kind.as_str() => row,
                _ => self.read_for_report(kind, uid).await?,
            };
            let now = now_seconds();
            let decision = if visible(&row.namespace) {
                decide(kind, &row, &report, now)
            } else {
                Err(StoreError::NotFound { kind, name: uid.to_string() })
            };
            let before = row.resource_version;
            let (incoming, reports) = match decision {
                Ok(Decision::Write { report, reports }) => (report, reports),
                // decided from a fresh read only
                _ if from_copy => continue,
                Ok(Decision::Unchanged) => return Ok((self.resolve(vec![row]).await?.remove(0), before)),
                Err(error) => return Err(error),
            };

            let snapshot = self.registry.get(&self.pool, row.epoch).await?;
            let status = row.aggregate(Some(&reports), &snapshot.registrations, now);
            let attention = needs_attention(&status, row.deletion_timestamp.is_some());
            let ready_generation = status.last_ready_generation.filter(|generation| *generation == row.generation);
            let interval = if attention { self.schedule.attention_interval } else { self.schedule.stable_interval };
            let mut next = row.clone();
            let mut object = row.into_object(serde_json::to_value(&status).expect("status serializes"));
            if self.dry_run {
                return Ok((object, before));
            }
            let object_json = serde_json::to_string(&object).expect("objects serialize");
            let mut lent = self.reports.take(&self.pool).await?;
            let written = sqlx::query_as::<_, (i64,)>(
                "with obj as (
                     update objects set resource_version = nextval('resource_version_seq'),
                         status_seq = status_seq + 1, last_ready_generation = greatest(last_ready_generation, $11),
                         updated_at = now()
                     where uid = $1 and resource_version = $2
                       and (select epoch from registry_epoch) = $12
                     returning uid, kind, namespace, name, generation, platform, resource_version),
                 stored as (
                     insert into reports (uid, controller, observed_generation, conditions, data, reported_at)
                     select obj.uid, $3, $4, $5, $6, $13 from obj
                     on conflict (uid, controller) do update set observed_generation = excluded.observed_generation,
                         conditions = excluded.conditions, data = excluded.data, reported_at = excluded.reported_at,
                         updated_at = now()),
                 event as (
                     insert into outbox (event_id, event_type, kind, uid, namespace, name, generation, platform)
                     select $7, lower(obj.kind) || '.status', obj.kind, obj.uid, obj.namespace, obj.name,
                            obj.generation, obj.platform
                     from obj),
                 moved as (
                     update schedules s set attention = $8,
                         next_at = case when s.attention = $8 then s.next_at
                                        else now() + make_interval(secs => $9) end,
                         updated_at = now()
                     from obj where s.uid = obj.uid and s.attention <> $8),
                 change as (
                     insert into changes (resource_version, event_type, kind, namespace, uid, object)
                     select obj.resource_version, 'MODIFIED', obj.kind, obj.namespace, obj.uid,
                            jsonb_set($10::jsonb, '{metadata,resourceVersion}', to_jsonb(obj.resource_version::text))
                     from obj)
                 select resource_version from obj",
            )
            .bind(uid)
            .bind(before)
            .bind(&incoming.controller)
            .bind(incoming.observed_generation)
            .bind(Json(&incoming.conditions))
            .bind(incoming.data.as_ref().map(Json))
            .bind(Uuid::new_v4())
            .bind(attention)
            .bind(interval_seconds(interval))
            .bind(&object_json)
            .bind(ready_generation)
            .bind(snapshot.epoch)
            .bind(chrono::DateTime::from_timestamp(now.as_second(), 0))
            .fetch_optional(&mut *lent.connection)
            .await;
            let written = match written {
                Ok(written) => {
                    self.reports.give_back(lent);
                    Ok(written)
                }
                // a kept connection that broke while it waited: the write did not happen or, if it did, the next
                // attempt reads the object moved and the report unchanged
                Err(error) if lent.reused && super::is_connection_error(&error) => continue,
                Err(error) => Err(error),
            };
            let written = match written {
                Err(error) if super::is_watch_log_race(&error) => continue,
                other => other?,
            };
            let Some((resource_version,)) = written else {
                continue;
            };
            self.committed();
            object.resource_version = resource_version;
            next.resource_version = resource_version;
            next.status_seq += 1;
            next.last_ready_generation = next.last_ready_generation.max(ready_generation);
            next.epoch = snapshot.epoch;
            next.reports = Some(Json(reports));
            self.reported.keep(next, object_json.len());
            return Ok((object, before));
        }
        Err(StoreError::Conflict {
            kind,
            name: uid.to_string(),
            reason: "the object kept changing; retry the report".into(),
        })
    }

    /// The object and every report on it, read on a kept connection.
    async fn read_for_report(&self, kind: Kind, uid: Uuid) -> Result<ObjectRow> {
        let read = || {
            let mut builder = QueryBuilder::new(select_object(true));
            push_key(&mut builder, kind, &ObjectKey::Uid(uid));
            builder
        };
        let mut lent = self.reports.take(&self.pool).await?;
        let row: Option<ObjectRow> = match read().build_query_as().fetch_optional(&mut *lent.connection).await {
            Ok(row) => row,
            // a kept connection that broke while it waited (the server restarted): once more on a tested one
            Err(error) if lent.reused && super::is_connection_error(&error) => {
                drop(lent);
                lent = self.reports.take_fresh(&self.pool).await?;
                read().build_query_as().fetch_optional(&mut *lent.connection).await?
            }
            Err(error) => return Err(error.into()),
        };
        self.reports.give_back(lent);
        row.ok_or_else(|| StoreError::NotFound { kind, name: uid.to_string() })
    }
}

/// What `report` does to the object `row` at `now`: the checks of the status contract, then whether it changes
/// anything. The report's time is `now`, stored as its `reported_at`, so that a kept copy and a read agree.
fn decide(kind: Kind, row: &ObjectRow, report: &ControllerReport, now: jiff::Timestamp) -> Result<Decision> {
    if report.observed_generation > row.generation {
        return Err(StoreError::Invalid {
            kind,
            name: row.name.clone(),
            errors: vec![FieldError::invalid(
                "observedGeneration",
                report.observed_generation,
                format!("must not be greater than metadata.generation ({})", row.generation),
            )],
        });
    }
    let mut reports = row.reports.as_ref().map(|reports| reports.0.clone()).unwrap_or_default();
    let mut incoming = report.clone();
    incoming.last_report_time = Some(now);
    match reports.iter().position(|stored| stored.controller == report.controller) {
        Some(index) => {
            let stored = &reports[index];
            if stored.observed_generation > incoming.observed_generation {
                return Err(StoreError::Conflict {
                    kind,
                    name: row.name.clone(),
                    reason: format!(
                        "controller {:?} already reported generation {}, newer than {}",
                        incoming.controller, stored.observed_generation, incoming.observed_generation
                    ),
                });
            }
            carry_transition_times(&stored.conditions, &mut incoming.conditions, now);
            if stored.observed_generation == incoming.observed_generation
                && same_conditions_ignoring_time(&stored.conditions, &incoming.conditions)
                && stored.data == incoming.data
            {
                return Ok(Decision::Unchanged);
            }
            reports[index] = incoming.clone();
        }
        None => {
            carry_transition_times(&[], &mut incoming.conditions, now);
            reports.push(incoming.clone());
            // in the order a read gives them
            reports.sort_by(|left, right| left.controller.cmp(&right.controller));
        }
    }
    Ok(Decision::Write { report: incoming, reports })
}
