//! `POST /auth/login` for small installs: users from a mounted file (argon2 password hashes),
//! HS256 tokens signed by the hub, failed attempts limited per username and per client address.
//!
//! Unauthenticated callers must not be able to take the hub down or lock everyone out: an
//! attempt is counted before its password is checked (a burst cannot slip past the limit while
//! the first hashes run), at most [`MAX_HASHING`] hashes run at once (argon2 takes 19 MiB and
//! tens of milliseconds each), the failure counters are bounded, and behind an Ingress the
//! client address comes from the header the operator of the hub names as trusted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use serde::Deserialize;

use crate::error::ApiError;

/// Failed attempts allowed per username and per address within [`WINDOW`].
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Bound on remembered attempt counters (expired ones are dropped first, then the oldest).
const MAX_TRACKED: usize = 10_000;
/// Password hashes checked at once; more callers wait for a turn, a short while.
const MAX_HASHING: usize = 2;
/// How long a login waits for a turn to check its password before it is told to retry.
const HASHING_WAIT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct UsersFile {
    users: Vec<User>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub username: String,
    password_hash: String,
    /// `admin`, or absent for a tenant user.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub cliente_id: Option<i64>,
}

struct Failures {
    count: u32,
    since: Instant,
}

pub struct Logins {
    users: HashMap<String, User>,
    /// Checked when the username is unknown, so both cases take the same time.
    dummy_hash: String,
    failures: Mutex<HashMap<String, Failures>>,
    hashing: tokio::sync::Semaphore,
    /// The trusted proxy's header naming the client's address (see [`Logins::client_address`]).
    client_header: Option<axum::http::HeaderName>,
    pub token_ttl_seconds: u64,
}

/// An argon2id hash in PHC form, for the users file (`whatsapp-hub hash-password`).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))
}

