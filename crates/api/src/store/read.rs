//! Reads: get by uid or name, list with selectors and keyset pagination, and the lazy aggregate behind both.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use cls_core::Kind;
use cls_core::selector::{FieldRequirement, FieldSelector, LabelRequirement, LabelSelector};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::batch::{BatchFuture, Batcher};
use super::bodies::{Bodies, Body, RowVersion};
use super::connections::KeptConnections;
use super::object::{CacheWrite, ObjectJson, ObjectRow, select_json, select_list_json, select_object};
use super::{ObjectKey, Result, Store, StoreError, StoredObject, is_connection_error};

/// Lists hold at most this many items per page.
pub const MAX_LIMIT: i64 = 1000;
/// Page size when the client sends no `limit`.
pub const DEFAULT_LIMIT: i64 = 500;

/// Where the next page starts: after this namespace/name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    #[serde(rename = "ns")]
    pub namespace: String,
    pub name: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("token serializes"))
    }

    pub fn decode(token: &str) -> Result<Self> {
        URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| StoreError::BadRequest(format!("invalid continue token {token:?}")))
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Restricts to one namespace (namespaced kinds).
    pub namespace: Option<String>,
    /// The caller's namespaces, when limited: objects elsewhere are left out.
    pub visible_namespaces: Option<Vec<String>>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Page size; `None` gives the default, values above the maximum are capped.
    pub limit: Option<i64>,
    pub continue_after: Option<ContinueToken>,
    /// Every item, no pages (the initial events of a watch).
    pub all: bool,
    /// The change feed's cursor read before this list: with it, the list's resourceVersion is the highest one whose
    /// changes are all visible to the list, so a watch from it misses nothing. Without it, the sequence's value.
    pub feed_cursor: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ListResult {
    pub items: Vec<StoredObject>,
    /// Set when there are more items.
    pub continue_token: Option<String>,
    pub resource_version: i64,
}

/// A page of a list as JSON items (see [`Store::list_json`]).
#[derive(Clone, Debug)]
pub struct ListJson {
    /// Each item's JSON, as a GET answers it.
    pub items: Vec<Bytes>,
    /// Set when there are more items.
    pub continue_token: Option<String>,
    pub resource_version: i64,
}

/// A row of [`Store::list_json`]'s statement: `body` is null when the item's cached aggregate is stale.
#[derive(sqlx::FromRow)]
struct ListJsonRow {
    list_resource_version: Option<i64>,
    namespace: String,
    name: String,
    body: Option<String>,
}

/// The page size of `query`: its limit (the default without one), at most [`MAX_LIMIT`].
fn page_size(query: &ListQuery) -> i64 {
    query.limit.filter(|limit| *limit > 0).unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
}

/// The statement of a list page of `kind` selecting `columns` (a `select ... from objects o cross join
/// registry_epoch e`), with the list's resourceVersion as `list_resource_version`, one row beyond the page telling
/// whether there are more.
fn list_statement(kind: Kind, query: &ListQuery, columns: &str, limit: i64) -> QueryBuilder<Postgres> {
    let mut builder = QueryBuilder::new("");
    push_list_version(&mut builder, query.feed_cursor);
    builder.push(columns.replacen("select ", "select (select value from list_version) as list_resource_version, ", 1));
    builder.push(" where o.kind = ").push_bind(kind.as_str());
    if let Some(namespace) = &query.namespace {
        builder.push(" and o.namespace = ").push_bind(namespace.clone());
    }
    if let Some(namespaces) = &query.visible_namespaces {
        builder.push(" and o.namespace = any(").push_bind(namespaces.clone()).push(")");
    }
    for requirement in &query.labels.requirements {
        push_label_requirement(&mut builder, requirement);
    }
    for requirement in &query.fields.requirements {
        push_field_requirement(&mut builder, requirement);
    }
    match (&query.continue_after, &query.namespace) {
        (None, _) => {}
        // in one namespace, the name alone: with the namespace's equality taking the index's second column, a row
        // comparison could not position the scan, which then read every entry of the namespace up to the page
        // (a page of 10 deep in 10,000 Clusters cost PostgreSQL ~0.5 ms instead of ~0.05)
        (Some(after), Some(namespace)) => match after.namespace.cmp(namespace) {
            std::cmp::Ordering::Equal => {
                builder.push(" and o.name > ").push_bind(after.name.clone());
            }
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Greater => {
                builder.push(" and false");
            }
        },
        (Some(after), None) => {
            builder.push(" and (o.namespace, o.name) > (").push_bind(after.namespace.clone());
            builder.push(", ").push_bind(after.name.clone()).push(")");
        }
    }
    builder.push(" order by o.namespace, o.name");
    if !query.all {
        builder.push(" limit ").push_bind(limit + 1);
    }
    builder
}

