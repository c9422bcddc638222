//! Webhooks: every event of the session's log ([`Event`]: incoming messages, receipts of sent
//! messages, the session's state) POSTed to each endpoint of `spec.webhooks`, signed the
//! Standard Webhooks way, at least once and in order per endpoint.
//!
//! - The ingester copies new events from the log into one queue per endpoint (the events the
//!   endpoint takes) and moves its cursor past them in the same transaction, so an event is
//!   queued exactly once per endpoint whatever crashes.
//! - Each endpoint has a task of its own that delivers its queue in order: the head is tried
//!   until it gets a 2xx, waiting after each failure a random time (full jitter) under a
//!   ceiling of 5 s doubling up to 1 h, or until it is dead: still failing 24 h after it was
//!   queued. A dead delivery is kept, listed and can be redelivered; the queue moves on. A slow
//!   or dead endpoint holds only its own queue: sends and the other endpoints go on.
//! - Deliveries live in tables of their own in the outbox file, so they are as durable as the
//!   events they come from, and an event is acknowledged to the log (the cursor) only once it
//!   is in every queue.

mod secrets;
mod sign;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{Instrument, debug, info, info_span, warn};
use whatsapp_crds::{WebhookSpec, WhatsAppSessionSpec};

use crate::metrics::WebhookMetrics;
use crate::outbox::{Event, Outbox, StoreError, internal};

pub use secrets::{Keys, KubeSecrets};
pub use store::Page;

/// The deadline of each attempt, connecting included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The ceiling of the first wait after a failure; each next one doubles ...
const FIRST_WAIT: Duration = Duration::from_secs(5);
/// ... up to this.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The shortest wait: a random draw never means "again at once".
const MIN_WAIT: Duration = Duration::from_secs(1);
/// A delivery whose attempt fails this long after it was queued is dead.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Events queued per transaction.
const INGEST_BATCH: usize = 500;
/// How often deliveries older than the retention are forgotten, and at most how many a time.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_LIMIT: usize = 10_000;
/// The next try after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// Where a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] =
        [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One event for one endpoint, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: u64,
    pub endpoint: String,
    /// The event's id: the `webhook-id`, the same on every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub last_status: Option<u16>,
    /// When the next attempt goes (while pending).
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    /// When it was queued, or queued again by a redelivery: an attempt that fails
    /// [`GIVE_UP_AFTER`] later makes it dead.
    pub queued_at: Timestamp,
    /// What is POSTed, exactly as signed.
    pub body: String,
}

/// The body of a delivery: Standard Webhooks' payload structure.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: Timestamp,
    data: &'a serde_json::Value,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A 2xx answer, with its status.
    Delivered(u16),
    /// Any other answer (its status), or none (a timeout, a refused connection, no key).
    Failed { status: Option<u16>, error: String, retry_after: Option<Duration> },
}

impl Delivery {
    fn of(id: u64, endpoint: &str, event: &Event, now: Timestamp) -> Result<Delivery, StoreError> {
        let payload = Payload { kind: &event.kind, timestamp: event.at, data: &event.data };
        Ok(Delivery {
            id,
            endpoint: endpoint.to_string(),
            event_id: event.id.clone(),
            kind: event.kind.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_error: None,
            last_status: None,
            next_attempt_at: Some(now),
            created_at: now,
            delivered_at: None,
            queued_at: now,
            body: serde_json::to_string(&payload).map_err(internal)?,
        })
    }

    /// Records an attempt made at `at`: delivered; or failed, to be tried again `wait` later
    /// (never past its deadline), or dead when the deadline has passed.
    fn settle(&mut self, outcome: &Outcome, at: Timestamp, wait: Duration) {
        if self.status != DeliveryStatus::Pending {
            return;
        }
        self.attempts += 1;
        match outcome {
            Outcome::Delivered(code) => {
                self.status = DeliveryStatus::Delivered;
                self.last_status = Some(*code);
                self.last_error = None;
                self.delivered_at = Some(at);
                self.next_attempt_at = None;
            }
            Outcome::Failed { status, error, .. } => {
                self.last_status = *status;
                self.last_error = Some(error.clone());
                let deadline = self.queued_at + GIVE_UP_AFTER;
                if at >= deadline {
                    self.status = DeliveryStatus::Dead;
                    self.next_attempt_at = None;
                } else {
                    self.next_attempt_at = Some((at + wait).min(deadline));
                }
            }
        }
    }

