//! The message routes in process, against a stand-in session pod that speaks the outbox
//! contract: what the hub forwards, what it refuses itself, what it passes through, who may
//! call, and the per-route body limit. (The real pod is in the end-to-end tests.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::ServiceExt;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::auth::{Authenticator, JwtSettings};
use crate::cache::SessionCache;
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};
use crate::upstream::SessionPods;
use crate::writes::SessionWriter;

const KEY: &[u8] = b"the-hub-token-key-of-at-least-32-bytes";
const SECRET: &[u8] = b"the-jwt-secret-of-at-least-32-bytes!!!";

/// What the stand-in pod was asked: method, path with query, bearer token, body.
type Seen = Arc<Mutex<Vec<(Method, String, String, Value)>>>;

/// The stand-in for every session pod: on the session port of a loopback address of its own
/// (the hub derives a pod's address from its name; the test resolves the names here).
async fn fake_pod(seen: Seen) -> std::net::SocketAddr {
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
            let cliente = parts.headers.get("x-cliente-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if cliente == "55" && parts.uri.path() == "/v1/outbox/events" {
                return received_stream();
            }
            if parts.uri.path() == "/v1/outbox/HANG" {
                std::future::pending::<()>().await;
            }
            answer(&parts.method, parts.uri.path(), &body)
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = loop {
        let ip = std::net::Ipv4Addr::new(127, 200, rand::random(), rand::random::<u8>().max(1));
        let port = u16::try_from(whatsapp_crds::SESSION_PORT).unwrap();
        if let Ok(listener) = tokio::net::TcpListener::bind((ip, port)).await {
            break listener;
        }
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
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
        _ => answer_more(method, &segments, body),
    }
}

fn incoming(id: &str) -> Value {
    json!({"id": id, "direction": "in", "from": "5491155550000", "fromLid": "123456789012345", "pushName": "Ana",
           "chat": "123456789012345@lid", "type": "chat", "body": "hola", "timestamp": "2026-12-02T10:00:00Z",
           "quotedId": null, "media": null, "receivedAt": "2026-12-02T10:00:01Z"})
}

fn delivery(id: &str, status: &str) -> Value {
    json!({"id": id, "endpoint": "crm", "eventId": "evt_000000000042a1b2c3d4", "type": "message", "status": status,
           "attempts": 3, "lastError": "connection refused", "lastStatus": null, "nextAttemptAt": null,
           "createdAt": "2026-12-02T10:00:00Z", "deliveredAt": null})
}

/// The pod routes of received messages, webhooks, contacts, number checks and logout.
fn answer_more(method: &Method, segments: &[&str], body: &Value) -> Response {
    match (method.as_str(), segments) {
        ("GET", ["v1", "inbound", "3A1B", "media"]) => (
            [("content-type", "image/png"), ("content-disposition", "attachment; filename=\"foto.png\"")],
            b"\x89PNG fake".to_vec(),
        )
            .into_response(),
        ("GET", ["v1", "inbound", _, "media"]) => refuse(StatusCode::NOT_FOUND, "MEDIA_NOT_FOUND"),
        ("GET", ["v1", "inbound"]) => {
            axum::Json(json!({"messages": [incoming("3A1B")], "nextCursor": 5})).into_response()
        }
        ("GET", ["v1", "webhooks", "deliveries"]) => {
            axum::Json(json!({"deliveries": [delivery("42", "dead")], "nextCursor": null})).into_response()
        }
        ("POST", ["v1", "webhooks", "deliveries", "42", "redeliver"]) => {
            (StatusCode::ACCEPTED, axum::Json(delivery("42", "pending"))).into_response()
        }
        ("POST", ["v1", "webhooks", "deliveries", _, "redeliver"]) => {
            refuse(StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND")
        }
        ("GET", ["v1", "contacts"]) => axum::Json(json!({"contacts": [
            {"number": "5491155550000", "lid": "123456789012345", "name": "Ana", "pushName": "Ana P", "isBusiness": false, "isMyContact": true}],
            "nextCursor": 2, "syncedAt": "2026-12-02T10:00:00Z"}))
        .into_response(),
        ("POST", ["v1", "contacts", "sync"]) => {
            axum::Json(json!({"count": 3, "syncedAt": "2026-12-02T10:00:00Z"})).into_response()
        }
        ("POST", ["v1", "numbers", "check"]) => {
            let numbers = body["numbers"].as_array().cloned().unwrap_or_default();
            if numbers.iter().any(|n| n == "5490000000503") {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "SESSION_NOT_READY");
            }
            let results: Vec<Value> = numbers
                .iter()
                .map(|n| json!({"number": n, "status": "pending", "lid": null, "checkedAt": null}))
                .collect();
            axum::Json(json!({"results": results})).into_response()
        }
        ("POST", ["v1", "logout"]) => StatusCode::NO_CONTENT.into_response(),
        _ => refuse(StatusCode::NOT_FOUND, "NO_SUCH_ROUTE"),
    }
}

