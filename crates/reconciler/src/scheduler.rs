//! The two-speed scheduler: claims due `schedules` rows, writes a `<kind>.reconcile` outbox row for each, and
//! reschedules it, all in one transaction.
//!
//! Flow per batch: `select ... where next_at <= now() order by next_at limit N for update of s skip locked` (the
//! database clock, so replicas with skewed clocks agree), compute each reason from the object as it is
//! ([`reconcile_reason`]), insert the events and move `next_at` to `now() + interval` (the attention or the stable
//! interval by the row's `attention` flag, with jitter), commit.
//!
//! Guarantees: any number of replicas; a due tick is fired exactly once, because claiming, emitting and moving the
//! tick commit together. A replica that dies mid-batch rolls back, and another claims the same rows; so does one that
//! stalls mid-batch (SIGSTOP), once PostgreSQL ends its idle transaction (a tenth of the attention interval). The API moves an
//! object between the two speeds on every report and spec change (the `attention` flag and `next_at`); the scheduler
//! only keeps the cadence.

use std::time::Duration;

use cls_core::event::ReconcileReason;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{Metrics, ReasonLabels};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Next reconcile while an object needs attention (not Ready, Degraded, deleting).
    pub attention_interval: Duration,
    /// Next reconcile while it is stable.
    pub stable_interval: Duration,
    /// Intervals are multiplied by a random factor in `1 ± jitter`.
    pub jitter: f64,
    /// Rows claimed per transaction.
    pub batch_size: i64,
    /// Longest sleep while nothing is due.
    pub poll_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            attention_interval: Duration::from_secs(30),
            stable_interval: Duration::from_secs(300),
            jitter: 0.05,
            batch_size: 1000,
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// What the scheduler reads of an object to say why it reconciles it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub generation: i64,
    pub deleting: bool,
    /// The schedule row's cadence flag, which the API keeps current on every report and spec change.
    pub attention: bool,
    /// The cached aggregate, when it is current (the API computes it lazily, on the next read after a change).
    pub cached: Option<CachedStatus>,
    /// The highest generation any controller reported on.
    pub reported_generation: Option<i64>,
    /// Some controller reported `Degraded=True` at the current generation.
    pub degraded_report: bool,
}

/// The parts of a current cached aggregate that the reason depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedStatus {
    /// `status.observedGeneration` (absent until every required controller reported).
    pub observed_generation: Option<i64>,
    pub ready: bool,
    pub degraded: bool,
}

/// Why an object is reconciled now, first match wins: deleting, a generation not yet observed, degraded, not ready,
/// else periodic. From the cached aggregate when it is current; otherwise from the reports and the cadence flag,
/// without aggregating (the flag says whether the object needs attention, the reports say why).
pub fn reconcile_reason(observed: &Observed) -> ReconcileReason {
    if observed.deleting {
        return ReconcileReason::Deleting;
    }
    let (behind, degraded, ready) = match observed.cached {
        Some(cached) => {
            (cached.observed_generation.is_none_or(|seen| seen < observed.generation), cached.degraded, cached.ready)
        }
        None => (
            observed.reported_generation.is_none_or(|seen| seen < observed.generation),
            observed.degraded_report,
            !observed.attention,
        ),
    };
    if behind {
        ReconcileReason::GenerationMismatch
    } else if degraded {
        ReconcileReason::Degraded
    } else if !ready {
        ReconcileReason::NotReady
    } else {
        ReconcileReason::Periodic
    }
}

#[derive(sqlx::FromRow)]
struct DueRow {
    uid: Uuid,
    generation: i64,
    deleting: bool,
    attention: bool,
    cache_current: bool,
    observed_generation: Option<i64>,
    ready: bool,
    degraded: bool,
    reported_generation: Option<i64>,
    degraded_report: bool,
    lag_seconds: f64,
}

