//! The message routes in process, against a stand-in session pod that speaks the outbox
//! contract: what the hub forwards, what it refuses itself, what it passes through, who may
//! call, and the per-route body limit. (The real pod is in the end-to-end tests.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::auth::{Authenticator, JwtSettings};
use crate::cache::SessionCache;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::upstream::SessionPods;
use crate::writes::SessionWriter;

const KEY: &[u8] = b"the-hub-token-key-of-at-least-32-bytes";
const SECRET: &[u8] = b"the-jwt-secret-of-at-least-32-bytes!!!";

/// What the stand-in pod was asked: method, path with query, bearer token, body.
type Seen = Arc<Mutex<Vec<(Method, String, String, Value)>>>;

async fn fake_pod(seen: Seen) -> String {
    let handler = move |request: Request| {
        let seen = seen.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let token = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push((parts.method.clone(), path.clone(), token, body.clone()));
            answer(&parts.method, parts.uri.path(), &body)
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn message(id: &str, status: &str) -> Value {
    json!({"id": id, "to": "5491155550000", "message": "hola", "status": status,
           "createdAt": "2026-12-02T10:00:00Z", "attempts": 0, "reason": null})
}

fn refuse(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(json!({"error": code, "message": code.to_lowercase()}))).into_response()
}

/// The outbox contract, as far as these tests need it.
fn answer(method: &Method, path: &str, body: &Value) -> Response {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "outbox"]) => {
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            if messages.iter().any(|m| m["to"] == "5491199999999") {
                let mut r = refuse(StatusCode::INSUFFICIENT_STORAGE, "OUTBOX_FULL");
                r.headers_mut().insert("retry-after", "60".parse().unwrap());
                return r;
            }
            let accepted: Vec<Value> = (0..messages.len())
                .map(|i| json!({"id": format!("ID{i}"), "status": "queued", "idempotencyKey": messages[i].get("idempotencyKey"), "duplicate": false}))
                .collect();
            (StatusCode::ACCEPTED, axum::Json(json!({"messages": accepted, "batch": body["batch"]})))
                .into_response()
        }
        ("GET", ["v1", "outbox", "events"]) => {
            // A change of ID0 every 50 ms, for as long as the hub listens.
            let changes = futures::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut m = message("ID0", "sent");
                m["attempts"] = json!(n);
                let event = axum::response::sse::Event::default().event("message").data(m.to_string());
                Some((Ok::<_, std::convert::Infallible>(event), n + 1))
            });
            axum::response::sse::Sse::new(changes).into_response()
        }
        ("GET", ["v1", "outbox"]) => {
            axum::Json(json!({"messages": [message("ID0", "read")], "nextCursor": "6"})).into_response()
        }
        ("GET", ["v1", "outbox", "batches", batch]) if batch.ends_with("unknown") => {
            refuse(StatusCode::NOT_FOUND, "BATCH_NOT_FOUND")
        }
        ("GET", ["v1", "outbox", "batches", batch]) => axum::Json(
            json!({"batch": batch, "total": 3, "byStatus": {"queued": 1, "delivered": 1, "read": 1}}),
        )
        .into_response(),
        ("GET", ["v1", "outbox", "ID0"]) => axum::Json(message("ID0", "delivered")).into_response(),
        ("GET", ["v1", "outbox", _]) => refuse(StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND"),
        ("DELETE", ["v1", "outbox", "ID1"]) => refuse(StatusCode::CONFLICT, "NOT_CANCELLABLE"),
        ("DELETE", ["v1", "outbox", id]) => {
            let mut m = message(id, "failed");
            m["reason"] = json!("CANCELLED");
            axum::Json(m).into_response()
        }
        ("POST", ["v1", "messages"]) => {
            axum::Json(json!({"id": "SENT1", "status": "sent", "duplicate": false})).into_response()
        }
        _ => refuse(StatusCode::NOT_FOUND, "NO_SUCH_ROUTE"),
    }
}

fn session(name: &str, cliente_id: i64, suspended: bool, status: Value) -> whatsapp_crds::WhatsAppSession {
    serde_json::from_value(json!({
        "apiVersion": "whatsapp.leadmaster.dev/v1alpha1",
        "kind": "WhatsAppSession",
        "metadata": {"name": name, "namespace": "t", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"clienteId": cliente_id, "suspended": suspended},
        "status": status,
    }))
    .unwrap()
}

