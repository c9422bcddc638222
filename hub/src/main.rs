//! `whatsapp-hub`: the REST API the frontend uses, served from a watch cache of the
//! WhatsAppSession resources, with JWT tenants and live push; sends go to the session pods.
//!
//! Modules: `api` (routes, OpenAPI, middleware), `auth` (JWT), `login` (optional
//! username/password login), `cache` (the watch cache and its clienteId index), `upstream`
//! (the one client of the session pods), `outbox` (the message shapes, their validation and
//! the `/sender` job ids), `feeds` (message changes from the pods for the live streams, one
//! connection per session), `writes` (the few Kubernetes writes), `error` (the one
//! error type and its HTTP mapping), `metrics`, `model` (the JSON shapes), `qr` (images).

mod api;
mod auth;
mod cache;
mod contacts;
mod error;
mod feeds;
mod inbound;
mod login;
mod metrics;
mod model;
mod outbox;
mod qr;
mod state;
mod upstream;
mod writes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::routing::get;
use axum::{Router, ServiceExt};
use clap::Parser;
use kube::Api;
use tokio::sync::watch;
use tracing::{error, info};
use whatsapp_crds::WhatsAppSession;

use crate::auth::{Authenticator, JwtSettings};
use crate::cache::SessionCache;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};

/// Every setting, from flags or environment variables.
#[derive(Parser, Debug)]
#[command(
    name = "whatsapp-hub",
    version,
    about,
    after_help = "`whatsapp-hub hash-password` reads a password on stdin and prints its argon2 hash for the users file."
)]
struct Config {
    /// Address of the REST API (with /health and /openapi.json).
    #[arg(long, env = "WAO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Address of /metrics and /livez (kept off the API's address and Ingress).
    #[arg(long, env = "WAO_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,

    /// The namespace of the sessions the hub serves and creates (default: the hub's own
    /// namespace, else `default`). A clienteId is served by the session named
    /// `cliente-<clienteId>` there, and by no other.
    #[arg(long, env = "WAO_SESSION_NAMESPACE")]
    session_namespace: Option<String>,

    /// File with the key the session pods' hub tokens are derived from (shared with the operator).
    #[arg(long, env = "WAO_HUB_TOKEN_KEY_FILE")]
    hub_token_key_file: PathBuf,

    /// HS256 secret file for JWTs, at least 32 bytes (one of this or --jwt-public-keys).
    #[arg(long, env = "WAO_JWT_SECRET_FILE", conflicts_with = "jwt_public_keys")]
    jwt_secret_file: Option<PathBuf>,

    /// RS256/ES256 public keys for JWTs: a PEM file or a JWKS file.
    #[arg(long, env = "WAO_JWT_PUBLIC_KEYS")]
    jwt_public_keys: Option<PathBuf>,

    /// Required JWT issuer (`iss`).
    #[arg(long, env = "WAO_JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// Required JWT audience (`aud`).
    #[arg(long, env = "WAO_JWT_AUDIENCE")]
    jwt_audience: Option<String>,

    /// Clock skew tolerated on token expiry, in seconds.
    #[arg(long, env = "WAO_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    jwt_leeway_seconds: u64,

    /// The clienteId of the session the `/api/admin/whatsapp/*` routes act on.
    #[arg(long, env = "WAO_ADMIN_CLIENTE_ID")]
    admin_cliente_id: Option<i64>,

    /// Users for `POST /auth/login` (YAML: `users: [{username, passwordHash, role?, clienteId?}]`);
    /// needs --jwt-secret-file. Without it, login is off.
    #[arg(long, env = "WAO_USERS_FILE")]
    users_file: Option<PathBuf>,

    /// Lifetime of tokens issued by `/auth/login`, in seconds.
    #[arg(long, env = "WAO_LOGIN_TOKEN_TTL_SECONDS", default_value_t = 3600)]
    login_token_ttl_seconds: u64,

    /// The request header that carries the client's address, set by the trusted proxy in
    /// front of the hub (`x-forwarded-for`: its last entry, the one the proxy appended; or
    /// `x-real-ip`). Failed logins are limited per client address: without it, behind an
    /// Ingress every client would share the proxy's. Unset: the connection's peer address.
    #[arg(long, env = "WAO_CLIENT_ADDRESS_HEADER")]
    client_address_header: Option<axum::http::HeaderName>,

    /// Origins allowed by CORS, comma-separated (`*` for any; none by default).
    #[arg(long, env = "WAO_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    cors_allowed_origins: Vec<String>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "WAO_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    body_limit_bytes: usize,

    /// Largest request body accepted by the routes that take a batch of messages
    /// (`POST /api/whatsapp/{clienteId}/messages`, `POST /sender/send-bulk`), in bytes.
    #[arg(long, env = "WAO_BATCH_BODY_LIMIT_BYTES", default_value_t = outbox::BATCH_BODY_LIMIT)]
    batch_body_limit_bytes: usize,

    /// Longest a request may take until its response starts, in seconds (a live stream then
    /// flows for as long as it lives).
    #[arg(long, env = "WAO_REQUEST_TIMEOUT_SECONDS", default_value_t = 40)]
    request_timeout_seconds: u64,

