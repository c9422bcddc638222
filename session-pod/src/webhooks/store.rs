//! The webhooks' deliveries on disk: tables of their own in the outbox file, so they share its
//! fsync on every commit and its reopening after a failure of the volume (see
//! [`crate::outbox::Outbox::database`]).

use jiff::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};
use whatsapp_crds::WebhookSpec;

use super::{Delivery, DeliveryStatus};
use crate::outbox::{Event, StoreError, internal};

/// Delivery id -> the delivery (JSON). Ids follow the order events were queued in.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_deliveries");
/// (endpoint, delivery id) of pending deliveries: each endpoint's queue, in order.
const QUEUE: TableDefinition<(&str, u64), ()> = TableDefinition::new("webhook_queue");
/// (endpoint, status) -> deliveries, kept with every change (the metrics read it).
const COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("webhook_counts");
/// `cursor`: the last event of the log queued for the endpoints; `next_id`: the next delivery id.
const META: TableDefinition<&str, u64> = TableDefinition::new("webhook_meta");

fn decode(bytes: &[u8]) -> Result<Delivery, StoreError> {
    serde_json::from_slice(bytes).map_err(internal)
}

fn encode(d: &Delivery) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(d).map_err(internal)
}

/// Creates the tables, so readers never meet a missing one.
pub fn create(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    tx.open_table(DELIVERIES).map_err(internal)?;
    tx.open_table(QUEUE).map_err(internal)?;
    tx.open_table(COUNTS).map_err(internal)?;
    tx.open_table(META).map_err(internal)?;
    tx.commit().map_err(internal)
}

/// The last event queued for the endpoints (0: none yet).
pub fn cursor(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let meta = match tx.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(internal(e)),
    };
    Ok(meta.get("cursor").map_err(internal)?.map(|v| v.value()).unwrap_or(0))
}

/// Adds `delta` to the deliveries of `endpoint` in `status`.
fn count(
    tx: &WriteTransaction,
    endpoint: &str,
    status: DeliveryStatus,
    delta: i64,
) -> Result<(), StoreError> {
    let mut counts = tx.open_table(COUNTS).map_err(internal)?;
    let key = (endpoint, status.as_str());
    let before = counts.get(key).map_err(internal)?.map(|v| v.value()).unwrap_or(0);
    counts.insert(key, before.saturating_add_signed(delta)).map_err(internal)?;
    Ok(())
}

/// Queues `events` (the log right after `after`) for every endpoint that takes their type and
/// moves the cursor past them, in one transaction: an event is queued once per endpoint, crash
/// or not. Nothing happens if the cursor is no longer `after`. Returns the deliveries queued.
pub fn enqueue(
    db: &Database,
    after: u64,
    events: &[Event],
    endpoints: &[WebhookSpec],
    now: Timestamp,
) -> Result<usize, StoreError> {
    let Some(last) = events.last() else { return Ok(0) };
    let tx = db.begin_write().map_err(internal)?;
    let mut queued: Vec<&str> = Vec::new();
    {
        let mut meta = tx.open_table(META).map_err(internal)?;
        if meta.get("cursor").map_err(internal)?.map(|v| v.value()).unwrap_or(0) != after {
            return Ok(0);
        }
        let mut all = tx.open_table(DELIVERIES).map_err(internal)?;
        let mut queue = tx.open_table(QUEUE).map_err(internal)?;
        let mut id = meta.get("next_id").map_err(internal)?.map(|v| v.value()).unwrap_or(1);
        for event in events {
            for endpoint in endpoints.iter().filter(|e| e.events.contains(&event.kind)) {
                let delivery = Delivery::of(id, &endpoint.name, event, now)?;
                all.insert(id, encode(&delivery)?.as_slice()).map_err(internal)?;
                queue.insert((endpoint.name.as_str(), id), ()).map_err(internal)?;
                queued.push(&endpoint.name);
                id += 1;
            }
        }
        meta.insert("next_id", id).map_err(internal)?;
        meta.insert("cursor", last.seq).map_err(internal)?;
    }
    for endpoint in endpoints {
        let n = queued.iter().filter(|q| **q == endpoint.name).count() as i64;
        if n > 0 {
            count(&tx, &endpoint.name, DeliveryStatus::Pending, n)?;
        }
    }
    tx.commit().map_err(internal)?;
    Ok(queued.len())
}

/// The first pending delivery of `endpoint`: the one that goes next.
pub fn head(db: &Database, endpoint: &str) -> Result<Option<Delivery>, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let queue = tx.open_table(QUEUE).map_err(internal)?;
    let first = queue.range((endpoint, 0)..=(endpoint, u64::MAX)).map_err(internal)?.next();
    let Some(entry) = first else { return Ok(None) };
    let id = entry.map_err(internal)?.0.value().1;
    let all = tx.open_table(DELIVERIES).map_err(internal)?;
    all.get(id).map_err(internal)?.map(|b| decode(b.value())).transpose()
}

