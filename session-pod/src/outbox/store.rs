//! The outbox on disk: one redb file on the session's volume. Every write is one transaction,
//! committed with fsync before it returns, so what a caller was told is accepted survives a
//! crash of the process, of Chromium or of the node.

use std::path::Path;

use jiff::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::inbound::{InboundPage, Incoming};
use super::{Event, Message, Status, new_message_id};

/// seq -> the message (JSON).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// WhatsApp message id -> seq.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// Idempotency key -> seq.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// (due, seq) of queued messages: the queue, in the order they may go.
const QUEUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("queue");
/// seq of messages handed to WhatsApp Web and not yet confirmed.
const SENDING: TableDefinition<u64, ()> = TableDefinition::new("sending");
/// (batch, seq) of messages accepted in a batch.
const BATCHES: TableDefinition<(&str, u64), ()> = TableDefinition::new("batches");
/// Counters: the next seq, and when the pacing allows the next send.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Messages by status, kept with every change (the status summary and the metrics read it).
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");

/// seq -> an event (JSON): what webhooks are told, in order (see [`append_event`]).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// seq -> an incoming message (JSON), in the order they were stored.
const INBOUND: TableDefinition<u64, &[u8]> = TableDefinition::new("inbound");
/// WhatsApp id of an incoming message -> seq.
const INBOUND_IDS: TableDefinition<&str, u64> = TableDefinition::new("inbound_ids");

/// The page cache of the outbox file.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Moves `n` messages from one status's count to another's, inside the change's transaction.
fn recount(tx: &redb::WriteTransaction, from: Option<Status>, to: Status, n: u64) -> Result<(), StoreError> {
    if from == Some(to) || n == 0 {
        return Ok(());
    }
    let mut counts = tx.open_table(COUNTS).map_err(internal)?;
    if let Some(from) = from {
        let before = counts.get(from.as_str()).map_err(internal)?.map(|v| v.value()).unwrap_or(0);
        counts.insert(from.as_str(), before.saturating_sub(n)).map_err(internal)?;
    }
    let before = counts.get(to.as_str()).map_err(internal)?.map(|v| v.value()).unwrap_or(0);
    counts.insert(to.as_str(), before + n).map_err(internal)?;
    Ok(())
}

/// Appends an event to the log inside `tx`, the transaction of the change it tells about, so
/// a change is never committed without its event (nor an event without its change).
pub fn append_event(
    tx: &redb::WriteTransaction,
    kind: &str,
    data: serde_json::Value,
    at: Timestamp,
) -> Result<Event, StoreError> {
    let mut meta = tx.open_table(META).map_err(internal)?;
    let seq = meta.get("next_event").map_err(internal)?.map(|v| v.value()).unwrap_or(1);
    meta.insert("next_event", seq + 1).map_err(internal)?;
    let salt: u32 = rand::random();
    let event = Event { seq, id: format!("evt_{seq:012}{salt:08x}"), kind: kind.to_string(), at, data };
    let bytes = serde_json::to_vec(&event).map_err(internal)?;
    tx.open_table(EVENTS).map_err(internal)?.insert(seq, bytes.as_slice()).map_err(internal)?;
    Ok(event)
}

/// The `message.ack` event of a sent message's new status.
fn ack_event(message: &Message) -> serde_json::Value {
    serde_json::json!({
        "id": message.id,
        "to": message.to,
        "status": message.status,
        "reason": message.reason,
        "error": message.error,
        "idempotencyKey": message.idempotency_key,
        "batch": message.batch,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the outbox holds {queued} queued messages; it takes at most {max}")]
    Full { queued: u64, max: u64 },
    #[error("the session's volume is full: {0}")]
    StorageFull(String),
    #[error("the message has left the queue (it is {0:?})")]
    NotCancellable(Status),
    #[error("the outbox store failed: {0}")]
    Internal(String),
}

fn closed() -> StoreError {
    StoreError::Internal("the outbox file is not open (it could not be opened again)".into())
}

/// A failure of the file as a store error (a full volume recognised), for every table in it.
pub fn internal(e: impl std::fmt::Display) -> StoreError {
    let text = e.to_string();
    // ENOSPC, however redb words it.
    if text.contains("No space left") || text.contains("os error 28") {
        StoreError::StorageFull(text)
    } else {
        StoreError::Internal(text)
    }
}

/// A message a caller hands in.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    pub to: String,
    pub message: String,
    pub idempotency_key: Option<String>,
    pub not_before: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// Media already on the volume ([`super::media::MediaStore`]); `message` is its caption.
    pub media: Option<super::media::Media>,
}

/// What became of a message handed in.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub message: Message,
    /// The idempotency key was known: this is the message accepted before; nothing new.
    pub duplicate: bool,
}