/// Cuts `rows` (read with one row beyond the page) to `limit`; answers the continue token after the last one kept
/// when there are more.
fn cut_page<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> (&String, &String)) -> Option<String> {
    if rows.len() as i64 <= limit {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|row| {
        let (namespace, name) = key(row);
        ContinueToken { namespace: namespace.clone(), name: name.clone() }.encode()
    })
}

/// Field selectors each kind supports, beside `metadata.name` and `metadata.namespace`.
pub fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Cluster => &["metadata.name", "metadata.namespace", "spec.platform.type"],
        Kind::Service => &["metadata.name", "metadata.namespace", "spec.clusterRef.name"],
        Kind::Controller => &["metadata.name"],
    }
}

fn field_column(field: &str) -> &'static str {
    match field {
        "metadata.namespace" => "o.namespace",
        "spec.platform.type" => "o.platform",
        "spec.clusterRef.name" => "o.cluster_name",
        _ => "o.name",
    }
}

pub(crate) fn push_key(builder: &mut QueryBuilder<Postgres>, kind: Kind, key: &ObjectKey) {
    builder.push(" where o.kind = ").push_bind(kind.as_str());
    match key {
        ObjectKey::Uid(uid) => {
            builder.push(" and o.uid = ").push_bind(*uid);
        }
        ObjectKey::Name { namespace, name } => {
            builder.push(" and o.namespace = ").push_bind(namespace.clone());
            builder.push(" and o.name = ").push_bind(name.clone());
        }
    }
}

fn push_label_requirement(builder: &mut QueryBuilder<Postgres>, requirement: &LabelRequirement) {
    match requirement {
        LabelRequirement::Equals { key, value } => {
            builder.push(" and o.labels @> ").push_bind(sqlx::types::Json(json!({ key: value })));
        }
        LabelRequirement::NotEquals { key, value } => {
            builder.push(" and not o.labels @> ").push_bind(sqlx::types::Json(json!({ key: value })));
        }
        LabelRequirement::In { key, values } => {
            builder.push(" and o.labels ->> ").push_bind(key.clone());
            builder.push(" = any(").push_bind(values.clone()).push(")");
        }
        LabelRequirement::NotIn { key, values } => {
            builder.push(" and not coalesce(o.labels ->> ").push_bind(key.clone());
            builder.push(" = any(").push_bind(values.clone()).push("), false)");
        }
        LabelRequirement::Exists { key } => {
            builder.push(" and jsonb_exists(o.labels, ").push_bind(key.clone()).push(")");
        }
        LabelRequirement::DoesNotExist { key } => {
            builder.push(" and not jsonb_exists(o.labels, ").push_bind(key.clone()).push(")");
        }
    }
}

fn push_field_requirement(builder: &mut QueryBuilder<Postgres>, requirement: &FieldRequirement) {
    match requirement {
        FieldRequirement::Equals { field, value } => {
            builder.push(format!(" and {} = ", field_column(field))).push_bind(value.clone());
        }
        FieldRequirement::NotEquals { field, value } => {
            builder.push(format!(" and {} is distinct from ", field_column(field))).push_bind(value.clone());
        }
    }
}

/// A `with list_version as (...)` prefix computing the list's resourceVersion in the list's own snapshot: from the
/// feed's cursor, the end of the unbroken run of logged resourceVersions that follows it (every change up to there is
/// visible here; a later one may still be open, and a watch from here will deliver it).
fn push_list_version(builder: &mut QueryBuilder<Postgres>, feed_cursor: Option<i64>) {
    match feed_cursor {
        Some(cursor) => {
            builder.push("with list_version as (select coalesce(max(resource_version), ").push_bind(cursor);
            builder.push(") as value from (select resource_version, resource_version - row_number() over (order by resource_version) as run from changes where resource_version > ");
            builder.push_bind(cursor).push(" and resource_version <= ").push_bind(cursor.saturating_add(1_000_000));
            builder.push(") runs where run = ").push_bind(cursor).push(") ");
        }
        None => {
            builder.push(
                "with list_version as (select coalesce(pg_sequence_last_value('resource_version_seq'), 0) as value) ",
            );
        }
    }
}

