//! Media through the API: what `POST /v1/outbox` takes with a message (`media: {url |
//! dataBase64, mimetype, filename?, kind?}`: fetched or decoded, checked and written to the
//! volume before the message is accepted), and `GET /v1/inbound/{id}/media` (the bytes of an
//! incoming message's media, downloaded by the page from WhatsApp).

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use sha2::Digest;
use tokio::sync::oneshot;

use super::outbox::store_error;
use super::{ApiState, error};
use crate::driver::Command;
use crate::outbox::media::{
    Downloaded, Media, MediaKind, Refused, Upload, WriteError, check_content, kind_for, normalize_mimetype,
};

/// A URL is fetched for at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The page is given this long to download an incoming message's media.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Different media (URLs or uploads) one call may carry; entries repeating one share it.
pub const MAX_MEDIA_PER_CALL: usize = 10;
/// The longest file name kept.
const MAX_FILENAME_BYTES: usize = 255;

/// Media as the caller hands it in.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaInput {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    data_base64: Option<String>,
    mimetype: String,
    #[serde(default)]
    filename: Option<String>,
    /// `image`, `video`, `audio` or `document`; by default what the type is sent as.
    #[serde(default)]
    kind: Option<String>,
}

/// Where the bytes come from.
enum Origin {
    Url(reqwest::Url),
    Data(String),
}

/// Media checked for its shape, its bytes not read yet.
pub struct Source {
    kind: MediaKind,
    mimetype: String,
    filename: Option<String>,
    from: Origin,
}

impl Source {
    /// Entries with the same source share its media.
    pub fn key(&self) -> String {
        let from = match &self.from {
            Origin::Url(url) => format!("url:{url}"),
            Origin::Data(data) => format!("data:{:x}", sha2::Sha256::digest(data.as_bytes())),
        };
        format!("{}|{}|{from}", self.kind.as_str(), self.mimetype)
    }
}

/// Checks the shape of media handed in (exactly one of `url` and `dataBase64`, a type, a kind
/// that fits it), reading nothing yet.
pub fn source(input: MediaInput) -> Result<Source, Refused> {
    let mimetype = normalize_mimetype(&input.mimetype)?;
    let kind = kind_for(input.kind.as_deref(), &mimetype)?;
    let from = match (input.url, input.data_base64) {
        (Some(url), None) => {
            let url = reqwest::Url::parse(&url)
                .map_err(|e| Refused::Invalid(format!("media.url \"{url}\" is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Refused::Invalid(format!(
                    "media.url must be http or https, not {}",
                    url.scheme()
                )));
            }
            Origin::Url(url)
        }
        (None, Some(data)) => Origin::Data(data),
        _ => return Err(Refused::Invalid("media takes exactly one of url and dataBase64".into())),
    };
    let filename = input.filename.as_deref().map(clean_filename).filter(|f| !f.is_empty());
    Ok(Source { kind, mimetype, filename, from })
}

/// A file name as WhatsApp shows it: no directories, no control characters, at most 255 bytes.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean: String = base.chars().filter(|c| !c.is_control()).collect();
    while clean.len() > MAX_FILENAME_BYTES {
        clean.pop();
    }
    clean.trim().to_string()
}

/// Why media could not be taken.
pub enum IntakeError {
    Refused(Refused),
    /// Writing to the volume failed.
    Storage(std::io::Error),
}

impl From<Refused> for IntakeError {
    fn from(r: Refused) -> Self {
        IntakeError::Refused(r)
    }
}

impl IntakeError {
    /// The status, code and words of the refusal.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            IntakeError::Refused(r @ Refused::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "INVALID_MEDIA", r.to_string())
            }
            IntakeError::Refused(r @ Refused::TooLarge(_)) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "MEDIA_TOO_LARGE", r.to_string())
            }
            IntakeError::Refused(r @ Refused::Unsupported(_)) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", r.to_string())
            }
            IntakeError::Refused(r @ Refused::Forbidden(_)) => {
                (StatusCode::BAD_REQUEST, "MEDIA_URL_FORBIDDEN", r.to_string())
            }
            IntakeError::Storage(e) => match crate::outbox::internal(e) {
                crate::outbox::StoreError::StorageFull(why) => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "STORAGE_FULL",
                    format!("the session's volume is full: {why}"),
                ),
                other => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "OUTBOX_ERROR",
                    format!("storing the media failed: {other}"),
                ),
            },
        }
    }
}