/// The event stream of a pod whose session receives a message every 50 ms.
fn received_stream() -> Response {
    let received = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let data = incoming(&format!("IN{n}")).to_string();
        let event = axum::response::sse::Event::default().event("incoming").data(data);
        Some((Ok::<_, std::convert::Infallible>(event), n + 1))
    });
    axum::response::sse::Sse::new(received).into_response()
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
    /// pod address yet, 55 READY (its pod's live stream: received messages).
    async fn start() -> Hub {
        Hub::start_with(&[], Duration::from_secs(10)).await
    }

    /// With the browser origins CORS allows and the request deadline given.
    async fn start_with(cors_origins: &[String], request_timeout: Duration) -> Hub {
        let seen = Seen::default();
        let pod_address = fake_pod(seen.clone()).await;
        // What each pod announced: the hub only checks that it did.
        let pod = "http://announced.invalid:1";
        let metrics = Metrics::default();
        let cache = SessionCache::new(metrics.clone());
        cache.fill_for_tests(&[
            session("cliente-51", 51, false, json!({"state": "READY", "endpoint": pod})),
            session("cliente-52", 52, false, json!({"state": "CONNECTING", "endpoint": pod})),
            session("cliente-53", 53, true, json!({"state": "DISCONNECTED", "endpoint": pod})),
            session("cliente-54", 54, false, json!({"state": "CONNECTING"})),
            session("cliente-55", 55, false, json!({"state": "READY", "endpoint": pod})),
        ]);
        let settings = JwtSettings { issuer: None, audience: None, leeway_seconds: 30 };
        let auth = Arc::new(Authenticator::hs256(SECRET, settings).unwrap());
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let state = AppState::from(Shared {
            cache,
            auth: auth.clone(),
            logins: None,
            pods: Arc::new(
                SessionPods::resolving(
                    KEY.to_vec(),
                    &(51..=55)
                        .map(|id| (whatsapp_crds::session_host("t", &format!("cliente-{id}")), pod_address))
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
            writer: Arc::new(SessionWriter::new(kube, "t".into())),
            admin_cliente_id: None,
            metrics: metrics.clone(),
            shutdown,
            request_timeout,
            openapi: Default::default(),
            feeds: Default::default(),
        });
        let app = super::app(state, cors_origins, 64 * 1024, crate::outbox::BATCH_BODY_LIMIT);
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
async fn files_go_out_with_their_caption_and_received_files_come_back_as_they_are() {
    let hub = Hub::start().await;
    let tenant = hub.token(Some(51));
    let image = json!({"to": "+54 9 11 5555-0000", "message": "", "media": {"url": "https://files.example/a.png", "mimetype": "image/png"}});
    let (code, body, _) =
        hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(image)).await;
    assert_eq!(code, 202, "{body}");
    let sent = hub.seen().into_iter().rfind(|(_, path, ..)| path == "/v1/outbox").unwrap().3;
    assert_eq!(
        sent["messages"][0]["media"],
        json!({"url": "https://files.example/a.png", "mimetype": "image/png"})
    );
    for (media, why) in [
        (json!({"mimetype": "image/png"}), "no source"),
        (json!({"url": "https://a.example/x", "dataBase64": "AAAA", "mimetype": "image/png"}), "two sources"),
        (json!({"url": "ftp://a.example/x", "mimetype": "image/png"}), "not http"),
        (json!({"dataBase64": "AAAA", "mimetype": "png"}), "no content type"),
        (json!({"dataBase64": "AAAA", "mimetype": "image/png", "filename": "../x"}), "a path"),
    ] {
        let bad = json!({"to": "5491155550000", "media": media});
        let (code, body, _) =
            hub.call(Method::POST, "/api/whatsapp/51/messages", Some(&tenant), Some(bad)).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_MEDIA")), "{why}: {body}");
    }

    let response = hub
        .http
        .get(format!("{}/api/whatsapp/51/messages/3A1B/media", hub.url))
        .bearer_auth(&tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"foto.png\"");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(&response.bytes().await.unwrap()[..], b"\x89PNG fake");
    let (code, body, _) =
        hub.call(Method::GET, "/api/whatsapp/51/messages/3A1C/media", Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("MEDIA_NOT_FOUND")));
    let (code, _, _) =
        hub.call(Method::GET, "/api/whatsapp/51/messages/3A1B/media", Some(&hub.token(Some(52))), None).await;
    assert_eq!(code, 403, "another tenant's file");
}

#[tokio::test]
async fn messages_go_to_the_session_pods_outbox() {
    let hub = Hub::start().await;
    let tenant = hub.token(Some(51));
    let pod_token = format!("Bearer {}", whatsapp_runtime::hub_token(KEY, "t", "cliente-51"));

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
    // Streamed without a length (chunked), the same.
    let chunks = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let response = hub
        .http
        .post(format!("{}/api/whatsapp/51/send", hub.url))
        .bearer_auth(&tenant)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "a chunked body keeps the hub's limit");

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
        (Method::GET, "/api/whatsapp/51/messages?direction=in", None),
        (Method::GET, "/api/whatsapp/51/webhooks/deliveries", None),
        (Method::POST, "/api/whatsapp/51/webhooks/deliveries/42/redeliver", None),
        (Method::GET, "/api/whatsapp/51/contacts", None),
        (Method::POST, "/sync-contacts/sync", Some(json!({"clienteId": 51}))),
        (Method::POST, "/api/whatsapp/51/numbers/check", Some(json!({"numbers": ["5491155550000"]}))),
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
        ("/api/whatsapp/{clienteId}/webhooks/deliveries", "get"),
        ("/api/whatsapp/{clienteId}/webhooks/deliveries/{id}/redeliver", "post"),
        ("/api/whatsapp/{clienteId}/contacts", "get"),
        ("/sync-contacts/sync", "post"),
        ("/api/whatsapp/{clienteId}/numbers/check", "post"),
        ("/api/health", "get"),
        ("/api/session-manager/status", "get"),
        ("/api/session-manager/state", "get"),
        ("/api/session-manager/qr", "get"),
        ("/api/session-manager/login", "post"),
        ("/api/session-manager/logout", "post"),
        ("/session-manager/status", "get"),
        ("/session-manager/logout", "post"),
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
    let list = &doc["paths"]["/api/whatsapp/{clienteId}/messages"]["get"];
    let directions = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "direction");
    assert!(directions.is_some(), "{list}");
    let pages = &doc["components"]["schemas"]["MessageList"]["anyOf"];
    assert_eq!(
        pages.as_array().map(Vec::len),
        Some(2),
        "either page: {}",
        doc["components"]["schemas"]["MessageList"]
    );
    for schema in
        ["MessagePage", "InboundPage", "IncomingMessage", "DeliveryPage", "ContactPage", "NumbersChecked"]
    {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    let sync = &doc["paths"]["/sync-contacts/sync"]["post"];
    assert_ne!(sync["requestBody"]["required"], json!(true), "the body is optional: {sync}");
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
async fn a_live_stream_ends_when_its_token_expires() {
    let hub = Hub::start().await;
    // A session without a pod: only its status flows, so the stream's end is the token's.
    let short = hub.auth.issue("test", "user", Some(54), 2).unwrap();
    let mut stream = EventStream::open(&hub, 54, &short).await;
    let mut names = Vec::new();
    while let Some((name, data)) = stream.next(Duration::from_secs(30)).await {
        if name == "expired" {
            assert_eq!(data, json!({"clienteId": 54}));
        }
        names.push(name);
    }
    assert_eq!(names, ["status", "expired"], "the status, then the end at expiry");
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
    assert_eq!(calls[0].2, format!("Bearer {}", whatsapp_runtime::hub_token(KEY, "t", "cliente-51")));
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

#[tokio::test]
async fn received_messages_and_webhook_deliveries_come_from_the_session_pod() {
    let hub = Hub::start().await;
    let tenant = hub.token(Some(51));

    let (code, page, _) = hub
        .call(Method::GET, "/api/whatsapp/51/messages?direction=in&cursor=9&limit=2", Some(&tenant), None)
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        (page["messages"][0]["direction"].as_str(), page["messages"][0]["type"].as_str()),
        (Some("in"), Some("chat"))
    );
    assert_eq!(page["nextCursor"], "5", "the pod's cursor, as the hub's opaque string");
    assert_eq!(hub.seen()[0].1, "/v1/inbound?cursor=9&limit=2");
    let (code, _, _) =
        hub.call(Method::GET, "/api/whatsapp/51/messages?direction=out", Some(&tenant), None).await;
    assert_eq!((code, hub.seen()[0].1.as_str()), (200, "/v1/outbox"));
    for bad in
        ["direction=in&status=read", "direction=in&batch=b", "direction=in&cursor=x", "direction=sideways"]
    {
        let (code, body, _) =
            hub.call(Method::GET, &format!("/api/whatsapp/51/messages?{bad}"), Some(&tenant), None).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_QUERY")), "{bad}: {body}");
    }

    let (code, page, _) = hub
        .call(
            Method::GET,
            "/api/whatsapp/51/webhooks/deliveries?status=dead&endpoint=crm",
            Some(&tenant),
            None,
        )
        .await;
    assert_eq!((code, page["deliveries"][0]["status"].as_str()), (200, Some("dead")), "{page}");
    assert!(page.get("nextCursor").is_none(), "the last page: {page}");
    assert_eq!(hub.seen()[0].1, "/v1/webhooks/deliveries?status=dead&endpoint=crm");
    for bad in ["status=lost", "endpoint=Not_A_Name", "limit=0", "extra=1"] {
        let (code, body, _) = hub
            .call(Method::GET, &format!("/api/whatsapp/51/webhooks/deliveries?{bad}"), Some(&tenant), None)
            .await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_QUERY")), "{bad}: {body}");
    }
    let redeliver = |id: &str| format!("/api/whatsapp/51/webhooks/deliveries/{id}/redeliver");
    let (code, again, _) = hub.call(Method::POST, &redeliver("42"), Some(&tenant), None).await;
    assert_eq!((code, again["status"].as_str()), (202, Some("pending")), "{again}");
    let (code, body, _) = hub.call(Method::POST, &redeliver("7"), Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("DELIVERY_NOT_FOUND")));
    hub.seen();
    let (code, body, _) = hub.call(Method::POST, &redeliver("x1"), Some(&tenant), None).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_DELIVERY_ID")));
    let (code, body, _) =
        hub.call(Method::GET, "/api/whatsapp/53/webhooks/deliveries", Some(&hub.token(None)), None).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "suspended: {body}");
    assert!(hub.seen().is_empty());
}

