//! `whatsapp-operator`: reconciles every `WhatsAppSession` into a one-replica StatefulSet whose
//! volume holds the browser profile, plus its Service, ServiceAccount, RBAC and hub token.

mod children;
mod compare;
mod controller;
mod error;
mod leadership;
mod memory;
mod metrics;
mod ownership;
mod rollout;
mod server;
mod slim;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{ArgAction, Parser};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};
use whatsapp_crds::WhatsAppSession;

use crate::children::Settings;
use crate::controller::Scope;
use crate::metrics::Metrics;
use crate::rollout::Budget;
use crate::server::Health;

/// Every setting, from flags or environment variables.
#[derive(Parser, Debug)]
#[command(name = "whatsapp-operator", version, about)]
struct Config {
    /// Watch sessions in this namespace only (default: every namespace).
    #[arg(long, env = "WAO_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,

    /// Session-pod image for sessions that do not set spec.browser.image.
    #[arg(long, env = "WAO_SESSION_IMAGE", default_value = "ghcr.io/leadmaster/whatsapp-session:0.1.0")]
    session_image: String,

    /// imagePullPolicy of session pods (default: the cluster's).
    #[arg(long, env = "WAO_SESSION_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    session_image_pull_policy: Option<String>,

    /// File with the key (at least 32 bytes) that each session's hub token is derived from.
    /// The hub mounts the same key.
    #[arg(long, env = "WAO_HUB_TOKEN_KEY_FILE")]
    hub_token_key_file: PathBuf,

    /// ConfigMap whose `wa-bridge.js` replaces the session pods' built-in bridge script (looked
    /// up in each session's namespace; optional there).
    #[arg(long, env = "WAO_BRIDGE_SCRIPT_CONFIGMAP")]
    bridge_script_configmap: Option<String>,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "WAO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Reconcile only while holding the leader Lease (turn off only for a single replica).
    #[arg(long, env = "WAO_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "WAO_LEASE_NAME", default_value = "whatsapp-operator")]
    lease_name: String,

    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// This replica's identity in the Lease (default: the pod name, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Seconds a leader keeps the Lease without renewing it; a standby takes over after that.
    #[arg(long, env = "WAO_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_duration_seconds: u64,

    /// Session pods that may restart at a time when a fleet-wide input changes their template
    /// (hub-token key, session image, other settings, an operator upgrade): a number, or a
    /// percentage of the sessions running a pod (rounded up). The others keep their running pod
    /// and wait their turn, oldest first (Reconciled=False, reason RollPending). A change of a
    /// session's own spec.browser, and a session with no pod serving, never wait.
    #[arg(long, env = "WAO_MAX_ROLLING_SESSIONS", default_value = "10%")]
    max_rolling_sessions: rollout::MaxRolling,