/// Reads the media (decoded, or fetched), checks its bytes and writes it to the volume (fsynced).
#[tracing::instrument(skip_all, fields(kind = source.kind.as_str(), mimetype = %source.mimetype))]
pub async fn store(state: &ApiState, source: Source) -> Result<Media, IntakeError> {
    let mut upload = state.outbox.media().upload(source.kind).await.map_err(IntakeError::Storage)?;
    let filename = match &source.from {
        Origin::Data(data) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| Refused::Invalid(format!("media.dataBase64 is not base64: {e}")))?;
            write(&mut upload, &bytes).await?;
            source.filename
        }
        Origin::Url(url) => {
            fetch(url, state.media_from_private_networks, &mut upload).await?;
            source.filename.or_else(|| url_filename(url))
        }
    };
    check_content(&source.mimetype, upload.head())?;
    let stored = upload.finish().await.map_err(IntakeError::Storage)?;
    // A document needs a name to be shown with.
    let filename = match source.kind {
        MediaKind::Document => filename.or_else(|| Some("document".to_string())),
        _ => filename,
    };
    Ok(Media {
        kind: source.kind,
        mimetype: source.mimetype,
        filename,
        size: stored.size,
        sha256: stored.sha256,
    })
}

async fn write(upload: &mut Upload, chunk: &[u8]) -> Result<(), IntakeError> {
    match upload.write(chunk).await {
        Ok(()) => Ok(()),
        Err(WriteError::TooLarge) => Err(Refused::TooLarge(upload.kind()).into()),
        Err(WriteError::Io(e)) => Err(IntakeError::Storage(e)),
    }
}

/// The last segment of the URL's path, as a file name.
fn url_filename(url: &reqwest::Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    let decoded = percent_decode(last);
    Some(clean_filename(&decoded)).filter(|f| !f.is_empty())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("whatsapp-session/", env!("CARGO_PKG_VERSION"), " (media fetch)"))
            .build()
            .expect("a TLS backend is compiled in")
    })
}

/// Whether an address is on the internet: not loopback, private, link-local, shared (CGNAT),
/// documentation, multicast, broadcast, reserved or unspecified (nor an IPv4 one of those
/// mapped into IPv6).
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

/// The client for one fetch of `url`. Unless private networks are allowed, the host must
/// resolve to public addresses only, the connection goes to the address checked (no second
/// lookup a DNS answer could change in between) and redirects are not followed: a caller must
/// never make the pod reach into the cluster or its node.
async fn client_for(url: &reqwest::Url, private_networks: bool) -> Result<reqwest::Client, Refused> {
    if private_networks {
        return Ok(client().clone());
    }
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Refused::Invalid(format!("media.url: {host} does not resolve: {e}")))?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(Refused::Invalid(format!("media.url: {host} does not resolve")));
    };
    if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(Refused::Forbidden(format!(
            "media.url: {host} is {}, not a public address: the session fetches media from the internet only",
            private.ip()
        )));
    }
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("whatsapp-session/", env!("CARGO_PKG_VERSION"), " (media fetch)"))
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| Refused::Invalid(format!("media.url: {e}")))
}

/// Fetches the URL into the upload, refusing it past the kind's limit as soon as it is known.
async fn fetch(url: &reqwest::Url, private_networks: bool, upload: &mut Upload) -> Result<(), IntakeError> {
    let unreachable = |e: reqwest::Error| Refused::Invalid(format!("fetching media.url {url} failed: {e}"));
    let client = client_for(url, private_networks).await?;
    let response = client.get(url.clone()).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(
            Refused::Invalid(format!("fetching media.url {url} answered {}", response.status())).into()
        );
    }
    if response.content_length().is_some_and(|n| n > upload.kind().limit()) {
        return Err(Refused::TooLarge(upload.kind()).into());
    }
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        write(upload, &chunk.map_err(unreachable)?).await?;
    }
    Ok(())
}

/// `GET /v1/inbound/{id}/media`: the media of an incoming message, as WhatsApp has it now,
/// with its type (and, for documents, its name).
pub async fn download(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let message = match state.outbox.incoming(&id) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, "MESSAGE_NOT_FOUND", format!("no incoming message {id}"));
        }
        Err(e) => return store_error(e),
    };
    let Some(stored) = message.media else {
        return error(StatusCode::NOT_FOUND, "MEDIA_NOT_FOUND", format!("message {id} has no media"));
    };
    if let Some(refused) = super::contacts::not_ready(&state) {
        return refused;
    }
    let (reply, answer) = oneshot::channel();
    let command = Command::DownloadMedia { id: id.clone(), chat: message.chat, reply };
    if state.commands.send(command).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the session is shutting down");
    }
    let downloaded = match tokio::time::timeout(DOWNLOAD_TIMEOUT, answer).await {
        Ok(Ok(Ok(downloaded))) => downloaded,
        Ok(Ok(Err(why))) => return error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", why),
        Ok(Err(_)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "DRIVER_STOPPED", "the session is shutting down");
        }
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "WHATSAPP_TIMEOUT",
                "WhatsApp Web did not download the media in time",
            );
        }
    };
    let (data, mimetype, filename) = match downloaded {
        Downloaded { error: Some(e), .. } if e.code == "MEDIA_NOT_FOUND" => {
            return error(StatusCode::NOT_FOUND, "MEDIA_NOT_FOUND", e.message);
        }
        Downloaded { error: Some(e), .. } => {
            return error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", e.message);
        }
        Downloaded { data_base64: Some(data), mimetype, filename, .. } => (data, mimetype, filename),
        Downloaded { .. } => {
            return error(StatusCode::BAD_GATEWAY, "WHATSAPP_ERROR", "the page answered no media");
        }
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return error(
            StatusCode::BAD_GATEWAY,
            "WHATSAPP_ERROR",
            "the page answered media that is not base64",
        );
    };
    let mimetype = mimetype.or(stored.mimetype).unwrap_or_else(|| "application/octet-stream".into());
    media_response(bytes, &mimetype, filename.or(stored.filename).as_deref())
}

