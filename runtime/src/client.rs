//! The one way every component connects to Kubernetes.

use std::time::Duration;

use kube::{Client, Config};

/// A client from the environment (in-cluster service account, else `KUBECONFIG` /
/// `~/.kube/config`), identifying itself as `component/version` in the User-Agent so the
/// API server's audit log tells the components apart.
pub async fn kube_client(component: &str) -> Result<Client, kube::Error> {
    kube_client_with_timeout(component, Duration::from_secs(330)).await
}

/// [`kube_client`] whose requests give up after `read_timeout` without an answer: for calls
/// that must never hang, such as renewing a leader Lease.
pub async fn kube_client_with_timeout(
    component: &str,
    read_timeout: Duration,
) -> Result<Client, kube::Error> {
    let mut config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    // Fail fast on a dead API server instead of hanging a reconcile; watches are long-polls
    // the server closes itself, well inside this.
    config.connect_timeout = Some(Duration::from_secs(5).min(read_timeout));
    config.read_timeout = Some(read_timeout);
    Client::try_from(config)
}
