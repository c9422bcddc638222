//! The simulator's two HTTP faces: `https://web.whatsapp.com/` (the page and the page's
//! backend, `/sim/*`) and the control listener (the phone and other WhatsApp users,
//! `/control/*`: scan, enter-code, logout, conflict, messages, send (`{from, to, body,
//! quotedId?}`), read, and `phone` (`{phone, online}`: that WhatsApp user's phone off or on),
//! and the cache of pinned builds, `/versions/<version>.html`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::world::{AfterConnect, ConnectRequest, Kind, OutgoingMessage, Refusal};
use super::{Build, DEVICE_PLATFORM, DeviceKeys, Shared, SimConfig};

const PAGE: &str = include_str!("page.html");
const SCRIPTS: [&str; 5] = [
    include_str!("js/models.js"),
    include_str!("js/ids.js"),
    include_str!("js/storage.js"),
    include_str!("js/media.js"),
    include_str!("js/app.js"),
];

type S = State<Arc<Shared>>;

/// The page of `build`, with the modules the configuration removes left out.
pub(crate) fn page(build: Build, config: &SimConfig) -> String {
    let settings = json!({
        "build": build.name(),
        "version": build.version(),
        "platform": DEVICE_PLATFORM,
        "without": config.without_modules,
    })
    .to_string()
    .replace('<', "\\u003c");
    PAGE.replace("/*SIM_CONFIG*/", &settings).replace("/*SIM_SCRIPT*/", &SCRIPTS.join("\n"))
}

pub(crate) fn web_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/sim/connect", post(connect))
        .route("/sim/events", get(events))
        .route("/sim/refresh-qr", post(refresh_qr))
        .route("/sim/link-code", post(link_code))
        .route("/sim/exists", post(exists))
        .route("/sim/send", post(send))
        .route("/sim/receipt", post(receipt))
        .route("/sim/retry", post(retry))
        .route("/sim/logout", post(logout))
        .route("/sim/takeover", post(takeover))
        .route("/sim/qr.png", get(qr_png))
        .route(
            "/sim/mms/{kind}/{token}",
            post(mms_upload).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/sim/mmg", get(mms_download))
        .with_state(shared)
}

pub(crate) fn control_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/versions/{file}", get(pinned_build))
        .route("/control/scan", post(control_scan))
        .route("/control/enter-code", post(control_enter_code))
        .route("/control/logout", post(control_logout))
        .route("/control/conflict", post(control_conflict))
        .route("/control/messages", get(control_messages))
        .route("/control/send", post(control_send))
        .route("/control/read", post(control_read))
        .route("/control/phone", post(control_phone))
        .with_state(shared)
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn refused((status, code, message): Refusal) -> Response {
    error(status, code, &message)
}

async fn index(State(s): S) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(page(s.config.build, &s.config))).into_response()
}

/// A cache of WhatsApp Web builds, like the public ones drivers pin versions from.
async fn pinned_build(State(s): S, Path(file): Path<String>) -> Response {
    match file.strip_suffix(".html").and_then(Build::from_version) {
        Some(build) => Html(page(build, &s.config)).into_response(),
        None => error(404, "NO_SUCH_BUILD", &format!("no WhatsApp Web build {file} in this cache")),
    }
}

// ---- the page's backend ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectBody {
    device: String,
    noise_key: String,
    identity_key: String,
    adv_secret_hash: String,
    platform: String,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    replaces: Option<u64>,
    #[serde(default)]
    build: Option<String>,
}

fn key32(b64: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{what} is not base64: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("{what} is {} bytes, not 32", b.len()))
}

fn hex32(hex: &str, what: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!("{what} must be 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{what} is not hex"))?;
    }
    Ok(out)
}

