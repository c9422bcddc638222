//! The driver: keeps one Chromium on WhatsApp Web, turns what the page shows into reports
//! (through the [`Tracker`]), runs the page actions, and restarts a crashed or hung browser
//! with backoff.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use whatsapp_crds::{SessionState, WhatsAppSessionSpec};

use crate::browser::{BrowserError, LaunchOptions, Session};
use crate::metrics::Metrics;
use crate::tracker::{Action, QrTimings, Report, Snapshot, Tracker};

/// How often the page is read.
const POLL: Duration = Duration::from_millis(500);
/// Consecutive failed reads before the browser counts as hung.
const MAX_FAILED_POLLS: u32 = 3;

/// Requests from the HTTP API.
pub enum Command {
    Send { to: String, body: String, reply: oneshot::Sender<Result<String, SendError>> },
    Logout { reply: oneshot::Sender<Result<(), SendError>> },
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the session is not READY (it is {0})")]
    NotReady(SessionState),
    #[error("{0} is not on WhatsApp")]
    NotOnWhatsApp(String),
    #[error("WhatsApp Web failed: {0}")]
    Page(String),
}

pub struct Driver {
    pub options: LaunchOptions,
    pub timings: QrTimings,
    pub spec: watch::Receiver<WhatsAppSessionSpec>,
    pub reports: watch::Sender<Report>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: Metrics,
    /// Where pinned WhatsApp Web builds are downloaded from (`{version}` is replaced).
    pub web_version_url: String,
    /// Milliseconds since the epoch of the last successful read of the page (readiness).
    pub last_poll_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Driver {
    /// Runs until `shutdown` flips, then closes the browser cleanly (flushing the login).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            self.report(Report::new(SessionState::Connecting, "StartingBrowser", "starting Chromium"));
            // The browser settings of the spec apply at each launch.
            let browser_spec = self.spec.borrow().browser.clone();
            self.options.extra_args = browser_spec.extra_args.clone();
            self.options.pinned_page = match &browser_spec.web_version {
                None => None,
                Some(version) => match crate::browser::pinned_page(
                    version,
                    &self.web_version_url,
                    &self.options.profile_dir,
                )
                .await
                {
                    Ok(html) => Some(html),
                    Err(why) => {
                        warn!(%why, "the pinned WhatsApp Web build is not available");
                        self.report(Report::new(SessionState::Disconnected, "WebVersionUnavailable", why));
                        if self.pause(&mut backoff, &mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let launched = tokio::select! {
                s = Session::launch(&self.options) => s,
                _ = stopped(&mut shutdown) => return,
            };
            let session = match launched {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "Chromium did not start");
                    self.report(Report::new(
                        SessionState::Disconnected,
                        "BrowserLaunchFailed",
                        e.to_string(),
                    ));
                    if self.pause(&mut backoff, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            info!("Chromium started, WhatsApp Web loading");
            let started = std::time::Instant::now();
            match self.drive(session, &mut shutdown).await {
                Exit::Shutdown => return,
                Exit::Crashed(why) => {
                    self.metrics.browser_restarts.inc();
                    warn!(%why, "browser lost; restarting");
                    self.report(Report::new(
                        SessionState::Disconnected,
                        "BrowserCrashed",
                        format!("{why}; restarting Chromium"),
                    ));
                    // A browser that ran a while earns a fresh backoff.
                    if started.elapsed() > Duration::from_secs(120) {
                        backoff = Duration::from_secs(1);
                    }
                    if self.pause(&mut backoff, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits out the backoff (doubling it, up to 30 s); true if shutdown came first.
    async fn pause(&self, backoff: &mut Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stopped(shutdown) => true,
        }
    }

    /// Publishes a report; one that does not know what the page lacks (the browser is
    /// starting) keeps the last known answer.
    fn report(&self, mut report: Report) {
        self.reports.send_if_modified(|current| {
            if report.missing.is_none() {
                report.missing = current.missing.clone();
            }
            let changed = *current != report;
            if changed {
                *current = report;
            }
            changed
        });
    }

    async fn drive(&mut self, mut session: Session, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let mut tracker = Tracker::new(self.timings);
        let mut failed_polls = 0;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(shutdown) => {
                    info!("closing Chromium to flush the profile");
                    session.close().await;
                    return Exit::Shutdown;
                }
                Some(command) = self.commands.recv() => self.command(&session, command).await,
                _ = tick.tick() => {
                    if !session.alive() {
                        session.kill().await;
                        return Exit::Crashed("Chromium exited".into());
                    }
                    match session.eval::<Option<Snapshot>>("window.__waoBridge ? window.__waoBridge.snapshot() : null").await {
                        Ok(snapshot) => {
                            failed_polls = 0;
                            let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
                            self.last_poll_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
                            let snapshot = snapshot.unwrap_or_default();
                            let spec = self.spec.borrow().clone();
                            if let Some(version) = &snapshot.web_version {
                                self.metrics.web_version(version);
                            }
                            let (report, action) = tracker.observe(&snapshot, &spec, SystemTime::now());
                            self.metrics.observe(&report, &self.reports.borrow());
                            self.report(report);
                            if let Some(action) = action {
                                self.act(&session, &mut tracker, action).await;
                            }
                        }
                        Err(e) => {
                            failed_polls += 1;
                            warn!(error = %e, failed_polls, "reading the page failed");
                            if failed_polls >= MAX_FAILED_POLLS || matches!(e, BrowserError::Timeout(_)) {
                                session.kill().await;
                                return Exit::Crashed(format!("the page stopped answering: {e}"));
                            }
                        }
                    }
                }
            }
        }
    }

    async fn act(&self, session: &Session, tracker: &mut Tracker, action: Action) {
        match action {
            Action::RefreshQr => {
                let _ = session.eval::<bool>("window.__waoBridge.refreshQR()").await;
            }
            Action::RequestPairingCode(phone) => {
                let expr = format!("window.__waoBridge.requestPairingCode({})", serde_json::json!(phone));
                match session.eval::<String>(&expr).await {
                    Ok(code) => tracker.pairing_code(code, SystemTime::now()),
                    Err(e) => warn!(error = %e, "requesting a pairing code failed"),
                }
            }
        }
    }

    async fn command(&self, session: &Session, command: Command) {
        let state = self.reports.borrow().state;
        match command {
            Command::Send { to, body, reply } => {
                let result = if state != SessionState::Ready {
                    Err(SendError::NotReady(state))
                } else {
                    send_text(session, &to, &body).await
                };
                let _ = reply.send(result);
            }
            Command::Logout { reply } => {
                let result = session
                    .eval::<bool>("window.__waoBridge.logout()")
                    .await
                    .map(|_| ())
                    .map_err(|e| SendError::Page(e.to_string()));
                let _ = reply.send(result);
            }
        }
    }
}

/// What the bridge's `sendText` resolves to.
#[derive(serde::Deserialize)]
struct SendOutcome {
    id: Option<String>,
    error: Option<PageError>,
}

#[derive(serde::Deserialize)]
struct PageError {
    code: String,
    message: String,
}

/// Sends a text through the bridge: the WhatsApp message id, or why not.
async fn send_text(session: &Session, to: &str, body: &str) -> Result<String, SendError> {
    let expr = format!("window.__waoBridge.sendText({}, {})", serde_json::json!(to), serde_json::json!(body));
    let outcome = session.eval::<SendOutcome>(&expr).await.map_err(|e| SendError::Page(e.to_string()))?;
    match (outcome.id, outcome.error) {
        (Some(id), None) => Ok(id),
        (_, Some(e)) if e.code == "NOT_ON_WHATSAPP" => Err(SendError::NotOnWhatsApp(to.to_string())),
        (_, Some(e)) => Err(SendError::Page(format!("{}: {}", e.code, e.message))),
        (None, None) => Err(SendError::Page("the bridge answered neither an id nor an error".into())),
    }
}

/// Resolves once the shutdown flag is set (holding no lock across awaits).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

enum Exit {
    Shutdown,
    Crashed(String),
}
