//! Message changes for the live `/events` streams: while at least one stream of a clienteId is
//! open, ONE task holds ONE Server-Sent Events connection to that session's pod
//! (`GET /v1/outbox/events`) and fans its events out to every stream of the clienteId, so a
//! thousand open streams of one tenant still mean one connection to its pod. The last stream
//! to close ends the task and the connection.
//!
//! The connection follows the session: it is (re)opened when the session's pod publishes an
//! address, with backoff while the pod cannot be reached (a restart), and moved when the
//! served session or its address changes. Each (re)connection, and each time a stream falls
//! behind (at the pod or here), is told to the streams as `lagged`: changes may have been missed,
//! the client re-lists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use crate::cache::{Changes, SessionCache, SessionView};
use crate::inbound::IncomingMessage;
use crate::metrics::Metrics;
use crate::outbox::OutboxMessage;
use crate::upstream::SessionPods;

/// Events a feed holds for a stream that reads slower than they come (a stream further behind
/// is told `lagged` and re-lists). The channel is allocated whole, per clienteId with streams:
/// 256 events are about 16 KiB.
const CAPACITY: usize = 256;
/// Waits between attempts to reach a pod: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_LAST: Duration = Duration::from_secs(15);
/// A connection that lasted this long starts the backoff over.
const STABLE: Duration = Duration::from_secs(10);

/// What a feed passes on to the streams.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedEvent {
    /// A message changed (its JSON, as `GET /api/whatsapp/{clienteId}/messages/{id}` shows
    /// it), or one was received (as `GET .../messages?direction=in` lists it).
    Message(Arc<str>),
    /// Changes may have been missed: `connected` (the hub (re)connected to the session's pod)
    /// or `behind` (a stream fell behind, at the pod or in the hub; `missed` changes skipped).
    Lagged { reason: &'static str, missed: Option<u64> },
}

/// The feeds of the clienteIds with open streams.
#[derive(Default)]
pub struct MessageFeeds {
    feeds: Arc<Mutex<HashMap<i64, Weak<Feed>>>>,
}

struct Feed {
    cliente_id: i64,
    events: broadcast::Sender<FeedEvent>,
    task: tokio::task::AbortHandle,
    feeds: Arc<Mutex<HashMap<i64, Weak<Feed>>>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
        let mut feeds = self.feeds.lock().expect("lock");
        // A new feed may have taken the place already: only a dead entry goes.
        if feeds.get(&self.cliente_id).is_some_and(|f| f.strong_count() == 0) {
            feeds.remove(&self.cliente_id);
        }
    }
}

/// One stream's share of a feed: the feed lives as long as a subscription does.
pub struct Subscription {
    _feed: Arc<Feed>,
    events: broadcast::Receiver<FeedEvent>,
}

impl Subscription {
    /// The next event (`None` when the hub is stopping).
    pub async fn recv(&mut self) -> Option<FeedEvent> {
        match self.events.recv().await {
            Ok(event) => Some(event),
            Err(RecvError::Lagged(missed)) => {
                Some(FeedEvent::Lagged { reason: "behind", missed: Some(missed) })
            }
            Err(RecvError::Closed) => None,
        }
    }
}

/// What a feed's task needs.
pub struct Upstream {
    pub cache: Arc<SessionCache>,
    pub pods: Arc<SessionPods>,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
}

impl MessageFeeds {
    /// Joins the feed of `cliente_id`, starting it (and its connection) if it is the first.
    pub fn subscribe(&self, cliente_id: i64, upstream: impl FnOnce() -> Upstream) -> Subscription {
        let mut feeds = self.feeds.lock().expect("lock");
        if let Some(feed) = feeds.get(&cliente_id).and_then(Weak::upgrade) {
            let events = feed.events.subscribe();
            return Subscription { _feed: feed, events };
        }
        let (sender, events) = broadcast::channel(CAPACITY);
        let task = tokio::spawn(follow(cliente_id, sender.clone(), upstream()));
        let feed = Arc::new(Feed {
            cliente_id,
            events: sender,
            task: task.abort_handle(),
            feeds: self.feeds.clone(),
        });
        feeds.insert(cliente_id, Arc::downgrade(&feed));
        Subscription { _feed: feed, events }
    }
}

/// Counts an open connection to a pod for as long as it lives.
struct ConnectionGauge(Metrics);

impl ConnectionGauge {
    fn new(metrics: &Metrics) -> ConnectionGauge {
        metrics.pod_event_streams.inc();
        ConnectionGauge(metrics.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.pod_event_streams.dec();
    }
}

/// The pod to connect to for `cliente_id`: its served session, running with an address.
fn target(cache: &SessionCache, cliente_id: i64) -> Option<Arc<SessionView>> {
    cache.get(cliente_id).filter(|s| s.endpoint.is_some() && !s.status.suspended)
}

fn same_pod(a: Option<&SessionView>, b: Option<&SessionView>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (&a.namespace, &a.name, &a.endpoint) == (&b.namespace, &b.name, &b.endpoint),
        (None, None) => true,
        _ => false,
    }
}

