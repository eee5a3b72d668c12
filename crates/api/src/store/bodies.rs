//! The bodies of recent GETs, kept so that PostgreSQL renders an object's JSON once per version of its row, not
//! once per GET.
//!
//! Flow: a GET sends the version of the body it holds for its key (if any) along with its key; the statement
//! still reads the row (a GET always sees the latest committed object), and renders the body only when the row's
//! version differs. The GET then answers the body it holds, or keeps the new one.
//!
//! A row's version is its `xmin` (the transaction that wrote this version of the row: every update writes a new
//! one, whoever makes it, the aggregate cache included) together with its resourceVersion; the rendered body
//! depends on the row's columns only, so equal versions mean equal bodies. Comparing both, a transaction id
//! reused after wraparound cannot pass for the body of another resourceVersion.
//!
//! Guarantees: a body is answered only for the row version it was rendered from; memory is bounded by
//! [`BODIES_BYTES`] (by body size; the least used go first). Caveat: GETs by uid and by name keep separate entries.

use std::sync::Arc;

use bytes::Bytes;
use cls_core::Kind;
use prometheus_client::metrics::counter::Counter;

use super::ObjectKey;

/// Memory the kept bodies may take, and their expected number.
const BODIES_BYTES: u64 = 64 << 20;
const BODIES_ITEMS: usize = 16_384;

/// A version of an object's row: `(xmin, resourceVersion)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowVersion {
    pub transaction: i64,
    pub resource_version: i64,
}

/// A body and the row version it was rendered from.
#[derive(Clone)]
pub(crate) struct Body {
    pub version: RowVersion,
    pub json: Bytes,
}

type Key = (Kind, ObjectKey);

/// A borrowed [`Key`] for lookups, so that a GET's lookup copies no namespace and name. Hashes as the tuple does
/// (its fields in order).
#[derive(Hash)]
struct KeyRef<'a>(Kind, &'a ObjectKey);

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && *self.1 == key.1
    }
}

#[derive(Clone)]
struct BodyWeight;

impl quick_cache::Weighter<Key, Body> for BodyWeight {
    fn weight(&self, key: &Key, body: &Body) -> u64 {
        let key = match &key.1 {
            ObjectKey::Uid(_) => 16,
            ObjectKey::Name { namespace, name } => namespace.len() + name.len(),
        };
        (body.json.len() + key + 64) as u64
    }
}

/// The kept bodies (see the module documentation); cheap to clone, clones share.
#[derive(Clone)]
pub(crate) struct Bodies {
    cache: Arc<quick_cache::sync::Cache<Key, Body, BodyWeight>>,
    reused: Counter,
}

impl Default for Bodies {
    fn default() -> Self {
        Bodies {
            cache: Arc::new(quick_cache::sync::Cache::with_weighter(BODIES_ITEMS, BODIES_BYTES, BodyWeight)),
            reused: Counter::default(),
        }
    }
}

impl Bodies {
    /// The body kept for `key`, if any.
    pub(crate) fn get(&self, kind: Kind, key: &ObjectKey) -> Option<Body> {
        self.cache.get(&KeyRef(kind, key))
    }

    pub(crate) fn keep(&self, kind: Kind, key: ObjectKey, body: Body) {
        self.cache.insert((kind, key), body);
    }

    /// Counts a GET answered with a kept body.
    pub(crate) fn reused(&self) {
        self.reused.inc();
    }

    /// The count of GETs answered with a kept body (shared: a clone counts along).
    pub(crate) fn reused_counter(&self) -> Counter {
        self.reused.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowed lookup key must hash and compare as the kept key does, or every lookup misses.
    #[test]
    fn a_body_kept_under_a_key_is_found_by_that_key_only() {
        let bodies = Bodies::default();
        let body = |json: &'static str| Body {
            version: RowVersion { transaction: 1, resource_version: 2 },
            json: Bytes::from_static(json.as_bytes()),
        };
        let uid = ObjectKey::Uid(uuid::Uuid::new_v4());
        let name = ObjectKey::name("default", "web");
        bodies.keep(Kind::Cluster, uid.clone(), body("by uid"));
        bodies.keep(Kind::Cluster, name.clone(), body("by name"));
        assert_eq!(bodies.get(Kind::Cluster, &uid).map(|body| body.json), Some(Bytes::from_static(b"by uid")));
        assert_eq!(bodies.get(Kind::Cluster, &name).map(|body| body.json), Some(Bytes::from_static(b"by name")));
        assert!(bodies.get(Kind::Service, &name).is_none());
        assert!(bodies.get(Kind::Cluster, &ObjectKey::name("default", "api")).is_none());
    }
}
