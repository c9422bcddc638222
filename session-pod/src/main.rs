//! `whatsapp-session`: runs in each session pod. Drives headless Chromium on WhatsApp Web
//! with the profile on the pod's volume, reports state and QR into the session's status, and
//! serves the hub-only API (send, logout), the probes and the metrics.

mod api;
mod browser;
mod directory;
mod driver;
mod leveldb;
mod metrics;
mod outbox;
mod profile;
mod status;
mod tracker;
mod volume;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};
use whatsapp_crds::{BrowserEngine, SessionState, WhatsAppSession, WhatsAppSessionSpec};

use crate::browser::{Binaries, LaunchOptions};
use crate::driver::Driver;
use crate::metrics::Metrics;
use crate::tracker::{QrTimings, Report};

/// Every setting, from flags or environment variables (the operator sets the environment).
#[derive(Parser, Debug)]
#[command(name = "whatsapp-session", version, about)]
struct Config {
    /// Name of this pod's WhatsAppSession.
    #[arg(long, env = "WAO_SESSION_NAME")]
    session_name: String,

    /// Namespace of the session (the pod's own).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,

    /// This pod's IP, published as the session's endpoint for the hub.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<String>,

    /// Browser profile directory, on the session's volume: the WhatsApp login lives here.
    #[arg(long, env = "WAO_PROFILE_DIR", default_value = "/data/profile")]
    profile_dir: PathBuf,

    /// Address of the hub-only API, the probes and the metrics.
    #[arg(long, env = "WAO_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Bearer token the hub presents on the send and logout routes.
    #[arg(long, env = "WAO_HUB_TOKEN", hide_env_values = true)]
    hub_token: String,

    /// The full Chromium binary (`spec.browser.engine: Chromium`).
    #[arg(long, env = "WAO_CHROMIUM", default_value = "/usr/lib/chromium/chromium")]
    chromium: PathBuf,

    /// The Chromium headless shell binary (`spec.browser.engine: HeadlessShell`, the default).
    #[arg(long, env = "WAO_HEADLESS_SHELL", default_value = "/usr/lib/chromium/chromium-headless-shell")]
    headless_shell: PathBuf,