/// Runs `change` on the delivery `id` in one transaction, keeping the queue and the counts
/// in step with its status; the delivery as it is now, `None` when there is none.
pub fn modify(
    db: &Database,
    id: u64,
    change: impl FnOnce(&mut Delivery),
) -> Result<Option<Delivery>, StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    let (before, delivery) = {
        let mut all = tx.open_table(DELIVERIES).map_err(internal)?;
        let mut delivery = match all.get(id).map_err(internal)? {
            Some(b) => decode(b.value())?,
            None => return Ok(None),
        };
        let before = delivery.status;
        change(&mut delivery);
        all.insert(id, encode(&delivery)?.as_slice()).map_err(internal)?;
        (before, delivery)
    };
    if before != delivery.status {
        let mut queue = tx.open_table(QUEUE).map_err(internal)?;
        let key = (delivery.endpoint.as_str(), id);
        if before == DeliveryStatus::Pending {
            queue.remove(key).map_err(internal)?;
        }
        if delivery.status == DeliveryStatus::Pending {
            queue.insert(key, ()).map_err(internal)?;
        }
        drop(queue);
        count(&tx, &delivery.endpoint, before, -1)?;
        count(&tx, &delivery.endpoint, delivery.status, 1)?;
    }
    tx.commit().map_err(internal)?;
    Ok(Some(delivery))
}

/// One page of a listing, newest first.
pub struct Page {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<u64>,
}

/// Deliveries with ids below `cursor`, newest first, of one status and one endpoint if given.
pub fn list(
    db: &Database,
    status: Option<DeliveryStatus>,
    endpoint: Option<&str>,
    cursor: Option<u64>,
    limit: usize,
) -> Result<Page, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let all = tx.open_table(DELIVERIES).map_err(internal)?;
    let mut deliveries = Vec::new();
    let mut next_cursor = None;
    for entry in all.range(..cursor.unwrap_or(u64::MAX)).map_err(internal)?.rev() {
        let (id, bytes) = entry.map_err(internal)?;
        let delivery = decode(bytes.value())?;
        if status.is_some_and(|s| s != delivery.status) || endpoint.is_some_and(|e| e != delivery.endpoint) {
            continue;
        }
        if deliveries.len() == limit {
            next_cursor = Some(id.value() + 1);
            break;
        }
        deliveries.push(delivery);
    }
    Ok(Page { deliveries, next_cursor })
}

/// Deliveries by endpoint and status.
pub fn counts(db: &Database) -> Result<Vec<(String, DeliveryStatus, u64)>, StoreError> {
    let tx = db.begin_read().map_err(internal)?;
    let counts = tx.open_table(COUNTS).map_err(internal)?;
    let mut out = Vec::new();
    for entry in counts.iter().map_err(internal)? {
        let (key, n) = entry.map_err(internal)?;
        let (endpoint, status) = key.value();
        if let Some(status) = DeliveryStatus::parse(status) {
            out.push((endpoint.to_string(), status, n.value()));
        }
    }
    Ok(out)
}

/// Forgets up to `limit` deliveries queued before `cutoff`: delivered and dead ones, and
/// pending ones of endpoints no longer `configured`; returns how many went.
pub fn prune(
    db: &Database,
    cutoff: Timestamp,
    configured: &[&str],
    limit: usize,
) -> Result<usize, StoreError> {
    let tx = db.begin_write().map_err(internal)?;
    let mut old = Vec::new();
    {
        let mut all = tx.open_table(DELIVERIES).map_err(internal)?;
        // Bounded work per call: at most `limit` forgotten, `4 * limit` looked at.
        for entry in all.iter().map_err(internal)?.take(limit * 4) {
            let (id, bytes) = entry.map_err(internal)?;
            let delivery = decode(bytes.value())?;
            // Ids follow queueing: past the cutoff, everything after is newer.
            if delivery.created_at >= cutoff || old.len() == limit {
                break;
            }
            if delivery.status != DeliveryStatus::Pending || !configured.contains(&delivery.endpoint.as_str())
            {
                old.push((id.value(), delivery));
            }
        }
        let mut queue = tx.open_table(QUEUE).map_err(internal)?;
        for (id, delivery) in &old {
            all.remove(*id).map_err(internal)?;
            queue.remove((delivery.endpoint.as_str(), *id)).map_err(internal)?;
        }
    }
    for (_, delivery) in &old {
        count(&tx, &delivery.endpoint, delivery.status, -1)?;
    }
    tx.commit().map_err(internal)?;
    Ok(old.len())
}