    /// Queued again at `now`, with a full [`GIVE_UP_AFTER`] of attempts ahead.
    fn requeue(&mut self, now: Timestamp) {
        self.status = DeliveryStatus::Pending;
        self.next_attempt_at = Some(now);
        self.queued_at = now;
        self.delivered_at = None;
    }
}

/// The wait after `failed` failed attempts: a random time (full jitter) under a ceiling of
/// 5 s doubling with each failure up to 1 h, at least 1 s, and at least what the endpoint
/// asked for with `Retry-After` (itself at most 1 h).
pub fn backoff(failed: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
    let doubling = 2u32.saturating_pow(failed.saturating_sub(1));
    let ceiling = FIRST_WAIT.saturating_mul(doubling).min(MAX_WAIT);
    let drawn = rng.random_range(MIN_WAIT.as_millis() as u64..=ceiling.as_millis() as u64);
    Duration::from_millis(drawn).max(retry_after.unwrap_or_default()).min(MAX_WAIT)
}

/// The time the engine goes by: the system's, or a test's.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'_, ()>;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'_, ()> {
        let wait = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// How far the outbox's event log may be pruned: every event up to this one (0: none) is in
/// the endpoints' queues, and a delivery carries its own body.
pub fn events_taken_upto(outbox: &Outbox) -> Result<u64, StoreError> {
    outbox.database(store::cursor)
}

/// The session's webhook deliveries: what the API lists and redelivers, and the engine.
#[derive(Clone)]
pub struct Webhooks {
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    /// Rung when a queue may have a new head (events queued, a redelivery): every endpoint's
    /// task looks again.
    kick: Arc<watch::Sender<()>>,
}

/// Runs the task `make` makes, and makes it again if it panics (a store that panics on a
/// full volume, say): a panic must not stop the webhooks for the rest of the process.
async fn supervised<F>(what: &'static str, make: impl Fn() -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    // Aborting this (the endpoint left the spec) aborts the task it runs.
    struct AbortOnDrop(AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    loop {
        let task = tokio::spawn(make());
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Err(e) if e.is_panic() => {
                tracing::error!(task = what, "panicked; starting it again");
                tokio::time::sleep(MIN_WAIT).await;
            }
            _ => return,
        }
    }
}

impl Webhooks {
    /// The deliveries kept in `outbox`'s file, on `clock`.
    pub fn open(outbox: Outbox, clock: Arc<dyn Clock>) -> Result<Webhooks, StoreError> {
        outbox.database(store::create)?;
        Ok(Webhooks { outbox, clock, kick: Arc::new(watch::channel(()).0) })
    }

