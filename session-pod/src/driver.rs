//! The driver: keeps one Chromium on WhatsApp Web, turns what the page shows into reports
//! (through the [`Tracker`]), runs the page actions, sends the outbox's messages (paced, each
//! to its end, settling after a crash what WhatsApp Web already has), records receipts and
//! incoming messages (catching up after a crash with what the page had taken), and restarts a
//! crashed or hung browser with backoff.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use whatsapp_crds::{SessionState, WhatsAppSessionSpec};

use crate::browser::{BrowserError, LaunchOptions, Session};
use crate::metrics::Metrics;
use crate::outbox::{Limits, Outbox, Seen, reason};
use crate::tracker::{Action, QrTimings, Report, Snapshot, Tracker};

/// How often the page is read.
const POLL: Duration = Duration::from_millis(500);
/// Attempts at a message WhatsApp keeps refusing before it fails for good.
const MAX_ATTEMPTS: u32 = 6;
/// The first wait after WhatsApp refused a message for now; it doubles with each attempt.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Consecutive failed reads before the browser counts as hung.
const MAX_FAILED_POLLS: u32 = 3;
/// How far before the last stored drain the catch-up looks (by the sender's `t`): a message's
/// `t` is its sender's clock, and WhatsApp may hand it over later than it was sent.
const CATCH_UP_MARGIN: Duration = Duration::from_secs(3600);
/// A failed catch-up is tried again after this.
const CATCH_UP_RETRY: Duration = Duration::from_secs(30);
/// How often "everything drained is stored" is written down (the catch-up starts there).
const MARK_EVERY: Duration = Duration::from_secs(60);