struct Hub {
    url: String,
    http: reqwest::Client,
    auth: Arc<Authenticator>,
    metrics: Metrics,
    seen: Seen,
    _shutdown: watch::Sender<bool>,
}

impl Hub {
    /// Sessions: 51 READY and 52 QR_REQUIRED behind the stand-in pod, 53 suspended, 54 with no
    /// pod address yet.
    async fn start() -> Hub {
        let seen = Seen::default();
        let pod = fake_pod(seen.clone()).await;
        let metrics = Metrics::default();
        let (cache, _writer) = SessionCache::new(metrics.clone());
        cache.fill_for_tests(&[
            session("s51", 51, false, json!({"state": "READY", "endpoint": pod})),
            session("s52", 52, false, json!({"state": "CONNECTING", "endpoint": pod})),
            session("s53", 53, true, json!({"state": "DISCONNECTED", "endpoint": pod})),
            session("s54", 54, false, json!({"state": "CONNECTING"})),
        ]);
        let settings = JwtSettings { issuer: None, audience: None, leeway_seconds: 30 };
        let auth = Arc::new(Authenticator::hs256(SECRET, settings).unwrap());
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let state = AppState {
            cache,
            auth: auth.clone(),
            logins: None,
            pods: Arc::new(
                SessionPods::new(KEY.to_vec(), Duration::from_secs(1), Duration::from_secs(5)).unwrap(),
            ),
            writer: Arc::new(SessionWriter::new(kube, "t".into())),
            admin_cliente_id: None,
            metrics: metrics.clone(),
            shutdown,
            request_timeout: Duration::from_secs(10),
            openapi: Default::default(),
            feeds: Default::default(),
        };
        let app = super::router(state, &[], 64 * 1024, crate::outbox::BATCH_BODY_LIMIT);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
        });
        Hub {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            auth,
            metrics,
            seen,
            _shutdown: shutdown_tx,
        }
    }

    fn token(&self, cliente_id: Option<i64>) -> String {
        let role = if cliente_id.is_some() { "user" } else { "admin" };
        self.auth.issue("test", role, cliente_id, 600).unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    /// The pod calls since the last look.
    fn seen(&self) -> Vec<(Method, String, String, Value)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn batch(n: usize) -> Value {
    let messages: Vec<Value> =
        (0..n).map(|i| json!({"to": format!("54911{:08}", i), "message": format!("hola {i}")})).collect();
    json!({"messages": messages})
}

#[tokio::test]
async fn messages_go_to_the_session_pods_outbox() {
    let hub = Hub::start().await;
    let tenant = hub.token(Some(51));
    let pod_token = format!("Bearer {}", whatsapp_crds::hub_token(KEY, "t", "s51"));

    // One message: digits only, times in UTC, forwarded with the session's hub token.
    let one = json!({"to": "+54 9 11 5555-0000", "message": "hola", "idempotencyKey": "k-1", "notBefore": "2026-12-02T07:00:00-03:00"});
    let (code, body, _) = hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(one)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["messages"][0]["id"], "ID0");
    assert_eq!(body["messages"][0]["idempotencyKey"], "k-1");
    let seen = hub.seen();
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str(), &seen[0].2), ("POST", "/v1/outbox", &pod_token));
    assert_eq!(
        seen[0].3,
        json!({"messages": [{"to": "5491155550000", "message": "hola", "idempotencyKey": "k-1", "notBefore": "2026-12-02T10:00:00Z"}]})
    );

    // A batch of 10,000 (about 500 KB: past the hub's 64 KiB for other routes), named.
    let mut big = batch(10_000);
    big["batch"] = json!("promo-1");
    let (code, body, _) = hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(big)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        (body["messages"].as_array().unwrap().len(), body["batch"].as_str()),
        (10_000, Some("promo-1"))
    );
    assert_eq!(hub.seen()[0].3["messages"].as_array().unwrap().len(), 10_000);

    // Refused by the hub, whole, naming the first bad message; the pod never hears of it.
    let mut bad = batch(5);
    bad["messages"][3]["to"] = json!("12");
    let (code, body, _) = hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(bad)).await;
    assert_eq!(
        (code, body["error"].as_str(), body["index"].as_u64()),
        (400, Some("INVALID_NUMBER"), Some(3)),
        "{body}"
    );
    let (code, body, _) =
        hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(batch(10_001))).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_BODY")), "{body}");
    assert!(hub.seen().is_empty());

    // Too large even for a batch: 413, as on the other routes past their limit.
    let huge = json!({"messages": [{"to": "5491155550000", "message": "x".repeat(9 * 1024 * 1024)}]});
    let (code, body, _) =
        hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(huge)).await;
    assert_eq!((code, body["error"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));
    let long = json!({"to": "5491155550000", "message": "x".repeat(100 * 1024)});
    let (code, _, _) = hub.call(Method::POST, "/api/whatsapp/51/send", Some(&tenant), Some(long)).await;
    assert_eq!(code, 413, "the other routes keep the hub's limit");

    // The pod's refusals pass through, with Retry-After.
    let full = json!({"to": "5491199999999", "message": "x"});
    let (code, body, headers) =
        hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(full)).await;
    assert_eq!((code, body["error"].as_str()), (507, Some("OUTBOX_FULL")), "{body}");
    assert_eq!(headers["retry-after"], "60");

    // Accepted whatever the session's state, as long as its pod runs.
    let (code, _, _) =
        hub.call(Method::POST, "/api/whatsapp/52/messages", Some(&hub.token(None)), Some(batch(2))).await;
    assert_eq!(code, 202);
    for id in [53, 54] {
        let (code, body, _) = hub
            .call(
                Method::POST,
                &format!("/api/whatsapp/{id}/messages"),
                Some(&hub.token(None)),
                Some(batch(1)),
            )
            .await;
        assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "{id}: {body}");
        let (code, _, _) = hub
            .call(Method::GET, &format!("/api/whatsapp/{id}/messages"), Some(&hub.token(None)), None)
            .await;
        assert_eq!(code, 409);
    }
    hub.seen();

    // Read one, page, cancel.
    let (code, body, _) = hub.call(Method::GET, "/api/whatsapp/51/messages/ID0", Some(&tenant), None).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("delivered")), "{body}");
    assert!(body.get("reason").is_none(), "absent fields stay absent: {body}");
    let (code, body, _) = hub.call(Method::GET, "/api/whatsapp/51/messages/ID9", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("MESSAGE_NOT_FOUND")));
    let (code, body, _) = hub.call(Method::GET, "/api/whatsapp/51/messages/a%2Fb", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_MESSAGE_ID")));
    let (code, body, _) = hub
        .call(
            Method::GET,
            "/api/whatsapp/51/messages?status=read&batch=promo-1&cursor=9&limit=2",
            Some(&tenant),
            None,
        )
        .await;
    assert_eq!((code, body["nextCursor"].as_str()), (200, Some("6")), "{body}");
    assert_eq!(hub.seen().last().unwrap().1, "/v1/outbox?status=read&batch=promo-1&cursor=9&limit=2");
    for bad in ["limit=0", "limit=x", "status=lost"] {
        let (code, body, _) =
            hub.call(Method::GET, &format!("/api/whatsapp/51/messages?{bad}"), Some(&tenant), None).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_QUERY")), "{bad}");
    }
    let (code, body, _) =
        hub.call(Method::DELETE, "/api/whatsapp/51/messages/ID2", Some(&tenant), None).await;
    assert_eq!(
        (code, body["status"].as_str(), body["reason"].as_str()),
        (200, Some("failed"), Some("CANCELLED"))
    );
    let (code, body, _) =
        hub.call(Method::DELETE, "/api/whatsapp/51/messages/ID1", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("NOT_CANCELLABLE")));

    // Counted by route template.
    let metrics = hub.metrics.render();
    assert!(metrics.contains(r#"route="/api/whatsapp/{clienteId}/messages/{id}""#), "{metrics}");
}

#[tokio::test]
async fn the_original_sender_routes_send_queue_jobs_and_report_progress() {
    let hub = Hub::start().await;
    let (tenant, admin) = (hub.token(Some(51)), hub.token(None));
    let text = json!({"to": "5491155550000", "message": "hola"});

    // send: the clienteId from the token, or from the body for an admin; answered once sent.
    let (code, body, _) = hub.call(Method::POST, "/sender/send", Some(&tenant), Some(text.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["success"].as_bool(), body["data"]["id"].as_str()), (Some(true), Some("SENT1")));
    assert_eq!(hub.seen()[0].1, "/v1/messages");
    let (code, body, _) = hub.call(Method::POST, "/sender/send", Some(&admin), Some(text.clone())).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_CLIENT_ID")), "{body}");
    let (code, _, _) = hub
        .call(
            Method::POST,
            "/sender/send",
            Some(&admin),
            Some(json!({"cliente_id": 51, "to": "5491155550000", "message": "x"})),
        )
        .await;
    assert_eq!(code, 200);
    let (code, body, _) = hub
        .call(
            Method::POST,
            "/sender/send",
            Some(&admin),
            Some(json!({"clienteId": 52, "to": "5491155550000", "message": "x"})),
        )
        .await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "not linked: {body}");
    hub.seen();

    // send-bulk: a job named after the session; each message's id.
    let (code, body, _) = hub.call(Method::POST, "/sender/send-bulk", Some(&tenant), Some(batch(3))).await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    assert!(job.starts_with("51-"), "{job}");
    assert_eq!((body["total"].as_u64(), body["messages"].as_array().unwrap().len()), (Some(3), 3));
    assert_eq!(hub.seen()[0].3["batch"], job.as_str(), "the job is the outbox batch");

    let (code, body, _) = hub.call(Method::GET, &format!("/sender/jobs/{job}"), Some(&tenant), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["total"].as_u64(), body["pending"].as_u64(), body["sent"].as_u64(), body["done"].as_bool()),
        (Some(3), Some(1), Some(2), Some(false))
    );
    let (code, body, _) = hub.call(Method::GET, "/sender/jobs/51-unknown", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("JOB_NOT_FOUND")));
    let (code, body, _) = hub.call(Method::GET, "/sender/jobs/nothing", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("JOB_NOT_FOUND")));
}