/// The noise handshake's part: the device says who it is (its public keys) and, when it has
/// one, presents its login.
async fn connect(State(s): S, Json(b): Json<ConnectBody>) -> Response {
    let keys = match (|| -> Result<DeviceKeys, String> {
        Ok(DeviceKeys {
            noise: key32(&b.noise_key, "noiseKey")?,
            identity: key32(&b.identity_key, "identityKey")?,
            adv_hash: hex32(&b.adv_secret_hash, "advSecretHash")?,
            platform: b.platform.clone(),
        })
    })() {
        Ok(keys) => keys,
        Err(e) => return error(400, "BAD_HANDSHAKE", &e),
    };
    if b.device.is_empty() || b.device.len() > 100 {
        return error(400, "BAD_HANDSHAKE", "device must be a non-empty id");
    }
    let build = b.build.as_deref().and_then(Build::from_name).unwrap_or(s.config.build);
    let (conn, after) = s.world().connect(ConnectRequest {
        device: b.device,
        keys,
        login: b.login,
        replaces: b.replaces,
        build,
    });
    match after {
        AfterConnect::Batch { device, conn, generation } => {
            tokio::spawn(run_batch(s.clone(), device, conn, generation));
        }
        AfterConnect::Sync { conn } => {
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(s.config.sync).await;
                let mut world = s.world();
                world.sync_address_book(&s.config, conn);
                world.finish_sync(conn);
            });
        }
        AfterConnect::Nothing => {}
    }
    Json(json!({"conn": conn})).into_response()
}

/// A batch of refs: each shown in turn for its lifetime, then the page goes idle.
async fn run_batch(s: Arc<Shared>, device: String, conn: u64, generation: u64) {
    for i in 0..s.config.refs_per_batch.max(1) {
        let shown = s.world().show_ref(&device, conn, generation);
        if !shown {
            return;
        }
        tokio::time::sleep(if i == 0 { s.config.first_ref } else { s.config.next_ref }).await;
    }
    s.world().end_batch(&device, conn, generation);
}

#[derive(Deserialize)]
struct ConnQuery {
    conn: u64,
}

/// Closes the connection when the page's event stream goes away.
struct CloseOnDrop {
    shared: Arc<Shared>,
    conn: u64,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.shared.world().close(self.conn);
    }
}

/// The socket's incoming side: server events for one connection.
async fn events(State(s): S, Query(q): Query<ConnQuery>) -> Response {
    let Some(rx) = s.world().take_events(q.conn) else {
        return error(
            404,
            "NO_CONNECTION",
            "no such connection (closed, or its events are already being read)",
        );
    };
    let guard = CloseOnDrop { shared: s.clone(), conn: q.conn };
    let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, Infallible>(Event::default().data(event.to_string())), (rx, guard)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(2))).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageBody {
    conn: Option<u64>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    code_hash: Option<String>,
    #[serde(default)]
    cancel: bool,
    #[serde(default)]
    wid: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    resend: bool,
    #[serde(default)]
    media: Option<super::media::OutgoingMedia>,
}

fn conn_of(b: &PageBody) -> Result<u64, Refusal> {
    b.conn.ok_or((409, "NO_CONNECTION", "the page is not connected".to_string()))
}

async fn refresh_qr(State(s): S, Json(b): Json<PageBody>) -> Response {
    let result = conn_of(&b)
        .and_then(|conn| s.world().refresh_qr(conn).map(|(device, generation)| (device, conn, generation)));
    match result {
        Ok((device, conn, generation)) => {
            tokio::spawn(run_batch(s.clone(), device, conn, generation));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => refused(r),
    }
}

async fn link_code(State(s): S, Json(b): Json<PageBody>) -> Response {
    match conn_of(&b)
        .and_then(|conn| s.world().link_code(conn, b.phone.clone(), b.code_hash.clone(), b.cancel))
    {
        Ok(()) => Json(json!({})).into_response(),
        Err(r) => refused(r),
    }
}

async fn exists(State(s): S, Json(b): Json<PageBody>) -> Response {
    let wid = b.wid.clone().unwrap_or_default();
    match conn_of(&b).and_then(|conn| s.world().exists(&s.config, conn, &wid)) {
        Ok(v) => Json(v).into_response(),
        Err(r) => refused(r),
    }
}

async fn send(State(s): S, headers: axum::http::HeaderMap, Json(b): Json<PageBody>) -> Response {
    let message = OutgoingMessage {
        id: b.id.clone().unwrap_or_default(),
        to: b.to.clone().unwrap_or_default(),
        from: b.from.clone().unwrap_or_default(),
        kind: b.kind.clone().unwrap_or_default(),
        body: b.body.clone().unwrap_or_default(),
        resend: b.resend,
        media: b.media.clone(),
        browser: headers.get("sec-ch-ua").and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    let result = conn_of(&b).and_then(|conn| {
        let mut world = s.world();
        if world.conn_build(conn).is_none() {
            return Err((409, "NO_CONNECTION", "this connection is closed".to_string()));
        }
        world.send(&s.config, conn, &message)
    });
    match result {
        Ok(accepted) => {
            if accepted.new {
                let s = s.clone();
                let id = accepted.id.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(s.config.delivered_after).await;
                    s.world().delivered(&id);
                });
            }
            Json(json!({"ack": accepted.ack})).into_response()
        }
        Err(r) => refused(r),
    }
}

