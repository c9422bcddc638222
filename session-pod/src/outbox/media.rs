//! The media of outgoing messages: what a caller hands in (uploaded, or fetched from a URL by
//! the pod), checked against WhatsApp's limits and against its own bytes, and kept on the
//! session's volume (`<profile>/outbox-media/<sha256>`, written and fsynced before the message
//! is accepted) until no stored message refers to it any more.
//!
//! Limits, from WhatsApp's own: photos, videos and voice or audio messages up to 16 MB (WhatsApp's
//! help centre: "the maximum file size for all media ... is 16 MB"), here 16 MiB each; documents
//! (WhatsApp allows up to 2 GB) up to 100 MiB, as the pod keeps every byte on the session's
//! volume until the message is forgotten. The types of each kind are those WhatsApp Web accepts
//! for it (`WAWebMmsMediaTypes.getValidMimeTypes`): images JPEG, PNG and WebP; videos MP4 and
//! 3GPP; audio Ogg Opus, MP4 audio, MPEG, AAC and AMR. Anything else goes as a document.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1024 * 1024;

/// What WhatsApp shows the media as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
        }
    }

    pub fn parse(s: &str) -> Option<MediaKind> {
        [MediaKind::Image, MediaKind::Video, MediaKind::Audio, MediaKind::Document]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The largest media of this kind, in bytes.
    pub fn limit(self) -> u64 {
        match self {
            MediaKind::Document => 100 * MIB,
            _ => 16 * MIB,
        }
    }

    /// The types WhatsApp Web sends as this kind (any type goes as a document).
    fn types(self) -> &'static [&'static str] {
        match self {
            MediaKind::Image => &["image/jpeg", "image/png", "image/webp"],
            MediaKind::Video => &["video/mp4", "video/3gpp"],
            MediaKind::Audio => {
                &["audio/ogg; codecs=opus", "audio/mp4", "audio/mpeg", "audio/aac", "audio/amr"]
            }
            MediaKind::Document => &[],
        }
    }

    /// The kind a type goes as when the caller names none.
    fn of(mimetype: &str) -> MediaKind {
        [MediaKind::Image, MediaKind::Video, MediaKind::Audio]
            .into_iter()
            .find(|k| k.types().contains(&mimetype))
            .unwrap_or(MediaKind::Document)
    }
}

/// The media of an outgoing message, as stored with it and as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub kind: MediaKind,
    pub mimetype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub size: u64,
    /// SHA-256 of the bytes (hex): where they are on the volume.
    pub sha256: String,
}

/// Why media was refused: 400 `INVALID_MEDIA`, 413 `MEDIA_TOO_LARGE`, 415 `UNSUPPORTED_MEDIA_TYPE`.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("{} media may be at most {} bytes ({} MiB)", .0.as_str(), .0.limit(), .0.limit() / MIB)]
    TooLarge(MediaKind),
    #[error("{0}")]
    Unsupported(String),
    /// A URL the pod may not fetch (an address that is not public).
    #[error("{0}")]
    Forbidden(String),
}

/// The declared type in the form it is checked and sent in: lowercase, parameters dropped, except
/// Ogg audio, which WhatsApp sends as Opus (`audio/ogg; codecs=opus`).
pub fn normalize_mimetype(declared: &str) -> Result<String, Refused> {
    let essence = declared.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let valid = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    match essence.split_once('/') {
        Some((top, sub)) if valid(top) && valid(sub) => {
            Ok(if essence == "audio/ogg" { "audio/ogg; codecs=opus".to_string() } else { essence })
        }
        _ => {
            Err(Refused::Invalid(format!("media.mimetype \"{declared}\" is not a MIME type (type/subtype)")))
        }
    }
}

/// The kind of media of `mimetype` (normalized), or of the kind the caller asked for.
pub fn kind_for(asked: Option<&str>, mimetype: &str) -> Result<MediaKind, Refused> {
    let Some(asked) = asked else { return Ok(MediaKind::of(mimetype)) };
    let kind = MediaKind::parse(asked).ok_or_else(|| {
        Refused::Invalid(format!("media.kind \"{asked}\" is none of image, video, audio, document"))
    })?;
    if kind == MediaKind::Document || kind.types().contains(&mimetype) {
        return Ok(kind);
    }
    Err(Refused::Unsupported(format!(
        "WhatsApp sends {} as {}, not {mimetype}; send it as a document",
        kind.as_str(),
        kind.types().join(", ")
    )))
}

/// The type the bytes themselves say they are, by their magic numbers, when it is one WhatsApp
/// cares about.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if bytes.get(4..8) == Some(b"ftyp") {
        Some("video/mp4")
    } else if starts(b"OggS") {
        Some("audio/ogg")
    } else if starts(b"#!AMR") {
        Some("audio/amr")
    } else if starts(b"ID3")
        || starts(b"ADIF")
        || (bytes.len() > 1 && bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0)
    {
        Some("audio/mpeg")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// What the magic numbers of a type are read as by [`sniff`]; `None` for types without one.
fn signature_of(mimetype: &str) -> Option<&'static str> {
    Some(match mimetype {
        "image/jpeg" => "image/jpeg",
        "image/png" => "image/png",
        "image/webp" => "image/webp",
        "image/gif" => "image/gif",
        // ISO base media files (MP4, 3GPP, M4A) all start with an `ftyp` box.
        "video/mp4" | "video/3gpp" | "audio/mp4" => "video/mp4",
        "audio/ogg; codecs=opus" => "audio/ogg",
        "audio/amr" => "audio/amr",
        // MPEG and AAC (ADTS) frames share the sync word; ID3 tags precede MP3s, ADIF some AACs.
        "audio/mpeg" | "audio/aac" => "audio/mpeg",
        "application/pdf" => "application/pdf",
        _ => return None,
    })
}

