//! `POST /auth/login` for small installs: users from a mounted file (argon2 password hashes),
//! HS256 tokens signed by the hub, failed attempts limited per username and per client address.

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
/// Bound on remembered attempt counters (old ones are dropped first).
const MAX_TRACKED: usize = 10_000;

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
    pub fn load(file: &Path, token_ttl_seconds: u64) -> Result<Logins> {
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
            token_ttl_seconds,
        })
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
        if let Some(wait) = self.blocked(&keys) {
            return Err(ApiError::TooManyAttempts(wait));
        }
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
                self.failures.lock().expect("lock").remove(&keys[0]);
                Ok(user)
            }
            _ => {
                self.fail(&keys);
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    fn blocked(&self, keys: &[String]) -> Option<Duration> {
        let failures = self.failures.lock().expect("lock");
        keys.iter()
            .filter_map(|k| failures.get(k))
            .filter(|f| f.count >= MAX_FAILURES && f.since.elapsed() < WINDOW)
            .map(|f| WINDOW.saturating_sub(f.since.elapsed()))
            .max()
    }

    fn fail(&self, keys: &[String]) {
        let mut failures = self.failures.lock().expect("lock");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, f| f.since.elapsed() < WINDOW);
        }
        for key in keys {
            let entry = failures.entry(key.clone()).or_insert(Failures { count: 0, since: Instant::now() });
            if entry.since.elapsed() >= WINDOW {
                *entry = Failures { count: 0, since: Instant::now() };
            }
            entry.count += 1;
        }
    }
}
