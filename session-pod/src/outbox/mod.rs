//! The outbox: every message a caller hands the session pod, on the session's volume, from
//! "accepted" to its last receipt. A message is persisted (fsync) before the caller hears it
//! was accepted, and its WhatsApp message id is chosen then, so the driver, which owns each
//! send to its end, can settle a send a crash interrupted by looking that id up in WhatsApp
//! Web instead of sending it twice.
//!
//! `queued -> sending -> sent -> delivered -> read (-> played)`, or `failed` with a reason.

mod inbound;
pub mod media;
mod pacing;
mod store;

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

pub use inbound::{Incoming, Seen};
pub use pacing::{Limits, next_gap};
pub use store::{Accepted, NewMessage, Page, StoreError, internal};

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Played,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Played => "played",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Sent or any receipt after it: WhatsApp has the message.
    pub fn is_sent(self) -> bool {
        matches!(self, Status::Sent | Status::Delivered | Status::Read | Status::Played)
    }

    /// The status a WhatsApp Web ack (1 server, 2 delivered, 3 read, 4 played) stands for.
    pub fn from_ack(ack: i64) -> Option<Status> {
        match ack {
            1 => Some(Status::Sent),
            2 => Some(Status::Delivered),
            3 => Some(Status::Read),
            4.. => Some(Status::Played),
            _ => None,
        }
    }
}

/// Why a message failed: stable codes callers can act on.
pub mod reason {
    pub const NOT_ON_WHATSAPP: &str = "NOT_ON_WHATSAPP";
    pub const EXPIRED: &str = "EXPIRED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const SEND_FAILED: &str = "SEND_FAILED";
    pub const BRIDGE_INCOMPATIBLE: &str = "BRIDGE_INCOMPATIBLE";
    /// A media message's bytes are no longer on the session's volume.
    pub const MEDIA_MISSING: &str = "MEDIA_MISSING";
}

/// Something that happened in the session, as webhooks are told: the log of these is kept in
/// the outbox file, appended in the transaction of the change itself (see
/// [`store::append_event`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log: events are told in this order.
    pub seq: u64,
    /// Unique and stable across retries: the `webhook-id`.
    pub id: String,
    /// `message` (an incoming message), `message.ack` (a sent message's new status) or
    /// `state` (the session's state).
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Timestamp,
    pub data: serde_json::Value,
}

/// One message, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// WhatsApp's message id, chosen when the message was accepted.
    pub id: String,
    pub to: String,
    pub message: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub played_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    pub attempts: u32,
    /// An image, video, audio or document (`message` is then its caption, maybe empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<media::Media>,
}

impl Message {
    /// Moves to `status` at `at` if that is forward (receipts never go back).
    fn advance(&mut self, status: Status, at: Timestamp) -> bool {
        let rank = |s: Status| Status::ALL.iter().position(|x| *x == s).unwrap_or(0);
        if self.status == Status::Failed || rank(status) <= rank(self.status) {
            return false;
        }
        self.status = status;
        let field = match status {
            Status::Sent => &mut self.sent_at,
            Status::Delivered => &mut self.delivered_at,
            Status::Read => &mut self.read_at,
            Status::Played => &mut self.played_at,
            _ => return true,
        };
        field.get_or_insert(at);
        if status.is_sent() {
            self.sent_at.get_or_insert(at);
        }
        true
    }
}

/// A WhatsApp message id in WhatsApp Web's own format (`3EB0` and 18 hex digits, as its
/// `MsgKey.newId()` makes them).
pub fn new_message_id() -> String {
    let bytes: [u8; 9] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("3EB0{hex}")
}

/// A store call. A failure on the file makes the next call open it again; a call that met the
/// failure of another (redb refuses every call after one I/O error, a full volume's say) is made
/// once more on the file opened again, so it fails, if it does, for its own reason.
fn call<T>(
    store: &store::Store,
    op: impl Fn(&store::Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut result = op(store);
    if matches!(&result, Err(StoreError::Internal(e)) if e.contains("Previous I/O error")) {
        store.failed();
        result = op(store);
    }
    if matches!(result, Err(StoreError::StorageFull(_) | StoreError::Internal(_))) {
        store.failed();
    }
    result
}

/// The outbox of this session: the store, and who to wake when it changes.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<store::Store>,
    /// The driver waits on this for new work.
    pub work: Arc<Notify>,
    /// Rung when the event log may have grown (one reader: the webhooks' ingester).
    pub logged: Arc<Notify>,
    updates: broadcast::Sender<Message>,
    /// New incoming messages, as they are stored.
    incoming: broadcast::Sender<Incoming>,
    /// The bytes of outgoing media, beside the outbox file.
    media: Arc<media::MediaStore>,
    /// Rung when a store call met a full volume, so the volume is measured at once.
    pub storage_full: Arc<Notify>,
}

