//! The bearer token the hub presents to one session pod. The operator puts it in the pod's
//! Secret; the hub derives it from the same key, so no token is ever stored by the hub.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256(key, "namespace/name"), hex.
pub fn hub_token(key: &[u8], namespace: &str, name: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(format!("{namespace}/{name}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The shortest key the operator and the hub accept.
pub const MIN_HUB_TOKEN_KEY_BYTES: usize = 32;

/// Reads the key hub tokens are derived from, refusing one that is too short.
pub fn read_hub_token_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let key =
        std::fs::read(path).map_err(|e| format!("reading the hub token key {}: {e}", path.display()))?;
    if key.len() < MIN_HUB_TOKEN_KEY_BYTES {
        return Err(format!(
            "the hub token key in {} must be at least {MIN_HUB_TOKEN_KEY_BYTES} bytes",
            path.display()
        ));
    }
    Ok(key)
}