/// Whether the bytes are what `mimetype` (normalized) says.
pub fn check_content(mimetype: &str, bytes: &[u8]) -> Result<(), Refused> {
    if bytes.is_empty() {
        return Err(Refused::Invalid("the media is empty".into()));
    }
    let Some(expected) = signature_of(mimetype) else { return Ok(()) };
    match sniff(bytes) {
        Some(found) if found == expected => Ok(()),
        found => Err(Refused::Invalid(format!(
            "the media is declared {mimetype} but its bytes are {}",
            found.map_or("not of that type".to_string(), |f| format!("{f}-like"))
        ))),
    }
}

/// How long an unreferenced file is left alone: it may belong to a message being accepted.
const GRACE: Duration = Duration::from_secs(3600);
/// How often unreferenced files are looked for when no message was forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Bytes of a file kept to sniff its type.
const HEAD: usize = 64;

/// The media files on the session's volume, named by their SHA-256.
pub struct MediaStore {
    dir: PathBuf,
    swept: Mutex<Option<Instant>>,
}

/// Media written to the volume (fsynced under its final name).
#[derive(Debug)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

impl MediaStore {
    pub fn new(dir: PathBuf) -> MediaStore {
        MediaStore { dir, swept: Mutex::new(None) }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// A new file, written as it comes, of at most `limit` bytes.
    pub async fn upload(&self, kind: MediaKind) -> std::io::Result<Upload> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let salt: u64 = rand::random();
        let tmp = self.dir.join(format!(".upload-{salt:016x}"));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Upload {
            file,
            tmp: Some(tmp),
            dir: self.dir.clone(),
            hasher: Sha256::new(),
            size: 0,
            kind,
            head: Vec::with_capacity(HEAD),
        })
    }

    /// The bytes of stored media.
    pub async fn read(&self, sha256: &str) -> std::io::Result<Vec<u8>> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a SHA-256"));
        }
        tokio::fs::read(self.path(sha256)).await
    }

    /// Whether it is time to look for unreferenced files (always after messages were forgotten).
    pub fn sweep_due(&self, forgot: bool) -> bool {
        let swept = self.swept.lock().map(|s| *s).unwrap_or(None);
        forgot || swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY)
    }

    /// Deletes the files no message refers to (`in_use`), older than the grace period (a file
    /// written for a message being accepted is younger); returns how many went.
    pub fn sweep(&self, in_use: &HashSet<String>) -> std::io::Result<usize> {
        if let Ok(mut swept) = self.swept.lock() {
            *swept = Some(Instant::now());
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut gone = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
            if !in_use.contains(&name) && age >= GRACE {
                std::fs::remove_file(entry.path())?;
                gone += 1;
            }
        }
        Ok(gone)
    }
}

/// A media file being written: hashed and bounded as it comes, renamed to its SHA-256 once
/// complete and on disk; removed if dropped before.
pub struct Upload {
    file: tokio::fs::File,
    tmp: Option<PathBuf>,
    dir: PathBuf,
    hasher: Sha256,
    size: u64,
    kind: MediaKind,
    head: Vec<u8>,
}

impl Upload {
    /// The kind whose limit bounds this file.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// The first bytes written, to sniff.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Appends bytes; refuses them past the kind's limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        self.size += chunk.len() as u64;
        if self.size > self.kind.limit() {
            return Err(WriteError::TooLarge);
        }
        let want = HEAD.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..want]);
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(WriteError::Io)
    }

    /// Flushes the file to disk under its final name (the directory too), so a message accepted
    /// after this finds its media after any crash.
    pub async fn finish(mut self) -> std::io::Result<Stored> {
        self.file.sync_all().await?;
        let sha256: String = self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.tmp.take().expect("an upload is finished once");
        let path = self.dir.join(&sha256);
        if tokio::fs::try_exists(&path).await? {
            // The same bytes are there already: kept, and younger again for the sweep.
            tokio::fs::remove_file(&tmp).await?;
            std::fs::File::options().append(true).open(&path)?.set_modified(SystemTime::now())?;
        } else {
            tokio::fs::rename(&tmp, &path).await?;
        }
        sync_dir(&self.dir).await?;
        Ok(Stored { sha256, size: self.size })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("past the limit")]
    TooLarge,
    #[error(transparent)]
    Io(std::io::Error),
}

/// What the bridge's `downloadMedia` answers: `{mimetype, filename, dataBase64}`, or
/// `{error: {code, message}}` (`MEDIA_NOT_FOUND` when WhatsApp no longer has it).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Downloaded {
    #[serde(default)]
    pub mimetype: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub data_base64: Option<String>,
    #[serde(default)]
    pub error: Option<PageError>,
}

/// A refusal from the page.
#[derive(Debug, Deserialize)]
pub struct PageError {
    pub code: String,
    pub message: String,
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests;
