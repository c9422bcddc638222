//! The WhatsApp Web simulator: WhatsApp's servers and the user's phone, on loopback.
//!
//! WhatsApp's servers cannot be reached here, so this serves a page (`page.html`) with the
//! same module layer the real WhatsApp Web offers (`window.require('WAWeb...')`) and plays
//! the other side of it: ref batches for the QR, linking from the phone (a scan of the current
//! QR, or a typed pairing code), login tokens the page keeps in the browser profile, logout
//! from the phone, conflicts, and a chat that receives what is sent. The production driver
//! talks to this page exactly as it talks to WhatsApp Web.
//!
//! Tests act as the phone through the control API (`/control/...`), or through [`Simulator`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const PAGE: &str = include_str!("page.html");

/// WhatsApp's timings, shortened in tests.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long the first QR code of a batch lives (WhatsApp: 60 s).
    pub first_ref: Duration,
    /// How long each next QR code lives (WhatsApp: 20 s).
    pub next_ref: Duration,
    /// QR codes per batch before the page goes idle (WhatsApp: 6).
    pub refs_per_batch: usize,
    /// Delay between connecting and the chat list being synced.
    pub sync: Duration,
    /// The WhatsApp Web build the page claims (`window.Debug.VERSION`).
    pub version: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            first_ref: Duration::from_secs(60),
            next_ref: Duration::from_secs(20),
            refs_per_batch: 6,
            sync: Duration::from_millis(300),
            version: "2.3000.1029560484".into(),
        }
    }
}

/// A message that reached WhatsApp.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Received {
    pub from: String,
    pub to: String,
    pub body: String,
    pub id: String,
    pub at_ms: u64,
}

#[derive(Default)]
struct Device {
    current_ref: Option<String>,
    shown_at_ms: u64,
    token: Option<String>,
    pairing: Option<(String, String)>,
}

#[derive(Clone)]
struct Account {
    push_name: String,
    token: String,
    device: String,
}

#[derive(Default)]
struct World {
    devices: HashMap<String, Device>,
    /// Linked accounts by phone number.
    accounts: HashMap<String, Account>,
    messages: Vec<Received>,
    channels: HashMap<String, broadcast::Sender<Value>>,
    counter: u64,
}

impl World {
    fn channel(&mut self, device: &str) -> broadcast::Sender<Value> {
        self.channels.entry(device.to_string()).or_insert_with(|| broadcast::channel(16).0).clone()
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn account_by_token(&self, token: &str) -> Option<(String, Account)> {
        self.accounts.iter().find(|(_, a)| a.token == token).map(|(p, a)| (p.clone(), a.clone()))
    }

    /// Links `device` to `phone`: a fresh login token, pushed to the page.
    fn link(&mut self, device: &str, phone: &str, push_name: &str) -> Value {
        let token = format!("tok-{}-{}", self.next(), now_ms());
        if let Some(d) = self.devices.get_mut(device) {
            d.current_ref = None;
            d.pairing = None;
            d.token = Some(token.clone());
        }
        self.accounts.insert(
            phone.to_string(),
            Account { push_name: push_name.to_string(), token: token.clone(), device: device.to_string() },
        );
        let event = json!({"type": "linked", "token": token, "phone": phone, "pushName": push_name});
        let _ = self.channel(device).send(event);
        json!({"device": device, "phone": phone})
    }
}

struct Shared {
    config: SimConfig,
    world: Mutex<World>,
}

/// A running simulator.
pub struct Simulator {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Starts on 127.0.0.1, on a free port.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on("127.0.0.1:0".parse().expect("address"), config).await
    }

