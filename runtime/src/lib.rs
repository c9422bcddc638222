//! What every binary of the project runs with: logs and metrics alike ([`telemetry`]), the
//! Kubernetes client and how its caches list, the token the hub presents to session pods, and
//! the shutdown signal.

mod client;
mod hub_token;
mod lists;
mod signal;
pub mod telemetry;

pub use client::{kube_client, kube_client_with_timeout};
pub use hub_token::{MIN_HUB_TOKEN_KEY_BYTES, hub_token, read_hub_token_key};
pub use lists::initial_lists;
pub use signal::terminated;
