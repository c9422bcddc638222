//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, symmetric scheme): the
//! `webhook-signature` header is `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`
//! under the endpoint's signing key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a signing secret in Standard Webhooks' serialization (base64 after it).
const PREFIX: &str = "whsec_";

/// The signing key a Secret's value stands for: after `whsec_`, the base64 it is; otherwise
/// the bytes themselves. The error never quotes the value.
pub fn signing_key(value: &[u8]) -> Result<Vec<u8>, String> {
    let key = match value.strip_prefix(PREFIX.as_bytes()) {
        Some(encoded) => STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|_| "the signing secret is not valid base64 after its whsec_ prefix".to_string())?,
        None => value.to_vec(),
    };
    if key.is_empty() {
        return Err("the signing secret is empty".into());
    }
    Ok(key)
}

/// The `webhook-signature` header of a delivery of `body` as `id` at `timestamp` (unix seconds).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}
