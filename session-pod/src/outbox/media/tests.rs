use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::*;
use crate::outbox::{NewMessage, Outbox, Status};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];

#[test]
fn the_bytes_tell_their_type() {
    assert_eq!(sniff(JPEG), Some("image/jpeg"));
    assert_eq!(sniff(PNG), Some("image/png"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None, "a WAV is a RIFF but no WebP");
    assert_eq!(sniff(b"GIF89a\x01\0"), Some("image/gif"));
    assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), Some("video/mp4"));
    assert_eq!(sniff(b"OggS\0\x02"), Some("audio/ogg"));
    assert_eq!(sniff(b"#!AMR\n"), Some("audio/amr"));
    assert_eq!(sniff(b"ID3\x03\0"), Some("audio/mpeg"));
    assert_eq!(sniff(&[0xFF, 0xFB, 0x90]), Some("audio/mpeg"));
    assert_eq!(sniff(&[0xFF, 0xF1, 0x50]), Some("audio/mpeg"), "AAC in ADTS frames");
    assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
    assert_eq!(sniff(b"hello"), None);
    assert_eq!(sniff(b""), None);
}

#[test]
fn declared_types_are_normalized_and_give_the_kind() {
    assert_eq!(normalize_mimetype(" Image/PNG ").unwrap(), "image/png");
    assert_eq!(normalize_mimetype("audio/ogg").unwrap(), "audio/ogg; codecs=opus");
    assert_eq!(normalize_mimetype("audio/ogg; codecs=opus").unwrap(), "audio/ogg; codecs=opus");
    assert_eq!(normalize_mimetype("text/plain; charset=utf-8").unwrap(), "text/plain");
    for bad in ["", "png", "image/", "/png", "image/p ng"] {
        assert!(matches!(normalize_mimetype(bad), Err(Refused::Invalid(_))), "{bad:?}");
    }
    assert_eq!(kind_for(None, "image/jpeg"), Ok(MediaKind::Image));
    assert_eq!(kind_for(None, "video/3gpp"), Ok(MediaKind::Video));
    assert_eq!(kind_for(None, "audio/mpeg"), Ok(MediaKind::Audio));
    // What WhatsApp does not show as an image goes as a document.
    assert_eq!(kind_for(None, "image/gif"), Ok(MediaKind::Document));
    assert_eq!(kind_for(None, "application/pdf"), Ok(MediaKind::Document));
    assert_eq!(kind_for(Some("document"), "image/png"), Ok(MediaKind::Document));
    let refused = kind_for(Some("image"), "image/gif").unwrap_err();
    assert!(matches!(&refused, Refused::Unsupported(m) if m.contains("image/jpeg")), "{refused}");
    assert!(matches!(kind_for(Some("sticker"), "image/webp"), Err(Refused::Invalid(_))));
}

#[test]
fn the_bytes_must_be_what_is_declared() {
    assert_eq!(check_content("image/png", PNG), Ok(()));
    assert_eq!(check_content("image/jpeg", JPEG), Ok(()));
    assert_eq!(check_content("audio/mp4", b"\0\0\0\x18ftypM4A "), Ok(()));
    assert_eq!(check_content("audio/aac", &[0xFF, 0xF1, 0x50, 0x80]), Ok(()));
    // Types without magic numbers are taken as they come.
    assert_eq!(check_content("text/csv", b"a,b\n1,2\n"), Ok(()));
    let wrong = check_content("image/png", JPEG).unwrap_err();
    assert!(wrong.to_string().contains("declared image/png but its bytes are image/jpeg"), "{wrong}");
    let script = check_content("application/pdf", b"<script>").unwrap_err();
    assert!(script.to_string().contains("not of that type"), "{script}");
    assert!(matches!(check_content("text/csv", b""), Err(Refused::Invalid(_))));
}