impl Logins {
    pub fn load(
        file: &Path,
        token_ttl_seconds: u64,
        client_header: Option<axum::http::HeaderName>,
    ) -> Result<Logins> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed: UsersFile =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let mut users = HashMap::new();
        for user in parsed.users {
            PasswordHash::new(&user.password_hash).map_err(|e| {
                anyhow::anyhow!("user {}: the password hash is not a PHC string: {e}", user.username)
            })?;
            let is_admin = user.role.as_deref() == Some(crate::auth::ADMIN_ROLE);
            if !is_admin && user.cliente_id.is_none_or(|c| c <= 0) {
                anyhow::bail!("user {}: a non-admin user needs a positive clienteId", user.username);
            }
            users.insert(user.username.to_lowercase(), user);
        }
        Ok(Logins {
            users,
            dummy_hash: hash_password("not a real password")?,
            failures: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(MAX_HASHING),
            client_header,
            token_ttl_seconds,
        })
    }

    /// The caller's address: from the trusted proxy's header when one is configured (the last
    /// address it lists: the one that proxy appended, so a client cannot choose it), else the
    /// connection's peer. None when the configured header is missing or unreadable.
    pub fn client_address(&self, headers: &axum::http::HeaderMap, peer: IpAddr) -> Option<IpAddr> {
        let Some(name) = &self.client_header else { return Some(peer) };
        let values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        let last = values.flat_map(|v| v.split(',')).map(str::trim).rfind(|a| !a.is_empty())?;
        last.parse().ok()
    }

    /// Checks a username and password; counts failures and refuses while over the limit.
    pub async fn check(
        &self,
        username: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<User, ApiError> {
        let keys = [Some(format!("user:{}", username.to_lowercase())), peer.map(|ip| format!("addr:{ip}"))];
        let keys: Vec<String> = keys.into_iter().flatten().collect();
        // Counted as a failure before the check; a success takes it back.
        self.attempt(&keys)?;
        let Ok(Ok(_turn)) = tokio::time::timeout(HASHING_WAIT, self.hashing.acquire()).await else {
            return Err(ApiError::TooManyAttempts(Duration::from_secs(1)));
        };
        let user = self.users.get(&username.to_lowercase()).cloned();
        let hash = user.as_ref().map_or(self.dummy_hash.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        // Argon2 is slow by design: keep it off the async workers.
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        match user {
            Some(user) if matches => {
                self.succeeded(&keys);
                Ok(user)
            }
            _ => Err(ApiError::InvalidCredentials),
        }
    }

    /// Refuses while any key is over the limit; otherwise counts this attempt on every key. One
    /// look under one lock: concurrent attempts cannot all pass the same last free slot.
    fn attempt(&self, keys: &[String]) -> Result<(), ApiError> {
        let mut failures = self.failures.lock().expect("lock");
        if let Some(wait) = blocked(&failures, keys) {
            return Err(ApiError::TooManyAttempts(wait));
        }
        fail(&mut failures, keys);
        Ok(())
    }

    /// A right password: the username starts afresh, and this attempt is not held against the
    /// address.
    fn succeeded(&self, keys: &[String]) {
        let mut failures = self.failures.lock().expect("lock");
        failures.remove(&keys[0]);
        for key in &keys[1..] {
            if let Some(f) = failures.get_mut(key) {
                f.count = f.count.saturating_sub(1);
            }
        }
    }
}

/// How long `keys` stay blocked (the longest of those over the limit), if any is.
fn blocked(failures: &HashMap<String, Failures>, keys: &[String]) -> Option<Duration> {
    keys.iter()
        .filter_map(|k| failures.get(k))
        .filter(|f| f.count >= MAX_FAILURES && f.since.elapsed() < WINDOW)
        .map(|f| WINDOW.saturating_sub(f.since.elapsed()))
        .max()
}

/// Counts a failure on every key (a counter older than [`WINDOW`] starts afresh), within
/// [`MAX_TRACKED`] counters.
fn fail(failures: &mut HashMap<String, Failures>, keys: &[String]) {
    if failures.len() + keys.len() > MAX_TRACKED {
        failures.retain(|_, f| f.since.elapsed() < WINDOW);
    }
    if failures.len() + keys.len() > MAX_TRACKED {
        // Still full of fresh counters (a spray of usernames): forget the oldest.
        let mut by_age: Vec<(Instant, String)> = failures.iter().map(|(k, f)| (f.since, k.clone())).collect();
        by_age.sort();
        let excess = failures.len() + keys.len() - MAX_TRACKED;
        for (_, key) in by_age.into_iter().take(excess.max(MAX_TRACKED / 10)) {
            failures.remove(&key);
        }
    }
    for key in keys {
        let entry = failures.entry(key.clone()).or_insert(Failures { count: 0, since: Instant::now() });
        if entry.since.elapsed() >= WINDOW {
            *entry = Failures { count: 0, since: Instant::now() };
        }
        entry.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> (tempfile::TempDir, Logins) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.yaml");
        let hash = hash_password("right").unwrap();
        std::fs::write(
            &file,
            format!("users:\n  - username: ana\n    passwordHash: '{hash}'\n    clienteId: 7\n"),
        )
        .unwrap();
        let logins =
            Logins::load(&file, 60, Some(axum::http::HeaderName::from_static("x-forwarded-for"))).unwrap();
        (dir, logins)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_wrong_passwords_gets_no_more_checks_than_the_limit() {
        let (_dir, logins) = logins();
        let logins = std::sync::Arc::new(logins);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let attempts: Vec<_> = (0..20)
            .map(|_| {
                let logins = logins.clone();
                tokio::spawn(async move { logins.check("ana", "wrong", Some(peer)).await.map(|_| ()) })
            })
            .collect();
        let mut codes = Vec::new();
        for attempt in attempts {
            codes.push(attempt.await.unwrap().unwrap_err().code().to_string());
        }
        let checked = codes.iter().filter(|c| *c == "INVALID_CREDENTIALS").count();
        assert_eq!(checked, MAX_FAILURES as usize, "{codes:?}");
        assert!(codes.iter().all(|c| *c == "INVALID_CREDENTIALS" || *c == "TOO_MANY_ATTEMPTS"));
        // The right password is refused too while the username is blocked.
        assert_eq!(
            logins.check("ana", "right", None).await.map(|_| ()).unwrap_err().code(),
            "TOO_MANY_ATTEMPTS"
        );
    }

    #[tokio::test]
    async fn a_right_password_is_not_held_against_the_address() {
        let (_dir, logins) = logins();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_FAILURES * 3 {
            logins.check("ana", "right", Some(peer)).await.unwrap();
        }
    }

    #[test]
    fn the_client_address_is_the_one_the_trusted_proxy_appended() {
        let (_dir, logins) = logins();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(logins.client_address(&headers, peer), None, "the proxy always sets it");
        headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        assert_eq!(logins.client_address(&headers, peer), Some("203.0.113.7".parse().unwrap()));
        headers.append("x-forwarded-for", "198.51.100.2".parse().unwrap());
        assert_eq!(logins.client_address(&headers, peer), Some("198.51.100.2".parse().unwrap()));
        let direct = Logins { client_header: None, ..logins };
        assert_eq!(direct.client_address(&headers, peer), Some(peer));
    }

    #[test]
    fn the_failure_counters_stay_bounded_under_a_spray_of_usernames() {
        let (_dir, logins) = logins();
        for i in 0..MAX_TRACKED * 2 {
            fail(&mut logins.failures.lock().unwrap(), &[format!("user:u{i}"), "addr:10.0.0.9".to_string()]);
        }
        let failures = logins.failures.lock().unwrap();
        assert!(failures.len() <= MAX_TRACKED, "{}", failures.len());
        assert!(failures.contains_key(&format!("user:u{}", MAX_TRACKED * 2 - 1)), "the newest are kept");
    }
}
