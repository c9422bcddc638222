//! Tokens whose signature and claims were verified, so a frontend's next request with the same
//! token costs a hash lookup instead of a signature check. Bounded: two generations of at most
//! [`GENERATION`] tokens each; a full current generation becomes the previous one and the
//! previous one is dropped, and a token found in the previous generation moves to the current,
//! so the tokens in use stay and the others age out. An entry keeps the token's `exp` and
//! `nbf`: a hit is checked against the clock like a fresh verification.

use std::sync::RwLock;

use foldhash::HashMap;

use super::Principal;
use crate::error::ApiError;

/// Tokens per generation (the cache holds at most twice as many).
pub const GENERATION: usize = 4096;

/// What a verification established about a token.
#[derive(Clone, Debug)]
pub struct Verified {
    pub principal: Principal,
    /// `exp` and `nbf`, seconds since the epoch.
    pub expires: u64,
    pub not_before: Option<u64>,
}

impl Verified {
    /// The token's principal and expiry if it is valid at `now` (with `leeway` seconds of clock
    /// skew, as the verification allows): the same answers as verifying it again.
    pub fn at(&self, now: u64, leeway: u64) -> Result<(Principal, u64), ApiError> {
        if self.expires.saturating_add(leeway) < now {
            return Err(ApiError::TokenExpired);
        }
        if self.not_before.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(ApiError::InvalidToken("not valid yet (nbf)".into()));
        }
        Ok((self.principal.clone(), self.expires))
    }
}

/// The verified tokens, keyed by the whole token (its signature alone could be pasted onto
/// another header and payload), hashed with foldhash (SipHash took a tenth of a status read's
/// time on a token of hundreds of bytes; only verified tokens are inserted, so a caller cannot
/// choose the keys). A hit in the current generation takes the lock shared, so
/// concurrent requests do not queue on it.
#[derive(Default)]
pub struct VerifiedTokens {
    generations: RwLock<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Box<str>, Verified>,
    previous: HashMap<Box<str>, Verified>,
}

impl Generations {
    fn insert(&mut self, token: Box<str>, verified: Verified) {
        if self.current.len() >= GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(token, verified);
    }
}

impl VerifiedTokens {
    pub fn get(&self, token: &str) -> Option<Verified> {
        if let Some(verified) = self.generations.read().expect("lock").current.get(token) {
            return Some(verified.clone());
        }
        let mut generations = self.generations.write().expect("lock");
        // Moved to the current generation meanwhile by another request with the same token.
        if let Some(verified) = generations.current.get(token) {
            return Some(verified.clone());
        }
        let (token, verified) = generations.previous.remove_entry(token)?;
        generations.insert(token, verified.clone());
        Some(verified)
    }

    pub fn insert(&self, token: &str, verified: Verified) {
        self.generations.write().expect("lock").insert(token.into(), verified);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        let generations = self.generations.read().expect("lock");
        generations.current.len() + generations.previous.len()
    }
}