#[test]
fn limits_follow_whatsapp() {
    assert_eq!(MediaKind::Image.limit(), 16 * 1024 * 1024);
    assert_eq!(MediaKind::Video.limit(), 16 * 1024 * 1024);
    assert_eq!(MediaKind::Audio.limit(), 16 * 1024 * 1024);
    assert_eq!(MediaKind::Document.limit(), 100 * 1024 * 1024);
    assert!(Refused::TooLarge(MediaKind::Image).to_string().contains("16 MiB"));
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn age(path: &std::path::Path, by: Duration) {
    let file = std::fs::File::options().append(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test]
async fn media_is_stored_by_its_hash_once_and_partial_writes_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = MediaStore::new(d.path().join("outbox-media"));
    let mut upload = store.upload(MediaKind::Image).await.unwrap();
    upload.write(&PNG[..4]).await.unwrap();
    upload.write(&PNG[4..]).await.unwrap();
    assert_eq!(upload.head(), PNG);
    let stored = upload.finish().await.unwrap();
    let sha: String = Sha256::digest(PNG).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!((stored.sha256.as_str(), stored.size), (sha.as_str(), PNG.len() as u64));
    assert_eq!(store.read(&sha).await.unwrap(), PNG);
    // The same bytes again: the same file.
    let mut again = store.upload(MediaKind::Image).await.unwrap();
    again.write(PNG).await.unwrap();
    assert_eq!(again.finish().await.unwrap().sha256, sha);
    assert_eq!(files(&d.path().join("outbox-media")), std::slice::from_ref(&sha));
    // An upload given up (too large, or its caller gone) leaves no file behind.
    let mut big = store.upload(MediaKind::Image).await.unwrap();
    big.write(&vec![0u8; 16 * 1024 * 1024]).await.unwrap();
    assert!(matches!(big.write(b"one more").await, Err(WriteError::TooLarge)));
    drop(big);
    assert_eq!(files(&d.path().join("outbox-media")), [sha]);
    assert!(store.read("../outbox.redb").await.is_err(), "only media names are read");
}

#[tokio::test]
async fn the_sweep_deletes_old_media_no_message_refers_to() {
    let d = tempfile::tempdir().unwrap();
    let store = MediaStore::new(d.path().join("outbox-media"));
    assert_eq!(store.sweep(&HashSet::new()).unwrap(), 0, "no directory yet");
    let mut names = Vec::new();
    for bytes in [&b"%PDF-1 old, unreferenced"[..], b"%PDF-1 old, referenced", b"%PDF-1 new, unreferenced"] {
        let mut upload = store.upload(MediaKind::Document).await.unwrap();
        upload.write(bytes).await.unwrap();
        names.push(upload.finish().await.unwrap().sha256);
    }
    age(&store.path(&names[0]), Duration::from_secs(7200));
    age(&store.path(&names[1]), Duration::from_secs(7200));
    let in_use = HashSet::from([names[1].clone()]);
    assert_eq!(store.sweep(&in_use).unwrap(), 1);
    let mut left = vec![names[1].clone(), names[2].clone()];
    left.sort();
    assert_eq!(files(&d.path().join("outbox-media")), left);
    assert!(!store.sweep_due(false), "swept just now");
    assert!(store.sweep_due(true), "always after messages were forgotten");
}

#[tokio::test]
async fn pruning_a_message_deletes_its_media_and_keeps_what_others_use() {
    let d = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&d.path().join("whatsapp-outbox.redb"), 100).unwrap();
    let mut shas = Vec::new();
    for bytes in [PNG, JPEG] {
        let mut upload = outbox.media().upload(MediaKind::Image).await.unwrap();
        upload.write(bytes).await.unwrap();
        shas.push(upload.finish().await.unwrap());
    }
    let with = |stored: &Stored, mimetype: &str| NewMessage {
        to: "5491100000001".into(),
        media: Some(Media {
            kind: MediaKind::Image,
            mimetype: mimetype.into(),
            filename: None,
            size: stored.size,
            sha256: stored.sha256.clone(),
        }),
        ..NewMessage::default()
    };
    let accepted = outbox.accept(vec![with(&shas[0], "image/png"), with(&shas[1], "image/jpeg")], None).await;
    let accepted = accepted.unwrap();
    assert_eq!(accepted[0].message.media.as_ref().map(|m| m.kind), Some(MediaKind::Image));
    let limits = crate::outbox::Limits::of(&whatsapp_crds::SendSpec::default());
    let sent = &accepted[0].message.id;
    outbox.sending(sent, Duration::ZERO, &limits).unwrap();
    outbox.sent(sent).unwrap();
    for stored in &shas {
        age(&outbox.media().path(&stored.sha256), Duration::from_secs(7200));
    }
    assert_eq!(outbox.prune(Duration::ZERO).unwrap(), 1);
    let dir = d.path().join("outbox-media");
    assert_eq!(files(&dir), [shas[1].sha256.clone()], "the queued message keeps its media");
    let queued = outbox.get(&accepted[1].message.id).unwrap().unwrap();
    assert_eq!(
        (queued.status, queued.media.map(|m| m.sha256)),
        (Status::Queued, Some(shas[1].sha256.clone()))
    );
}
