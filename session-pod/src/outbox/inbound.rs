//! Incoming messages: what WhatsApp users wrote to the session, kept in the outbox file from the
//! moment the driver takes them from the page. Each is stored once (by its WhatsApp id: the
//! page's catch-up after a reload and WhatsApp's redelivery give the same message again) and its
//! `message` event is appended in the same transaction, so a message is never told about before
//! it is stored, nor stored without being told about.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Outbox, StoreError};

/// An incoming message, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incoming {
    /// WhatsApp's message id.
    pub id: String,
    pub direction: Direction,
    /// The sender's phone number (digits), when WhatsApp Web knows it.
    pub from: Option<String>,
    /// The sender's LID (the user part), when WhatsApp Web knows it.
    pub from_lid: Option<String>,
    pub push_name: Option<String>,
    /// The chat (`<lid>@lid` or `<phone>@c.us`, a group's `@g.us`).
    pub chat: String,
    /// WhatsApp's message type: `chat` (text), `image`, `video`, `audio`, `ptt`, `document`,
    /// `sticker`, or another.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, or a media message's caption.
    pub body: String,
    /// When the sender sent it (WhatsApp's `t`).
    pub timestamp: Timestamp,
    /// The message this one replies to (WhatsApp Web's `quotedStanzaID`).
    pub quoted_id: Option<String>,
    pub media: Option<Media>,
    /// When the session pod stored it.
    pub received_at: Timestamp,
}

/// Always `in`: what tells an incoming message from a sent one where both are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
}

/// What WhatsApp Web says of a media message (the media itself stays in WhatsApp).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub mimetype: Option<String>,
    pub size: Option<u64>,
    pub filename: Option<String>,
}

/// An incoming message as the bridge reports it (`drainIncoming`, `recentIncoming`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    pub id: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub from_lid: Option<String>,
    #[serde(default)]
    pub push_name: Option<String>,
    pub chat: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub body: String,
    /// Seconds since the epoch.
    pub t: i64,
    #[serde(default)]
    pub quoted_id: Option<String>,
    #[serde(default)]
    pub media: Option<Media>,
}

impl Seen {
    /// The message as stored, received at `at`.
    pub fn received(self, at: Timestamp) -> Incoming {
        Incoming {
            id: self.id,
            direction: Direction::In,
            from: self.from,
            from_lid: self.from_lid,
            push_name: self.push_name,
            chat: self.chat,
            kind: self.kind,
            body: self.body,
            timestamp: Timestamp::from_second(self.t).unwrap_or(at),
            quoted_id: self.quoted_id,
            media: self.media,
            received_at: at,
        }
    }
}

/// One page of incoming messages, newest first.
#[derive(Debug)]
pub struct InboundPage {
    pub messages: Vec<Incoming>,
    pub next_cursor: Option<u64>,
}

impl Outbox {
    /// Stores what the page reported (each message once, with its `message` event); returns the
    /// messages that were new, which are also published to [`Outbox::subscribe_incoming`].
    pub fn receive(&self, seen: Vec<Seen>) -> Result<Vec<Incoming>, StoreError> {
        let now = Timestamp::now();
        let incoming: Vec<Incoming> =
            seen.into_iter().filter(|s| !s.id.is_empty()).map(|s| s.received(now)).collect();
        if incoming.is_empty() {
            return Ok(Vec::new());
        }
        let new = self.call(|s| s.insert_incoming(&incoming, now))?;
        for message in &new {
            let _ = self.incoming.send(message.clone());
        }
        if !new.is_empty() {
            self.logged.notify_one();
        }
        Ok(new)
    }

    /// Every new incoming message, as it is stored.
    pub fn subscribe_incoming(&self) -> broadcast::Receiver<Incoming> {
        self.incoming.subscribe()
    }

    /// Incoming messages, newest first: up to `limit` stored before `cursor`.
    pub fn inbound(&self, cursor: Option<u64>, limit: usize) -> Result<InboundPage, StoreError> {
        self.call(|s| s.inbound(cursor, limit))
    }

    /// The incoming message with WhatsApp id `id`.
    pub fn incoming(&self, id: &str) -> Result<Option<Incoming>, StoreError> {
        self.call(|s| s.incoming(id))
    }

    /// Forgets incoming messages received more than `retention` ago, a bounded number at a
    /// time; returns how many went.
    pub fn prune_inbound(&self, retention: Duration) -> Result<usize, StoreError> {
        self.call(|s| s.prune_inbound(Timestamp::now() - retention, 10_000))
    }

    /// Until when everything the page reported is stored (the last drain persisted), if ever.
    pub fn inbound_seen_until(&self) -> Result<Option<Timestamp>, StoreError> {
        self.call(|s| s.inbound_seen_until())
    }

