//! The controller registry as aggregation needs it, cached per process and keyed by the registry epoch, which every
//! registration change moves in the same transaction.

use std::sync::{Arc, RwLock};

use cls_core::aggregate::Registration;
use sqlx::PgExecutor;

use super::Result;

#[derive(Clone, Default)]
pub(crate) struct RegistryCache {
    cached: Arc<RwLock<Option<(i64, Arc<Vec<Registration>>)>>>,
}

impl RegistryCache {
    /// The registrations at `epoch` or later, with the epoch they were read at.
    pub(crate) async fn get(&self, executor: impl PgExecutor<'_>, epoch: i64) -> Result<(i64, Arc<Vec<Registration>>)> {
        if let Some((cached_epoch, registrations)) = self.cached.read().expect("registry lock").as_ref()
            && *cached_epoch >= epoch
        {
            return Ok((*cached_epoch, registrations.clone()));
        }
        let rows: Vec<(i64, Option<String>, Option<Vec<String>>, Option<Vec<String>>, Option<bool>)> = sqlx::query_as(
            "select e.epoch, r.name, r.kinds, r.platforms, r.required
             from registry_epoch e left join controller_registrations r on true",
        )
        .fetch_all(executor)
        .await?;
        let loaded_epoch = rows.first().map(|row| row.0).unwrap_or(epoch);
        let registrations: Vec<Registration> = rows
            .into_iter()
            .filter_map(|(_, name, kinds, platforms, required)| {
                Some(Registration { name: name?, kinds: kinds?, platforms: platforms?, required: required? })
            })
            .collect();
        let registrations = Arc::new(registrations);
        let mut cached = self.cached.write().expect("registry lock");
        if cached.as_ref().is_none_or(|(cached_epoch, _)| *cached_epoch < loaded_epoch) {
            *cached = Some((loaded_epoch, registrations.clone()));
        }
        Ok((loaded_epoch, registrations))
    }
}