/// The wall clock, truncated to seconds as Kubernetes timestamps are.
pub(crate) fn now_seconds() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now is a valid timestamp")
}

/// What a GET's statement answers for one key.
pub(crate) enum Row {
    /// The object's namespace, name and body (kept or fresh).
    Found {
        namespace: String,
        name: String,
        body: Bytes,
    },
    /// The object's cached aggregate is stale: its body takes the aggregating path.
    Stale {
        namespace: String,
        name: String,
    },
    Missing,
}

/// One GET waiting for a shared statement.
pub(crate) struct GetItem {
    kind: Kind,
    key: ObjectKey,
}

/// What a shared statement answers one GET: its row, or `None` when the statement failed (the GET then runs its
/// own).
pub(crate) type Fetched = Option<Row>;

/// GETs running at once in shared statements; more wait and go together in the next one.
const GET_RUNNERS: usize = 2;
/// GETs in one shared statement at most.
const GET_BATCH: usize = 64;

/// Connections of lists at once.
const LIST_CONNECTIONS: u32 = 8;

/// The connections of GETs' shared statements: a pool of their own, with generic plans. PostgreSQL would otherwise
/// plan a batch anew every time (knowing the length of its arrays, the custom plan always looks cheaper than the
/// generic one), and planning the rendering costs several times its execution.
pub(crate) fn get_pool(pool: &PgPool) -> PgPool {
    generic_plan_pool(pool, GET_RUNNERS as u32)
}

/// The connections of lists: a pool of their own, with generic plans. A page of 10 Clusters cost PostgreSQL ~580 us
/// of CPU, half of it planning the statement anew (its aggregate subquery) for every request: with the custom plan
/// looking cheaper than the generic one, PostgreSQL never switched.
pub(crate) fn list_pool(pool: &PgPool) -> PgPool {
    generic_plan_pool(pool, LIST_CONNECTIONS)
}

