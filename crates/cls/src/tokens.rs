//! API tokens: `cls token create|list|revoke`, the security settings of the API roles, and the tokens `cls up`
//! makes for itself at each start (an admin token for the kubeconfig, one per built-in controller).
//!
//! `cls token` talks to PostgreSQL when `DATABASE_URL` is set (how the first admin token of a deployment is made),
//! and otherwise to the API named by the kubeconfig that `cls up` wrote (`CLS_HOME/kubeconfig`), with its token.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cls_api::auth::{AuthConfig, GatewayConfig, GroupRole, OidcConfig, generate_token, hash_token};
use cls_api::http::guard::Limits;
use cls_core::access::Role;
use serde_json::{Value, json};

/// How callers authenticate and how much they may ask, for `cls api` and `cls up`.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// OIDC issuer (`iss`) whose JWTs are accepted as bearer tokens; needs an audience and a JWKS.
    #[arg(long, env = "CLS_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// Audience (`aud`) the JWTs must carry.
    #[arg(long, env = "CLS_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// URL of the issuer's JSON Web Key Set.
    #[arg(long, env = "CLS_OIDC_JWKS_URL", conflicts_with = "oidc_jwks_file")]
    pub oidc_jwks_url: Option<String>,
    /// File holding the issuer's JSON Web Key Set.
    #[arg(long, env = "CLS_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<std::path::PathBuf>,
    /// The claim naming the user (falls back to `sub`).
    #[arg(long, env = "CLS_OIDC_USERNAME_CLAIM", default_value = "email")]
    pub oidc_username_claim: String,
    /// The claim listing the user's groups.
    #[arg(long, env = "CLS_OIDC_GROUPS_CLAIM", default_value = "groups")]
    pub oidc_groups_claim: String,
    /// Trust the identity headers of an authenticating gateway (`X-Remote-User`, `X-Remote-Group`,
    /// `X-User-Email`) on connections from these addresses or networks (comma-separated); from anywhere else they
    /// are ignored.
    #[arg(long, env = "CLS_TRUSTED_GATEWAY", value_delimiter = ',')]
    pub trusted_gateway: Vec<String>,
    /// Roles of OIDC and gateway users by group, `GROUP=ROLE` or `GROUP=ROLE@NS1,NS2` (`*` matches everyone),
    /// first match wins; repeat the flag or separate them with `;`.
    #[arg(long = "group-role", env = "CLS_GROUP_ROLES", value_delimiter = ';')]
    pub group_roles: Vec<GroupRole>,
    /// Requests per second each identity may send (0: unlimited); beyond it, 429 with Retry-After.
    #[arg(long, env = "CLS_RATE_LIMIT", default_value_t = 5_000)]
    pub rate_limit: u32,
    /// Requests an identity may send at once above its rate.
    #[arg(long, env = "CLS_RATE_BURST", default_value_t = 10_000)]
    pub rate_burst: u32,
    /// PEM certificate chain to serve HTTPS with (beside plain HTTP on the same port); `cls up` makes its own.
    #[arg(long, env = "CLS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "CLS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Longest a request (not a watch) may take before it answers 504.
    #[arg(long, env = "CLS_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl SecurityArgs {
    pub fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let oidc = match (&self.oidc_issuer, &self.oidc_audience) {
            (Some(issuer), Some(audience)) => {
                let jwks = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
                    (Some(url), _) => cls_api::auth::JwksSource::Url(url.clone()),
                    (None, Some(file)) => cls_api::auth::JwksSource::File(file.clone()),
                    (None, None) => bail!("--oidc-issuer needs --oidc-jwks-url or --oidc-jwks-file"),
                };
                Some(OidcConfig {
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                    jwks,
                    username_claim: self.oidc_username_claim.clone(),
                    groups_claim: self.oidc_groups_claim.clone(),
                })
            }
            _ => None,
        };
        let gateway = if self.trusted_gateway.is_empty() {
            None
        } else {
            Some(
                GatewayConfig::parse(&self.trusted_gateway)
                    .map_err(|error| anyhow::anyhow!("--trusted-gateway: {error}"))?,
            )
        };
        if (oidc.is_some() || gateway.is_some()) && self.group_roles.is_empty() {
            tracing::warn!("OIDC or gateway users get no role without --group-role: they will be refused");
        }
        Ok(AuthConfig { oidc, gateway, group_roles: self.group_roles.clone() })
    }

    /// The TLS configuration of `--tls-cert-file` and `--tls-key-file`, when given.
    pub fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<cls_api::http::tls::ServerConfig>>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(cls_api::http::tls::server_config_from_files(cert, key)?)),
            _ => Ok(None),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            rate: NonZeroU32::new(self.rate_limit),
            burst: NonZeroU32::new(self.rate_burst.max(1)).expect("non-zero"),
            timeout: self.request_timeout,
        }
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// PostgreSQL to use directly; when unset, the API of the kubeconfig that `cls up` wrote.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Where `cls up` keeps its kubeconfig (default: ~/.cls).
    #[arg(long, env = "CLS_HOME", global = true)]
    pub home: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it (alone) on stdout; it is not shown again.
    Create {
        /// admin, editor, viewer or controller:NAME.
        #[arg(long)]
        role: Role,
        /// Limit the token to these namespaces (repeat or comma-separate); default: all.
        #[arg(long = "namespace", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// The token's name, shown in audit records (default: ROLE-RANDOM).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name or id.
    Revoke { id: String },
}

/// Tokens `cls up` makes at each start; older ones of the same names are replaced.
pub struct UpTokens {
    pub admin: String,
    pub local_process: String,
    pub port_allocator: String,
}