#[tokio::test]
async fn a_tenant_acts_on_its_own_messages_and_jobs_only() {
    let hub = Hub::start().await;
    let other = hub.token(Some(52));
    let one = json!({"to": "5491155550000", "message": "x"});
    for (method, path, body) in [
        (Method::POST, "/api/whatsapp/51/messages", Some(one.clone())),
        (Method::GET, "/api/whatsapp/51/messages", None),
        (Method::GET, "/api/whatsapp/51/messages/ID0", None),
        (Method::DELETE, "/api/whatsapp/51/messages/ID0", None),
        (Method::POST, "/sender/send", Some(json!({"clienteId": 51, "to": "5491155550000", "message": "x"}))),
        (Method::POST, "/sender/send-bulk", Some(json!({"clienteId": 51, "messages": [one.clone()]}))),
        (Method::GET, "/sender/jobs/51-0123456789abcdef", None),
    ] {
        let (code, err, _) = hub.call(method.clone(), path, Some(&other), body.clone()).await;
        assert_eq!((code, err["error"].as_str()), (403, Some("FORBIDDEN")), "{method} {path}");
        let (code, err, _) = hub.call(method.clone(), path, None, body).await;
        assert_eq!((code, err["error"].as_str()), (401, Some("UNAUTHORIZED")), "{method} {path}");
    }
    assert!(hub.seen().is_empty());
}