const CLAIM_DUE: &str = "select s.uid, o.generation, o.deletion_timestamp is not null as deleting, s.attention,
            coalesce(o.status is not null and o.status_cached_seq = o.status_seq
                     and o.status_epoch = (select epoch from registry_epoch), false) as cache_current,
            (o.status ->> 'observedGeneration')::bigint as observed_generation,
            coalesce(o.status @> '{\"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}]}', false) as ready,
            coalesce(o.status @> '{\"conditions\": [{\"type\": \"Degraded\", \"status\": \"True\"}]}', false)
                as degraded,
            (select max(r.observed_generation) from reports r where r.uid = o.uid) as reported_generation,
            exists (select 1 from reports r where r.uid = o.uid and r.observed_generation = o.generation
                    and r.conditions @> '[{\"type\": \"Degraded\", \"status\": \"True\"}]') as degraded_report,
            extract(epoch from now() - s.next_at)::float8 as lag_seconds
     from schedules s join objects o on o.uid = s.uid
     where s.next_at <= now()
     order by s.next_at
     limit $1
     for update of s skip locked";

const EMIT: &str = "with due (uid, reason) as (select * from unnest($1::uuid[], $2::text[])),
     events as (
         insert into outbox (event_id, event_type, kind, uid, namespace, name, generation, platform, reason)
         select gen_random_uuid(), lower(o.kind) || '.reconcile', o.kind, o.uid, o.namespace, o.name, o.generation,
                o.platform, due.reason
         from due join objects o on o.uid = due.uid)
     update schedules s set
         next_at = now() + make_interval(secs => case when s.attention then $3 else $4 end
                                                 * (1 - $5 + 2 * $5 * random())),
         updated_at = now()
     from due where s.uid = due.uid";

/// The scheduler; run one per replica.
pub struct Scheduler {
    pool: sqlx::PgPool,
    config: SchedulerConfig,
    metrics: Metrics,
}

impl Scheduler {
    pub fn new(pool: sqlx::PgPool, config: SchedulerConfig, metrics: Metrics) -> Scheduler {
        Scheduler { pool, config, metrics }
    }

