//! Controller reports: the hot write path.
//!
//! One read (the object and its reports), checks and the in-memory aggregate (for the schedule's cadence and the
//! response), then one statement that stores the report, bumps `resourceVersion` and `status_seq` (which marks the
//! cached aggregate stale), writes the `<kind>.status` event and moves the schedule, guarded by the `status_seq`
//! that was read. When another writer moved `status_seq` in between, the statement changes nothing and the report
//! is re-checked against the fresh state. No explicit transaction: the statement is atomic on its own. Both
//! statements run on kept connections (see `connections.rs`), without the pool's round trips around each.

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
        let key = ObjectKey::Uid(uid);
        for _ in 0..MAX_ATTEMPTS {
            let read = || {
                let mut builder = QueryBuilder::new(select_object(true));
                push_key(&mut builder, kind, &key);
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
            let row = row
                .filter(|row| visible(&row.namespace))
                .ok_or_else(|| StoreError::NotFound { kind, name: uid.to_string() })?;
            let before = row.resource_version;
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
            let previous = reports.iter().position(|stored| stored.controller == report.controller);
            let now = now_seconds();
            let mut incoming = report.clone();
            incoming.last_report_time = Some(now);
            if let Some(index) = previous {
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
                    return Ok((self.resolve(vec![row]).await?.remove(0), before));
                }
                reports[index] = incoming.clone();
            } else {
                carry_transition_times(&[], &mut incoming.conditions, now);
                reports.push(incoming.clone());
            }

            let registrations = self.registry.get(&self.pool, row.epoch).await?.registrations;
            let status = row.aggregate(Some(&reports), &registrations, now);
            let attention = needs_attention(&status, row.deletion_timestamp.is_some());
            let ready_generation = status.last_ready_generation.filter(|generation| *generation == row.generation);
            let interval = if attention { self.schedule.attention_interval } else { self.schedule.stable_interval };
            let status_seq = row.status_seq;
            let mut object = row.into_object(serde_json::to_value(&status).expect("status serializes"));
            if self.dry_run {
                return Ok((object, before));
            }
            let mut lent = self.reports.take(&self.pool).await?;
            let written = sqlx::query_as::<_, (i64, i64)>(
                "with obj as (
                     update objects set resource_version = nextval('resource_version_seq'),
                         status_seq = status_seq + 1, last_ready_generation = greatest(last_ready_generation, $11),
                         updated_at = now()
                     where uid = $1 and status_seq = $2
                     returning uid, kind, namespace, name, generation, platform, resource_version, status_seq),
                 stored as (
                     insert into reports (uid, controller, observed_generation, conditions, data, reported_at)
                     select obj.uid, $3, $4, $5, $6, now() from obj
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
                            jsonb_set($10, '{metadata,resourceVersion}', to_jsonb(obj.resource_version::text))
                     from obj)
                 select resource_version, status_seq from obj",
            )
            .bind(uid)
            .bind(status_seq)
            .bind(&incoming.controller)
            .bind(incoming.observed_generation)
            .bind(Json(&incoming.conditions))
            .bind(incoming.data.as_ref().map(Json))
            .bind(Uuid::new_v4())
            .bind(attention)
            .bind(interval_seconds(interval))
            .bind(Json(object.to_json()))
            .bind(ready_generation)
            .fetch_optional(&mut *lent.connection)
            .await;
            let written = match written {
                Ok(written) => {
                    self.reports.give_back(lent);
                    Ok(written)
                }
                // a kept connection that broke while it waited: the write did not happen or, if it did, the next
                // attempt finds `status_seq` moved and the report unchanged
                Err(error) if lent.reused && super::is_connection_error(&error) => continue,
                Err(error) => Err(error),
            };
            let written = match written {
                Err(error) if super::is_watch_log_race(&error) => continue,
                other => other?,
            };
            let Some((resource_version, _)) = written else {
                continue;
            };
            self.committed();
            object.resource_version = resource_version;
            return Ok((object, before));
        }
        Err(StoreError::Conflict {
            kind,
            name: uid.to_string(),
            reason: "the object kept changing; retry the report".into(),
        })
    }
}