/// Requests from the HTTP API.
pub enum Command {
    Logout {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The contacts WhatsApp Web knows (the bridge's `contacts`).
    Contacts {
        reply: oneshot::Sender<Result<Vec<crate::directory::Contact>, String>>,
    },
    /// Whether a number (digits) is on WhatsApp (the bridge's `checkNumber`).
    CheckNumber {
        number: String,
        reply: oneshot::Sender<Result<crate::directory::Existence, String>>,
    },
    /// The media of the incoming message `id` in `chat` (the bridge's `downloadMedia`).
    DownloadMedia {
        id: String,
        chat: String,
        reply: oneshot::Sender<Result<crate::outbox::media::Downloaded, String>>,
    },
}

/// How a send ended, as far as the page could tell.
enum Sent {
    Yes,
    /// WhatsApp Web refused it for good (a stable reason, and its words).
    Refused(&'static str, String),
    /// The call into the page failed: it may or may not have gone out.
    Unknown(String),
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
    pub outbox: Outbox,
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
            self.options.engine = browser_spec.engine;
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
            info!(engine = ?self.options.engine, "Chromium started, WhatsApp Web loading");
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
    /// starting) keeps the last known answer. A new state is logged as a `state` event.
    fn report(&self, mut report: Report) {
        let mut new_state = None;
        self.reports.send_if_modified(|current| {
            if report.missing.is_none() {
                report.missing = current.missing.clone();
            }
            if current.state != report.state {
                new_state = Some(serde_json::json!({
                    "state": report.state,
                    "reason": report.reason,
                    "message": report.message,
                    "me": report.me,
                }));
            }
            let changed = *current != report;
            if changed {
                *current = report;
            }
            changed
        });
        if let Some(data) = new_state
            && let Err(error) = self.outbox.event("state", data)
        {
            warn!(%error, "could not log the state event");
        }
    }

    async fn drive(&mut self, mut session: Session, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let mut tracker = Tracker::new(self.timings);
        let mut failed_polls = 0;
        // Sends a crash left unconfirmed are settled once per launch, when READY.
        let mut settled = false;
        let mut intake = Intake::default();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ready = self.reports.borrow().state == SessionState::Ready;
            let send_in = if ready && settled { self.next_send_in() } else { None };
            tokio::select! {
                _ = stopped(shutdown) => {
                    info!("closing Chromium to flush the profile");
                    session.close().await;
                    return Exit::Shutdown;
                }
                Some(command) = self.commands.recv() => self.command(&session, command).await,
                _ = self.outbox.work.notified() => {}
                _ = tokio::time::sleep(send_in.unwrap_or_default()), if send_in.is_some() => {
                    if !self.send_next(&session).await {
                        settled = false;
                    }
                }
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
                            let now_ready = report.state == SessionState::Ready;
                            self.report(report);
                            if let Some(action) = action {
                                self.act(&session, &mut tracker, action).await;
                            }
                            if now_ready {
                                if !settled {
                                    settled = self.settle(&session).await;
                                }
                                self.record_acks(&session).await;
                                self.take_incoming(&session, &mut intake).await;
                            }
                            self.metrics.outbox_queued.set(self.outbox.queued().unwrap_or(0) as i64);
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

    /// The spec's daily limits.
    fn limits(&self) -> Limits {
        let send = &self.spec.borrow().send;
        if !Limits::zone_known(send) {
            warn!(zone = ?send.window.as_ref().map(|w| &w.time_zone), "unknown time zone in spec.send.window: using UTC");
        }
        Limits::of(send)
    }

    /// How long until the next send may go, if a message is due.
    fn next_send_in(&self) -> Option<Duration> {
        let now = jiff::Timestamp::now();
        match self.outbox.next_due(now, &self.limits()) {
            Ok(Some((_, at))) => Some(Duration::try_from(at.duration_since(now)).unwrap_or_default()),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                None
            }
        }
    }

    /// Sends the next due message to its end. False when the outcome is unknown (the page
    /// call failed): the message stays `sending` and is settled by lookup.
    async fn send_next(&self, session: &Session) -> bool {
        let rate = self.spec.borrow().send.rate_per_minute;
        let limits = self.limits();
        let now = jiff::Timestamp::now();
        let next = match self.outbox.next_due(now, &limits) {
            Ok(Some((m, at))) if at <= now => m,
            Ok(_) => return true,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                return true;
            }
        };
        // Persisted before the page sees it: a crash from here on is settled by lookup.
        let message = match self.outbox.sending(&next.id, crate::outbox::next_gap(rate), &limits) {
            Ok(Some(m)) => m,
            Ok(None) => return true,
            Err(e) => {
                warn!(error = %e, id = %next.id, "could not mark the message sending");
                return true;
            }
        };
        let started = std::time::Instant::now();
        let outcome = match &message.media {
            Some(media) => send_media(session, &self.outbox, &message, media).await,
            None => send_text(session, &message.to, &message.message, &message.id).await,
        };
        let (label, stored) = match &outcome {
            Sent::Yes => ("sent", self.outbox.sent(&message.id)),
            Sent::Refused(why, text) if *why == reason::SEND_FAILED && message.attempts < MAX_ATTEMPTS => {
                // Often passing (WhatsApp throttling the account, the page not ready yet):
                // again later, with the same id, backing off.
                let wait = RETRY_AFTER * 2u32.pow(message.attempts.saturating_sub(1).min(6));
                warn!(id = %message.id, attempt = message.attempts, ?wait, error = %text, "WhatsApp refused the message for now");
                ("retry", self.outbox.retry_later(&message.id, wait.min(Duration::from_secs(1800))))
            }
            Sent::Refused(why, text) => {
                let label = if *why == reason::NOT_ON_WHATSAPP { "not_on_whatsapp" } else { "error" };
                (label, self.outbox.failed(&message.id, why, text))
            }
            Sent::Unknown(text) => {
                warn!(id = %message.id, error = %text, "the send's outcome is unknown; it will be looked up");
                ("timeout", Ok(()))
            }
        };
        let recorded = match stored {
            Ok(()) => true,
            Err(e) => {
                // The message stays `sending`: the settling lookup records it once it can.
                warn!(error = %e, id = %message.id, "could not record the send's outcome");
                false
            }
        };
        self.metrics.messages.with_label_values(&[label]).inc();
        self.metrics.send_duration.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        if matches!(outcome, Sent::Yes) {
            let waited = now.as_millisecond() - message.created_at.as_millisecond();
            self.metrics.outbox_wait.observe(waited.max(0) as f64 / 1000.0);
        }
        recorded && !matches!(outcome, Sent::Unknown(_))
    }

    /// Settles sends a crash interrupted: WhatsApp Web has the message (sent, with its
    /// receipt) or it goes back to the front of the queue with the same id. True when every
    /// one was settled.
    async fn settle(&self, session: &Session) -> bool {
        let in_flight = match self.outbox.in_flight() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                return false;
            }
        };
        for message in in_flight {
            let expr = format!(
                "window.__waoBridge.lookup({}, {})",
                serde_json::json!(message.to),
                serde_json::json!(message.id)
            );
            let found = match session.eval::<Lookup>(&expr).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, id = %message.id, "looking up an interrupted send failed");
                    return false;
                }
            };
            let stored = if found.found {
                info!(id = %message.id, "an interrupted send had reached WhatsApp");
                self.outbox
                    .sent(&message.id)
                    .and_then(|_| self.outbox.ack(&message.id, found.ack.unwrap_or(1)))
            } else {
                info!(id = %message.id, "an interrupted send had not reached WhatsApp: sending it again");
                self.outbox.requeue(&message.id)
            };
            if let Err(e) = stored {
                warn!(error = %e, id = %message.id, "could not settle an interrupted send");
                return false;
            }
        }
        true
    }

    /// Receipts WhatsApp Web reported since the last poll.
    async fn record_acks(&self, session: &Session) {
        let Ok(acks) = session.eval::<Vec<Ack>>("window.__waoBridge.drainAcks()").await else { return };
        for ack in acks {
            let label = crate::outbox::Status::from_ack(ack.ack).map_or("error", |s| s.as_str());
            if ack.ack >= 1 || ack.ack < 0 {
                self.metrics.receipts.with_label_values(&[label]).inc();
            }
            if let Err(e) = self.outbox.ack(&ack.id, ack.ack) {
                warn!(error = %e, id = %ack.id, "could not record a receipt");
            }
        }
    }

    /// Incoming messages: each poll what the page took since the last one, stored before the
    /// next drain; once per launch the catch-up; then "everything drained is stored" is written
    /// down (at most every minute).
    async fn take_incoming(&self, session: &Session, intake: &mut Intake) {
        let drained_at = jiff::Timestamp::now();
        match session.eval::<Vec<Seen>>("window.__waoBridge.drainIncoming()").await {
            Ok(seen) => {
                intake.unsaved.extend(seen);
                intake.failing = false;
            }
            Err(e) => {
                // Once per run of failures (a replaced bridge script without it fails every poll).
                if !std::mem::replace(&mut intake.failing, true) {
                    warn!(error = %e, "taking incoming messages from the page failed");
                }
                return;
            }
        }
        if !intake.unsaved.is_empty() {
            match self.outbox.receive(intake.unsaved.clone()) {
                Ok(new) => {
                    self.metrics.incoming.with_label_values(&["live"]).inc_by(new.len() as u64);
                    intake.unsaved.clear();
                }
                Err(e) => {
                    // Kept here and stored with the next drain; a crash leaves them to the catch-up.
                    warn!(error = %e, waiting = intake.unsaved.len(), "could not store incoming messages");
                    return;
                }
            }
        }
        if !intake.caught_up && intake.retry_at.is_none_or(|at| Instant::now() >= at) {
            intake.caught_up = self.catch_up(session).await;
            intake.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
        }
        if intake.caught_up && intake.marked.is_none_or(|at| at.elapsed() >= MARK_EVERY) {
            match self.outbox.set_inbound_seen_until(drained_at) {
                Ok(()) => intake.marked = Some(Instant::now()),
                Err(e) => warn!(error = %e, "could not record how far incoming messages are stored"),
            }
        }
    }

    /// Stores the incoming messages the page has (after a reload: restored from its storage)
    /// that the last launch may not have drained: those sent since the last written-down drain
    /// (less a margin), within the inbound retention. True once done.
    async fn catch_up(&self, session: &Session) -> bool {
        let now = jiff::Timestamp::now();
        let days = self.spec.borrow().inbound.retention_days.max(1) as u64;
        let floor = now - Duration::from_secs(days * 86_400);
        let since = match self.outbox.inbound_seen_until() {
            Ok(seen) => (seen.unwrap_or(now) - CATCH_UP_MARGIN).max(floor),
            Err(e) => {
                warn!(error = %e, "reading how far incoming messages are stored failed");
                return false;
            }
        };
        let expr = format!("window.__waoBridge.recentIncoming({})", since.as_second());
        let seen = match session.eval::<Vec<Seen>>(&expr).await {
            Ok(seen) => seen,
            Err(e) => {
                warn!(error = %e, "catching up with incoming messages failed; trying again later");
                return false;
            }
        };
        let found = seen.len();
        match self.outbox.receive(seen) {
            Ok(new) => {
                self.metrics.incoming.with_label_values(&["catch_up"]).inc_by(new.len() as u64);
                info!(%since, found, new = new.len(), "caught up with the incoming messages WhatsApp Web has");
                true
            }
            Err(e) => {
                warn!(error = %e, "could not store the incoming messages of the catch-up");
                false
            }
        }
    }

    async fn act(&self, session: &Session, tracker: &mut Tracker, action: Action) {
        match action {
            Action::RefreshQr => {
                match session.eval::<Option<String>>("window.__waoBridge.refreshQR()").await {
                    Ok(Some(how)) => info!(%how, "asked WhatsApp Web for new QR codes"),
                    Ok(None) => warn!("this WhatsApp Web build offers no way to refresh the QR"),
                    Err(e) => warn!(error = %e, "refreshing the QR failed"),
                }
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
        match command {
            Command::Logout { reply } => {
                let result = session
                    .eval::<bool>("window.__waoBridge.logout()")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            Command::Contacts { reply } => {
                let contacts = session.eval("window.__waoBridge.contacts()").await;
                let _ = reply.send(contacts.map_err(|e| e.to_string()));
            }
            Command::CheckNumber { number, reply } => {
                let expr = format!("window.__waoBridge.checkNumber({})", serde_json::json!(number));
                let _ = reply.send(session.eval(&expr).await.map_err(|e| e.to_string()));
            }
            Command::DownloadMedia { id, chat, reply } => {
                let expr = format!(
                    "window.__waoBridge.downloadMedia({}, {})",
                    serde_json::json!(id),
                    serde_json::json!(chat)
                );
                let _ = reply.send(session.eval(&expr).await.map_err(|e| e.to_string()));
            }
        }
    }
}

/// What a launch knows of incoming messages.
#[derive(Default)]
struct Intake {
    /// This launch's catch-up is done.
    caught_up: bool,
    /// When the catch-up may be tried (again).
    retry_at: Option<Instant>,
    /// Drained from the page but not stored yet (the store failed): stored with the next drain.
    unsaved: Vec<Seen>,
    /// When "everything drained is stored" was last written down.
    marked: Option<Instant>,
    /// The last drain failed (said once, not every poll).
    failing: bool,
}

/// What the bridge's `lookup` resolves to.
#[derive(serde::Deserialize)]
struct Lookup {
    found: bool,
    ack: Option<i64>,
}

/// A receipt from the bridge's `drainAcks`.
#[derive(serde::Deserialize)]
struct Ack {
    id: String,
    ack: i64,
}

/// What the bridge's `sendText` and `sendMedia` resolve to.
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

/// Sends a text through the bridge with the message id the outbox chose.
async fn send_text(session: &Session, to: &str, body: &str, id: &str) -> Sent {
    let expr = format!(
        "window.__waoBridge.sendText({}, {}, {})",
        serde_json::json!(to),
        serde_json::json!(body),
        serde_json::json!(id)
    );
    send_through(session, &expr).await
}

/// Sends a media message through the bridge (`sendMedia`) with the message id the outbox chose,
/// its bytes read from the volume.
async fn send_media(
    session: &Session,
    outbox: &Outbox,
    message: &crate::outbox::Message,
    media: &crate::outbox::media::Media,
) -> Sent {
    use base64::Engine;
    let bytes = match outbox.media().read(&media.sha256).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return Sent::Refused(reason::MEDIA_MISSING, format!("the media is not on the volume: {e}"));
        }
    };
    let payload = serde_json::json!({
        "kind": media.kind,
        "mimetype": media.mimetype,
        "filename": media.filename,
        "caption": message.message,
        "dataBase64": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    let expr = format!(
        "window.__waoBridge.sendMedia({}, {payload}, {})",
        serde_json::json!(message.to),
        serde_json::json!(message.id)
    );
    send_through(session, &expr).await
}

/// Runs a send of the bridge (`sendText`, `sendMedia`) and reads its outcome.
async fn send_through(session: &Session, expr: &str) -> Sent {
    let outcome = match session.eval::<SendOutcome>(expr).await {
        Ok(outcome) => outcome,
        Err(e) => return Sent::Unknown(e.to_string()),
    };
    match (outcome.id, outcome.error) {
        (Some(_), None) => Sent::Yes,
        (_, Some(e)) => {
            let why = match e.code.as_str() {
                "NOT_ON_WHATSAPP" => reason::NOT_ON_WHATSAPP,
                "BRIDGE_INCOMPATIBLE" => reason::BRIDGE_INCOMPATIBLE,
                _ => reason::SEND_FAILED,
            };
            Sent::Refused(why, e.message)
        }
        (None, None) => Sent::Unknown("the bridge answered neither an id nor an error".into()),
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
