//! `GET /v1/outbox/events`: every change of a message of the outbox and every new incoming
//! message, live, as Server-Sent Events, for the hub (one connection per session, shared by all
//! its clients).
//!
//! - `event: message`, data: the message JSON as `GET /v1/outbox/{id}` shows it, on every change;
//! - `event: incoming`, data: the incoming message as `GET /v1/inbound/{id}` shows it, once
//!   stored;
//! - `event: lagged`, data `{"missed": n}`: this stream fell behind and skipped `n` changes (or
//!   incoming messages); the client re-lists to catch up;
//! - a comment at once (so the client knows the stream is open, and every change from then on
//!   is in it) and every 10 s (so an idle stream is told from a dead one).
//!
//! The stream ends when the pod stops, so the server's graceful shutdown does not wait on it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, stream};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use super::ApiState;
use crate::outbox::{Incoming, Message};

/// How often an idle stream carries a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub async fn events(State(state): State<ApiState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before answering: every change after the answer is in the stream.
    let (updates, incoming) = (state.outbox.subscribe(), state.outbox.subscribe_incoming());
    Sse::new(changes(updates, incoming, state.shutdown.clone()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// The events of `updates` and `incoming` until `shutdown` turns true (or the outbox is gone).
fn changes(
    updates: broadcast::Receiver<Message>,
    incoming: broadcast::Receiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let opened = stream::once(async { Event::default().comment("open") });
    let changes = stream::select(feed(updates, "message"), feed(incoming, "incoming"));
    opened
        .chain(changes)
        .take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        })
        .map(Ok)
}

/// One broadcast as events named `name` (and `lagged` when this stream fell behind it).
fn feed<T: Serialize + Clone + Send + 'static>(
    values: broadcast::Receiver<T>,
    name: &'static str,
) -> impl Stream<Item = Event> {
    stream::unfold(values, move |mut values| async move {
        let event = match values.recv().await {
            Ok(value) => Event::default().event(name).json_data(&value).unwrap_or_else(|_| Event::default()),
            Err(RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(json!({ "missed": missed }).to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((event, values))
    })
}

#[cfg(test)]
mod tests {
    use axum::body::BodyDataStream;
    use axum::response::IntoResponse;

    use super::*;
    use crate::outbox::{NewMessage, Outbox};

    /// What the stream sent until it went quiet for `quiet`.
    async fn read_for(body: &mut BodyDataStream, quiet: Duration) -> String {
        let mut text = String::new();
        while let Ok(Some(chunk)) = tokio::time::timeout(quiet, body.next()).await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    }

    fn new_message(to: &str) -> NewMessage {
        NewMessage { to: to.into(), message: "hola".into(), ..NewMessage::default() }
    }

    #[tokio::test]
    async fn changes_are_events_a_lagging_stream_says_so_and_shutdown_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("outbox.redb"), 100_000).unwrap();
        let (stop, shutdown) = watch::channel(false);
        let response =
            Sse::new(changes(outbox.subscribe(), outbox.subscribe_incoming(), shutdown)).into_response();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body().into_data_stream();

        let accepted = outbox.accept(vec![new_message("5491155550000")], None).await.unwrap();
        let id = accepted[0].message.id.clone();
        outbox.cancel(&id).unwrap();
        let text = read_for(&mut body, Duration::from_millis(300)).await;
        let events: Vec<(&str, serde_json::Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((name, serde_json::from_str(data).unwrap()))
            })
            .collect();
        assert!(text.starts_with(": open\n"), "{text}");
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(
            (events[0].0, events[0].1["id"].as_str(), events[0].1["status"].as_str()),
            ("message", Some(id.as_str()), Some("queued"))
        );
        assert_eq!(events[1].1["status"], "failed");
        assert_eq!(events[1].1["reason"], "CANCELLED");
        assert_eq!(events[1].1, serde_json::to_value(outbox.get(&id).unwrap().unwrap()).unwrap());

        // More changes than the subscription holds, while nobody reads: `lagged`, then the
        // changes still held.
        let many: Vec<NewMessage> = (0..1100).map(|i| new_message(&format!("54911555{i:05}"))).collect();
        outbox.accept(many, None).await.unwrap();
        let text = read_for(&mut body, Duration::from_millis(300)).await;
        let first = text.split("\n\n").next().unwrap();
        assert!(first.starts_with("event: lagged\ndata: {\"missed\":"), "{first}");
        assert_eq!(text.matches("event: message").count(), 1024);

        // An incoming message, once stored: `incoming`, once (WhatsApp handing it over again is no
        // new event).
        let seen: crate::outbox::Seen = serde_json::from_value(serde_json::json!({
            "id": "ABCDEF0123", "from": "5491155550000", "fromLid": "123456789012345", "pushName": "Ana",
            "chat": "123456789012345@lid", "type": "chat", "body": "hola", "t": 1_700_000_000, "quotedId": null, "media": null,
        }))
        .unwrap();
        outbox.receive(vec![seen.clone()]).unwrap();
        outbox.receive(vec![seen]).unwrap();
        let text = read_for(&mut body, Duration::from_millis(300)).await;
        assert_eq!(text.matches("event: incoming").count(), 1, "{text}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let shown: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(shown, serde_json::to_value(outbox.incoming("ABCDEF0123").unwrap().unwrap()).unwrap());
        assert_eq!(
            (shown["direction"].as_str(), shown["from"].as_str()),
            (Some("in"), Some("5491155550000"))
        );

        // The pod stops: the stream ends.
        stop.send(true).unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(2), body.collect::<Vec<_>>()).await;
        assert!(rest.is_ok(), "the stream ended with the shutdown");
    }
}