    /// Everything the page reported until `at` is stored.
    pub fn set_inbound_seen_until(&self, at: Timestamp) -> Result<(), StoreError> {
        self.call(|s| s.set_inbound_seen_until(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(dir: &tempfile::TempDir) -> Outbox {
        Outbox::open(&dir.path().join("outbox.redb"), 100).unwrap()
    }

    fn seen(id: &str, t: i64) -> Seen {
        Seen {
            id: id.into(),
            from: Some("5491155550000".into()),
            from_lid: Some("123456789012345".into()),
            push_name: Some("Ana".into()),
            chat: "123456789012345@lid".into(),
            kind: "chat".into(),
            body: format!("hola {id}"),
            t,
            quoted_id: None,
            media: None,
        }
    }

    fn message_events(o: &Outbox) -> Vec<serde_json::Value> {
        o.events_after(0, 1000).unwrap().into_iter().filter(|e| e.kind == "message").map(|e| e.data).collect()
    }

    #[test]
    fn a_message_is_stored_once_with_its_event_whatever_hands_it_over_again() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(&d);
        let mut live = o.subscribe_incoming();
        let new = o
            .receive(vec![seen("A1", 1_700_000_000), seen("A2", 1_700_000_001), seen("A1", 1_700_000_000)])
            .unwrap();
        assert_eq!(
            new.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["A1", "A2"],
            "once, even in one batch"
        );
        assert_eq!(new[0].timestamp, Timestamp::from_second(1_700_000_000).unwrap());
        assert_eq!(live.try_recv().unwrap().id, "A1");
        // The catch-up after a restart, or WhatsApp handing A2 over again: nothing new.
        drop(o);
        let o = outbox(&d);
        assert!(o.receive(vec![seen("A2", 1_700_000_001), seen("A1", 1_700_000_000)]).unwrap().is_empty());
        let stored = o.inbound(None, 10).unwrap().messages;
        assert_eq!(stored.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["A2", "A1"], "newest first");
        // Each stored message has exactly its event, with the same data.
        let events = message_events(&o);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], serde_json::to_value(o.incoming("A1").unwrap().unwrap()).unwrap());
        assert_eq!(events[1]["direction"], "in");
    }

    #[test]
    fn listings_page_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(&d);
        o.receive((0..5).map(|i| seen(&format!("M{i}"), 1_700_000_000 + i)).collect()).unwrap();
        let first = o.inbound(None, 2).unwrap();
        assert_eq!(first.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["M4", "M3"]);
        let second = o.inbound(first.next_cursor, 2).unwrap();
        assert_eq!(second.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["M2", "M1"]);
        let third = o.inbound(second.next_cursor, 2).unwrap();
        assert_eq!((third.messages.len(), third.next_cursor), (1, None));
        assert_eq!(o.incoming("nope").unwrap(), None);
    }

    #[test]
    fn old_messages_are_forgotten_after_the_retention() {
        let d = tempfile::tempdir().unwrap();
        let o = outbox(&d);
        o.receive(vec![seen("OLD1", 1_700_000_000), seen("OLD2", 1_700_000_001)]).unwrap();
        assert_eq!(o.prune_inbound(Duration::from_secs(3600)).unwrap(), 0, "younger than the retention");
        assert_eq!(o.prune_inbound(Duration::ZERO).unwrap(), 2);
        assert!(o.inbound(None, 10).unwrap().messages.is_empty());
        assert_eq!(o.incoming("OLD1").unwrap(), None);
        // The events told about them go with the event log's own pruning.
        assert_eq!(o.prune_events(Duration::ZERO, u64::MAX).unwrap(), 2);
        assert!(message_events(&o).is_empty());
    }

    #[test]
    fn how_far_incoming_messages_are_stored_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(outbox(&d).inbound_seen_until().unwrap(), None);
        let at = Timestamp::from_millisecond(1_700_000_000_123).unwrap();
        outbox(&d).set_inbound_seen_until(at).unwrap();
        assert_eq!(outbox(&d).inbound_seen_until().unwrap(), Some(at));
    }

    #[test]
    fn the_bridge_shape_becomes_the_api_shape() {
        let seen: Seen = serde_json::from_value(serde_json::json!({
            "id": "3A0F", "from": null, "fromLid": "123456789012345", "pushName": null, "chat": "123456789012345@lid",
            "type": "image", "body": "look", "t": 1_700_000_000, "quotedId": "3EB0AA",
            "media": {"mimetype": "image/jpeg", "size": 1234, "filename": null},
        }))
        .unwrap();
        let at = Timestamp::from_second(1_700_000_005).unwrap();
        let shown = serde_json::to_value(seen.received(at)).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({
                "id": "3A0F", "direction": "in", "from": null, "fromLid": "123456789012345", "pushName": null,
                "chat": "123456789012345@lid", "type": "image", "body": "look", "timestamp": "2023-11-14T22:13:20Z",
                "quotedId": "3EB0AA", "media": {"mimetype": "image/jpeg", "size": 1234, "filename": null},
                "receivedAt": "2023-11-14T22:13:25Z",
            })
        );
    }
}