    /// Where a pinned WhatsApp Web build (spec.browser.webVersion) is downloaded from;
    /// `{version}` is replaced. Downloaded builds are cached on the profile volume.
    #[arg(
        long,
        env = "WAO_WEB_VERSION_URL",
        default_value = "https://raw.githubusercontent.com/wppconnect-team/wa-version/main/html/{version}.html"
    )]
    web_version_url: String,

    /// Replacement for the built-in bridge script (for example mounted from a ConfigMap).
    #[arg(long, env = "WAO_BRIDGE_SCRIPT")]
    bridge_script: Option<PathBuf>,

    /// How long WhatsApp shows the first QR code of a batch, and each next one (seconds).
    #[arg(long, env = "WAO_QR_LIFETIMES", default_value = "60,20", value_delimiter = ',', num_args = 2)]
    qr_lifetimes: Vec<u64>,

    /// The most messages the outbox holds queued; beyond it, new ones are refused (507).
    #[arg(long, env = "WAO_OUTBOX_MAX_QUEUED", default_value_t = 100_000)]
    outbox_max_queued: u64,

    /// How often at most the outbox summary (`status.outbox`) is written, in seconds.
    #[arg(long, env = "WAO_OUTBOX_STATUS_INTERVAL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    outbox_status_interval_seconds: u64,

    /// How long sent and failed messages (and their idempotency keys) are kept, in days.
    #[arg(long, env = "WAO_OUTBOX_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    outbox_retention_days: u64,

    /// Media URLs may point at private, loopback and link-local addresses (files on an
    /// internal server). Off by default: a caller could otherwise make the pod fetch from inside
    /// the cluster and send the answer as a message.
    #[arg(long, env = "WAO_MEDIA_FROM_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    media_from_private_networks: bool,

    /// Log format.
    #[arg(long, env = "WAO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() {
    let config = Config::parse();
    whatsapp_runtime::telemetry::init_tracing(&config.log_format, "info,chromiumoxide=error");
    if let Err(e) = run(config).await {
        error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<()> {
    // First: own the profile, or refuse to start.
    let _profile = profile::lock(&config.profile_dir)?;
    let bridge_script =
        browser::bridge_script(config.bridge_script.as_deref()).context("reading the bridge script")?;
    // The outbox lives on the session's volume beside the login.
    let outbox_path = config.profile_dir.join("whatsapp-outbox.redb");
    let outbox = outbox::Outbox::open(&outbox_path, config.outbox_max_queued)
        .with_context(|| format!("opening the outbox {}", outbox_path.display()))?;

    let client =
        whatsapp_runtime::kube_client("whatsapp-session").await.context("connecting to Kubernetes")?;
    let api: Api<WhatsAppSession> = Api::namespaced(client.clone(), &config.namespace);
    let session = api
        .get(&config.session_name)
        .await
        .with_context(|| format!("reading WhatsAppSession {}/{}", config.namespace, config.session_name))?;
    let spec_rx = follow_spec(api.clone(), &config.session_name, session.spec.clone());

    let metrics = Metrics::default();
    let initial = Report::new(SessionState::Disconnected, "Starting", "the session pod is starting");
    let (reports_tx, reports_rx) = watch::channel(initial);
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // The volume's space: the StorageFull condition and the volume metrics.
    let (volume_rx, volume_watch) =
        volume::start(config.profile_dir.clone(), outbox.storage_full.clone(), metrics.clone());
    let endpoint = config.pod_ip.as_ref().map(|ip| format!("http://{ip}:{}", config.listen.port()));
    let reporter = tokio::spawn(status::report_forever(
        api.clone(),
        config.session_name.clone(),
        endpoint,
        reports_rx.clone(),
        volume_rx.clone(),
        session.status.clone(),
    ));
    let summary = tokio::spawn(status::outbox_forever(
        api.clone(),
        config.session_name.clone(),
        outbox.clone(),
        metrics.clone(),
        Duration::from_secs(config.outbox_status_interval_seconds),
        Duration::from_secs(config.outbox_retention_days * 86_400),
        spec_rx.clone(),
    ));

    // Readiness: the driver read the page recently.
    let last_poll_ms = Arc::new(AtomicU64::new(0));
    let (options, timings) = launch_settings(&config, bridge_script);
    let driver = Driver {
        options,
        timings,
        spec: spec_rx.clone(),
        reports: reports_tx,
        commands: commands_rx,
        metrics: metrics.clone(),
        web_version_url: config.web_version_url.clone(),
        last_poll_ms: last_poll_ms.clone(),
        outbox: outbox.clone(),
    };
    let driver = tokio::spawn(driver.run(shutdown_rx.clone()));
    let webhooks = webhooks::Webhooks::open(outbox.clone(), Arc::new(webhooks::SystemClock))
        .context("opening the webhook deliveries")?;
    let secrets = webhooks::KubeSecrets::new(Api::namespaced(client, &config.namespace));
    let deliveries =
        tokio::spawn(webhooks.clone().run(spec_rx.clone(), Arc::new(secrets), metrics.webhooks.clone()));
    let directory = directory::Directory::open(outbox.clone(), commands_tx.clone(), metrics.clone())
        .context("opening the contacts and number checks")?;
    let checks = tokio::spawn(directory.clone().run_checks(reports_rx.clone(), directory::Pacing::WHATSAPP));

    let state = api::ApiState {
        hub_token: Arc::new(config.hub_token.clone()),
        commands: commands_tx,
        reports: reports_rx.clone(),
        metrics,
        last_poll_ms,
        outbox,
        shutdown: shutdown_rx.clone(),
        directory,
        webhooks,
        media_from_private_networks: config.media_from_private_networks,
    };
    let server = serve(config.listen, state, shutdown_rx).await?;
    info!(listen = %config.listen, session = %config.session_name, "serving");

    whatsapp_runtime::terminated().await;
    info!("stopping: closing the browser so the login is flushed to the profile");
    let _ = shutdown_tx.send(true);
    let _ = driver.await;
    let _ = server.await;
    for task in [reporter, summary, checks, deliveries, volume_watch] {
        task.abort();
    }
    // The last word in the status: this pod is gone.
    let missing = reports_rx.borrow().missing.clone();
    let storage = *volume_rx.borrow();
    let last = final_report(&api, &config.session_name, missing, storage);
    let _ = tokio::time::timeout(Duration::from_secs(3), last).await;
    Ok(())
}

/// The session's spec as it changes (browser settings, webhooks, pacing), from a watch of it.
fn follow_spec(
    api: Api<WhatsAppSession>,
    name: &str,
    initial: WhatsAppSessionSpec,
) -> watch::Receiver<WhatsAppSessionSpec> {
    let (spec_tx, spec_rx) = watch::channel(initial);
    let watched = watcher(api, watcher::Config::default().fields(&format!("metadata.name={name}")));
    tokio::spawn(async move {
        let mut objects = std::pin::pin!(watched.default_backoff().applied_objects());
        while let Some(next) = objects.next().await {
            if let Ok(obj) = next {
                spec_tx.send_if_modified(|spec| {
                    let changed = *spec != obj.spec;
                    *spec = obj.spec;
                    changed
                });
            }
        }
    });
    spec_rx
}

/// How Chromium is launched and how long each QR lives.
fn launch_settings(config: &Config, bridge_script: String) -> (LaunchOptions, QrTimings) {
    let options = LaunchOptions {
        binaries: Binaries {
            chromium: config.chromium.clone(),
            headless_shell: config.headless_shell.clone(),
        },
        engine: BrowserEngine::default(),
        profile_dir: config.profile_dir.clone(),
        extra_args: Vec::new(),
        bridge_script,
        pinned_page: None,
    };
    let timings = QrTimings {
        first: Duration::from_secs(config.qr_lifetimes[0]),
        next: Duration::from_secs(config.qr_lifetimes[1]),
    };
    (options, timings)
}

/// Serves the API on `listen` until shutdown, finishing the requests in flight.
async fn serve(
    listen: SocketAddr,
    state: api::ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    Ok(tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
    }))
}

async fn final_report(
    api: &Api<WhatsAppSession>,
    name: &str,
    missing: Option<Vec<String>>,
    storage: Option<volume::Storage>,
) {
    let mut report = Report::new(SessionState::Disconnected, "PodStopped", "the session pod stopped");
    report.missing = missing;
    let written = api.get(name).await.ok().and_then(|s| s.status);
    let since = status::Written::of(written.as_ref()).since_for(&report, storage.as_ref());
    let body = status::patch(&report, None, since, storage.as_ref());
    let params = kube::api::PatchParams::apply(status::FIELD_MANAGER).force();
    let _ = api.patch_status(name, &params, &kube::api::Patch::Apply(&body)).await;
}
