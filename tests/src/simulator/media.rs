//! WhatsApp's media servers and media encryption, as the phone and the recipients see them.
//!
//! A file is encrypted with a random 32-byte media key: HKDF-SHA256 (no salt, info `WhatsApp
//! Image Keys`, `… Video Keys`, `… Audio Keys` or `… Document Keys`) expands it into 112 bytes,
//! an IV (16), an AES-256-CBC key (32) and an HMAC-SHA256 key (32); the stored file is the
//! ciphertext followed by the first 10 bytes of the HMAC of IV + ciphertext. `filehash` is the
//! SHA-256 of the plaintext and `encFilehash` that of the stored file (base64). An upload is
//! named by its token (`encFilehash`, URL-safe base64), which the server checks against what it
//! receives, and answered with the file's `directPath`. A media message carries the media key,
//! both hashes and the direct path; its recipient downloads, checks and decrypts the file.

use std::collections::HashMap;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::world::{Refusal, random_bytes, random_hex};

/// A media file a session sent, as its recipient's phone opened it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceivedMedia {
    /// WhatsApp's message type: `image`, `video`, `audio`, `ptt`, `document` or `sticker`.
    pub kind: String,
    pub mimetype: String,
    pub filename: Option<String>,
    pub size: u64,
    /// SHA-256 of the decrypted file, hex.
    pub sha256: String,
}

/// The media part of a message a page sends (what the real message's media fields carry).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutgoingMedia {
    #[serde(rename = "type")]
    pub kind: String,
    pub mimetype: String,
    pub filehash: String,
    pub enc_filehash: String,
    pub direct_path: String,
    pub media_key: String,
    pub size: u64,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
}

/// The message types that carry media.
pub(crate) const MEDIA_KINDS: [&str; 6] = ["image", "video", "audio", "ptt", "document", "sticker"];

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

fn info(kind: &str) -> &'static [u8] {
    match kind {
        "image" | "sticker" => b"WhatsApp Image Keys",
        "video" | "gif" | "ptv" => b"WhatsApp Video Keys",
        "audio" | "ptt" => b"WhatsApp Audio Keys",
        _ => b"WhatsApp Document Keys",
    }
}

/// IV, AES key and HMAC key of a media key, for a kind of media.
fn expand(media_key: &[u8], kind: &str) -> ([u8; 16], [u8; 32], [u8; 32]) {
    let mut okm = [0u8; 112];
    hkdf::Hkdf::<Sha256>::new(None, media_key)
        .expand(info(kind), &mut okm)
        .expect("112 bytes is a valid length");
    let part = |from: usize| okm[from..from + 32].try_into().expect("32 bytes");
    (okm[..16].try_into().expect("16 bytes"), part(16), part(48))
}

fn mac(mac_key: &[u8; 32], iv: &[u8; 16], enc: &[u8]) -> [u8; 10] {
    let mut hmac = Hmac::<Sha256>::new_from_slice(mac_key).expect("any key length");
    hmac.update(iv);
    hmac.update(enc);
    hmac.finalize().into_bytes()[..10].try_into().expect("10 bytes")
}