/// One page of a listing, newest first.
#[derive(Debug)]
pub struct Page {
    pub messages: Vec<Message>,
    pub next_cursor: Option<u64>,
}

pub struct Store {
    path: std::path::PathBuf,
    /// redb refuses every call after an I/O error (a full volume) until the file is opened
    /// again: the handle is replaced then, and what was committed is all there.
    db: std::sync::RwLock<Option<Database>>,
    failed: std::sync::atomic::AtomicBool,
    max_queued: u64,
}

fn ms(t: Timestamp) -> u64 {
    t.as_millisecond().max(0) as u64
}

fn decode(bytes: &[u8]) -> Result<Message, StoreError> {
    serde_json::from_slice(bytes).map_err(internal)
}

fn encode(m: &Message) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(m).map_err(internal)
}

impl Store {
    pub fn open(path: &Path, max_queued: u64) -> Result<Store, StoreError> {
        let db = Self::create(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            db: std::sync::RwLock::new(Some(db)),
            failed: std::sync::atomic::AtomicBool::new(false),
            max_queued,
        })
    }

    fn create(path: &Path) -> Result<Database, StoreError> {
        // redb caches up to 1 GiB of pages by default; a session pod is given far less memory.
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(internal)?;
        // Every table exists from the start, so readers never meet a missing one.
        let tx = db.begin_write().map_err(internal)?;
        {
            tx.open_table(MESSAGES).map_err(internal)?;
            tx.open_table(IDS).map_err(internal)?;
            tx.open_table(KEYS).map_err(internal)?;
            tx.open_table(QUEUE).map_err(internal)?;
            tx.open_table(SENDING).map_err(internal)?;
            tx.open_table(BATCHES).map_err(internal)?;
            tx.open_table(META).map_err(internal)?;
            tx.open_table(COUNTS).map_err(internal)?;
            tx.open_table(EVENTS).map_err(internal)?;
            tx.open_table(INBOUND).map_err(internal)?;
            tx.open_table(INBOUND_IDS).map_err(internal)?;
        }
        tx.commit().map_err(internal)?;
        Ok(db)
    }

    /// Runs `op` on the open database: the tables other modules keep in the outbox file (the
    /// webhooks' deliveries), written in transactions of their own.
    pub fn with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.db()?;
        op(db.as_ref().ok_or_else(closed)?)
    }

    /// A call failed on the file: the next one opens it again.
    pub fn failed(&self) {
        self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The database, opened again first if a call failed on it or an earlier opening failed.
    /// A caller that finds no database opens it itself, so it fails, if it does, with the
    /// opening's own error (a full volume's), never with "not open".
    fn db(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Database>>, StoreError> {
        let mut reopen = self.failed.swap(false, std::sync::atomic::Ordering::SeqCst);
        // Another caller may close the file between the opening and the read below: look again.
        for _ in 0..3 {
            if !reopen {
                let guard = self.db.read().map_err(internal)?;
                if guard.is_some() {
                    return Ok(guard);
                }
            }
            let mut slot = self.db.write().map_err(internal)?;
            if reopen || slot.is_none() {
                // The old handle goes first: a file is opened by one handle at a time.
                slot.take();
                match Self::create(&self.path) {
                    Ok(db) => *slot = Some(db),
                    Err(e) => return Err(e),
                }
            }
            reopen = false;
        }
        Err(closed())
    }

    pub fn accept(
        &self,
        messages: &[NewMessage],
        batch: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Accepted>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let mut accepted: Vec<Accepted> = Vec::with_capacity(messages.len());
        {
            let mut all = tx.open_table(MESSAGES).map_err(internal)?;
            let mut ids = tx.open_table(IDS).map_err(internal)?;
            let mut keys = tx.open_table(KEYS).map_err(internal)?;
            let mut queue = tx.open_table(QUEUE).map_err(internal)?;
            let mut batches = tx.open_table(BATCHES).map_err(internal)?;
            let mut meta = tx.open_table(META).map_err(internal)?;
            let mut seq = meta.get("next_seq").map_err(internal)?.map(|v| v.value()).unwrap_or(1);
            let mut queued = queue.len().map_err(internal)?;
            for new in messages {
                if let Some(key) = &new.idempotency_key
                    && let Some(existing) = keys.get(key.as_str()).map_err(internal)?
                {
                    let existing = existing.value();
                    let bytes = all
                        .get(existing)
                        .map_err(internal)?
                        .ok_or_else(|| internal("a key without its message"))?;
                    accepted.push(Accepted { message: decode(bytes.value())?, duplicate: true });
                    continue;
                }
                if queued >= self.max_queued {
                    return Err(StoreError::Full { queued, max: self.max_queued });
                }
                let message = Message {
                    id: new_message_id(),
                    to: new.to.clone(),
                    message: new.message.clone(),
                    status: Status::Queued,
                    reason: None,
                    error: None,
                    idempotency_key: new.idempotency_key.clone(),
                    batch: batch.map(str::to_string),
                    not_before: new.not_before,
                    expires_at: new.expires_at,
                    created_at: now,
                    sent_at: None,
                    delivered_at: None,
                    read_at: None,
                    played_at: None,
                    failed_at: None,
                    attempts: 0,
                    media: new.media.clone(),
                };
                all.insert(seq, encode(&message)?.as_slice()).map_err(internal)?;
                ids.insert(message.id.as_str(), seq).map_err(internal)?;
                if let Some(key) = &message.idempotency_key {
                    keys.insert(key.as_str(), seq).map_err(internal)?;
                }
                if let Some(batch) = batch {
                    batches.insert((batch, seq), ()).map_err(internal)?;
                }
                let due = message.not_before.map(ms).unwrap_or(0);
                queue.insert((due, seq), ()).map_err(internal)?;
                queued += 1;
                seq += 1;
                accepted.push(Accepted { message, duplicate: false });
            }
            meta.insert("next_seq", seq).map_err(internal)?;
        }
        let new = accepted.iter().filter(|a| !a.duplicate).count() as u64;
        recount(&tx, None, Status::Queued, new)?;
        tx.commit().map_err(internal)?;
        Ok(accepted)
    }

    fn seq_of(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let ids = tx.open_table(IDS).map_err(internal)?;
        Ok(ids.get(id).map_err(internal)?.map(|v| v.value()))
    }

    /// The message accepted with an idempotency key.
    pub fn by_key(&self, key: &str) -> Result<Option<Message>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let keys = tx.open_table(KEYS).map_err(internal)?;
        let Some(seq) = keys.get(key).map_err(internal)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        all.get(seq).map_err(internal)?.map(|b| decode(b.value())).transpose()
    }

    pub fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let ids = tx.open_table(IDS).map_err(internal)?;
        let Some(seq) = ids.get(id).map_err(internal)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        all.get(seq).map_err(internal)?.map(|b| decode(b.value())).transpose()
    }

    pub fn list(
        &self,
        status: Option<Status>,
        batch: Option<&str>,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        let below = cursor.unwrap_or(u64::MAX);
        let seqs: Box<dyn Iterator<Item = Result<u64, StoreError>>> = match batch {
            Some(batch) => {
                let batches = tx.open_table(BATCHES).map_err(internal)?;
                let range = batches.range((batch, 0)..(batch, below)).map_err(internal)?;
                let seqs: Vec<_> =
                    range.rev().map(|r| r.map(|(k, _)| k.value().1).map_err(internal)).collect();
                Box::new(seqs.into_iter())
            }
            None => Box::new(
                all.range(..below)
                    .map_err(internal)?
                    .rev()
                    .map(|r| r.map(|(k, _)| k.value()).map_err(internal))
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
        };
        let mut messages = Vec::new();
        let mut next_cursor = None;
        for seq in seqs {
            let seq = seq?;
            let Some(bytes) = all.get(seq).map_err(internal)? else { continue };
            let message = decode(bytes.value())?;
            if status.is_some_and(|s| s != message.status) {
                continue;
            }
            if messages.len() == limit {
                next_cursor = Some(seq + 1);
                break;
            }
            messages.push(message);
        }
        Ok(Page { messages, next_cursor })
    }

    pub fn batch_summary(&self, batch: &str) -> Result<Option<Vec<(Status, u64)>>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        let batches = tx.open_table(BATCHES).map_err(internal)?;
        let mut counts: Vec<(Status, u64)> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        let mut any = false;
        for entry in batches.range((batch, 0)..=(batch, u64::MAX)).map_err(internal)? {
            let (key, _) = entry.map_err(internal)?;
            let Some(bytes) = all.get(key.value().1).map_err(internal)? else { continue };
            let status = decode(bytes.value())?.status;
            any = true;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == status) {
                c.1 += 1;
            }
        }
        Ok(any.then_some(counts))
    }

    /// Runs `change` on the message `id` in one write transaction (which `change` may use for
    /// the other tables) and stores the message it leaves, keeping the counts by status; the
    /// message, or `None` when there is none or `change` left it alone (answered `false`).
    fn modify(
        &self,
        id: &str,
        change: impl FnOnce(&redb::WriteTransaction, u64, &mut Message) -> Result<bool, StoreError>,
    ) -> Result<Option<Message>, StoreError> {
        let Some(seq) = self.seq_of(id)? else { return Ok(None) };
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let (before, message) = {
            let mut all = tx.open_table(MESSAGES).map_err(internal)?;
            let mut message = match all.get(seq).map_err(internal)? {
                Some(b) => decode(b.value())?,
                None => return Ok(None),
            };
            let before = message.status;
            if !change(&tx, seq, &mut message)? {
                return Ok(None);
            }
            all.insert(seq, encode(&message)?.as_slice()).map_err(internal)?;
            (before, message)
        };
        recount(&tx, Some(before), message.status, 1)?;
        if before != message.status && (message.status.is_sent() || message.status == Status::Failed) {
            append_event(&tx, "message.ack", ack_event(&message), Timestamp::now())?;
        }
        tx.commit().map_err(internal)?;
        Ok(Some(message))
    }

    /// Fails a queued message (cancel, expiry).
    pub fn fail_queued(
        &self,
        id: &str,
        why: &str,
        error: &str,
        now: Timestamp,
    ) -> Result<Option<Message>, StoreError> {
        self.modify(id, |tx, seq, message| {
            if message.status != Status::Queued {
                return Err(StoreError::NotCancellable(message.status));
            }
            let mut queue = tx.open_table(QUEUE).map_err(internal)?;
            queue.remove((message.not_before.map(ms).unwrap_or(0), seq)).map_err(internal)?;
            message.status = Status::Failed;
            message.reason = Some(why.to_string());
            message.error = Some(error.to_string());
            message.failed_at = Some(now);
            Ok(true)
        })
    }

    /// The first queued message due at `now` (sends interrupted by a crash and requeued come
    /// first); queued messages past their expiry are failed on the way and returned apart.
    pub fn next_due(&self, now: Timestamp) -> Result<(Option<Message>, Vec<Message>), StoreError> {
        let mut expired = Vec::new();
        loop {
            let candidate = {
                let db = self.db()?;
                let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
                let queue = tx.open_table(QUEUE).map_err(internal)?;
                let first = queue.range((0, 0)..=(ms(now), u64::MAX)).map_err(internal)?.next();
                match first {
                    None => return Ok((None, expired)),
                    Some(entry) => {
                        let (key, _) = entry.map_err(internal)?;
                        let seq = key.value().1;
                        let all = tx.open_table(MESSAGES).map_err(internal)?;
                        match all.get(seq).map_err(internal)? {
                            Some(b) => decode(b.value())?,
                            None => return Err(internal("a queued seq without its message")),
                        }
                    }
                }
            };
            if candidate.expires_at.is_some_and(|e| e <= now) {
                if let Some(m) = self.fail_queued(
                    &candidate.id,
                    super::reason::EXPIRED,
                    "expiresAt passed before it could be sent",
                    now,
                )? {
                    expired.push(m);
                }
                continue;
            }
            return Ok((Some(candidate), expired));
        }
    }

    /// The pacing's memory: when the next send may go (ms since the epoch; 0: now), and the
    /// day of the last sends with how many went out that day.
    pub fn pacing(&self) -> Result<(i64, u64, u64), StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let meta = tx.open_table(META).map_err(internal)?;
        let get = |key: &str| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(internal)?.map(|v| v.value()).unwrap_or(0))
        };
        Ok((get("next_send_ms")? as i64, get("day")?, get("day_sent")?))
    }

    /// Queue -> sending, one more attempt, counted on `day`; the next send may go `gap` after
    /// `now`. Persisted before the page is asked to send, so a crash never forgets a send may
    /// have happened.
    pub fn mark_sending(
        &self,
        id: &str,
        now: Timestamp,
        gap: std::time::Duration,
        day: u64,
    ) -> Result<Option<Message>, StoreError> {
        self.modify(id, |tx, seq, message| {
            if message.status != Status::Queued {
                return Ok(false);
            }
            let mut queue = tx.open_table(QUEUE).map_err(internal)?;
            queue.remove((message.not_before.map(ms).unwrap_or(0), seq)).map_err(internal)?;
            // A requeued send sits at due 0.
            queue.remove((0, seq)).map_err(internal)?;
            tx.open_table(SENDING).map_err(internal)?.insert(seq, ()).map_err(internal)?;
            message.status = Status::Sending;
            message.attempts += 1;
            let mut meta = tx.open_table(META).map_err(internal)?;
            meta.insert("next_send_ms", ms(now) + gap.as_millis() as u64).map_err(internal)?;
            let same_day = meta.get("day").map_err(internal)?.map(|v| v.value()) == Some(day);
            let sent = if same_day {
                meta.get("day_sent").map_err(internal)?.map(|v| v.value()).unwrap_or(0)
            } else {
                0
            };
            meta.insert("day", day).map_err(internal)?;
            meta.insert("day_sent", sent + 1).map_err(internal)?;
            Ok(true)
        })
    }

    /// Sending -> queued again, same id: at the front (`at` None: a crash interrupted it and
    /// WhatsApp does not have it), or from `at` on, holding every send back until then
    /// (WhatsApp refused it for now, as when it throttles the account).
    pub fn requeue(&self, id: &str, at: Option<Timestamp>) -> Result<(), StoreError> {
        self.modify(id, |tx, seq, message| {
            if message.status != Status::Sending {
                return Ok(false);
            }
            tx.open_table(SENDING).map_err(internal)?.remove(seq).map_err(internal)?;
            let mut queue = tx.open_table(QUEUE).map_err(internal)?;
            queue.insert((at.map(ms).unwrap_or(0), seq), ()).map_err(internal)?;
            message.status = Status::Queued;
            // The queue entry's due time is the message's notBefore from now on.
            message.not_before = at;
            if let Some(at) = at {
                let mut meta = tx.open_table(META).map_err(internal)?;
                let held = meta.get("next_send_ms").map_err(internal)?.map(|v| v.value()).unwrap_or(0);
                meta.insert("next_send_ms", held.max(ms(at))).map_err(internal)?;
            }
            Ok(true)
        })
        .map(|_| ())
    }

    /// Forgets messages that reached a final state before `cutoff` (their idempotency keys
    /// with them), oldest first, at most `limit` of them; returns how many went.
    pub fn prune(&self, cutoff: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let mut gone: Vec<(Status, u64)> = Vec::new();
        {
            let mut all = tx.open_table(MESSAGES).map_err(internal)?;
            let mut ids = tx.open_table(IDS).map_err(internal)?;
            let mut keys = tx.open_table(KEYS).map_err(internal)?;
            let mut batches = tx.open_table(BATCHES).map_err(internal)?;
            let mut old = Vec::new();
            // Bounded work per call: at most `limit` forgotten, `4 * limit` looked at.
            for entry in all.iter().map_err(internal)?.take(limit * 4) {
                let (seq, bytes) = entry.map_err(internal)?;
                let message = decode(bytes.value())?;
                // Seqs follow acceptance: past the cutoff, everything after is newer.
                if message.created_at >= cutoff || old.len() == limit {
                    break;
                }
                let settled = message.status == Status::Failed || message.status.is_sent();
                if settled {
                    old.push((seq.value(), message));
                }
            }
            for (seq, message) in old {
                all.remove(seq).map_err(internal)?;
                ids.remove(message.id.as_str()).map_err(internal)?;
                if let Some(key) = &message.idempotency_key {
                    keys.remove(key.as_str()).map_err(internal)?;
                }
                if let Some(batch) = &message.batch {
                    batches.remove((batch.as_str(), seq)).map_err(internal)?;
                }
                gone.push((message.status, seq));
            }
        }
        {
            let mut counts = tx.open_table(COUNTS).map_err(internal)?;
            for status in Status::ALL {
                let n = gone.iter().filter(|(s, _)| *s == status).count() as u64;
                if n > 0 {
                    let before =
                        counts.get(status.as_str()).map_err(internal)?.map(|v| v.value()).unwrap_or(0);
                    counts.insert(status.as_str(), before.saturating_sub(n)).map_err(internal)?;
                }
            }
        }
        tx.commit().map_err(internal)?;
        Ok(gone.len())
    }

    pub fn in_flight(&self) -> Result<Vec<Message>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let sending = tx.open_table(SENDING).map_err(internal)?;
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        let mut out = Vec::new();
        for entry in sending.iter().map_err(internal)? {
            let (seq, _) = entry.map_err(internal)?;
            if let Some(b) = all.get(seq.value()).map_err(internal)? {
                out.push(decode(b.value())?);
            }
        }
        Ok(out)
    }

    /// An event of its own (not part of another change, such as the session's state).
    pub fn event(&self, kind: &str, data: serde_json::Value, at: Timestamp) -> Result<Event, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let event = append_event(&tx, kind, data, at)?;
        tx.commit().map_err(internal)?;
        Ok(event)
    }

    /// Up to `limit` events after `seq`, oldest first.
    pub fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let events = tx.open_table(EVENTS).map_err(internal)?;
        let mut out = Vec::new();
        for entry in events.range(seq.saturating_add(1)..).map_err(internal)?.take(limit) {
            let (_, bytes) = entry.map_err(internal)?;
            out.push(serde_json::from_slice(bytes.value()).map_err(internal)?);
        }
        Ok(out)
    }

    /// Forgets up to `limit` events older than `cutoff` and at or before `upto` (what every
    /// reader of the log has taken); returns how many went.
    pub fn prune_events(&self, cutoff: Timestamp, upto: u64, limit: usize) -> Result<usize, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let mut gone = 0;
        {
            let mut events = tx.open_table(EVENTS).map_err(internal)?;
            let mut old = Vec::new();
            for entry in events.range(..=upto).map_err(internal)?.take(limit) {
                let (seq, bytes) = entry.map_err(internal)?;
                let event: Event = serde_json::from_slice(bytes.value()).map_err(internal)?;
                if event.at >= cutoff {
                    break;
                }
                old.push(seq.value());
            }
            for seq in old {
                events.remove(seq).map_err(internal)?;
                gone += 1;
            }
        }
        tx.commit().map_err(internal)?;
        Ok(gone)
    }

    /// Messages by status.
    pub fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let counts = tx.open_table(COUNTS).map_err(internal)?;
        Status::ALL
            .iter()
            .map(|s| Ok((*s, counts.get(s.as_str()).map_err(internal)?.map(|v| v.value()).unwrap_or(0))))
            .collect()
    }

    pub fn queued(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        tx.open_table(QUEUE).map_err(internal)?.len().map_err(internal)
    }

    /// Applies `change` to a message; a message no longer `sending` leaves that set.
    pub fn update(
        &self,
        id: &str,
        now: Timestamp,
        change: impl Fn(&mut Message, Timestamp),
    ) -> Result<Option<Message>, StoreError> {
        self.modify(id, |tx, seq, message| {
            let before = message.clone();
            change(message, now);
            if *message == before {
                return Ok(false);
            }
            if message.status != Status::Sending {
                tx.open_table(SENDING).map_err(internal)?.remove(seq).map_err(internal)?;
            }
            Ok(true)
        })
    }
}