    /// Connect timeout towards session pods, in milliseconds.
    #[arg(long, env = "WAO_UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    upstream_connect_timeout_ms: u64,

    /// Read timeout towards session pods, in milliseconds.
    #[arg(long, env = "WAO_UPSTREAM_READ_TIMEOUT_MS", default_value_t = 30_000)]
    upstream_read_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "WAO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("hash-password") => std::process::exit(hash_password_command()),
        Some("check-health") => std::process::exit(check_health_command(std::env::args().nth(2)).await),
        _ => {}
    }
    let config = Config::parse();
    whatsapp_runtime::telemetry::init_tracing(&config.log_format, "info");
    if let Err(e) = run(config).await {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn hash_password_command() -> i32 {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err()
        || password.trim_end_matches(['\r', '\n']).is_empty()
    {
        eprintln!("usage: echo -n 'password' | whatsapp-hub hash-password");
        return 2;
    }
    match login::hash_password(password.trim_end_matches(['\r', '\n'])) {
        Ok(hash) => {
            println!("{hash}");
            0
        }
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// `whatsapp-hub check-health URL`: exits 0 when URL answers 2xx (the chart's `helm test`, and
/// a container health check, with no other tool in the image).
async fn check_health_command(url: Option<String>) -> i32 {
    let Some(url) = url else {
        eprintln!("usage: whatsapp-hub check-health http://HUB/health");
        return 2;
    };
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build();
    let response = match client {
        Ok(client) => client.get(&url).send().await,
        Err(e) => Err(e),
    };
    match response {
        Ok(r) if r.status().is_success() => {
            println!("{url}: {}", r.status());
            0
        }
        Ok(r) => {
            eprintln!("{url}: {}: {}", r.status(), r.text().await.unwrap_or_default());
            1
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            1
        }
    }
}

async fn run(config: Config) -> Result<()> {
    let token_key =
        whatsapp_runtime::read_hub_token_key(&config.hub_token_key_file).map_err(anyhow::Error::msg)?;
    let jwt = JwtSettings {
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
        leeway_seconds: config.jwt_leeway_seconds,
    };
    let auth = match (&config.jwt_secret_file, &config.jwt_public_keys) {
        (Some(file), None) => {
            let secret = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            Authenticator::hs256(trim_newline(&secret), jwt)?
        }
        (None, Some(file)) => Authenticator::public_keys(file, jwt)?,
        _ => bail!("JWT verification needs --jwt-secret-file or --jwt-public-keys"),
    };
    let logins = match &config.users_file {
        Some(file) if auth.can_sign() => {
            let header = config.client_address_header.clone();
            Some(Arc::new(login::Logins::load(file, config.login_token_ttl_seconds, header)?))
        }
        Some(_) => bail!("--users-file needs --jwt-secret-file: the hub signs login tokens with it"),
        None => None,
    };

    let client = whatsapp_runtime::kube_client("whatsapp-hub").await.context("connecting to Kubernetes")?;
    let session_namespace = config
        .session_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let sessions: Api<WhatsAppSession> = Api::namespaced(client.clone(), &session_namespace);

    let metrics = Metrics::default();
    let cache = SessionCache::new(metrics.clone());
    tokio::spawn(cache.clone().run(sessions));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState::from(Shared {
        cache: cache.clone(),
        auth: Arc::new(auth),
        logins,
        pods: Arc::new(upstream::SessionPods::new(
            token_key,
            Duration::from_millis(config.upstream_connect_timeout_ms),
            Duration::from_millis(config.upstream_read_timeout_ms),
        )?),
        writer: Arc::new(writes::SessionWriter::new(client, session_namespace.clone())),
        admin_cliente_id: config.admin_cliente_id,
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        openapi: Default::default(),
        feeds: Default::default(),
    });
    let app = api::app(
        state.clone(),
        &config.cors_allowed_origins,
        config.body_limit_bytes,
        config.batch_body_limit_bytes,
    );

    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", config.metrics_listen))?;
    info!(listen = %config.listen, metrics = %config.metrics_listen, namespace = %session_namespace, "serving");

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api_server = tokio::spawn(
        axum::serve(api_listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stopped(shutdown_rx.clone()))
            .into_future(),
    );
    let ops = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/livez", get(|| async { "ok" }))
        .with_state(state);
    let ops_server = tokio::spawn(
        axum::serve(metrics_listener, ops).with_graceful_shutdown(stopped(shutdown_rx)).into_future(),
    );

    whatsapp_runtime::terminated().await;
    info!("stopping: finishing requests in flight, closing live streams");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(config.request_timeout_seconds), api_server).await;
    let _ = ops_server.await;
    Ok(())
}

async fn render_metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    state.metrics.cache_staleness.set(state.cache.staleness().as_secs_f64());
    state.metrics.cache_synced.set(i64::from(state.cache.synced()));
    (
        [(axum::http::header::CONTENT_TYPE, whatsapp_runtime::telemetry::METRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
}

/// Secrets mounted from files often end with a newline that is not part of the secret.
fn trim_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}