/// Waits for a change of what the clienteId is served; false when the hub is stopping.
async fn changed(changes: &mut Changes, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        change = changes.recv() => match change {
            Ok(_) | Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => false,
        },
        _ = shutdown.wait_for(|stopping| *stopping) => false,
    }
}

/// The feed's task: keeps a connection to the pod of `cliente_id`'s session and passes its
/// events on, for as long as the feed lives.
async fn follow(cliente_id: i64, sender: broadcast::Sender<FeedEvent>, upstream: Upstream) {
    let Upstream { cache, pods, metrics, mut shutdown } = upstream;
    let mut changes = cache.subscribe(cliente_id);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let Some(session) = target(&cache, cliente_id) else {
            // No pod to follow (no session, suspended, starting): wait for one.
            if !changed(&mut changes, &mut shutdown).await {
                return;
            }
            continue;
        };
        let started = Instant::now();
        match pods.outbox_events(&session).await {
            Ok(mut events) => {
                let _gauge = ConnectionGauge::new(&metrics);
                tracing::debug!(cliente_id, session = %session.name, "following the session pod's message changes");
                let _ = sender.send(FeedEvent::Lagged { reason: "connected", missed: None });
                loop {
                    tokio::select! {
                        event = events.next() => match event {
                            Some(Ok((name, data))) => {
                                if let Some(event) = feed_event(&name, &data) {
                                    let _ = sender.send(event);
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(cliente_id, error = %e, "the session pod's event stream broke");
                                break;
                            }
                            None => {
                                tracing::debug!(cliente_id, "the session pod ended its event stream");
                                break;
                            }
                        },
                        alive = changed(&mut changes, &mut shutdown) => {
                            if !alive {
                                return;
                            }
                            if !same_pod(Some(&session), target(&cache, cliente_id).as_deref()) {
                                tracing::debug!(cliente_id, "the session or its pod changed: following the new one");
                                break;
                            }
                        }
                    }
                }
                if started.elapsed() >= STABLE {
                    backoff = BACKOFF_FIRST;
                }
            }
            Err(e) if matches!(e.code(), "SESSION_MANAGER_UNAVAILABLE" | "GATEWAY_TIMEOUT") => {
                tracing::debug!(cliente_id, error = %e, "cannot reach the session pod for its message changes yet");
            }
            Err(e) => {
                tracing::warn!(cliente_id, session = %session.name, error = %e, "the session pod refused its message changes");
            }
        }
        // Try again after the backoff, or at once when the pod moved.
        let tried = session;
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                alive = changed(&mut changes, &mut shutdown) => {
                    if !alive {
                        return;
                    }
                    let now = target(&cache, cliente_id);
                    if now.is_some() && !same_pod(Some(&tried), now.as_deref()) {
                        break;
                    }
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_LAST);
    }
}

/// A pod's event as the streams get it; `None` for what they do not need.
fn feed_event(name: &str, data: &str) -> Option<FeedEvent> {
    match name {
        "message" => {
            // In the shape of the hub's message routes.
            let message: OutboxMessage = serde_json::from_str(data).ok()?;
            serde_json::to_string(&message).ok().map(|json| FeedEvent::Message(json.into()))
        }
        "incoming" => {
            let message: IncomingMessage = serde_json::from_str(data).ok()?;
            serde_json::to_string(&message).ok().map(|json| FeedEvent::Message(json.into()))
        }
        "lagged" => {
            let missed =
                serde_json::from_str::<serde_json::Value>(data).ok().and_then(|v| v["missed"].as_u64());
            Some(FeedEvent::Lagged { reason: "behind", missed })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_events_are_passed_on_in_the_hubs_shape() {
        let data = r#"{"id":"3EB0A1","to":"5491155550000","message":"hola","status":"sent","createdAt":"2026-12-02T10:00:00Z","sentAt":"2026-12-02T10:00:03Z","attempts":1,"future":"ignored"}"#;
        let Some(FeedEvent::Message(json)) = feed_event("message", data) else { panic!("a message") };
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((value["id"].as_str(), value["status"].as_str()), (Some("3EB0A1"), Some("sent")));
        assert!(value.get("future").is_none());
        assert_eq!(
            feed_event("lagged", r#"{"missed":7}"#),
            Some(FeedEvent::Lagged { reason: "behind", missed: Some(7) })
        );
        assert_eq!(feed_event("message", "not json"), None);
        let received = r#"{"id":"3A1B","direction":"in","from":"5491155550000","fromLid":null,"pushName":"Ana","chat":"5491155550000@c.us","type":"chat","body":"hola","timestamp":"2026-12-02T10:00:00Z","quotedId":null,"media":null,"receivedAt":"2026-12-02T10:00:01Z"}"#;
        let Some(FeedEvent::Message(json)) = feed_event("incoming", received) else { panic!("a message") };
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((value["direction"].as_str(), value["body"].as_str()), (Some("in"), Some("hola")));
        assert_eq!(feed_event("incoming", r#"{"id":"x"}"#), None, "not a received message");
        assert_eq!(feed_event("other", "{}"), None);
    }
}