// ---- incoming messages ----------------------------------------------------------------------

fn decode_incoming(bytes: &[u8]) -> Result<Incoming, StoreError> {
    serde_json::from_slice(bytes).map_err(internal)
}

impl Store {
    /// Stores the messages not stored yet (by WhatsApp id), each with its `message` event, in
    /// one transaction; returns those that were new.
    pub fn insert_incoming(
        &self,
        incoming: &[Incoming],
        now: Timestamp,
    ) -> Result<Vec<Incoming>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let mut new = Vec::new();
        {
            let mut all = tx.open_table(INBOUND).map_err(internal)?;
            let mut ids = tx.open_table(INBOUND_IDS).map_err(internal)?;
            let mut meta = tx.open_table(META).map_err(internal)?;
            let mut seq = meta.get("next_inbound").map_err(internal)?.map(|v| v.value()).unwrap_or(1);
            for message in incoming {
                if ids.get(message.id.as_str()).map_err(internal)?.is_some() {
                    continue;
                }
                let bytes = serde_json::to_vec(message).map_err(internal)?;
                all.insert(seq, bytes.as_slice()).map_err(internal)?;
                ids.insert(message.id.as_str(), seq).map_err(internal)?;
                seq += 1;
                new.push(message.clone());
            }
            meta.insert("next_inbound", seq).map_err(internal)?;
        }
        for message in &new {
            append_event(&tx, "message", serde_json::to_value(message).map_err(internal)?, now)?;
        }
        tx.commit().map_err(internal)?;
        Ok(new)
    }

    /// Up to `limit` incoming messages stored before `cursor`, newest first.
    pub fn inbound(&self, cursor: Option<u64>, limit: usize) -> Result<InboundPage, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let all = tx.open_table(INBOUND).map_err(internal)?;
        let mut messages = Vec::new();
        let mut next_cursor = None;
        for entry in all.range(..cursor.unwrap_or(u64::MAX)).map_err(internal)?.rev() {
            let (seq, bytes) = entry.map_err(internal)?;
            if messages.len() == limit {
                next_cursor = Some(seq.value() + 1);
                break;
            }
            messages.push(decode_incoming(bytes.value())?);
        }
        Ok(InboundPage { messages, next_cursor })
    }

    pub fn incoming(&self, id: &str) -> Result<Option<Incoming>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let ids = tx.open_table(INBOUND_IDS).map_err(internal)?;
        let Some(seq) = ids.get(id).map_err(internal)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let all = tx.open_table(INBOUND).map_err(internal)?;
        all.get(seq).map_err(internal)?.map(|b| decode_incoming(b.value())).transpose()
    }

    /// Forgets incoming messages received before `cutoff`, oldest first, at most `limit` of
    /// them; returns how many went.
    pub fn prune_inbound(&self, cutoff: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        let mut gone = 0;
        {
            let mut all = tx.open_table(INBOUND).map_err(internal)?;
            let mut ids = tx.open_table(INBOUND_IDS).map_err(internal)?;
            let mut old = Vec::new();
            for entry in all.iter().map_err(internal)?.take(limit) {
                let (seq, bytes) = entry.map_err(internal)?;
                let message = decode_incoming(bytes.value())?;
                // Seqs follow reception: past the cutoff, everything after is newer.
                if message.received_at >= cutoff {
                    break;
                }
                old.push((seq.value(), message.id));
            }
            for (seq, id) in old {
                all.remove(seq).map_err(internal)?;
                ids.remove(id.as_str()).map_err(internal)?;
                gone += 1;
            }
        }
        tx.commit().map_err(internal)?;
        Ok(gone)
    }

    /// Until when everything the page reported is stored, if ever.
    pub fn inbound_seen_until(&self) -> Result<Option<Timestamp>, StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let meta = tx.open_table(META).map_err(internal)?;
        let ms = meta.get("inbound_seen_ms").map_err(internal)?.map(|v| v.value());
        Ok(ms.and_then(|ms| Timestamp::from_millisecond(ms as i64).ok()))
    }

    pub fn set_inbound_seen_until(&self, at: Timestamp) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_write().map_err(internal)?;
        tx.open_table(META).map_err(internal)?.insert("inbound_seen_ms", ms(at)).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(())
    }
}

// ---- media of outgoing messages -------------------------------------------------------------

impl Store {
    /// The media (SHA-256) the stored messages refer to: every other media file may go.
    pub fn media_in_use(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Refers {
            media: Option<super::media::Media>,
        }
        let db = self.db()?;
        let tx = db.as_ref().ok_or_else(closed)?.begin_read().map_err(internal)?;
        let all = tx.open_table(MESSAGES).map_err(internal)?;
        let mut in_use = std::collections::HashSet::new();
        for entry in all.iter().map_err(internal)? {
            let (_, bytes) = entry.map_err(internal)?;
            let refers: Refers = serde_json::from_slice(bytes.value()).map_err(internal)?;
            in_use.extend(refers.media.map(|m| m.sha256));
        }
        Ok(in_use)
    }
}