    /// Schedules until `shutdown`; the batch in flight commits first.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            attention_interval = ?self.config.attention_interval,
            stable_interval = ?self.config.stable_interval,
            "scheduler started"
        );
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let wait = match self.tick().await {
                Ok(claimed) if claimed >= self.config.batch_size as usize => continue,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.config.poll_interval
                }
                Err(error) => {
                    tracing::warn!(error = %error, "scheduler batch failed; backing off");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// How long a claim may sit idle inside its transaction: a tenth of the attention interval, between 100 ms and
    /// 5 s, so that a stalled replica delays a tick by a fraction of an interval.
    fn claim_idle_timeout(&self) -> Duration {
        (self.config.attention_interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Claims one batch of due rows, emits their reconcile events and reschedules them. Answers how many.
    pub async fn tick(&self) -> Result<usize, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        // A replica that stalls holding its claim (a SIGSTOP, a frozen VM) must not hold those ticks back for as long
        // as it stalls: PostgreSQL ends its session after this idle time, the claim rolls back and another replica
        // takes the rows. Between its statements a healthy tick is idle for microseconds.
        sqlx::query("select set_config('idle_in_transaction_session_timeout', $1, true)")
            .bind(self.claim_idle_timeout().as_millis().to_string())
            .execute(&mut *transaction)
            .await?;
        let due: Vec<DueRow> =
            sqlx::query_as(CLAIM_DUE).bind(self.config.batch_size).fetch_all(&mut *transaction).await?;
        if due.is_empty() {
            transaction.commit().await?;
            return Ok(0);
        }
        let mut uids = Vec::with_capacity(due.len());
        let mut reasons = Vec::with_capacity(due.len());
        for row in &due {
            let observed = Observed {
                generation: row.generation,
                deleting: row.deleting,
                attention: row.attention,
                cached: row.cache_current.then_some(CachedStatus {
                    observed_generation: row.observed_generation,
                    ready: row.ready,
                    degraded: row.degraded,
                }),
                reported_generation: row.reported_generation,
                degraded_report: row.degraded_report,
            };
            uids.push(row.uid);
            reasons.push(reconcile_reason(&observed).to_string());
        }
        sqlx::query(EMIT)
            .bind(&uids)
            .bind(&reasons)
            .bind(self.config.attention_interval.as_secs_f64())
            .bind(self.config.stable_interval.as_secs_f64())
            .bind(self.config.jitter)
            .execute(&mut *transaction)
            .await?;
        // one wake-up for the relays per batch (a NOTIFY per write would serialize commits)
        sqlx::query("select pg_notify($1, '')").bind(crate::relay::CHANNEL).execute(&mut *transaction).await?;
        transaction.commit().await?;
        for (row, reason) in due.iter().zip(&reasons) {
            self.metrics.claimed_tick_lag_seconds.observe(row.lag_seconds.max(0.0));
            self.metrics.reconcile_events.get_or_create(&ReasonLabels { reason: reason.clone() }).inc();
        }
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_ready_at(generation: i64) -> Observed {
        let cached = CachedStatus { observed_generation: Some(generation), ready: true, degraded: false };
        Observed { generation, cached: Some(cached), reported_generation: Some(generation), ..Observed::default() }
    }

    fn with_cache(observed: Observed, change: impl FnOnce(&mut CachedStatus)) -> Observed {
        let mut cached = observed.cached.expect("cached");
        change(&mut cached);
        Observed { cached: Some(cached), ..observed }
    }

    #[test]
    fn a_ready_object_at_its_generation_is_reconciled_periodically() {
        assert_eq!(reconcile_reason(&cached_ready_at(3)), ReconcileReason::Periodic);
    }

    #[test]
    fn deleting_wins_over_every_other_reason() {
        let observed = with_cache(Observed { deleting: true, ..cached_ready_at(2) }, |cached| {
            cached.degraded = true;
            cached.ready = false;
        });
        assert_eq!(reconcile_reason(&observed), ReconcileReason::Deleting);
    }

    #[test]
    fn an_unobserved_generation_is_a_generation_mismatch() {
        let behind = with_cache(cached_ready_at(2), |cached| cached.observed_generation = Some(1));
        assert_eq!(reconcile_reason(&behind), ReconcileReason::GenerationMismatch);
        let never = with_cache(cached_ready_at(1), |cached| cached.observed_generation = None);
        assert_eq!(reconcile_reason(&never), ReconcileReason::GenerationMismatch);
    }

    #[test]
    fn degraded_comes_before_not_ready() {
        let degraded = with_cache(cached_ready_at(1), |cached| {
            cached.degraded = true;
            cached.ready = false;
        });
        assert_eq!(reconcile_reason(&degraded), ReconcileReason::Degraded);
        let not_ready = with_cache(cached_ready_at(1), |cached| cached.ready = false);
        assert_eq!(reconcile_reason(&not_ready), ReconcileReason::NotReady);
    }

    #[test]
    fn without_a_current_cache_the_reports_and_the_cadence_flag_decide() {
        let stale = Observed { cached: None, ..cached_ready_at(2) };
        assert_eq!(reconcile_reason(&stale), ReconcileReason::Periodic);
        assert_eq!(reconcile_reason(&Observed { attention: true, ..stale }), ReconcileReason::NotReady);
        assert_eq!(
            reconcile_reason(&Observed { attention: true, degraded_report: true, ..stale }),
            ReconcileReason::Degraded
        );
        assert_eq!(
            reconcile_reason(&Observed { reported_generation: Some(1), ..stale }),
            ReconcileReason::GenerationMismatch
        );
        assert_eq!(
            reconcile_reason(&Observed { reported_generation: None, ..stale }),
            ReconcileReason::GenerationMismatch
        );
    }
}