#[tokio::test]
async fn the_document_has_the_message_routes() {
    let hub = Hub::start().await;
    let (code, doc, _) = hub.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(code, 200);
    for (path, method) in [
        ("/api/whatsapp/{clienteId}/messages", "post"),
        ("/api/whatsapp/{clienteId}/messages", "get"),
        ("/api/whatsapp/{clienteId}/messages/{id}", "get"),
        ("/api/whatsapp/{clienteId}/messages/{id}", "delete"),
        ("/sender/send", "post"),
        ("/sender/send-bulk", "post"),
        ("/sender/jobs/{id}", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    let submit = &doc["paths"]["/api/whatsapp/{clienteId}/messages"]["post"];
    let examples = &submit["requestBody"]["content"]["application/json"]["examples"];
    assert!(examples["one"].is_object() && examples["batch"].is_object(), "{submit}");
    assert!(submit["responses"]["507"]["headers"]["Retry-After"].is_object(), "{submit}");
    assert!(
        doc["components"]["schemas"]["Submit"]["oneOf"].is_array(),
        "{}",
        doc["components"]["schemas"]["Submit"]
    );
}

/// A client of the hub's `/events`: its events as (name, JSON data).
struct EventStream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: crate::upstream::SseDecoder,
}

impl EventStream {
    async fn open(hub: &Hub, cliente_id: i64, token: &str) -> EventStream {
        let response = hub
            .http
            .get(format!("{}/api/whatsapp/{cliente_id}/events", hub.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        EventStream { body: Box::pin(response.bytes_stream()), decoder: Default::default() }
    }

    /// The next event within `limit`.
    async fn next(&mut self, limit: Duration) -> Option<(String, Value)> {
        use futures::StreamExt;
        tokio::time::timeout(limit, async {
            loop {
                if let Some((name, data)) = self.decoder.next_event() {
                    return Some((name, serde_json::from_str(&data).unwrap()));
                }
                self.decoder.push(&self.body.next().await?.ok()?);
            }
        })
        .await
        .ok()
        .flatten()
    }
}

fn gauge(metrics: &Metrics, name: &str) -> String {
    metrics.render().lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_streams_of_a_session_share_one_connection_to_its_pod() {
    let hub = Hub::start().await;
    let tenant = hub.token(Some(51));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = EventStream::open(&hub, 51, &tenant).await;
        let (name, status) = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!((name.as_str(), status["state"].as_str()), ("status", Some("READY")));
        streams.push(stream);
    }
    // Every stream gets the session's message changes, in the hub's shape, in order.
    let mut connected = 0;
    for stream in &mut streams {
        let mut attempts = Vec::new();
        while attempts.len() < 3 {
            let (name, data) = stream.next(Duration::from_secs(5)).await.expect("message changes");
            match name.as_str() {
                "message" => {
                    assert_eq!((data["id"].as_str(), data["status"].as_str()), (Some("ID0"), Some("sent")));
                    assert!(data.get("reason").is_none(), "{data}");
                    attempts.push(data["attempts"].as_u64().unwrap());
                }
                "lagged" => {
                    assert_eq!(data, json!({"clienteId": 51, "reason": "connected"}));
                    connected += 1;
                }
                other => panic!("unexpected {other}: {data}"),
            }
        }
        assert!(attempts.windows(2).all(|w| w[1] == w[0] + 1), "{attempts:?}");
    }
    assert!(connected >= 1, "the first stream is told when the changes start");
    let calls: Vec<_> = hub.seen().into_iter().filter(|(_, path, ..)| path == "/v1/outbox/events").collect();
    assert_eq!(calls.len(), 1, "one connection to the pod for three streams");
    assert_eq!(calls[0].2, format!("Bearer {}", whatsapp_crds::hub_token(KEY, "t", "s51")));
    assert_eq!(gauge(&hub.metrics, "whatsapp_hub_pod_event_streams"), "whatsapp_hub_pod_event_streams 1");

    // A session without a pod: its status, and no connection attempt.
    let mut starting = EventStream::open(&hub, 54, &hub.token(Some(54))).await;
    assert_eq!(starting.next(Duration::from_secs(5)).await.unwrap().0, "status");
    assert_eq!(starting.next(Duration::from_millis(300)).await, None);
    assert!(hub.seen().iter().all(|(_, path, ..)| path != "/v1/outbox/events"));

    // The last stream of the session closes: so does the connection.
    drop(streams);
    drop(starting);
    for _ in 0..100 {
        if gauge(&hub.metrics, "whatsapp_hub_pod_event_streams").ends_with(" 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge(&hub.metrics, "whatsapp_hub_pod_event_streams"), "whatsapp_hub_pod_event_streams 0");

    // `events` is the pod's stream, never a message id.
    let (code, body, _) =
        hub.call(Method::GET, "/api/whatsapp/51/messages/events", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("MESSAGE_NOT_FOUND")));
    assert!(hub.seen().is_empty());
}