    /// Log format.
    #[arg(long, env = "WAO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let huge_pages = memory::without_huge_pages();
    let config = Config::parse();
    whatsapp_runtime::telemetry::init_tracing(&config.log_format, "info");
    if let Err(e) = huge_pages {
        warn!("{e}");
    }
    if let Err(e) = run(config).await {
        error!("{e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(config: Config) -> Result<()> {
    let key = whatsapp_runtime::read_hub_token_key(&config.hub_token_key_file).map_err(anyhow::Error::msg)?;
    let settings = Settings {
        session_image: config.session_image.clone(),
        image_pull_policy: config.session_image_pull_policy.clone(),
        hub_token_key: key,
        bridge_script_configmap: config.bridge_script_configmap.clone(),
    };
    let identity = config.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let scope = match &config.watch_namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::Cluster,
    };

    let metrics = Metrics::default();
    let health = Health::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        whatsapp_runtime::terminated().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let server = tokio::spawn(server::serve(
        config.listen,
        health.clone(),
        metrics.clone(),
        until(shutdown_rx.clone()),
    ));

    let client =
        whatsapp_runtime::kube_client("whatsapp-operator").await.context("connecting to Kubernetes")?;
    check_crd(&client, &scope).await?;
    let reporter = Reporter { controller: "whatsapp-operator".into(), instance: Some(identity.clone()) };
    health.ready.store(true, Ordering::Relaxed);

    if config.leader_election {
        let controller = || {
            let graceful = until(shutdown_rx.clone());
            controller::run(
                client.clone(),
                scope.clone(),
                settings.clone(),
                metrics.clone(),
                reporter.clone(),
                Budget::new(config.max_rolling_sessions, rollout::DEADLINE),
                graceful,
            )
        };
        lead(&config, &identity, &client, &shutdown_rx, controller, &metrics).await?;
    } else {
        metrics.leader.set(1);
        let budget = Budget::new(config.max_rolling_sessions, rollout::DEADLINE);
        controller::run(
            client,
            scope,
            settings,
            metrics.clone(),
            reporter,
            budget,
            until(shutdown_rx.clone()),
        )
        .await;
    }
    let _ = server.await;
    info!("stopped");
    Ok(())
}

/// Runs `controller` while this replica holds the leader Lease and sees it renewed (see
/// [`leadership`]), until shutdown; then releases the Lease for a fast hand-over.
async fn lead<F: std::future::Future<Output = ()>>(
    config: &Config,
    identity: &str,
    client: &Client,
    shutdown_rx: &watch::Receiver<bool>,
    controller: impl Fn() -> F,
    metrics: &Metrics,
) -> Result<()> {
    let duration = Duration::from_secs(config.lease_duration_seconds);
    let grace = (config.lease_duration_seconds / 3).max(1);
    let deadline = leadership::renew_deadline(duration, Duration::from_secs(grace));
    let lease_client = leadership::lease_client(deadline).await.context("connecting to Kubernetes")?;
    let manager = LeaseManagerBuilder::new(lease_client, &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(identity)
        .with_duration(config.lease_duration_seconds)
        .with_grace(grace)
        .with_field_manager("whatsapp-operator-lease")
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = manager.watch().await;
    let leases = Api::namespaced(client.clone(), &config.lease_namespace);
    let mut renewed = leadership::fence(leases, &config.lease_name, identity.to_string(), deadline);
    info!(identity, lease = %config.lease_name, "waiting to lead");
    let mut shutdown = shutdown_rx.clone();
    loop {
        tokio::select! {
            _ = both(&mut leading, &mut renewed) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        info!(identity, "leading: reconciling");
        metrics.leader.set(1);
        tokio::select! {
            // Losing the lease stops reconciling at once: the controller is dropped mid-flight
            // (every write is idempotent) so two replicas never reconcile together.
            _ = leading.wait_for(|l| !*l) => info!(identity, "lost the lease: stopped reconciling"),
            _ = renewed.wait_for(|r| !*r) => warn!(
                identity,
                deadline_seconds = deadline.as_secs_f64(),
                "no renewal of the Lease seen within the renew deadline: stepped down until one is"
            ),
            () = controller() => {}
        }
        metrics.leader.set(0);
        if *shutdown.borrow() {
            break;
        }
    }
    // Dropping the receiver makes the lease task release the Lease for a fast hand-over.
    drop(leading);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    Ok(())
}

/// Waits until both flags are set.
async fn both(a: &mut watch::Receiver<bool>, b: &mut watch::Receiver<bool>) {
    while !(*a.borrow_and_update() && *b.borrow_and_update()) {
        tokio::select! {
            Ok(()) = a.changed() => {}
            Ok(()) = b.changed() => {}
            else => std::future::pending().await,
        }
    }
}

/// Refuses to start without the CRD, saying how to install it.
async fn check_crd(client: &Client, scope: &Scope) -> Result<()> {
    let api: Api<WhatsAppSession> = scope.api(client);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the WhatsAppSession CRD (whatsappsessions.whatsapp.leadmaster.dev) is not installed: \
             install the Helm chart or run `kubectl apply -f crds/whatsappsession.yaml`"
        ),
        Err(e) => Err(e).context("checking that the WhatsAppSession CRD is installed"),
    }
}

/// A future that resolves once the shutdown flag is set.
async fn until(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
