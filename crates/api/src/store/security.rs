//! Tokens and the audit log.
//!
//! Tokens are stored as the SHA-256 of their secret: a secret is 256 random bits, so a slow password hash would
//! add nothing; the table alone does not let anyone authenticate. Revoked tokens stay listed with `revokedAt`.
//! Audit records are appended in batches by the API's audit writer (`http::guard::AuditLog`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Result, Store};

/// A stored token, without its secret.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One audit record, as `/api/v1/audit` lists it.
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    #[serde(skip)]
    pub id: i64,
    pub time: DateTime<Utc>,
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<Uuid>,
    pub resource_version_before: Option<i64>,
    pub resource_version_after: Option<i64>,
    pub code: i32,
    pub request_id: String,
}

/// The columns of a [`TokenRecord`].
macro_rules! token_columns {
    () => {
        "id, name, role, namespaces, created_at, revoked_at"
    };
}

impl Store {
    /// Stores a new token under `name`; `None` when the name is taken.
    pub async fn create_token(
        &self,
        name: &str,
        hash: &[u8],
        role: &str,
        namespaces: Option<&[String]>,
    ) -> Result<Option<TokenRecord>> {
        let inserted = sqlx::query_as::<_, TokenRecord>(concat!(
            "insert into tokens (id, name, hash, role, namespaces) values ($1, $2, $3, $4, $5) returning ",
            token_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(hash)
        .bind(role)
        .bind(namespaces)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Err(sqlx::Error::Database(database)) if database.is_unique_violation() => Ok(None),
            other => Ok(Some(other?)),
        }
    }

    /// Creates or replaces the token `name` (the secret, role and namespaces are replaced; it is un-revoked).
    pub async fn put_token(&self, name: &str, hash: &[u8], role: &str, namespaces: Option<&[String]>) -> Result<()> {
        sqlx::query(
            "insert into tokens (id, name, hash, role, namespaces) values ($1, $2, $3, $4, $5)
             on conflict (name) do update set hash = excluded.hash, role = excluded.role,
                 namespaces = excluded.namespaces, revoked_at = null, updated_at = now()",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(hash)
        .bind(role)
        .bind(namespaces)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every token, newest first, revoked ones included.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(sqlx::query_as(concat!("select ", token_columns!(), " from tokens order by created_at desc, name"))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Revokes the token with `id` or `name`; `None` when there is none.
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<Option<TokenRecord>> {
        let id = Uuid::parse_str(id_or_name).ok();
        Ok(sqlx::query_as(concat!(
            "update tokens set revoked_at = coalesce(revoked_at, now()), updated_at = now()
             where id = $1 or name = $2 returning ",
            token_columns!()
        ))
        .bind(id)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The live (not revoked) token whose secret hashes to `hash`.
    pub async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<TokenRecord>> {
        Ok(sqlx::query_as(concat!("select ", token_columns!(), " from tokens where hash = $1 and revoked_at is null"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Appends audit records in one statement. Its commit does not wait for the WAL flush (`synchronous_commit`
    /// off for this statement's transaction): the records follow changes that have committed already, so a crash
    /// can lose them either way, and waiting would double the cost of every write. One statement text for any
    /// number of records (arrays, not a row of parameters per record), run on a kept connection: the writer runs
    /// after every burst of mutating requests, so the pool's two round trips around it would cost more than it.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let column = |value: fn(&AuditRecord) -> String| records.iter().map(value).collect::<Vec<_>>();
        let times: Vec<_> = records.iter().map(|record| record.time).collect();
        let users = column(|record| record.user.clone());
        let verbs = column(|record| record.verb.clone());
        let resources = column(|record| record.resource.clone());
        let namespaces = column(|record| record.namespace.clone());
        let names = column(|record| record.name.clone());
        let uids: Vec<_> = records.iter().map(|record| record.uid).collect();
        let before: Vec<_> = records.iter().map(|record| record.resource_version_before).collect();
        let after: Vec<_> = records.iter().map(|record| record.resource_version_after).collect();
        let codes: Vec<_> = records.iter().map(|record| record.code).collect();
        let request_ids = column(|record| record.request_id.clone());
        let insert = || {
            sqlx::query(
                "with relaxed as (select set_config('synchronous_commit', 'off', true))
                 insert into audit (time, \"user\", verb, resource, namespace, name, uid, resource_version_before,
                                    resource_version_after, code, request_id)
                 select v.* from relaxed, unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                                                 $6::text[], $7::uuid[], $8::int8[], $9::int8[], $10::int4[],
                                                 $11::text[]) as v",
            )
            .bind(&times)
            .bind(&users)
            .bind(&verbs)
            .bind(&resources)
            .bind(&namespaces)
            .bind(&names)
            .bind(&uids)
            .bind(&before)
            .bind(&after)
            .bind(&codes)
            .bind(&request_ids)
        };
        let mut lent = self.audit_connections.take(&self.pool).await?;
        match insert().execute(&mut *lent.connection).await {
            Ok(_) => {}
            // a kept connection that broke while it waited (the server restarted): it never ran the insert
            Err(error) if lent.reused && super::is_connection_error(&error) => {
                drop(lent);
                lent = self.audit_connections.take_fresh(&self.pool).await?;
                insert().execute(&mut *lent.connection).await?;
            }
            Err(error) => return Err(error.into()),
        }
        self.audit_connections.give_back(lent);
        Ok(())
    }

    /// Audit records in the order they were written, `limit` of them after the record `after` (an id from a
    /// previous page's continue token).
    pub async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(
            "select id, time, \"user\", verb, resource, namespace, name, uid, resource_version_before,
                    resource_version_after, code, request_id
             from audit where id > $1 order by id limit $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
