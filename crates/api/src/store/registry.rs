//! The controller registry as aggregation needs it, cached per process and keyed by the registry epoch, which every
//! registration change moves in the same transaction.

use std::sync::{Arc, RwLock};

use cls_core::aggregate::Registration;
use sqlx::PgExecutor;

use super::Result;

/// The registrations as of one epoch.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub epoch: i64,
    pub registrations: Arc<Vec<Registration>>,
}

#[derive(Clone, Default)]
pub(crate) struct RegistryCache {
    cached: Arc<RwLock<Option<Snapshot>>>,
}

#[derive(sqlx::FromRow)]
struct RegistrationRow {
    epoch: i64,
    name: Option<String>,
    kinds: Option<Vec<String>>,
    platforms: Option<Vec<String>>,
    required: Option<bool>,
}

impl RegistryCache {
    /// The registrations at `epoch` or later.
    pub(crate) async fn get(&self, executor: impl PgExecutor<'_>, epoch: i64) -> Result<Snapshot> {
        if let Some(snapshot) = self.cached.read().expect("registry lock").as_ref()
            && snapshot.epoch >= epoch
        {
            return Ok(snapshot.clone());
        }
        let rows: Vec<RegistrationRow> = sqlx::query_as(
            "select e.epoch, r.name, r.kinds, r.platforms, r.required
             from registry_epoch e left join controller_registrations r on true",
        )
        .fetch_all(executor)
        .await?;
        let loaded_epoch = rows.first().map(|row| row.epoch).unwrap_or(epoch);
        let registrations = rows
            .into_iter()
            .filter_map(|row| {
                Some(Registration {
                    name: row.name?,
                    kinds: row.kinds?,
                    platforms: row.platforms?,
                    required: row.required?,
                })
            })
            .collect();
        let snapshot = Snapshot { epoch: loaded_epoch, registrations: Arc::new(registrations) };
        let mut cached = self.cached.write().expect("registry lock");
        if cached.as_ref().is_none_or(|current| current.epoch < loaded_epoch) {
            *cached = Some(snapshot.clone());
        }
        Ok(snapshot)
    }
}
