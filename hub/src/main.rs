//! `whatsapp-hub`: the REST API the frontend uses, served from a watch cache of the
//! WhatsAppSession resources, with JWT tenants and live push; sends go to the session pods.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Every setting, from flags or environment variables.
#[derive(Parser, Debug)]
#[command(name = "whatsapp-hub", version, about)]
struct Config {
    /// Address of the REST API, /health and /metrics.
    #[arg(long, env = "WAO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Serve sessions of this namespace only (default: every namespace).
    #[arg(long, env = "WAO_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,

    /// File with the key the session pods' hub tokens are derived from (shared with the operator).
    #[arg(long, env = "WAO_HUB_TOKEN_KEY_FILE")]
    hub_token_key_file: PathBuf,

    /// HS256 secret file for JWTs (one of this or --jwt-public-keys is required).
    #[arg(long, env = "WAO_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// RS256/ES256 public keys for JWTs: a PEM file or a JWKS file.
    #[arg(long, env = "WAO_JWT_PUBLIC_KEYS")]
    jwt_public_keys: Option<PathBuf>,

    /// Required JWT issuer.
    #[arg(long, env = "WAO_JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// Required JWT audience.
    #[arg(long, env = "WAO_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    anyhow::bail!("the hub's API on {} is not built yet (see the hub issue)", config.listen)
}