/// The bytes with their type, never sniffed by the client, a document's name offered.
fn media_response(bytes: Vec<u8>, mimetype: &str, filename: Option<&str>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    let content_type = header::HeaderValue::from_str(mimetype)
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    if let Some(name) = filename.map(clean_filename).filter(|n| !n.is_empty()) {
        let ascii: String =
            name.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect();
        let value = format!("attachment; filename=\"{}\"", ascii.replace(['"', '\\'], "_"));
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_count_as_the_internet() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "157.240.1.1", "2a03:2880::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_url_into_the_cluster_or_the_node_is_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x.png",
            "http://localhost/x.png",
            "http://[::1]/x.png",
            "http://169.254.169.254/latest",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(matches!(client_for(&url, false).await, Err(Refused::Forbidden(_))), "{url}");
            assert!(client_for(&url, true).await.is_ok(), "{url} with private networks allowed");
        }
        let code = IntakeError::from(Refused::Forbidden("x".into())).parts().1;
        assert_eq!(code, "MEDIA_URL_FORBIDDEN");
    }

    fn input(url: Option<&str>, data: Option<&str>, mimetype: &str) -> MediaInput {
        MediaInput {
            url: url.map(String::from),
            data_base64: data.map(String::from),
            mimetype: mimetype.into(),
            filename: None,
            kind: None,
        }
    }

    #[test]
    fn a_source_is_a_url_or_an_upload_of_a_type() {
        let url = source(input(Some("https://example.com/files/Report%202026.pdf"), None, "application/pdf"))
            .unwrap();
        assert_eq!(url.kind, MediaKind::Document);
        assert!(matches!(&url.from, Origin::Url(u) if url_filename(u).as_deref() == Some("Report 2026.pdf")));
        let data = source(input(None, Some("iVBORw0KGgo="), "image/png")).unwrap();
        assert_eq!((data.kind, data.mimetype.as_str()), (MediaKind::Image, "image/png"));
        for (url, data) in [(None, None), (Some("https://a.example/x.png"), Some("AA=="))] {
            assert!(matches!(source(input(url, data, "image/png")), Err(Refused::Invalid(_))));
        }
        assert!(
            matches!(source(input(Some("ftp://a.example/x.png"), None, "image/png")), Err(Refused::Invalid(m)) if m.contains("http or https"))
        );
        assert!(matches!(source(input(Some("not a url"), None, "image/png")), Err(Refused::Invalid(_))));
        let same = |u: &str| source(input(Some(u), None, "image/png")).unwrap().key();
        assert_eq!(same("https://a.example/x.png"), same("https://a.example/x.png"));
        assert_ne!(same("https://a.example/x.png"), same("https://a.example/y.png"));
    }

    #[test]
    fn file_names_lose_directories_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\docs\\a\u{7}b.pdf"), "ab.pdf");
        assert_eq!(clean_filename(&"x".repeat(300)).len(), 255);
        assert_eq!(percent_decode("a%20b%zz%41"), "a b%zzA");
    }

    #[test]
    fn refusals_have_their_codes() {
        let parts = |e: IntakeError| e.parts().1;
        assert_eq!(parts(Refused::Invalid("x".into()).into()), "INVALID_MEDIA");
        assert_eq!(parts(Refused::TooLarge(MediaKind::Image).into()), "MEDIA_TOO_LARGE");
        assert_eq!(parts(Refused::Unsupported("x".into()).into()), "UNSUPPORTED_MEDIA_TYPE");
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(IntakeError::Storage(full).parts().0, StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn media_goes_out_with_its_type_and_a_safe_name() {
        let response = media_response(vec![1, 2, 3], "application/pdf", Some("../Offer \"2026\".pdf"));
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/pdf");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CONTENT_DISPOSITION], "attachment; filename=\"Offer _2026_.pdf\"");
        let bad = media_response(vec![], "not\na type", None);
        assert_eq!(bad.headers()[header::CONTENT_TYPE], "application/octet-stream");
    }
}