/// The page's delivery receipt of a message it received and stored.
async fn receipt(State(s): S, Json(b): Json<PageBody>) -> Response {
    let id = b.id.clone().unwrap_or_default();
    match conn_of(&b).and_then(|conn| s.world().receipt(conn, &id)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

/// The page's retry receipt of a message it could not decrypt: it comes again.
async fn retry(State(s): S, Json(b): Json<PageBody>) -> Response {
    let id = b.id.clone().unwrap_or_default();
    match conn_of(&b).and_then(|conn| s.world().retry(conn, &id)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

async fn logout(State(s): S, Json(b): Json<PageBody>) -> Response {
    match conn_of(&b).and_then(|conn| s.world().logout(conn)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

async fn takeover(State(s): S, Json(b): Json<PageBody>) -> Response {
    match conn_of(&b).and_then(|conn| s.world().takeover(conn)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

/// The largest file WhatsApp's media servers take here (a 100 MiB document, encrypted).
const MAX_UPLOAD_BYTES: usize = 101 * 1024 * 1024;

/// An upload to WhatsApp's media servers (`/mms/<type>/<token>`): `{url, direct_path}`.
async fn mms_upload(
    State(s): S,
    Path((kind, token)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    match s.world().mms.upload(&kind, &token, body.to_vec()) {
        Ok(v) => Json(v).into_response(),
        Err(r) => refused(r),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MmgQuery {
    direct_path: String,
}

/// A download from WhatsApp's media servers: the stored (encrypted) file.
async fn mms_download(State(s): S, Query(q): Query<MmgQuery>) -> Response {
    match s.world().mms.download(&q.direct_path) {
        Some(file) => ([(header::CONTENT_TYPE, "application/octet-stream")], file).into_response(),
        None => error(404, "NOT_FOUND", "no media at that path"),
    }
}

#[derive(Deserialize)]
struct QrQuery {
    text: String,
}

/// The QR code the page draws, as a PNG (the page has no QR encoder of its own).
async fn qr_png(Query(q): Query<QrQuery>) -> Response {
    match render_qr_png(&q.text) {
        Ok(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Err(e) => error(400, "BAD_QR", &e),
    }
}

pub(crate) fn render_qr_png(text: &str) -> Result<Vec<u8>, String> {
    const SCALE: usize = 4;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("cannot encode the QR: {e}"))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for y in 0..modules {
        for x in 0..modules {
            if colors[y * modules + x] == qrcode::Color::Dark {
                for dy in 0..SCALE {
                    let row = ((y + QUIET) * SCALE + dy) * side;
                    let start = row + (x + QUIET) * SCALE;
                    pixels[start..start + SCALE].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Reads the QR code in a PNG (a screenshot of the page, or the QR image a session reports).
pub(crate) fn decode_qr_png(bytes: &[u8]) -> Result<String, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let mut buffer = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).map_err(|e| format!("cannot read the PNG: {e}"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let luma: Vec<u8> = buffer[..info.buffer_size()]
        .chunks(channels)
        .map(|px| {
            let grey = if channels >= 3 {
                (px[0] as u32 * 299 + px[1] as u32 * 587 + px[2] as u32 * 114) / 1000
            } else {
                px[0] as u32
            };
            let alpha = if channels == 2 || channels == 4 { px[channels - 1] as u32 } else { 255 };
            // Transparent parts read as white paper.
            ((grey * alpha + 255 * (255 - alpha)) / 255) as u8
        })
        .collect();
    if luma.len() < width * height {
        return Err("the PNG is truncated".into());
    }
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| luma[y * width + x]);
    let grids = image.detect_grids();
    if grids.is_empty() {
        return Err("no QR code found in the picture".into());
    }
    let mut last = String::new();
    for grid in grids {
        match grid.decode() {
            Ok((_, content)) => return Ok(content),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("the QR code in the picture cannot be read: {last}"))
}

// ---- the phone ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhoneBody {
    #[serde(default)]
    qr: Option<String>,
    #[serde(default)]
    png: Option<String>,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    push_name: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

async fn control_scan(State(s): S, Json(p): Json<PhoneBody>) -> Response {
    let push_name = p.push_name.clone().unwrap_or_else(|| p.phone.clone());
    let qr = match (&p.qr, &p.png) {
        (Some(qr), _) => Some(qr.clone()),
        (None, Some(png)) => {
            let bytes = match base64::engine::general_purpose::STANDARD.decode(png.trim()) {
                Ok(bytes) => bytes,
                Err(e) => return error(400, "BAD_PNG", &format!("png must be base64: {e}")),
            };
            match decode_qr_png(&bytes) {
                Ok(text) => Some(text),
                Err(e) => return error(400, "BAD_PNG", &e),
            }
        }
        (None, None) => None,
    };
    let result = match qr {
        Some(qr) => s.world().scan(&s.config, &qr, &p.phone, &push_name),
        None => s.world().scan_on_screen(&s.config, &p.phone, &push_name),
    };
    match result {
        Ok(()) => Json(json!({"phone": p.phone})).into_response(),
        Err(e) => error(409, "SCAN_REFUSED", &e),
    }
}

async fn control_enter_code(State(s): S, Json(p): Json<PhoneBody>) -> Response {
    let push_name = p.push_name.clone().unwrap_or_else(|| p.phone.clone());
    match s.world().enter_code(&s.config, &p.phone, p.code.as_deref().unwrap_or_default(), &push_name) {
        Ok(()) => Json(json!({"phone": p.phone})).into_response(),
        Err(e) => error(409, "CODE_REFUSED", &e),
    }
}

async fn control_logout(State(s): S, Json(p): Json<PhoneBody>) -> Response {
    match s.world().logout_from_phone(&p.phone) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(404, "NOT_LINKED", &e),
    }
}

async fn control_conflict(State(s): S, Json(p): Json<PhoneBody>) -> Response {
    match s.world().conflict(&p.phone) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(409, "NOT_CONNECTED", &e),
    }
}

async fn control_messages(State(s): S) -> Json<Value> {
    Json(json!(s.world().sent))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendBody {
    from: String,
    to: String,
    body: String,
    /// A reply: the id of the message it quotes.
    #[serde(default)]
    quoted_id: Option<String>,
}

async fn control_send(State(s): S, Json(b): Json<SendBody>) -> Response {
    let kind = b.quoted_id.as_deref().map_or(Kind::Text, Kind::Reply);
    match s.world().send_from_phone(&s.config, &b.from, &b.to, &b.body, kind) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(e) => error(409, "SEND_REFUSED", &e),
    }
}

#[derive(Deserialize)]
struct ReadBody {
    id: String,
}

async fn control_read(State(s): S, Json(b): Json<ReadBody>) -> Response {
    match s.world().read(&b.id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(404, "NO_SUCH_MESSAGE", &e),
    }
}

#[derive(Deserialize)]
struct PhoneStateBody {
    phone: String,
    online: bool,
}

async fn control_phone(State(s): S, Json(b): Json<PhoneStateBody>) -> Response {
    s.world().set_phone_online(&b.phone, b.online);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_qr_reads_back() {
        let text = "2@abc,AAAA,BBBB,CCCC,WEB";
        let png = render_qr_png(text).expect("renders");
        assert_eq!(decode_qr_png(&png).expect("decodes"), text);
    }

    #[test]
    fn a_picture_without_a_qr_is_refused_clearly() {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, 8, 8);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.write_header().unwrap().write_image_data(&[255u8; 64]).unwrap();
        }
        assert!(decode_qr_png(&out).unwrap_err().contains("no QR code"));
        assert!(decode_qr_png(b"nope").unwrap_err().contains("not a PNG"));
    }

    #[test]
    fn the_page_names_its_build_and_drops_removed_modules() {
        let config = SimConfig { without_modules: vec!["WAWebMsgKey".into()], ..SimConfig::default() };
        let html = page(Build::Legacy, &config);
        assert!(html.contains("\"version\":\"2.2412.54\""));
        assert!(html.contains("\"without\":[\"WAWebMsgKey\"]"));
        assert!(!html.contains("/*SIM_SCRIPT*/"));
    }
}