#[tokio::test]
async fn contacts_are_synced_and_listed_and_numbers_checked_through_the_session_pod() {
    let hub = Hub::start().await;
    let (tenant, admin) = (hub.token(Some(51)), hub.token(None));

    // The original route: the tenant from the token (no body needed), or from an admin's body.
    let (code, synced, _) = hub.call(Method::POST, "/sync-contacts/sync", Some(&tenant), None).await;
    assert_eq!(code, 200, "{synced}");
    assert_eq!(synced, json!({"ok": true, "count": 3, "syncedAt": "2026-12-02T10:00:00Z"}));
    let seen = hub.seen();
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("POST", "/v1/contacts/sync"));
    let (code, _, _) =
        hub.call(Method::POST, "/sync-contacts/sync", Some(&admin), Some(json!({"cliente_id": 51}))).await;
    assert_eq!(code, 200);
    let (code, body, _) = hub.call(Method::POST, "/sync-contacts/sync", Some(&admin), None).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_CLIENT_ID")), "{body}");
    let (code, body, _) =
        hub.call(Method::POST, "/sync-contacts/sync", Some(&admin), Some(json!({"clienteId": 52}))).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "not linked: {body}");
    let (code, body, _) = hub
        .call(Method::POST, "/sync-contacts/sync", Some(&tenant), Some(json!({"clienteId": 51, "x": 1})))
        .await;
    assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_BODY")), "{body}");
    let raw = hub.http.post(format!("{}/sync-contacts/sync", hub.url)).bearer_auth(&tenant);
    let response = raw.header("content-type", "text/plain").body("hello").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let raw = hub.http.post(format!("{}/sync-contacts/sync", hub.url)).bearer_auth(&tenant);
    let response = raw.header("content-type", "application/json").body("{").send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "INVALID_JSON");
    hub.seen();

    let (code, page, _) =
        hub.call(Method::GET, "/api/whatsapp/51/contacts?limit=1", Some(&tenant), None).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        (page["contacts"][0]["name"].as_str(), page["contacts"][0]["isMyContact"].as_bool()),
        (Some("Ana"), Some(true))
    );
    assert_eq!(
        (page["nextCursor"].as_str(), page["syncedAt"].as_str()),
        (Some("2"), Some("2026-12-02T10:00:00Z"))
    );
    assert_eq!(hub.seen()[0].1, "/v1/contacts?limit=1");

    // Numbers as given (the pod answers each, `invalid` included); the list itself is checked.
    let numbers = json!({"numbers": ["+54 9 11 5555-0000", "12"]});
    let (code, checked, _) =
        hub.call(Method::POST, "/api/whatsapp/51/numbers/check", Some(&tenant), Some(numbers.clone())).await;
    assert_eq!(
        (code, checked["results"][0]["number"].as_str()),
        (200, Some("+54 9 11 5555-0000")),
        "{checked}"
    );
    assert_eq!(hub.seen()[0].3, numbers);
    let many: Vec<String> = (0..1001).map(|i| format!("54911{i:08}")).collect();
    for bad in [json!({"numbers": []}), json!({"numbers": many}), json!({"numbers": ["1".repeat(40)]})] {
        let (code, body, _) =
            hub.call(Method::POST, "/api/whatsapp/51/numbers/check", Some(&tenant), Some(bad)).await;
        assert_eq!((code, body["error"].as_str()), (400, Some("INVALID_NUMBERS")), "{body}");
    }
    let one = json!({"numbers": ["5491155550000"]});
    let (code, body, _) =
        hub.call(Method::POST, "/api/whatsapp/52/numbers/check", Some(&admin), Some(one)).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "{body}");
    assert!(hub.seen().is_empty(), "refused by the hub itself");
    // The pod finds the session not linked (any more): the hub's own 409, not a 502.
    let lost = json!({"numbers": ["5490000000503"]});
    let (code, body, _) =
        hub.call(Method::POST, "/api/whatsapp/51/numbers/check", Some(&tenant), Some(lost)).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")), "{body}");
}

