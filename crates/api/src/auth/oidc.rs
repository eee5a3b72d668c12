//! OIDC/JWT bearer tokens, checked with `jsonwebtoken`: the signature against the issuer's JWKS (from a URL,
//! refetched at most every [`REFRESH`] when a token names an unknown key, or from a file), `iss`, `aud`, `exp` and
//! `nbf`. The user is the `username_claim` (default `email`, falling back to `sub`); its groups, mapped to roles
//! by the group-role list, are the `groups_claim` (a list or one string).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Mutex;

/// The shortest interval between two JWKS fetches.
const REFRESH: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub username_claim: String,
    pub groups_claim: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("invalid JWT: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the JWT names no key the issuer publishes ({0})")]
    UnknownKey(String),
    #[error("cannot load the issuer's keys: {0}")]
    Keys(String),
    #[error("the JWT has no {0} claim")]
    NoUser(String),
}

pub(super) struct Verifier {
    config: OidcConfig,
    keys: Mutex<Option<(JwkSet, Instant)>>,
    http: oidc_http::Client,
}

impl Verifier {
    pub(super) fn new(config: OidcConfig) -> Verifier {
        let http = oidc_http::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Verifier { config, keys: Mutex::new(None), http }
    }

    async fn load(&self) -> Result<JwkSet, OidcError> {
        let text = match &self.config.jwks {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|error| OidcError::Keys(format!("{}: {error}", path.display())))?,
            JwksSource::Url(url) => {
                let response = self.http.get(url).send().await.map_err(|error| OidcError::Keys(error.to_string()))?;
                if !response.status().is_success() {
                    return Err(OidcError::Keys(format!("{url} answered {}", response.status())));
                }
                response.text().await.map_err(|error| OidcError::Keys(error.to_string()))?
            }
        };
        serde_json::from_str(&text).map_err(|error| OidcError::Keys(format!("not a JWKS: {error}")))
    }

    /// The key `kid` names (the only key when the token names none), refetching the set once when it is unknown.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, OidcError> {
        let mut keys = self.keys.lock().await;
        for attempt in 0..2 {
            let stale = keys.as_ref().is_none_or(|(_, at)| attempt == 1 && at.elapsed() >= REFRESH);
            if stale {
                *keys = Some((self.load().await?, Instant::now()));
            }
            let (set, _) = keys.as_ref().expect("loaded");
            let found = match kid {
                Some(kid) => set.find(kid),
                None if set.keys.len() == 1 => set.keys.first(),
                None => None,
            };
            if let Some(jwk) = found {
                return Ok(DecodingKey::from_jwk(jwk)?);
            }
        }
        Err(OidcError::UnknownKey(kid.unwrap_or("no kid").to_owned()))
    }

    /// The user and groups of a valid token.
    pub(super) async fn verify(&self, token: &str) -> Result<(String, Vec<String>), OidcError> {
        let header = jsonwebtoken::decode_header(token)?;
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)?.claims;
        let user = claims[&self.config.username_claim]
            .as_str()
            .or_else(|| claims["sub"].as_str())
            .filter(|user| !user.is_empty())
            .ok_or_else(|| OidcError::NoUser(self.config.username_claim.clone()))?
            .to_owned();
        let groups = match &claims[&self.config.groups_claim] {
            Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Value::String(one) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok((user, groups))
    }
}