impl Outbox {
    /// A store call; see [`call`].
    fn call<T>(&self, op: impl Fn(&store::Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.noticed(call(&self.store, op))
    }

    /// Rings [`Outbox::storage_full`] if `result` met a full volume.
    fn noticed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(result, Err(StoreError::StorageFull(_))) {
            self.storage_full.notify_one();
        }
        result
    }

    /// Opens (or creates) the outbox file; `max_queued` bounds the messages waiting.
    pub fn open(path: &Path, max_queued: u64) -> Result<Outbox, StoreError> {
        let store = store::Store::open(path, max_queued)?;
        Ok(Outbox {
            store: Arc::new(store),
            work: Arc::new(Notify::new()),
            logged: Arc::new(Notify::new()),
            updates: broadcast::channel(1024).0,
            incoming: broadcast::channel(1024).0,
            media: Arc::new(media::MediaStore::new(path.with_file_name("outbox-media"))),
            storage_full: Arc::new(Notify::new()),
        })
    }

    /// Every change of a message, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.updates.subscribe()
    }

    fn publish(&self, message: &Message) {
        let _ = self.updates.send(message.clone());
        self.logged.notify_one();
    }

    /// Logs an event of its own (such as the session's new state).
    pub fn event(&self, kind: &str, data: serde_json::Value) -> Result<Event, StoreError> {
        let event = self.call(|s| s.event(kind, data.clone(), Timestamp::now()))?;
        self.logged.notify_one();
        Ok(event)
    }

    /// Up to `limit` events after `seq`, oldest first.
    pub fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.call(|s| s.events_after(seq, limit))
    }

    /// Forgets events older than `retention` that every reader has taken (up to `upto`), a
    /// bounded number at a time.
    pub fn prune_events(&self, retention: std::time::Duration, upto: u64) -> Result<usize, StoreError> {
        self.call(|s| s.prune_events(Timestamp::now() - retention, upto, 10_000))
    }

    /// A call on the outbox file for tables another module keeps in it (the webhooks'), with
    /// the same reopening after a failure of the file as every outbox call.
    pub fn database<T>(
        &self,
        op: impl Fn(&redb::Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call(|s| s.with_db(&op))
    }

    /// Persists new messages (all or none) and wakes the driver.
    pub async fn accept(
        &self,
        messages: Vec<NewMessage>,
        batch: Option<String>,
    ) -> Result<Vec<Accepted>, StoreError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            call(&store, |s| s.accept(&messages, batch.as_deref(), Timestamp::now()))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let accepted = self.noticed(result)?;
        for a in accepted.iter().filter(|a| !a.duplicate) {
            self.publish(&a.message);
        }
        self.work.notify_one();
        Ok(accepted)
    }

    /// The message accepted with an idempotency key, if any.
    pub fn by_key(&self, key: &str) -> Result<Option<Message>, StoreError> {
        self.call(|s| s.by_key(key))
    }

    pub fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        self.call(|s| s.get(id))
    }

    pub fn list(
        &self,
        status: Option<Status>,
        batch: Option<&str>,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.call(|s| s.list(status, batch, cursor, limit))
    }

    /// Counts of a batch's messages by status; `None` for an unknown batch.
    pub fn batch_summary(&self, batch: &str) -> Result<Option<Vec<(Status, u64)>>, StoreError> {
        self.call(|s| s.batch_summary(batch))
    }

    /// Cancels a queued message: `Ok(None)` when there is no such message, `Err(NotCancellable)`
    /// once it left the queue.
    pub fn cancel(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let cancelled =
            self.call(|s| s.fail_queued(id, reason::CANCELLED, "cancelled by the caller", Timestamp::now()))?;
        if let Some(m) = &cancelled {
            self.publish(m);
        }
        Ok(cancelled)
    }

    /// The next message due at `now` (messages past their expiry are failed on the way), and
    /// when `limits` and the pacing let it go.
    pub fn next_due(
        &self,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Option<(Message, Timestamp)>, StoreError> {
        let (next, expired) = self.call(|s| s.next_due(now))?;
        for m in &expired {
            self.publish(m);
        }
        let Some(next) = next else { return Ok(None) };
        let (next_send_ms, day, sent) = self.call(|s| s.pacing())?;
        let paced = Timestamp::from_millisecond(next_send_ms).unwrap_or(now).max(now);
        Ok(Some((next, limits.opens_at(paced, day, sent))))
    }

    /// The message is about to be handed to WhatsApp Web (counted on `limits`' day); the next
    /// send waits `gap`.
    pub fn sending(
        &self,
        id: &str,
        gap: std::time::Duration,
        limits: &Limits,
    ) -> Result<Option<Message>, StoreError> {
        let now = Timestamp::now();
        let m = self.call(|s| s.mark_sending(id, now, gap, limits.day(now)))?;
        if let Some(m) = &m {
            self.publish(m);
        }
        Ok(m)
    }

    /// WhatsApp Web took the message.
    pub fn sent(&self, id: &str) -> Result<(), StoreError> {
        self.update(id, |m, at| {
            m.advance(Status::Sent, at);
        })
    }

    /// The message failed for good.
    pub fn failed(&self, id: &str, why: &str, error: &str) -> Result<(), StoreError> {
        self.update(id, |m, at| {
            if !m.status.is_sent() {
                m.status = Status::Failed;
                m.reason = Some(why.to_string());
                m.error = Some(error.to_string());
                m.failed_at = Some(at);
            }
        })
    }

    /// A receipt from WhatsApp Web.
    pub fn ack(&self, id: &str, ack: i64) -> Result<(), StoreError> {
        match Status::from_ack(ack) {
            Some(status) => self.update(id, |m, at| {
                m.advance(status, at);
            }),
            None if ack < 0 => {
                self.failed(id, reason::SEND_FAILED, "WhatsApp reported an error for this message")
            }
            None => Ok(()),
        }
    }

    /// A send that a crash interrupted and WhatsApp Web does not have: back to the front of
    /// the queue, same id.
    pub fn requeue(&self, id: &str) -> Result<(), StoreError> {
        self.call(|s| s.requeue(id, None))?;
        self.work.notify_one();
        Ok(())
    }

    /// A send WhatsApp refused for now: again after `wait`, same id, and no other send before.
    pub fn retry_later(&self, id: &str, wait: std::time::Duration) -> Result<(), StoreError> {
        self.call(|s| s.requeue(id, Some(Timestamp::now() + wait)))?;
        self.work.notify_one();
        Ok(())
    }

    /// Messages left in `sending` (by a crash).
    pub fn in_flight(&self) -> Result<Vec<Message>, StoreError> {
        self.call(|s| s.in_flight())
    }

    /// Forgets messages settled (sent or failed) more than `retention` ago, a bounded number
    /// at a time; returns how many went.
    pub fn prune(&self, retention: std::time::Duration) -> Result<usize, StoreError> {
        let gone = self.call(|s| s.prune(Timestamp::now() - retention, 10_000))?;
        self.sweep_media(gone > 0)?;
        Ok(gone)
    }

    /// Deletes the media files no stored message refers to any more (after messages were
    /// forgotten, else at most hourly: what a crash left between writing media and accepting it).
    fn sweep_media(&self, forgot: bool) -> Result<(), StoreError> {
        if !self.media.sweep_due(forgot) {
            return Ok(());
        }
        let in_use = self.call(|s| s.media_in_use())?;
        match self.media.sweep(&in_use) {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "deleted media no message refers to any more"),
            Err(error) => tracing::warn!(%error, "deleting unreferenced media failed"),
        }
        Ok(())
    }

    /// Where outgoing media is written before its message is accepted.
    pub fn media(&self) -> &media::MediaStore {
        &self.media
    }

    /// Messages by status.
    pub fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.call(|s| s.counts())
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> Result<u64, StoreError> {
        self.call(|s| s.queued())
    }

    fn update(&self, id: &str, change: impl Fn(&mut Message, Timestamp)) -> Result<(), StoreError> {
        if let Some(m) = self.call(|s| s.update(id, Timestamp::now(), &change))? {
            self.publish(&m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