#[tokio::test]
async fn the_original_session_manager_routes_act_on_the_tokens_session() {
    let hub = Hub::start().await;
    let (tenant, waiting) = (hub.token(Some(51)), hub.token(Some(52)));
    let (code, health, _) = hub.call(Method::GET, "/api/health", None, None).await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));

    for prefix in ["/api/session-manager", "/session-manager"] {
        for path in ["status", "state"] {
            let (code, body, _) =
                hub.call(Method::GET, &format!("{prefix}/{path}"), Some(&tenant), None).await;
            assert_eq!(
                (code, body["state"].as_str(), body["clienteId"].as_i64()),
                (200, Some("READY"), Some(51))
            );
        }
        let (code, body, _) = hub.call(Method::GET, &format!("{prefix}/qr"), Some(&tenant), None).await;
        assert_eq!((code, body["error"].as_str()), (409, Some("ALREADY_CONNECTED")));
        let (code, body, _) = hub.call(Method::GET, &format!("{prefix}/qr"), Some(&waiting), None).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("QR_NOT_AVAILABLE")));
        // Login: the session runs already; it says so, and nothing is written.
        let (code, body, _) = hub.call(Method::POST, &format!("{prefix}/login"), Some(&tenant), None).await;
        assert_eq!((code, body["alreadyConnected"].as_bool()), (200, Some(true)), "{body}");
        let (code, body, _) = hub.call(Method::POST, &format!("{prefix}/logout"), Some(&waiting), None).await;
        assert_eq!((code, body["error"].as_str()), (409, Some("SESSION_NOT_READY")));
        let (code, body, _) = hub.call(Method::POST, &format!("{prefix}/logout"), Some(&tenant), None).await;
        assert_eq!((code, body["message"].as_str()), (200, Some("Logged out")), "{body}");
        let seen = hub.seen();
        assert_eq!((seen.len(), seen[0].1.as_str()), (1, "/v1/logout"), "the pod's logout, once");
        // An admin acts on the admin session: none is configured here.
        let (code, body, _) =
            hub.call(Method::GET, &format!("{prefix}/status"), Some(&hub.token(None)), None).await;
        assert_eq!((code, body["error"].as_str()), (404, Some("NOT_FOUND")));
        let (code, _, _) = hub.call(Method::GET, &format!("{prefix}/status"), None, None).await;
        assert_eq!(code, 401);
    }
}