/// The stored file of `plain`: ciphertext and MAC.
pub(crate) fn encrypt(plain: &[u8], media_key: &[u8], kind: &str) -> Vec<u8> {
    let (iv, cipher_key, mac_key) = expand(media_key, kind);
    let mut file = cbc::Encryptor::<aes::Aes256>::new(&cipher_key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let tag = mac(&mac_key, &iv, &file);
    file.extend_from_slice(&tag);
    file
}

/// The plaintext of a stored file, or why the key does not open it.
pub(crate) fn decrypt(file: &[u8], media_key: &[u8], kind: &str) -> Result<Vec<u8>, String> {
    if file.len() < 26 {
        return Err("the file is too short to be WhatsApp media".into());
    }
    let (iv, cipher_key, mac_key) = expand(media_key, kind);
    let (enc, tag) = file.split_at(file.len() - 10);
    if mac(&mac_key, &iv, enc) != tag {
        return Err("the media key does not open the file (MAC mismatch)".into());
    }
    cbc::Decryptor::<aes::Aes256>::new(&cipher_key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(enc)
        .map_err(|_| "the file does not decrypt (bad padding)".to_string())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// WhatsApp's media servers: the stored (encrypted) files by direct path.
#[derive(Default)]
pub(crate) struct Mms {
    files: HashMap<String, Vec<u8>>,
}

impl Mms {
    /// An upload of a page: kept if its token is the hash of what came.
    pub(crate) fn upload(&mut self, kind: &str, token: &str, file: Vec<u8>) -> Result<Value, Refusal> {
        let expected =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(
                |_| (400, "BAD_TOKEN", format!("the upload token {token} is not URL-safe base64")),
            )?;
        if expected != sha256(&file) {
            return Err((
                400,
                "HASH_MISMATCH",
                "the upload is not the file its token (encFilehash) names".into(),
            ));
        }
        if !MEDIA_KINDS.contains(&kind) && kind != "gif" {
            return Err((400, "BAD_TYPE", format!("media type {kind} is not one WhatsApp takes")));
        }
        let direct_path = format!("/v/t62.7118-24/{}.enc", random_hex(20));
        let url = format!("https://mmg.whatsapp.net{direct_path}");
        self.files.insert(direct_path.clone(), file);
        Ok(json!({"url": url, "direct_path": direct_path}))
    }

    pub(crate) fn download(&self, direct_path: &str) -> Option<Vec<u8>> {
        self.files.get(direct_path).cloned()
    }

    /// What the recipient's phone makes of a media message: the file at its direct path, its
    /// hashes and its media key checked, decrypted.
    pub(crate) fn open(&self, media: &OutgoingMedia) -> Result<ReceivedMedia, Refusal> {
        let bad = |why: String| (400, "BAD_MEDIA", why);
        let file = self
            .files
            .get(&media.direct_path)
            .ok_or_else(|| bad(format!("no upload at {} (upload the media first)", media.direct_path)))?;
        if b64().encode(sha256(file)) != media.enc_filehash {
            return Err(bad("encFilehash is not the hash of the uploaded file".into()));
        }
        let key = b64().decode(&media.media_key).map_err(|_| bad("mediaKey is not base64".into()))?;
        let plain = decrypt(file, &key, &media.kind).map_err(bad)?;
        if b64().encode(sha256(&plain)) != media.filehash {
            return Err(bad("filehash is not the hash of the decrypted file".into()));
        }
        if plain.len() as u64 != media.size {
            return Err(bad(format!("size says {} bytes, the file has {}", media.size, plain.len())));
        }
        Ok(ReceivedMedia {
            kind: media.kind.clone(),
            mimetype: media.mimetype.clone(),
            filename: media.filename.clone(),
            size: media.size,
            sha256: super::hex(&sha256(&plain)),
        })
    }

    /// A WhatsApp user's phone uploads `plain` for a message: the message's media fields.
    pub(crate) fn upload_from_phone(
        &mut self,
        mimetype: &str,
        plain: &[u8],
        filename: Option<&str>,
    ) -> Value {
        let kind = kind_of(mimetype);
        let media_key = random_bytes(32);
        let file = encrypt(plain, &media_key, kind);
        let direct_path = format!("/v/t62.7118-24/{}.enc", random_hex(20));
        let enc_filehash = b64().encode(sha256(&file));
        self.files.insert(direct_path.clone(), file);
        json!({
            "type": kind,
            "mimetype": mimetype,
            "filehash": b64().encode(sha256(plain)),
            "encFilehash": enc_filehash,
            "directPath": direct_path,
            "mediaKey": b64().encode(&media_key),
            "mediaKeyTimestamp": super::world::now_ms() / 1000,
            "size": plain.len(),
            "filename": filename,
        })
    }
}

/// The message type a phone sends a file of `mimetype` as.
fn kind_of(mimetype: &str) -> &'static str {
    match mimetype.split('/').next().unwrap_or_default() {
        "image" if mimetype != "image/gif" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(mms: &mut Mms, plain: &[u8], kind: &str) -> OutgoingMedia {
        let key = [7u8; 32];
        let file = encrypt(plain, &key, kind);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(&file));
        let uploaded = mms.upload(kind, &token, file.clone()).expect("uploaded");
        OutgoingMedia {
            kind: kind.into(),
            mimetype: "application/pdf".into(),
            filehash: b64().encode(sha256(plain)),
            enc_filehash: b64().encode(sha256(&file)),
            direct_path: uploaded["direct_path"].as_str().unwrap().into(),
            media_key: b64().encode(key),
            size: plain.len() as u64,
            filename: Some("offer.pdf".into()),
            caption: None,
        }
    }

    #[test]
    fn media_is_encrypted_the_way_whatsapp_does_it() {
        let key = [1u8; 32];
        let file = encrypt(b"hello media", &key, "image");
        assert_eq!(file.len(), 16 + 10, "one AES block and the 10-byte MAC");
        assert_eq!(decrypt(&file, &key, "image").unwrap(), b"hello media");
        assert!(decrypt(&file, &[2u8; 32], "image").unwrap_err().contains("MAC"));
        assert!(
            decrypt(&file, &key, "document").unwrap_err().contains("MAC"),
            "the kind is part of the keys"
        );
        let mut tampered = file.clone();
        tampered[0] ^= 1;
        assert!(decrypt(&tampered, &key, "image").is_err());
    }

    #[test]
    fn the_server_checks_uploads_and_the_recipient_checks_messages() {
        let mut mms = Mms::default();
        let plain = b"%PDF-1.7 an offer";
        let media = outgoing(&mut mms, plain, "document");
        let opened = mms.open(&media).expect("opened");
        assert_eq!(opened.sha256, crate::simulator::hex(&sha256(plain)));
        assert_eq!((opened.kind.as_str(), opened.size), ("document", plain.len() as u64));
        let wrong_key = OutgoingMedia { media_key: b64().encode([9u8; 32]), ..media.clone() };
        assert!(mms.open(&wrong_key).unwrap_err().2.contains("MAC"));
        let wrong_hash = OutgoingMedia { filehash: b64().encode([0u8; 32]), ..media.clone() };
        assert!(mms.open(&wrong_hash).unwrap_err().2.contains("filehash"));
        let nowhere = OutgoingMedia { direct_path: "/v/none.enc".into(), ..media };
        assert!(mms.open(&nowhere).unwrap_err().2.contains("no upload"));
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 32]);
        assert_eq!(mms.upload("image", &token, b"other".to_vec()).unwrap_err().1, "HASH_MISMATCH");
    }

    #[test]
    fn a_phone_upload_opens_with_its_fields() {
        let mut mms = Mms::default();
        let fields = mms.upload_from_phone("image/png", b"\x89PNG pixels", None);
        assert_eq!(fields["type"], "image");
        let media: OutgoingMedia = serde_json::from_value(fields).unwrap();
        assert_eq!(mms.open(&media).unwrap().size, 11);
        assert_eq!(kind_of("application/pdf"), "document");
        assert_eq!(kind_of("image/gif"), "document");
    }
}
