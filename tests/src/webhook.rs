//! A webhook receiver for tests: an HTTP server on loopback with one endpoint per path
//! (`/<endpoint>`), as a customer's service would be. It checks each request the way a
//! Standard Webhooks consumer does, on its own (the HMAC computed here from the secret, never
//! by the code under test; the timestamp within 5 minutes of now), records what it accepted
//! per endpoint in arrival order, and can be told per endpoint to fail (500), stall (hold each
//! request until told otherwise) or accept again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::watch;

/// How far `webhook-timestamp` may be from now (the Standard Webhooks libraries' tolerance).
const TOLERANCE_SECONDS: i64 = 300;

/// How an endpoint answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// 200, and the delivery is recorded.
    #[default]
    Accept,
    /// 500.
    Fail,
    /// Holds the request until the mode changes, then 503 (the sender gave up meanwhile).
    Stall,
}

/// A delivery an endpoint accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp` (unix seconds of the attempt).
    pub timestamp: i64,
    /// The body's `type`, `timestamp` (of the event) and `data`.
    pub kind: String,
    pub at: String,
    pub data: Value,
    /// When the receiver got it (benchmarks measure delivery latency with it).
    pub received: std::time::Instant,
}

#[derive(Default)]
struct Endpoint {
    accepted: Vec<Delivery>,
    requests: usize,
}

struct Shared {
    key: Vec<u8>,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    modes: watch::Sender<HashMap<String, Mode>>,
    rejected: Mutex<Vec<String>>,
}

impl Shared {
    fn mode(&self, endpoint: &str) -> Mode {
        self.modes.borrow().get(endpoint).copied().unwrap_or_default()
    }
}

/// The receiver; it stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// The signing key a secret stands for: Standard Webhooks' `whsec_` and base64, or the bytes.
fn key_of(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => STANDARD.decode(encoded).expect("a whsec_ secret is base64"),
        None => secret.as_bytes().to_vec(),
    }
}

/// Whether one of the signatures of a `webhook-signature` header (space-separated, `v1,` and
/// base64) is the HMAC-SHA256 of `{id}.{timestamp}.{body}` under `key`.
fn signed(key: &[u8], id: &str, timestamp: i64, body: &str, signatures: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|s| mac.clone().verify_slice(&s).is_ok())
}

/// Checks a request as a Standard Webhooks consumer does; the delivery, or why it is refused.
fn verify(key: &[u8], headers: &HeaderMap, body: &str) -> Result<Delivery, String> {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("no {name} header"))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?.parse().map_err(|_| "a bad webhook-timestamp")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() as i64;
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(format!("webhook-timestamp {timestamp} is {} s from now", now - timestamp));
    }
    if !signed(key, id, timestamp, body, header("webhook-signature")?) {
        return Err(format!("no v1 signature of {id} matches"));
    }
    let body: Value = serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let field = |name: &str| body[name].as_str().map(str::to_string).ok_or_else(|| format!("no {name}"));
    let data = body.get("data").cloned().ok_or("no data")?;
    let received = std::time::Instant::now();
    Ok(Delivery {
        id: id.to_string(),
        timestamp,
        kind: field("type")?,
        at: field("timestamp")?,
        data,
        received,
    })
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    shared.endpoints.lock().unwrap().entry(endpoint.clone()).or_default().requests += 1;
    let delivery = match verify(&shared.key, &headers, &body) {
        Ok(delivery) => delivery,
        Err(why) => {
            shared.rejected.lock().unwrap().push(why);
            return StatusCode::UNAUTHORIZED;
        }
    };
    match shared.mode(&endpoint) {
        Mode::Accept => {
            shared.endpoints.lock().unwrap().entry(endpoint).or_default().accepted.push(delivery);
            StatusCode::OK
        }
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Stall => {
            let mut modes = shared.modes.subscribe();
            let _ = modes.wait_for(|m| m.get(&endpoint) != Some(&Mode::Stall)).await;
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

impl WebhookReceiver {
    /// Starts a receiver that verifies with `secret`, as stored in the endpoint's Secret
    /// (`whsec_` and base64, or raw).
    pub async fn start(secret: &str) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            key: key_of(secret),
            endpoints: Mutex::default(),
            modes: watch::channel(HashMap::new()).0,
            rejected: Mutex::default(),
        });
        let app =
            axum::Router::new().route("/{endpoint}", axum::routing::post(receive)).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver { addr, shared, server }
    }

    /// The URL of an endpoint (plain http on loopback: the session's `allowInsecure`).
    pub fn url(&self, endpoint: &str) -> String {
        format!("http://{}/{endpoint}", self.addr)
    }

    pub fn set_mode(&self, endpoint: &str, mode: Mode) {
        self.shared.modes.send_modify(|m| {
            m.insert(endpoint.to_string(), mode);
        });
    }

    /// Every delivery the endpoint accepted, in arrival order, repeats included.
    pub fn accepted(&self, endpoint: &str) -> Vec<Delivery> {
        self.shared.endpoints.lock().unwrap().get(endpoint).map(|e| e.accepted.clone()).unwrap_or_default()
    }

    /// The endpoint's deliveries deduplicated by `webhook-id` (as a consumer does), in the
    /// order each first arrived.
    pub fn unique(&self, endpoint: &str) -> Vec<Delivery> {
        let mut seen = HashSet::new();
        self.accepted(endpoint).into_iter().filter(|d| seen.insert(d.id.clone())).collect()
    }

    /// Requests the endpoint got, whatever it answered.
    pub fn requests(&self, endpoint: &str) -> usize {
        self.shared.endpoints.lock().unwrap().get(endpoint).map(|e| e.requests).unwrap_or(0)
    }

    /// Why requests were refused (a bad signature or timestamp, a malformed body): empty
    /// when every request was genuine.
    pub fn rejected(&self) -> Vec<String> {
        self.shared.rejected.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
        // Stalled requests end too.
        self.shared.modes.send_modify(|m| m.clear());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_as_the_standard_webhooks_reference_makes_them() {
        // The test vector of the Standard Webhooks reference libraries.
        let key = key_of("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let (id, at, body) = (
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
        );
        let good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert!(signed(&key, id, at, body, good));
        assert!(signed(&key, id, at, body, &format!("v1,bm90IGl0 {good}")), "any of a list");
        assert!(!signed(&key, id, at + 1, body, good));
        assert!(!signed(&key, id, at, &body.replace("test_user", "other"), good));
        assert!(!signed(b"another key", id, at, body, good));
    }
}