#[tokio::test]
async fn received_messages_are_on_the_event_stream() {
    let hub = Hub::start().await;
    let mut stream = EventStream::open(&hub, 55, &hub.token(Some(55))).await;
    let mut received = Vec::new();
    while received.len() < 2 {
        let (name, data) = stream.next(Duration::from_secs(5)).await.expect("events");
        match name.as_str() {
            "message" => {
                assert_eq!(
                    (data["direction"].as_str(), data["pushName"].as_str()),
                    (Some("in"), Some("Ana")),
                    "{data}"
                );
                received.push(data["id"].as_str().unwrap().to_owned());
            }
            "status" | "lagged" => {}
            other => panic!("unexpected {other}: {data}"),
        }
    }
    assert_eq!(received, ["IN0", "IN1"], "in order");
}

#[tokio::test]
async fn every_response_carries_its_request_id_and_a_stuck_call_times_out() {
    let hub = Hub::start_with(&[], Duration::from_millis(300)).await;
    let tenant = hub.token(Some(51));
    let (code, _, headers) = hub.call(Method::GET, "/api/whatsapp/51/status", Some(&tenant), None).await;
    let first = headers["x-request-id"].to_str().unwrap().to_owned();
    let (_, _, headers) = hub.call(Method::GET, "/api/whatsapp/51/status", Some(&tenant), None).await;
    let second = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(code, 200);
    assert_ne!(first, second, "each request gets an id of its own");
    // A caller's own id is kept, also on an error.
    let response = hub
        .http
        .get(format!("{}/api/whatsapp/51/status", hub.url))
        .header("x-request-id", "trace-7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (response.status().as_u16(), response.headers()["x-request-id"].to_str().unwrap()),
        (401, "trace-7")
    );
    // No origin is allowed: nothing tells a browser it may call.
    let preflight = hub
        .http
        .request(Method::OPTIONS, format!("{}/api/whatsapp/51/status", hub.url))
        .header("origin", "https://crm.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.headers().get("access-control-allow-origin").is_none());

    let stuck = hub.call(Method::GET, "/api/whatsapp/51/messages/HANG", Some(&tenant), None);
    let (code, body, headers) =
        tokio::time::timeout(Duration::from_secs(30), stuck).await.expect("the hub's deadline answers");
    // The hub's own deadline, not the pod client's longer timeouts.
    assert_eq!((code, body["error"].as_str()), (504, Some("GATEWAY_TIMEOUT")), "{body}");
    assert!(body["message"].as_str().unwrap().ends_with("the request took longer than 300ms"), "{body}");
    assert!(headers.contains_key("x-request-id"));
    // Answers no handler gives carry one too.
    for (method, path, status) in
        [(Method::GET, "/nowhere", 404), (Method::PUT, "/api/whatsapp/51/status", 405)]
    {
        let (code, _, headers) = hub.call(method, path, Some(&tenant), None).await;
        assert_eq!((code, headers.contains_key("x-request-id")), (status, true), "{path}");
    }
    let metrics = hub.metrics.render();
    assert!(
        metrics.lines().any(|l| l.starts_with("whatsapp_hub_http_requests_total{")
            && l.contains("messages/{id}")
            && l.contains("status=\"504\"")),
        "{metrics}"
    );
    // Labelled by the route matched, or as unmatched.
    for counted in [
        r#"whatsapp_hub_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"whatsapp_hub_http_requests_total{method="PUT",route="/api/whatsapp/{clienteId}/status",status="405"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == counted), "{counted} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_live_stream_outlives_the_request_deadline() {
    let hub = Hub::start_with(&[], Duration::from_millis(300)).await;
    let mut stream = hub
        .http
        .get(format!("{}/api/whatsapp/51/events", hub.url))
        .bearer_auth(hub.token(Some(51)))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let opened = std::time::Instant::now();
    // The stand-in pod changes a message every 50 ms: changes keep coming well past 300 ms.
    let mut late = 0;
    while late < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await.unwrap().unwrap();
        let chunk = chunk.expect("the stream is still open");
        if opened.elapsed() > Duration::from_secs(1)
            && String::from_utf8_lossy(&chunk).contains("event: message")
        {
            late += 1;
        }
    }
}

#[test]
fn cors_is_on_only_for_an_origin_a_browser_can_send() {
    let on =
        |origins: &[&str]| super::cors(&origins.iter().map(|o| o.to_string()).collect::<Vec<_>>()).is_some();
    assert!(!on(&[]));
    assert!(!on(&["", "  "]));
    assert!(!on(&["https://bad\norigin"]));
    assert!(on(&["*"]));
    assert!(on(&["https://crm.example", "https://bad\norigin"]));
    assert!(on(&[" https://crm.example"]));
}

#[tokio::test]
async fn browsers_on_an_allowed_origin_may_call_and_read_the_request_id() {
    let hub = Hub::start_with(&["https://crm.example".to_owned()], Duration::from_millis(300)).await;
    let preflight = |origin: &'static str| {
        hub.http
            .request(Method::OPTIONS, format!("{}/api/whatsapp/51/status", hub.url))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://crm.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://crm.example");
    assert!(allowed.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let read = hub
        .http
        .get(format!("{}/api/whatsapp/51/status", hub.url))
        .bearer_auth(hub.token(Some(51)))
        .header("origin", "https://crm.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["access-control-expose-headers"], "x-request-id");
    assert!(read.headers().contains_key("x-request-id"));
    // Refusals and the deadline's 504 reach the browser as what they are, not as CORS failures.
    for (path, token, status) in [
        ("/api/whatsapp/51/status", None, 401),
        ("/api/whatsapp/51/messages/HANG", Some(hub.token(Some(51))), 504),
    ] {
        let mut request = hub.http.get(format!("{}{path}", hub.url)).header("origin", "https://crm.example");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(Duration::from_secs(30), request.send()).await.unwrap().unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(response.headers()["access-control-allow-origin"], "https://crm.example", "{path}");
        assert!(response.headers().contains_key("x-request-id"), "{path}");
    }
}