    /// Starts on a given address.
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        let shared = Arc::new(Shared { config, world: Mutex::new(World::default()) });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Simulator { addr, shared, _server: server })
    }

    /// The page's address, to give the session as its WhatsApp Web URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Messages that reached WhatsApp, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.world.lock().expect("lock").messages.clone()
    }

    /// The phone scans `qr` (the string in the QR code). Fails unless it is the current QR of
    /// a page.
    pub fn scan(&self, qr: &str, phone: &str, push_name: &str) -> Result<(), String> {
        let ref_ = qr.split(',').next().unwrap_or_default();
        let mut world = self.shared.world.lock().expect("lock");
        let device = world
            .devices
            .iter()
            .find(|(_, d)| d.current_ref.as_deref() == Some(ref_))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                "that QR code is not the current one of any page (expired or never shown)".to_string()
            })?;
        world.link(&device, phone, push_name);
        Ok(())
    }

    /// The phone logs this device out.
    pub fn logout_from_phone(&self, phone: &str) -> Result<(), String> {
        control_logout(&self.shared, phone)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// 32 pseudo-random bytes in base64 (xorshift): refs and keys that look like WhatsApp's.
fn random_b64(seed: u64) -> String {
    use base64::Engine;
    let mut x = seed ^ now_ms() ^ 0x9E37_79B9_7F4A_7C15;
    let mut bytes = [0u8; 32];
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/versions/{file}", get(pinned_build))
        .route("/sim/config", get(sim_config))
        .route("/sim/events", get(sim_events))
        .route("/sim/refs", post(sim_refs))
        .route("/sim/ref", post(sim_ref))
        .route("/sim/login", post(sim_login))
        .route("/sim/logout", post(sim_logout))
        .route("/sim/takeover", post(sim_takeover))
        .route("/sim/pair-code", post(sim_pair_code))
        .route("/sim/lookup", post(sim_lookup))
        .route("/sim/send", post(sim_send))
        .route("/control/scan", post(control_scan))
        .route("/control/enter-code", post(control_enter_code))
        .route("/control/logout", post(control_logout_route))
        .route("/control/conflict", post(control_conflict))
        .route("/control/messages", get(control_messages))
        .with_state(shared)
}

type S = State<Arc<Shared>>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// A cache of older WhatsApp Web builds, like the public ones pinning drivers use:
/// `/versions/<version>.html` is the page claiming that build.
async fn pinned_build(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match file.strip_suffix(".html").filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.')) {
        Some(version) => {
            let marker = format!("<script>window.__SIM_VERSION__ = {};</script>\n<script>", json!(version));
            Html(PAGE.replacen("<script>", &marker, 1)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "NO_SUCH_BUILD", "no such WhatsApp Web build"),
    }
}

async fn sim_config(State(s): S) -> Json<Value> {
    Json(json!({
        "firstRefMs": s.config.first_ref.as_millis() as u64,
        "nextRefMs": s.config.next_ref.as_millis() as u64,
        "syncMs": s.config.sync.as_millis() as u64,
        "version": s.config.version,
    }))
}

#[derive(Deserialize)]
struct DeviceQuery {
    device: String,
}

async fn sim_events(
    State(s): S,
    Query(q): Query<DeviceQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.world.lock().expect("lock").channel(&q.device).subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((Ok(Event::default().data(v.to_string())), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct Body {
    device: String,
    #[serde(default, rename = "ref")]
    ref_: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

async fn sim_refs(State(s): S, Json(b): Json<Body>) -> Json<Value> {
    let mut world = s.world.lock().expect("lock");
    let batch = world.next();
    world.devices.entry(b.device.clone()).or_default();
    let refs: Vec<String> = (0..s.config.refs_per_batch)
        .map(|i| format!("2@{}", random_b64(batch * 100 + i as u64).replace('=', "")))
        .collect();
    Json(json!({
        "refs": refs,
        "noiseKey": random_b64(batch * 7 + 1),
        "identityKey": random_b64(batch * 7 + 2),
        "advSecret": random_b64(batch * 7 + 3),
    }))
}

async fn sim_ref(State(s): S, Json(b): Json<Body>) -> StatusCode {
    let mut world = s.world.lock().expect("lock");
    let device = world.devices.entry(b.device).or_default();
    device.current_ref = b.ref_;
    device.shown_at_ms = now_ms();
    StatusCode::NO_CONTENT
}

async fn sim_login(State(s): S, Json(b): Json<Body>) -> Response {
    let mut world = s.world.lock().expect("lock");
    match b.token.as_deref().and_then(|t| world.account_by_token(t)) {
        Some((phone, account)) if account.device == b.device => {
            world.devices.entry(b.device).or_default().token = Some(account.token.clone());
            Json(json!({"phone": phone, "pushName": account.push_name})).into_response()
        }
        _ => error(
            StatusCode::UNAUTHORIZED,
            "LOGGED_OUT",
            "this device is not linked (logged out from the phone?)",
        ),
    }
}

async fn sim_logout(State(s): S, Json(b): Json<Body>) -> StatusCode {
    let mut world = s.world.lock().expect("lock");
    if let Some((phone, _)) = b.token.as_deref().and_then(|t| world.account_by_token(t)) {
        world.accounts.remove(&phone);
    }
    StatusCode::NO_CONTENT
}

async fn sim_takeover(State(s): S, Json(b): Json<Body>) -> Response {
    let world = s.world.lock().expect("lock");
    match b.token.as_deref().and_then(|t| world.account_by_token(t)) {
        Some((phone, _)) => Json(json!({"phone": phone})).into_response(),
        None => error(StatusCode::UNAUTHORIZED, "LOGGED_OUT", "not linked"),
    }
}

async fn sim_pair_code(State(s): S, Json(b): Json<Body>) -> Response {
    let Some(phone) =
        b.phone.filter(|p| p.len() >= 8 && p.len() <= 15 && p.chars().all(|c| c.is_ascii_digit()))
    else {
        return error(StatusCode::BAD_REQUEST, "BAD_PHONE", "phone must be 8 to 15 digits");
    };
    let mut world = s.world.lock().expect("lock");
    let n = world.next();
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTVWXYZ23456789";
    let code: String = (0..8)
        .map(|i| ALPHABET[((n * 31 + i * 17 + now_ms() % 997) % ALPHABET.len() as u64) as usize] as char)
        .collect();
    world.devices.entry(b.device).or_default().pairing = Some((phone, code.clone()));
    Json(json!({"code": code})).into_response()
}

/// Numbers starting with 000 are "not on WhatsApp".
fn registered(number: &str) -> bool {
    (8..=15).contains(&number.len())
        && number.chars().all(|c| c.is_ascii_digit())
        && !number.starts_with("000")
}

async fn sim_lookup(State(s): S, Json(b): Json<Body>) -> Response {
    let world = s.world.lock().expect("lock");
    if b.token.as_deref().and_then(|t| world.account_by_token(t)).is_none() {
        return error(StatusCode::UNAUTHORIZED, "LOGGED_OUT", "not linked");
    }
    let to = b.to.unwrap_or_default();
    if !registered(&to) {
        return error(StatusCode::NOT_FOUND, "NOT_ON_WHATSAPP", &format!("{to} is not on WhatsApp"));
    }
    let existing = world.messages.iter().any(|m| m.to == to);
    Json(json!({"name": to, "existing": existing})).into_response()
}

async fn sim_send(State(s): S, Json(b): Json<Body>) -> Response {
    let mut world = s.world.lock().expect("lock");
    let Some((from, _)) = b.token.as_deref().and_then(|t| world.account_by_token(t)) else {
        return error(StatusCode::UNAUTHORIZED, "LOGGED_OUT", "not linked");
    };
    let to = b.to.unwrap_or_default();
    if !registered(&to) {
        return error(StatusCode::NOT_FOUND, "NOT_ON_WHATSAPP", &format!("{to} is not on WhatsApp"));
    }
    let message = Received {
        from,
        to,
        body: b.body.unwrap_or_default(),
        id: b.id.unwrap_or_default(),
        at_ms: now_ms(),
    };
    world.messages.push(message);
    Json(json!({"status": "OK"})).into_response()
}

#[derive(Deserialize)]
struct Phone {
    #[serde(default)]
    qr: Option<String>,
    phone: String,
    #[serde(default, rename = "pushName")]
    push_name: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

async fn control_scan(State(s): S, Json(p): Json<Phone>) -> Response {
    let mut world = s.world.lock().expect("lock");
    let push_name = p.push_name.unwrap_or_else(|| "Simulated Phone".into());
    // Without a QR string: the QR most recently put on screen.
    let device = match p.qr.as_deref().map(|q| q.split(',').next().unwrap_or_default().to_string()) {
        Some(ref_) => world
            .devices
            .iter()
            .find(|(_, d)| d.current_ref.as_deref() == Some(ref_.as_str()))
            .map(|(id, _)| id.clone()),
        None => world
            .devices
            .iter()
            .filter(|(_, d)| d.current_ref.is_some())
            .max_by_key(|(_, d)| d.shown_at_ms)
            .map(|(id, _)| id.clone()),
    };
    match device {
        Some(device) => Json(world.link(&device, &p.phone, &push_name)).into_response(),
        None => error(
            StatusCode::CONFLICT,
            "NO_CURRENT_QR",
            "no page shows that QR code now (expired, idle, or never shown)",
        ),
    }
}

async fn control_enter_code(State(s): S, Json(p): Json<Phone>) -> Response {
    let mut world = s.world.lock().expect("lock");
    let code = p.code.unwrap_or_default().replace('-', "");
    let device = world
        .devices
        .iter()
        .find(|(_, d)| d.pairing.as_ref().is_some_and(|(phone, c)| *phone == p.phone && *c == code))
        .map(|(id, _)| id.clone());
    match device {
        Some(device) => {
            let push_name = p.push_name.unwrap_or_else(|| "Simulated Phone".into());
            Json(world.link(&device, &p.phone, &push_name)).into_response()
        }
        None => error(StatusCode::CONFLICT, "WRONG_CODE", "no page waits for that code for that phone"),
    }
}

fn control_logout(shared: &Shared, phone: &str) -> Result<(), String> {
    let mut world = shared.world.lock().expect("lock");
    let account = world.accounts.remove(phone).ok_or_else(|| format!("{phone} is not linked"))?;
    let _ = world.channel(&account.device).send(json!({"type": "logout"}));
    Ok(())
}

async fn control_logout_route(State(s): S, Json(p): Json<Phone>) -> Response {
    match control_logout(&s, &p.phone) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, "NOT_LINKED", &e),
    }
}

async fn control_conflict(State(s): S, Json(p): Json<Phone>) -> Response {
    let mut world = s.world.lock().expect("lock");
    let Some(account) = world.accounts.get(&p.phone).cloned() else {
        return error(StatusCode::NOT_FOUND, "NOT_LINKED", "that phone is not linked");
    };
    let _ = world.channel(&account.device).send(json!({"type": "conflict"}));
    StatusCode::NO_CONTENT.into_response()
}

async fn control_messages(State(s): S) -> Json<Vec<Received>> {
    Json(s.world.lock().expect("lock").messages.clone())
}