/// Up to `limit` connections like `pool`'s, opened on demand, that plan each prepared statement once.
fn generic_plan_pool(pool: &PgPool, limit: u32) -> PgPool {
    let options = pool.connect_options().as_ref().clone().options([("plan_cache_mode", "force_generic_plan")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(limit)
        .min_connections(0)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// The batcher of [`Store::get_json`]: GETs arriving while others are in the database share the next statement,
/// one per kind and key shape (uids, or namespace and name pairs, from `unnest`). Statements run on kept
/// connections of `pool` (see [`get_pool`]); a lone GET runs the one-row query.
pub(crate) fn get_batcher(pool: PgPool, bodies: Bodies) -> Batcher<GetItem, Fetched> {
    let reads = KeptConnections::new(GET_RUNNERS);
    Batcher::new(GET_RUNNERS, GET_BATCH, move |items: Vec<GetItem>| {
        let (pool, reads, bodies) = (pool.clone(), reads.clone(), bodies.clone());
        Box::pin(async move { fetch_json_batch(&pool, &reads, &bodies, items).await }) as BatchFuture<Fetched>
    })
}

async fn fetch_json_batch(
    pool: &PgPool,
    reads: &KeptConnections,
    bodies: &Bodies,
    items: Vec<GetItem>,
) -> Vec<Fetched> {
    let mut outputs: Vec<Fetched> = items.iter().map(|_| None).collect();
    let mut shapes: Vec<(Kind, bool)> = Vec::new();
    for item in &items {
        let shape = (item.kind, matches!(item.key, ObjectKey::Uid(_)));
        if !shapes.contains(&shape) {
            shapes.push(shape);
        }
    }
    for (kind, by_uid) in shapes {
        let (indexes, keys): (Vec<usize>, Vec<ObjectKey>) = items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.kind == kind && matches!(item.key, ObjectKey::Uid(_)) == by_uid)
            .map(|(index, item)| (index, item.key.clone()))
            .unzip();
        let Ok(mut lent) = reads.take(pool).await else { continue };
        let rows = match fetch_json(&mut lent.connection, bodies, kind, &keys).await {
            Ok(rows) => {
                reads.give_back(lent);
                Ok(rows)
            }
            // a kept connection that broke while it waited (the server restarted): once more on a tested one
            Err(error) if lent.reused && is_connection_error(&error) => {
                drop(lent);
                match pool.acquire().await {
                    Ok(mut connection) => fetch_json(&mut connection, bodies, kind, &keys).await,
                    Err(error) => Err(error),
                }
            }
            Err(error) => Err(error),
        };
        let Ok(rows) = rows else { continue };
        for (index, row) in indexes.into_iter().zip(rows) {
            outputs[index] = Some(row);
        }
    }
    outputs
}

/// A row of [`select_json`].
type JsonRow = (i64, String, String, i64, i64, bool, Option<String>);

/// The GET rows of `keys` (all of one shape), in their order. When `bodies` holds a body for every key (the steady
/// state of objects read again and again), one statement checks their versions without rendering, and the keys
/// whose row changed go again in a rendering one; otherwise one rendering statement sends the held versions and
/// renders only the rest. Newly rendered bodies are kept.
async fn fetch_json(
    connection: &mut PgConnection,
    bodies: &Bodies,
    kind: Kind,
    keys: &[ObjectKey],
) -> std::result::Result<Vec<Row>, sqlx::Error> {
    let held: Vec<Option<Body>> = keys.iter().map(|key| bodies.get(kind, key)).collect();
    if !held.iter().all(Option::is_some) {
        return Ok(answer_rows(connection, bodies, kind, keys, held, true).await?.0);
    }
    let (mut answers, changed) = answer_rows(connection, bodies, kind, keys, held, false).await?;
    if !changed.is_empty() {
        let changed_keys: Vec<ObjectKey> = changed.iter().map(|index| keys[*index].clone()).collect();
        let unheld = changed.iter().map(|_| None).collect();
        let (rendered, _) = answer_rows(connection, bodies, kind, &changed_keys, unheld, true).await?;
        for (index, row) in changed.into_iter().zip(rendered) {
            answers[index] = row;
        }
    }
    Ok(answers)
}

/// Runs one GET statement for `keys` holding the bodies `held` (one per key), rendering or not. Answers a row per
/// key, and the positions of the keys whose held body is out of date (only without `render`; their answer is then
/// a placeholder).
async fn answer_rows(
    connection: &mut PgConnection,
    bodies: &Bodies,
    kind: Kind,
    keys: &[ObjectKey],
    mut held: Vec<Option<Body>>,
    render: bool,
) -> std::result::Result<(Vec<Row>, Vec<usize>), sqlx::Error> {
    let transactions: Vec<Option<i64>> =
        held.iter().map(|body| body.as_ref().map(|body| body.version.transaction)).collect();
    let versions: Vec<Option<i64>> =
        held.iter().map(|body| body.as_ref().map(|body| body.version.resource_version)).collect();
    let by_uid = matches!(keys.first(), Some(ObjectKey::Uid(_)));
    let rows: Vec<JsonRow> = if let ([key], [transaction], [version]) = (keys, &transactions[..], &versions[..]) {
        let query = sqlx::query_as(select_json(kind, by_uid, false, render));
        let query = match key {
            ObjectKey::Uid(uid) => query.bind(*uid),
            ObjectKey::Name { namespace, name } => query.bind(namespace.as_str()).bind(name.as_str()),
        };
        query.bind(transaction).bind(version).fetch_all(&mut *connection).await?
    } else {
        let query = sqlx::query_as(select_json(kind, by_uid, true, render));
        let query = if by_uid {
            let uids: Vec<Uuid> =
                keys.iter().filter_map(|key| if let ObjectKey::Uid(uid) = key { Some(*uid) } else { None }).collect();
            query.bind(uids)
        } else {
            let (namespaces, names): (Vec<&str>, Vec<&str>) = keys
                .iter()
                .filter_map(|key| match key {
                    ObjectKey::Name { namespace, name } => Some((namespace.as_str(), name.as_str())),
                    ObjectKey::Uid(_) => None,
                })
                .unzip();
            query.bind(namespaces).bind(names)
        };
        query.bind(transactions).bind(versions).fetch_all(&mut *connection).await?
    };
    let mut answers: Vec<Row> = keys.iter().map(|_| Row::Missing).collect();
    let mut changed = Vec::new();
    for (position, namespace, name, transaction, resource_version, fresh, body) in rows {
        let Some(index) = usize::try_from(position).ok().and_then(|position| position.checked_sub(1)) else {
            continue;
        };
        let Some(answer) = answers.get_mut(index) else { continue };
        let version = RowVersion { transaction, resource_version };
        *answer = match (fresh, body) {
            (false, _) => Row::Stale { namespace, name },
            (true, Some(body)) => {
                let body = Bytes::from(body);
                bodies.keep(kind, keys[index].clone(), Body { version, json: body.clone() });
                Row::Found { namespace, name, body }
            }
            (true, None) => match held[index].take() {
                Some(kept) if kept.version == version => {
                    bodies.reused();
                    Row::Found { namespace, name, body: kept.json }
                }
                // a held body of another version, from a statement that renders nothing: the next one renders it
                _ if !render => {
                    changed.push(index);
                    Row::Missing
                }
                // a rendering statement rendered nothing although this GET holds no body of this version: it
                // cannot happen, and if it did, the aggregating path answers correctly
                _ => Row::Stale { namespace, name },
            },
        };
    }
    Ok((answers, changed))
}

impl Store {
    /// Gets one object, its aggregate up to date.
    pub async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<StoredObject> {
        let mut builder = QueryBuilder::new(select_object(false));
        push_key(&mut builder, kind, key);
        let row: Option<ObjectRow> = builder.build_query_as().fetch_optional(&self.pool).await?;
        let row = row.ok_or_else(|| StoreError::NotFound { kind, name: key.describe() })?;
        Ok(self.resolve(vec![row]).await?.remove(0))
    }

    /// Gets one object as the JSON body of a GET. A row whose cached aggregate is fresh (the common case) is
    /// rendered by PostgreSQL in the same statement that checks freshness, and its text is passed through without
    /// being decoded; when this process holds the body of the row's version, the statement leaves the rendering out
    /// and the held body is answered (see [`super::bodies`]). A stale row takes the path of [`Store::get`], which
    /// recomputes the aggregate and caches it. Concurrent GETs share statements (see [`get_batcher`]).
    pub async fn get_json(&self, kind: Kind, key: &ObjectKey) -> Result<ObjectJson> {
        let row = match self.gets.submit(GetItem { kind, key: key.clone() }).await.flatten() {
            Some(row) => row,
            // the shared statement failed: this GET's own one says why (or succeeds)
            None => {
                let mut connection = self.pool.acquire().await?;
                fetch_json(&mut connection, &self.bodies, kind, std::slice::from_ref(key)).await?.remove(0)
            }
        };
        match row {
            Row::Found { namespace, name, body } => Ok(ObjectJson { kind, namespace, name, body }),
            Row::Stale { namespace, name } => {
                let body = Bytes::from(serde_json::to_vec(&self.get(kind, key).await?).expect("objects serialize"));
                Ok(ObjectJson { kind, namespace, name, body })
            }
            Row::Missing => Err(StoreError::NotFound { kind, name: key.describe() }),
        }
    }

    /// Lists objects in (namespace, name) order, one page at a time.
    pub async fn list(&self, kind: Kind, query: &ListQuery) -> Result<ListResult> {
        let limit = page_size(query);
        let mut rows: Vec<ObjectRow> =
            list_statement(kind, query, select_object(false), limit).build_query_as().fetch_all(&self.lists).await?;
        let first_version = rows.first().map(|row| row.list_resource_version.unwrap_or_default());
        let resource_version = self.list_version(first_version, query).await?;
        let continue_token = cut_page(&mut rows, limit, |row| (&row.namespace, &row.name));
        let items = self.resolve(rows).await?;
        Ok(ListResult { items, continue_token, resource_version })
    }

    /// A page of [`Store::list`] as JSON items: PostgreSQL renders them in the list's statement (as GETs do), and
    /// their text goes out without being decoded. A page holding a stale aggregate is read again by
    /// [`Store::list`], which recomputes and caches it (one statement, so the page stays one snapshot); the next
    /// list of those objects renders them.
    pub async fn list_json(&self, kind: Kind, query: &ListQuery) -> Result<ListJson> {
        let limit = page_size(query);
        let mut rows: Vec<ListJsonRow> =
            list_statement(kind, query, select_list_json(kind), limit).build_query_as().fetch_all(&self.lists).await?;
        if rows.iter().any(|row| row.body.is_none()) {
            let page = self.list(kind, query).await?;
            let items = page.items.iter().map(|item| Bytes::from(serde_json::to_vec(item).expect("objects serialize")));
            return Ok(ListJson {
                items: items.collect(),
                continue_token: page.continue_token,
                resource_version: page.resource_version,
            });
        }
        let first_version = rows.first().map(|row| row.list_resource_version.unwrap_or_default());
        let resource_version = self.list_version(first_version, query).await?;
        let continue_token = cut_page(&mut rows, limit, |row| (&row.namespace, &row.name));
        let items = rows.into_iter().filter_map(|row| row.body.map(Bytes::from)).collect();
        Ok(ListJson { items, continue_token, resource_version })
    }

    /// The resourceVersion of a list: the one its first row carries, or for an empty page its own statement's.
    async fn list_version(&self, first_row: Option<i64>, query: &ListQuery) -> Result<i64> {
        if let Some(version) = first_row {
            return Ok(version);
        }
        let mut builder = QueryBuilder::new("");
        push_list_version(&mut builder, query.feed_cursor);
        builder.push("select value from list_version");
        let (version,): (i64,) = builder.build_query_as().fetch_one(&self.lists).await?;
        Ok(version)
    }

    /// Turns rows into objects, computing stale aggregates and caching them with a compare-and-set on `status_seq`:
    /// when a report lands between the read and the write, the cache stays stale and the next read recomputes.
    pub(crate) async fn resolve(&self, rows: Vec<ObjectRow>) -> Result<Vec<StoredObject>> {
        let Some(epoch) = rows.iter().filter(|row| row.needs_aggregate()).map(|row| row.epoch).max() else {
            return Ok(rows.into_iter().map(ObjectRow::into_cached_object).collect());
        };
        let snapshot = self.registry.get(&self.pool, epoch).await?;
        let (epoch, registrations) = (snapshot.epoch, snapshot.registrations);
        let now = now_seconds();
        let mut writes = Vec::new();
        let objects = rows
            .into_iter()
            .map(|row| {
                if !row.needs_aggregate() {
                    return row.into_cached_object();
                }
                let status = serde_json::to_value(row.aggregate(None, &registrations, now)).expect("status serializes");
                writes.push(CacheWrite { uid: row.uid, status_seq: row.status_seq, epoch, status: status.clone() });
                row.into_object(status)
            })
            .collect();
        self.write_cache(writes).await?;
        Ok(objects)
    }

    async fn write_cache(&self, writes: Vec<CacheWrite>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut uids: Vec<Uuid> = Vec::with_capacity(writes.len());
        let mut sequences = Vec::with_capacity(writes.len());
        let mut epochs = Vec::with_capacity(writes.len());
        let mut statuses = Vec::with_capacity(writes.len());
        for write in writes {
            uids.push(write.uid);
            sequences.push(write.status_seq);
            epochs.push(write.epoch);
            statuses.push(sqlx::types::Json(write.status));
        }
        sqlx::query(
            "update objects o set status = c.status, status_cached_seq = c.seq, status_epoch = c.epoch
             from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::jsonb[]) as c(uid, seq, epoch, status)
             where o.uid = c.uid and o.status_seq = c.seq and (o.status_epoch is null or o.status_epoch <= c.epoch)",
        )
        .bind(uids)
        .bind(sequences)
        .bind(epochs)
        .bind(statuses)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_in_one_namespace_continues_by_name_so_that_the_index_positions_the_scan() {
        let after = |namespace: &str| ContinueToken { namespace: namespace.into(), name: "web-5000".into() };
        let query = |namespace: Option<&str>, after: ContinueToken| ListQuery {
            namespace: namespace.map(str::to_owned),
            continue_after: Some(after),
            ..Default::default()
        };
        let sql = |query: ListQuery| {
            list_statement(Kind::Cluster, &query, select_list_json(Kind::Cluster), 10).into_sql().as_str().to_owned()
        };
        let same = sql(query(Some("default"), after("default")));
        assert!(same.contains("and o.name > $") && !same.contains("(o.namespace, o.name) >"), "{same}");
        let earlier = sql(query(Some("default"), after("apps")));
        assert!(!earlier.contains("o.name >") && !earlier.contains("and false"), "{earlier}");
        assert!(sql(query(Some("default"), after("zoo"))).contains("and false"));
        assert!(sql(query(None, after("default"))).contains("(o.namespace, o.name) > ("));
    }

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let token = ContinueToken { namespace: "default".into(), name: "web".into() };
        assert_eq!(ContinueToken::decode(&token.encode()).unwrap(), token);
        assert!(matches!(ContinueToken::decode("!!!"), Err(StoreError::BadRequest(_))));
        assert!(matches!(ContinueToken::decode("e30"), Err(StoreError::BadRequest(_))));
    }
}