impl UpTokens {
    pub fn generate() -> UpTokens {
        UpTokens { admin: generate_token(), local_process: generate_token(), port_allocator: generate_token() }
    }

    /// (name, role, secret) of each, for the store.
    pub fn entries(&self) -> Vec<(String, String, String)> {
        vec![
            ("cls-up-admin".into(), "admin".into(), self.admin.clone()),
            (
                "cls-up-local-process".into(),
                format!("controller:{}", cls_controllers::local_process::NAME),
                self.local_process.clone(),
            ),
            (
                "cls-up-port-allocator".into(),
                format!("controller:{}", cls_controllers::port_allocator::NAME),
                self.port_allocator.clone(),
            ),
        ]
    }
}

/// Stores `(name, role, secret)` tokens, replacing tokens of the same names.
pub async fn put_tokens(store: &cls_api::Store, tokens: &[(String, String, String)]) -> anyhow::Result<()> {
    for (name, role, secret) in tokens {
        store
            .put_token(name, &hash_token(secret), role, None)
            .await
            .with_context(|| format!("cannot store token {name}"))?;
    }
    Ok(())
}

fn random_suffix() -> String {
    generate_token().chars().skip(4).filter(char::is_ascii_alphanumeric).take(6).collect::<String>().to_lowercase()
}

fn default_name(role: &Role) -> String {
    let role = role.to_string().replace(':', "-");
    format!("{role}-{}", random_suffix())
}

/// `cls token ...`
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match &args.database_url {
        Some(url) => run_on_database(url, args.action).await,
        None => {
            let home = match &args.home {
                Some(home) => home.clone(),
                None => crate::default_home()?,
            };
            run_on_api(&home, args.action).await
        }
    }
}

async fn run_on_database(url: &str, action: TokenAction) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(cls_api::store::connect_options(url).context("invalid DATABASE_URL")?)
        .await
        .context("cannot connect")?;
    cls_api::store::migrate(&pool).await?;
    let store = cls_api::Store::new(pool, cls_api::ScheduleConfig::default());
    match action {
        TokenAction::Create { role, namespaces, name } => {
            let name = name.unwrap_or_else(|| default_name(&role));
            let secret = generate_token();
            let namespaces = (!namespaces.is_empty()).then_some(namespaces);
            let created =
                store.create_token(&name, &hash_token(&secret), &role.to_string(), namespaces.as_deref()).await?;
            if created.is_none() {
                bail!("a token named {name:?} exists already");
            }
            println!("{secret}");
        }
        TokenAction::List => print_tokens(&serde_json::to_value(store.list_tokens().await?)?),
        TokenAction::Revoke { id } => match store.revoke_token(&id).await? {
            Some(record) => eprintln!("revoked {} ({})", record.name, record.id),
            None => bail!("no token {id:?}"),
        },
    }
    Ok(())
}

/// Server, token and certificate authority (PEM) of the kubeconfig `cls up` wrote.
fn kubeconfig_credentials(home: &Path) -> anyhow::Result<(String, String, Option<Vec<u8>>)> {
    let path = home.join("kubeconfig");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (run `cls up` first, or set DATABASE_URL)", path.display()))?;
    let config: Value = serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let server = config["clusters"][0]["cluster"]["server"].as_str().context("the kubeconfig names no server")?;
    let token = config["users"][0]["user"]["token"].as_str().context("the kubeconfig holds no token")?;
    let authority = match config["clusters"][0]["cluster"]["certificate-authority-data"].as_str() {
        Some(data) => Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
                .context("the kubeconfig's certificate-authority-data is not base64")?,
        ),
        None => None,
    };
    Ok((server.to_owned(), token.to_owned(), authority))
}

async fn run_on_api(home: &Path, action: TokenAction) -> anyhow::Result<()> {
    let (server, token, authority) = kubeconfig_credentials(home)?;
    let mut builder = https_client::Client::builder().timeout(Duration::from_secs(30));
    if let Some(pem) = authority {
        builder = builder.add_root_certificate(https_client::Certificate::from_pem(&pem)?);
    }
    let client = builder.build()?;
    let url = format!("{server}/api/v1/tokens");
    let request = match &action {
        TokenAction::Create { role, namespaces, name } => {
            let name = name.clone().unwrap_or_else(|| default_name(role));
            let mut body = json!({"name": name, "role": role.to_string()});
            if !namespaces.is_empty() {
                body["namespaces"] = json!(namespaces);
            }
            client.post(&url).json(&body)
        }
        TokenAction::List => client.get(&url),
        TokenAction::Revoke { id } => client.delete(format!("{url}/{id}")),
    };
    let response = request.bearer_auth(token).send().await.with_context(|| format!("cannot reach {server}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {}", body["message"].as_str().unwrap_or("no message"));
    }
    match action {
        TokenAction::Create { .. } => println!("{}", body["token"].as_str().unwrap_or_default()),
        TokenAction::List => print_tokens(&body["items"]),
        TokenAction::Revoke { .. } => eprintln!("revoked {} ({})", body["name"], body["id"]),
    }
    Ok(())
}

fn print_tokens(items: &Value) {
    println!("{:<28} {:<28} {:<24} {:<10} ID", "NAME", "ROLE", "NAMESPACES", "STATE");
    for item in items.as_array().into_iter().flatten() {
        let namespaces = match item["namespaces"].as_array() {
            Some(list) => list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
            None => "*".into(),
        };
        let state = if item["revokedAt"].is_null() { "active" } else { "revoked" };
        println!(
            "{:<28} {:<28} {:<24} {:<10} {}",
            item["name"].as_str().unwrap_or_default(),
            item["role"].as_str().unwrap_or_default(),
            namespaces,
            state,
            item["id"].as_str().unwrap_or_default()
        );
    }
}