    fn db<T>(&self, op: impl Fn(&redb::Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.outbox.database(op)
    }

    /// Deliveries below `cursor`, newest first.
    pub fn list(
        &self,
        status: Option<DeliveryStatus>,
        endpoint: Option<&str>,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.db(|db| store::list(db, status, endpoint, cursor, limit))
    }

    /// Queues a delivery again (whatever its status) with a full day of attempts; `None` when
    /// there is no such delivery.
    pub fn redeliver(&self, id: u64) -> Result<Option<Delivery>, StoreError> {
        let now = self.clock.now();
        let delivery = self.db(|db| store::modify(db, id, |d| d.requeue(now)))?;
        if delivery.is_some() {
            self.kick.send_replace(());
        }
        Ok(delivery)
    }

    /// Delivers until dropped: queues events as they are logged, runs a task per endpoint of
    /// the spec (restarted when its spec changes), forgets deliveries past the retention.
    pub async fn run(
        self,
        mut spec: watch::Receiver<WhatsAppSessionSpec>,
        keys: Arc<dyn Keys>,
        metrics: WebhookMetrics,
    ) {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("whatsapp-session/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with static settings");
        // Dropping the set (this future) stops every task.
        let mut tasks = JoinSet::new();
        let ingester = self.clone();
        let (ingest_spec, ingest_metrics) = (spec.clone(), metrics.clone());
        tasks.spawn(supervised("webhook ingester", move || {
            ingester.clone().ingest_forever(ingest_spec.clone(), ingest_metrics.clone())
        }));
        let mut running: HashMap<String, (WebhookSpec, AbortHandle)> = HashMap::new();
        loop {
            let wanted = spec.borrow_and_update().webhooks.clone();
            running.retain(|_, (endpoint, task)| {
                let keep = wanted.contains(endpoint);
                if !keep {
                    task.abort();
                }
                keep
            });
            for endpoint in wanted {
                if running.contains_key(&endpoint.name) {
                    continue;
                }
                let span = info_span!("webhook", endpoint = %endpoint.name);
                let (this, keys, http, metrics) = (self.clone(), keys.clone(), http.clone(), metrics.clone());
                let target = endpoint.clone();
                let task = supervised("webhook deliveries", move || {
                    this.clone().deliver_forever(target.clone(), keys.clone(), http.clone(), metrics.clone())
                });
                running.insert(endpoint.name.clone(), (endpoint, tasks.spawn(task.instrument(span))));
            }
            while tasks.try_join_next().is_some() {}
            if spec.changed().await.is_err() {
                // The spec no longer changes: these endpoints it is, from now on.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Queues what the log gains, as it gains it; forgets old deliveries now and then.
    async fn ingest_forever(self, spec: watch::Receiver<WhatsAppSessionSpec>, metrics: WebhookMetrics) {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            let (endpoints, retention_days) = {
                let spec = spec.borrow();
                (spec.webhooks.clone(), spec.inbound.retention_days)
            };
            let failed = match self.ingest(&endpoints) {
                Ok(queued) => {
                    if queued > 0 {
                        self.kick.send_replace(());
                    }
                    false
                }
                Err(error) => {
                    warn!(%error, "queueing events for the webhooks failed; retrying");
                    true
                }
            };
            self.gauges(&metrics);
            tokio::select! {
                _ = self.outbox.logged.notified() => {}
                _ = prune.tick() => self.prune(&endpoints, retention_days),
                _ = tokio::time::sleep(STORE_RETRY), if failed => {}
            }
        }
    }

    /// Queues every event logged since the cursor for the endpoints that take it; returns
    /// how many deliveries that made.
    fn ingest(&self, endpoints: &[WebhookSpec]) -> Result<usize, StoreError> {
        let mut queued = 0;
        loop {
            let cursor = self.db(store::cursor)?;
            let events = self.outbox.events_after(cursor, INGEST_BATCH)?;
            let now = self.clock.now();
            queued += self.db(|db| store::enqueue(db, cursor, &events, endpoints, now))?;
            if events.len() < INGEST_BATCH {
                return Ok(queued);
            }
        }
    }

    fn prune(&self, endpoints: &[WebhookSpec], retention_days: i32) {
        let retention = Duration::from_secs(u64::try_from(retention_days).unwrap_or(1).max(1) * 86_400);
        let cutoff = self.clock.now() - retention;
        let configured: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        match self.db(|db| store::prune(db, cutoff, &configured, PRUNE_LIMIT)) {
            Ok(0) => {}
            Ok(n) => info!(deliveries = n, "forgot webhook deliveries older than the retention"),
            Err(error) => warn!(%error, "pruning the webhook deliveries failed"),
        }
    }

    fn gauges(&self, metrics: &WebhookMetrics) {
        match self.db(store::counts) {
            Ok(counts) => metrics.counts(&counts),
            Err(error) => warn!(%error, "counting the webhook deliveries failed"),
        }
    }

    /// Delivers the endpoint's queue in order, for as long as the endpoint is in the spec.
    async fn deliver_forever(
        self,
        endpoint: WebhookSpec,
        keys: Arc<dyn Keys>,
        http: reqwest::Client,
        metrics: WebhookMetrics,
    ) {
        let mut kick = self.kick.subscribe();
        loop {
            kick.borrow_and_update();
            let due = match self.deliver_head(&endpoint, keys.as_ref(), &http, &metrics).await {
                Ok(due) => due,
                Err(error) => {
                    warn!(%error, "reading the webhook queue failed; retrying");
                    Some(self.clock.now() + STORE_RETRY)
                }
            };
            match due {
                None => {
                    let _ = kick.changed().await;
                }
                Some(at) if at > self.clock.now() => {
                    tokio::select! {
                        _ = self.clock.sleep_until(at) => {}
                        _ = kick.changed() => {}
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Attempts the head of the endpoint's queue if it is due; returns when the head is due
    /// next (`None`: the queue is empty).
    async fn deliver_head(
        &self,
        endpoint: &WebhookSpec,
        keys: &dyn Keys,
        http: &reqwest::Client,
        metrics: &WebhookMetrics,
    ) -> Result<Option<Timestamp>, StoreError> {
        let Some(head) = self.db(|db| store::head(db, &endpoint.name))? else { return Ok(None) };
        let now = self.clock.now();
        let due = head.next_attempt_at.unwrap_or(now);
        if due > now {
            return Ok(Some(due));
        }
        let outcome = self.attempt(endpoint, &head, keys, http).await;
        let at = self.clock.now();
        let retry_after = match &outcome {
            Outcome::Failed { retry_after, .. } => *retry_after,
            Outcome::Delivered(_) => None,
        };
        let wait = backoff(head.attempts + 1, retry_after, &mut rand::rng());
        if let Some(settled) = self.db(|db| store::modify(db, head.id, |d| d.settle(&outcome, at, wait)))? {
            observe(&settled, at, metrics);
            self.gauges(metrics);
        }
        Ok(Some(at))
    }

    /// One signed POST of the delivery.
    async fn attempt(
        &self,
        endpoint: &WebhookSpec,
        d: &Delivery,
        keys: &dyn Keys,
        http: &reqwest::Client,
    ) -> Outcome {
        let key = match keys.value(&endpoint.secret_ref).await.and_then(|v| sign::signing_key(&v)) {
            Ok(key) => key,
            Err(error) => return Outcome::Failed { status: None, error, retry_after: None },
        };
        let timestamp = self.clock.now().as_second();
        let sent = http
            .post(&endpoint.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign::signature(&key, &d.event_id, timestamp, &d.body))
            .body(d.body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => Outcome::Delivered(answer.status().as_u16()),
            Ok(answer) => Outcome::Failed {
                status: Some(answer.status().as_u16()),
                error: format!("the endpoint answered {}", answer.status()),
                retry_after: retry_after(answer.headers()),
            },
            Err(e) => Outcome::Failed { status: None, error: describe(&e), retry_after: None },
        }
    }
}

/// Counts, times and logs a settled attempt.
fn observe(d: &Delivery, at: Timestamp, metrics: &WebhookMetrics) {
    let outcome = match d.status {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Pending => "failed",
        DeliveryStatus::Dead => "dead",
    };
    metrics.deliveries.with_label_values(&[d.endpoint.as_str(), outcome]).inc();
    let error = d.last_error.as_deref().unwrap_or_default();
    match d.status {
        DeliveryStatus::Delivered => {
            let waited = Duration::try_from(at.duration_since(d.queued_at)).unwrap_or_default();
            metrics.latency.observe(waited.as_secs_f64());
            debug!(delivery = d.id, event = %d.event_id, attempts = d.attempts, "webhook delivered");
        }
        DeliveryStatus::Pending => {
            let next = d.next_attempt_at.map(|t| t.to_string()).unwrap_or_default();
            warn!(delivery = d.id, event = %d.event_id, attempts = d.attempts, error, next, "webhook delivery failed; it will be retried");
        }
        DeliveryStatus::Dead => {
            warn!(delivery = d.id, event = %d.event_id, attempts = d.attempts, error, "webhook delivery dead: still failing 24 h after it was queued");
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by webhook receivers in practice).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

/// Why a request failed, without its URL (the reason and its causes).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests;
