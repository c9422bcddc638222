use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::metrics::Metrics;

const HOUR: Duration = Duration::from_secs(3600);

/// A clock the test moves.
struct TestClock(watch::Sender<Timestamp>);

impl TestClock {
    fn new() -> Arc<TestClock> {
        Arc::new(TestClock(watch::channel("2025-01-01T00:00:00Z".parse().unwrap()).0))
    }

    fn set(&self, at: Timestamp) {
        self.0.send_replace(at);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'_, ()> {
        let mut now = self.0.subscribe();
        Box::pin(async move {
            let _ = now.wait_for(|now| *now >= at).await;
        })
    }
}

/// Signing secrets by Secret name.
struct StaticKeys(HashMap<String, Vec<u8>>);

impl Keys for StaticKeys {
    fn value<'a>(
        &'a self,
        secret: &'a whatsapp_crds::WebhookSecretRef,
    ) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        let found = self.0.get(&secret.name).cloned().ok_or_else(|| format!("no Secret {}", secret.name));
        Box::pin(async move { found })
    }
}

/// A request an endpoint received, and what it answered.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    timestamp: i64,
    signature: String,
    body: String,
    answered: u16,
}

/// A webhook endpoint on loopback that answers what it is told to.
#[derive(Clone)]
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<AtomicU16>,
}

