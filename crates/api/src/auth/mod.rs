//! Authentication: who is calling. A request carries a bearer token (one of ours, or an OIDC JWT when OIDC is
//! configured) or, only from a configured gateway address, the gateway's identity headers. The result is an
//! [`Identity`]; what it may do is decided by `cls_core::access`.
//!
//! Bearer tokens are `cls_` and 43 base64url characters (256 random bits); the store keeps their SHA-256 only.
//! Token lookups are cached for [`TOKEN_CACHE_TTL`]: a revoked token stops working at once on the process that
//! revoked it and within that time on the others; a cached identity keeps working while the database is down,
//! an uncached one answers 503 then (never 401: the token may be good).

mod gateway;
mod oidc;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use cls_core::access::{Identity, Role};
use sha2::{Digest, Sha256};

pub use gateway::GatewayConfig;
pub use oidc::{JwksSource, OidcConfig, OidcError};

use crate::store::{Store, StoreError, TokenRecord};

/// How long a token lookup (found or not) is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
const TOKEN_CACHE_MAX: usize = 10_000;
const TOKEN_PREFIX: &str = "cls_";

/// A new random token secret.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A mapping from an OIDC or gateway group to a role: `GROUP=ROLE` or `GROUP=ROLE@NS1,NS2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRole {
    pub group: String,
    pub role: Role,
    pub namespaces: Option<BTreeSet<String>>,
}

impl std::str::FromStr for GroupRole {
    type Err = String;

    fn from_str(text: &str) -> Result<GroupRole, String> {
        let (group, grant) =
            text.split_once('=').ok_or_else(|| format!("expected GROUP=ROLE[@NAMESPACE,...], got {text:?}"))?;
        let (role, namespaces) = match grant.split_once('@') {
            Some((role, namespaces)) => (role, Some(namespaces.split(',').map(str::to_owned).collect())),
            None => (grant, None),
        };
        if group.is_empty() {
            return Err(format!("empty group in {text:?}"));
        }
        Ok(GroupRole { group: group.to_owned(), role: role.parse().map_err(|error| format!("{error}"))?, namespaces })
    }
}

/// The first mapping whose group the caller belongs to; the group `*` matches everyone.
pub fn role_for_groups<'a>(mappings: &'a [GroupRole], groups: &[String]) -> Option<&'a GroupRole> {
    mappings.iter().find(|mapping| mapping.group == "*" || groups.contains(&mapping.group))
}

/// How callers authenticate.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub oidc: Option<OidcConfig>,
    pub gateway: Option<GatewayConfig>,
    /// Group-to-role mappings of OIDC tokens and gateway headers, first match wins.
    pub group_roles: Vec<GroupRole>,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("invalid or revoked token")]
    BadToken,
    #[error("{0}")]
    BadJwt(String),
    #[error("{user} has no role: none of its groups is mapped to one")]
    NoRole { user: String },
    #[error("the credential store is unavailable")]
    Unavailable(#[source] StoreError),
}

type CacheEntry = (Option<Identity>, Instant);

/// Turns request credentials into identities; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    config: Arc<AuthConfig>,
    jwks: Option<Arc<oidc::Verifier>>,
    cache: Arc<Mutex<HashMap<[u8; 32], CacheEntry>>>,
}

fn identity_of(record: &TokenRecord) -> Option<Identity> {
    let role = record.role.parse().ok()?;
    let namespaces = record.namespaces.as_ref().map(|namespaces| namespaces.iter().cloned().collect());
    Some(Identity::new(record.name.clone(), role, namespaces))
}

impl Authenticator {
    pub fn new(store: Store, config: AuthConfig) -> Authenticator {
        let jwks = config.oidc.clone().map(|oidc| Arc::new(oidc::Verifier::new(oidc)));
        Authenticator { store, config: Arc::new(config), jwks, cache: Arc::default() }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Forgets every cached token lookup (after a revocation).
    pub fn forget_tokens(&self) {
        self.cache.lock().expect("token cache").clear();
    }

    /// The caller of a request with these headers from `peer` (`None` when the connection's address is unknown).
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Identity, AuthError> {
        if let Some(gateway) = &self.config.gateway
            && let Some(peer) = peer
            && gateway.trusts(peer)
            && let Some((user, groups)) = gateway::identity_headers(headers)
        {
            return self.grant(user, &groups);
        }
        let Some(token) = bearer(headers) else {
            return Err(AuthError::Missing);
        };
        if !token.starts_with(TOKEN_PREFIX)
            && let Some(verifier) = &self.jwks
        {
            let (user, groups) = verifier.verify(token).await.map_err(|error| AuthError::BadJwt(error.to_string()))?;
            return self.grant(user, &groups);
        }
        self.token(token).await
    }

    fn grant(&self, user: String, groups: &[String]) -> Result<Identity, AuthError> {
        let mapping =
            role_for_groups(&self.config.group_roles, groups).ok_or(AuthError::NoRole { user: user.clone() })?;
        Ok(Identity::new(user, mapping.role.clone(), mapping.namespaces.clone()))
    }

    async fn token(&self, token: &str) -> Result<Identity, AuthError> {
        let hash = hash_token(token);
        if let Some((identity, at)) = self.cache.lock().expect("token cache").get(&hash).cloned()
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return identity.ok_or(AuthError::BadToken);
        }
        let record = self.store.token_by_hash(&hash).await.map_err(AuthError::Unavailable)?;
        let identity = record.as_ref().and_then(identity_of);
        let mut cache = self.cache.lock().expect("token cache");
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (identity.clone(), Instant::now()));
        identity.ok_or(AuthError::BadToken)
    }
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let one = generate_token();
        let two = generate_token();
        assert_ne!(one, two);
        assert!(one.starts_with("cls_") && one.len() == 4 + 43, "{one}");
        assert_eq!(hash_token(&one), hash_token(&one));
        assert_ne!(hash_token(&one), hash_token(&two));
    }

    #[test]
    fn group_roles_parse_with_and_without_namespaces() {
        let plain: GroupRole = "ops=admin".parse().expect("parses");
        assert_eq!(plain.role, Role::Admin);
        assert_eq!(plain.namespaces, None);
        let limited: GroupRole = "devs=editor@team-a,team-b".parse().expect("parses");
        assert_eq!(limited.namespaces, Some(["team-a".to_owned(), "team-b".to_owned()].into()));
        let controller: GroupRole = "bots=controller:deployer".parse().expect("parses");
        assert_eq!(controller.role, Role::Controller("deployer".into()));
        assert!("nogrant".parse::<GroupRole>().is_err());
        assert!("=admin".parse::<GroupRole>().is_err());
        assert!("x=root".parse::<GroupRole>().is_err());
        let mappings = vec![limited.clone(), plain.clone()];
        assert_eq!(role_for_groups(&mappings, &["ops".into(), "devs".into()]), Some(&limited));
        assert_eq!(role_for_groups(&mappings, &["other".into()]), None);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "bearer  abc ".parse().expect("header"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer ".parse().expect("header"));
        assert_eq!(bearer(&headers), None);
    }
}