async fn record(State(e): State<Endpoint>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let answered = e.answer.load(Ordering::SeqCst);
    e.seen.lock().unwrap().push(Seen {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or(-1),
        signature: header("webhook-signature"),
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

impl Endpoint {
    async fn start(answer: u16) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            seen: Arc::default(),
            answer: Arc::new(AtomicU16::new(answer)),
        };
        let app =
            axum::Router::new().route("/hook", axum::routing::post(record)).with_state(endpoint.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        endpoint
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn spec(&self, name: &str, events: &[&str]) -> Value {
        json!({"name": name, "url": self.url, "allowInsecure": true, "events": events, "secretRef": {"name": format!("secret-{name}")}})
    }
}

fn spec(endpoints: Vec<Value>) -> WhatsAppSessionSpec {
    serde_json::from_value(json!({"clienteId": 1, "webhooks": endpoints})).unwrap()
}

/// Polls `check` until it gives a value (the engine runs on its own tasks).
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Running {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    webhooks: Webhooks,
    clock: Arc<TestClock>,
    metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The engine running on a fresh outbox and a test clock; `secret-a` is raw bytes,
/// `secret-b` a `whsec_` secret.
fn engine(endpoints: Vec<Value>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb"), 100).unwrap();
    let clock = TestClock::new();
    let webhooks = Webhooks::open(outbox.clone(), clock.clone()).unwrap();
    let whsec = format!("whsec_{}", STANDARD_B64.encode(b"key of endpoint b, 24+ bytes long"));
    let keys = StaticKeys(HashMap::from([
        ("secret-a".to_string(), b"key of endpoint a".to_vec()),
        ("secret-b".to_string(), whsec.into_bytes()),
    ]));
    let metrics = Metrics::default();
    let (_, spec_rx) = watch::channel(spec(endpoints));
    let task = tokio::spawn(webhooks.clone().run(spec_rx, Arc::new(keys), metrics.webhooks.clone()));
    Running { _dir: dir, outbox, webhooks, clock, metrics, task }
}

const STANDARD_B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn delivery(webhooks: &Webhooks, id: u64) -> Delivery {
    let page = webhooks.list(None, None, Some(id + 1), 1).unwrap();
    page.deliveries.into_iter().find(|d| d.id == id).expect("the delivery")
}

#[test]
fn signatures_match_the_standard_webhooks_reference() {
    // The test vector of the Standard Webhooks reference libraries.
    let key = sign::signing_key(b"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let body = r#"{"email":"test@example.com","username":"test_user"}"#;
    assert_eq!(
        sign::signature(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
}

#[test]
fn signing_keys_are_whsec_base64_or_the_bytes_themselves_and_errors_never_quote_them() {
    assert_eq!(sign::signing_key(b"whsec_aGVsbG8=\n").unwrap(), b"hello");
    assert_eq!(sign::signing_key(b"plain secret").unwrap(), b"plain secret");
    let bad = sign::signing_key(b"whsec_not*base64*TOPSECRET").unwrap_err();
    assert!(!bad.contains("TOPSECRET") && !bad.contains('*'), "{bad}");
    assert!(sign::signing_key(b"").is_err() && sign::signing_key(b"whsec_").is_err());
}

#[test]
fn waits_are_full_jitter_under_a_ceiling_doubling_from_5_s_to_1_h() {
    let mut rng = rand::rng();
    for failed in 1..=40u32 {
        let ceiling = Duration::from_secs(5 * 2u64.pow(failed.min(20) - 1)).min(HOUR);
        let waits: Vec<Duration> = (0..2000).map(|_| backoff(failed, None, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w >= MIN_WAIT && *w <= ceiling), "after {failed} failures");
        // Spread over the whole range, not bunched at the ceiling.
        let max = waits.iter().max().unwrap();
        let min = waits.iter().min().unwrap();
        assert!(*max > ceiling.mul_f64(0.9) && *min < MIN_WAIT + ceiling.mul_f64(0.1), "after {failed}");
    }
    assert_eq!(backoff(1, Some(Duration::from_secs(120)), &mut rng), Duration::from_secs(120));
    assert_eq!(backoff(1, Some(Duration::from_secs(86_400)), &mut rng), HOUR, "Retry-After is capped too");
}

#[test]
fn failures_are_retried_until_a_day_after_queueing_then_the_delivery_is_dead() {
    let queued: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let event = Event { seq: 1, id: "evt_1".into(), kind: "state".into(), at: queued, data: json!({}) };
    let mut d = Delivery::of(7, "a", &event, queued).unwrap();
    let failed =
        Outcome::Failed { status: Some(500), error: "the endpoint answered 500".into(), retry_after: None };
    d.settle(&failed, queued + HOUR, HOUR);
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_at),
        (DeliveryStatus::Pending, 1, Some(queued + 2 * HOUR))
    );
    assert_eq!((d.last_status, d.last_error.as_deref()), (Some(500), Some("the endpoint answered 500")));
    // The last wait ends at the deadline, not after it.
    d.settle(&failed, queued + 23 * HOUR + HOUR / 2, HOUR);
    assert_eq!(d.next_attempt_at, Some(queued + GIVE_UP_AFTER));
    d.settle(&failed, queued + GIVE_UP_AFTER, HOUR);
    assert_eq!((d.status, d.attempts, d.next_attempt_at), (DeliveryStatus::Dead, 3, None));
    // A redelivery queues it again with a day ahead; a 2xx settles it.
    let later = queued + 48 * HOUR;
    d.requeue(later);
    d.settle(&failed, later + 23 * HOUR, HOUR);
    assert_eq!(d.status, DeliveryStatus::Pending);
    d.settle(&Outcome::Delivered(204), later + 24 * HOUR, HOUR);
    assert_eq!((d.status, d.last_status, d.last_error.clone()), (DeliveryStatus::Delivered, Some(204), None));
    assert_eq!((d.delivered_at, d.next_attempt_at), (Some(later + 24 * HOUR), None));
}

#[tokio::test]
async fn events_are_queued_once_per_endpoint_that_takes_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.redb");
    let endpoints: Vec<WebhookSpec> = spec(vec![
        json!({"name": "all", "url": "https://a.example/", "secretRef": {"name": "s"}}),
        json!({"name": "acks", "url": "https://b.example/", "events": ["message.ack"], "secretRef": {"name": "s"}}),
    ])
    .webhooks;
    let clock = TestClock::new();
    {
        let outbox = Outbox::open(&path, 100).unwrap();
        let webhooks = Webhooks::open(outbox.clone(), clock.clone()).unwrap();
        assert_eq!(events_taken_upto(&outbox).unwrap(), 0);
        outbox.event("state", json!({"state": "READY"})).unwrap();
        outbox.event("message.ack", json!({"id": "3EB0", "status": "sent"})).unwrap();
        assert_eq!(webhooks.ingest(&endpoints).unwrap(), 3, "2 for all, 1 for acks");
        assert_eq!(webhooks.ingest(&endpoints).unwrap(), 0, "nothing twice");
        outbox.event("message", json!({"id": "in-1"})).unwrap();
    }
    // Reopened, as after a crash: what was queued stays queued once; what was not goes now.
    let outbox = Outbox::open(&path, 100).unwrap();
    let webhooks = Webhooks::open(outbox.clone(), clock).unwrap();
    assert_eq!(webhooks.ingest(&endpoints).unwrap(), 1);
    let all = webhooks.list(None, None, None, 100).unwrap().deliveries;
    let described: Vec<(&str, &str)> =
        all.iter().rev().map(|d| (d.endpoint.as_str(), d.kind.as_str())).collect();
    assert_eq!(
        described,
        [("all", "state"), ("all", "message.ack"), ("acks", "message.ack"), ("all", "message")]
    );
    let events = outbox.events_after(0, 10).unwrap();
    assert_eq!(events_taken_upto(&outbox).unwrap(), events[2].seq, "the log may be pruned up to the last");
    let body: Value = serde_json::from_str(&all[0].body).unwrap();
    assert_eq!(body, json!({"type": "message", "timestamp": events[2].at, "data": {"id": "in-1"}}));
    assert_eq!(all[0].event_id, events[2].id);
    // Filters and pages, newest first.
    let page = webhooks.list(Some(DeliveryStatus::Pending), Some("all"), None, 2).unwrap();
    assert_eq!(
        page.deliveries.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        ["message", "message.ack"]
    );
    let rest = webhooks.list(Some(DeliveryStatus::Pending), Some("all"), page.next_cursor, 2).unwrap();
    assert_eq!(
        (rest.deliveries.len(), rest.deliveries[0].kind.as_str(), rest.next_cursor),
        (1, "state", None)
    );
    assert!(webhooks.list(Some(DeliveryStatus::Dead), None, None, 10).unwrap().deliveries.is_empty());
}

#[tokio::test]
async fn old_deliveries_are_forgotten_but_pending_ones_of_configured_endpoints_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb"), 100).unwrap();
    let clock = TestClock::new();
    let webhooks = Webhooks::open(outbox.clone(), clock.clone()).unwrap();
    let endpoints: Vec<WebhookSpec> = spec(vec![
        json!({"name": "kept", "url": "https://a.example/", "secretRef": {"name": "s"}}),
        json!({"name": "removed", "url": "https://b.example/", "secretRef": {"name": "s"}}),
    ])
    .webhooks;
    outbox.event("state", json!({"state": "READY"})).unwrap();
    webhooks.ingest(&endpoints).unwrap();
    outbox.event("state", json!({"state": "CONNECTING"})).unwrap();
    webhooks.ingest(&endpoints).unwrap();
    let ids: Vec<u64> =
        webhooks.list(None, None, None, 10).unwrap().deliveries.iter().map(|d| d.id).collect();
    let delivered = Outcome::Delivered(200);
    outbox.database(|db| store::modify(db, ids[3], |d| d.settle(&delivered, clock.now(), HOUR))).unwrap();
    clock.set(clock.now() + 8 * 24 * HOUR);
    webhooks.prune(&endpoints[..1], 7);
    let left: Vec<(String, DeliveryStatus)> = webhooks
        .list(None, None, None, 10)
        .unwrap()
        .deliveries
        .into_iter()
        .map(|d| (d.endpoint, d.status))
        .collect();
    assert_eq!(
        left,
        [("kept".to_string(), DeliveryStatus::Pending)],
        "the delivered one and the orphans went"
    );
    assert_eq!(outbox.database(store::counts).unwrap().iter().map(|c| c.2).sum::<u64>(), 1, "counts follow");
}

/// Verifies a request as a Standard Webhooks receiver would.
fn verify(seen: &Seen, key: &[u8]) -> Value {
    assert_eq!(seen.signature, sign::signature(key, &seen.id, seen.timestamp, &seen.body));
    serde_json::from_str(&seen.body).unwrap()
}

#[tokio::test]
async fn each_endpoint_gets_its_events_signed_in_order_and_a_failing_head_holds_only_its_own_queue() {
    let (a, b) = (Endpoint::start(500).await, Endpoint::start(200).await);
    let e = engine(vec![a.spec("a", &["state", "message.ack"]), b.spec("b", &["state"])]);
    e.outbox.event("state", json!({"state": "CONNECTING"})).unwrap();
    e.outbox.event("message.ack", json!({"id": "3EB0AA", "status": "sent"})).unwrap();
    e.outbox.event("state", json!({"state": "READY"})).unwrap();
    let events = e.outbox.events_after(0, 10).unwrap();

    // b gets its two while a's head fails; a's other events wait behind its head.
    until("b's deliveries", || (b.seen().len() == 2).then_some(())).await;
    until("a's first attempt", || (a.seen().len() == 1).then_some(())).await;
    // b's secret is `whsec_` and the base64 of its key.
    let key_b = b"key of endpoint b, 24+ bytes long";
    let states: Vec<Value> = b.seen().iter().map(|s| verify(s, key_b)["data"]["state"].clone()).collect();
    assert_eq!(states, ["CONNECTING", "READY"]);
    let head = until("a's retry to be scheduled", || {
        let d = e.webhooks.list(None, Some("a"), None, 10).unwrap().deliveries.pop()?;
        (d.attempts == 1).then_some(d)
    })
    .await;
    assert_eq!((head.event_id.as_str(), head.last_status), (events[0].id.as_str(), Some(500)));
    let retry = head.next_attempt_at.unwrap();
    assert!(retry > e.clock.now() && retry <= e.clock.now() + FIRST_WAIT, "{retry}");
    assert_eq!(a.seen().len(), 1, "nothing else went to a meanwhile");

    // a recovers: at the retry, everything goes, in order, each signed with a's key.
    a.answer(204);
    e.clock.set(retry);
    until("a's deliveries", || (a.seen().len() == 4).then_some(())).await;
    let seen = a.seen();
    let ids: Vec<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [&events[0].id, &events[0].id, &events[1].id, &events[2].id]);
    for s in &seen {
        let body = verify(s, b"key of endpoint a");
        let event = events.iter().find(|ev| ev.id == s.id).unwrap();
        assert_eq!(body, json!({"type": event.kind, "timestamp": event.at, "data": event.data}));
    }
    assert_eq!(seen[1].timestamp, retry.as_second(), "webhook-timestamp is the attempt's");
    until("a's queue to empty", || {
        let pending = e.webhooks.list(Some(DeliveryStatus::Pending), None, None, 10).unwrap();
        pending.deliveries.is_empty().then_some(())
    })
    .await;
    let text = e.metrics.render();
    for line in [
        r#"whatsapp_session_webhook_deliveries_total{endpoint="a",outcome="delivered"} 3"#,
        r#"whatsapp_session_webhook_deliveries_total{endpoint="a",outcome="failed"} 1"#,
        r#"whatsapp_session_webhook_queue{endpoint="a"} 0"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn a_delivery_failing_for_a_day_is_dead_the_queue_moves_on_and_a_redelivery_sends_it_again() {
    let a = Endpoint::start(503).await;
    let e = engine(vec![a.spec("a", &["state"])]);
    e.outbox.event("state", json!({"state": "CONNECTING"})).unwrap();
    e.outbox.event("state", json!({"state": "READY"})).unwrap();
    let first = until("queued", || e.webhooks.list(None, None, None, 10).unwrap().deliveries.pop()).await;

    // The test clock jumps to each scheduled retry: a day of backoff with no real waiting.
    let mut attempts = 0;
    let dead = loop {
        let d = until("the next attempt", || {
            Some(delivery(&e.webhooks, first.id)).filter(|d| d.attempts > attempts)
        })
        .await;
        attempts = d.attempts;
        if d.status == DeliveryStatus::Dead {
            break d;
        }
        let next = d.next_attempt_at.unwrap();
        assert!(next > e.clock.now() && next <= e.clock.now() + HOUR, "each wait is at most an hour");
        assert!(next <= first.queued_at + GIVE_UP_AFTER, "never past the deadline");
        e.clock.set(next);
    };
    assert_eq!(e.clock.now(), first.queued_at + GIVE_UP_AFTER, "dead at the deadline, not before");
    assert!((20..200).contains(&dead.attempts), "{} attempts in a day", dead.attempts);
    assert_eq!((dead.last_status, dead.next_attempt_at), (Some(503), None));
    // The next one goes at once; queued as long ago, one failure makes it dead too.
    let second = until("the second to be dead", || {
        let d = e.webhooks.list(Some(DeliveryStatus::Dead), None, None, 10).unwrap().deliveries;
        (d.len() == 2).then(|| d[0].clone())
    })
    .await;
    assert_eq!(second.attempts, 1);
    let text = e.metrics.render();
    assert!(text.contains(r#"whatsapp_session_webhook_dead{endpoint="a"} 2"#), "{text}");

    // Redelivered once the endpoint is back: the same webhook-id again, delivered.
    a.answer(200);
    let again = e.webhooks.redeliver(first.id).unwrap().unwrap();
    assert_eq!((again.status, again.next_attempt_at), (DeliveryStatus::Pending, Some(e.clock.now())));
    until("the redelivery", || {
        (delivery(&e.webhooks, first.id).status == DeliveryStatus::Delivered).then_some(())
    })
    .await;
    let last = a.seen().pop().unwrap();
    assert_eq!((last.id.as_str(), last.answered), (first.event_id.as_str(), 200));
    assert!(e.webhooks.redeliver(999).unwrap().is_none());
    until("the dead gauge", || {
        e.metrics.render().contains(r#"whatsapp_session_webhook_dead{endpoint="a"} 1"#).then_some(())
    })
    .await;
}

#[tokio::test]
async fn without_its_signing_key_nothing_is_sent_and_the_delivery_says_why() {
    let c = Endpoint::start(200).await;
    let e = engine(vec![c.spec("c", &["state"])]);
    e.outbox.event("state", json!({"state": "READY"})).unwrap();
    let head = until("the failed attempt", || {
        let d = e.webhooks.list(None, None, None, 1).unwrap().deliveries.pop()?;
        (d.attempts == 1).then_some(d)
    })
    .await;
    assert_eq!((head.status, head.last_status), (DeliveryStatus::Pending, None));
    assert_eq!(head.last_error.as_deref(), Some("no Secret secret-c"));
    assert!(c.seen().is_empty(), "an unsigned request never goes out");
}

/// A webhook task that panics is started again; aborting the supervisor stops the task it runs.
#[tokio::test]
async fn a_panicked_task_runs_again_and_aborting_stops_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    supervised("test", move || {
        let runs = counted.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first run panics");
            }
        }
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    let alive = Arc::new(std::sync::Mutex::new(Some(alive)));
    let supervisor = tokio::spawn(supervised("test", move || {
        let alive = alive.lock().unwrap().take();
        async move {
            let _alive = alive;
            std::future::pending::<()>().await
        }
    }));
    tokio::task::yield_now().await;
    supervisor.abort();
    assert!(gone.await.is_err(), "the task outlived its supervisor");
}
