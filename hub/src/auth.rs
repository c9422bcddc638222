//! Who is calling: JWT verification (HS256 secret, or RS256/ES256 public keys from a PEM or a
//! JWKS file) with the algorithm pinned by the key, issuer, audience and expiry checked, and the
//! caller's role. `admin` acts on every session; any other caller is a tenant whose
//! `cliente_id` claim must be the clienteId it acts on.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;
use crate::state::AppState;
use verified::{Verified, VerifiedTokens};

mod verified;

/// Role claim value that grants every session.
pub const ADMIN_ROLE: &str = "admin";

/// How tokens are checked.
pub struct JwtSettings {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

struct VerifyingKey {
    /// `kid` of a JWKS key: a token naming a kid is checked with that key only.
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies bearer tokens; signs them too when it holds the HS256 secret (for `/auth/login`).
pub struct Authenticator {
    keys: Vec<VerifyingKey>,
    signing: Option<EncodingKey>,
    settings: JwtSettings,
    verified: VerifiedTokens,
}

impl Authenticator {
    /// HS256 with a shared secret (at least 32 bytes: shorter secrets are brute-forceable).
    pub fn hs256(secret: &[u8], settings: JwtSettings) -> Result<Authenticator> {
        if secret.len() < 32 {
            bail!("the JWT secret must be at least 32 bytes (it is {})", secret.len());
        }
        let validation = validation(Algorithm::HS256, &settings);
        Ok(Authenticator {
            keys: vec![VerifyingKey { kid: None, key: DecodingKey::from_secret(secret), validation }],
            signing: Some(EncodingKey::from_secret(secret)),
            settings,
            verified: VerifiedTokens::default(),
        })
    }

    /// RS256/ES256 public keys: a JWKS document (`{"keys": [...]}`) or one PEM public key.
    pub fn public_keys(file: &Path, settings: JwtSettings) -> Result<Authenticator> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let keys = if text.trim_start().starts_with('{') {
            let set: JwkSet = serde_json::from_str(&text).context("parsing the JWKS")?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    _ => bail!(
                        "JWKS key {:?}: only RSA (RS256) and P-256 (ES256) keys are accepted",
                        jwk.common.key_id
                    ),
                };
                let key = DecodingKey::from_jwk(jwk).context("reading a JWKS key")?;
                keys.push(VerifyingKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                    validation: validation(algorithm, &settings),
                });
            }
            keys
        } else if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
            vec![VerifyingKey { kid: None, key, validation: validation(Algorithm::RS256, &settings) }]
        } else {
            let key = DecodingKey::from_ec_pem(text.as_bytes())
                .context("the public key file is neither a JWKS, an RSA PEM nor an EC (P-256) PEM key")?;
            vec![VerifyingKey { kid: None, key, validation: validation(Algorithm::ES256, &settings) }]
        };
        if keys.is_empty() {
            bail!("{} holds no key", file.display());
        }
        Ok(Authenticator { keys, signing: None, settings, verified: VerifiedTokens::default() })
    }

    /// Whether this hub can issue tokens (HS256 only).
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    /// Checks a bearer token and says who it belongs to, and when the token expires (`exp`,
    /// seconds since the epoch). A token verified before is not verified again: its cached
    /// claims are checked against the clock (`exp`, `nbf`).
    pub fn verify(&self, token: &str) -> Result<(Principal, u64), ApiError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`Authenticator::verify`] at `now` (seconds since the epoch) for the cached tokens.
    fn verify_at(&self, token: &str, now: u64) -> Result<(Principal, u64), ApiError> {
        if let Some(verified) = self.verified.get(token) {
            return verified.at(now, self.settings.leeway_seconds);
        }
        let verified = self.verify_signature(token)?;
        self.verified.insert(token, verified.clone());
        Ok((verified.principal, verified.expires))
    }

    /// The signature, algorithm and claims of a token, checked.
    fn verify_signature(&self, token: &str) -> Result<Verified, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::InvalidToken(format!("unreadable header ({e})")))?;
        let candidates = self.keys.iter().filter(|k| match (&header.kid, &k.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            _ => true,
        });
        let mut last = ApiError::InvalidToken("no key matches its kid".into());
        for key in candidates {
            if !key.validation.algorithms.contains(&header.alg) {
                last = ApiError::InvalidToken(format!("algorithm {:?} is not accepted", header.alg));
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => {
                    let (expires, not_before) = (data.claims.exp, data.claims.nbf.map(|n| n.round() as u64));
                    return Ok(Verified { principal: data.claims.principal()?, expires, not_before });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(ApiError::TokenExpired),
                        ErrorKind::InvalidIssuer => ApiError::InvalidToken("wrong issuer".into()),
                        ErrorKind::InvalidAudience => ApiError::InvalidToken("wrong audience".into()),
                        ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            ApiError::InvalidToken(format!("the {claim} claim is required"))
                        }
                        ErrorKind::ImmatureSignature => ApiError::InvalidToken("not valid yet (nbf)".into()),
                        other => ApiError::InvalidToken(format!("{other:?}")),
                    }
                }
            }
        }
        Err(last)
    }

    /// Signs a token for a user of `/auth/login`.
    pub fn issue(
        &self,
        subject: &str,
        role: &str,
        cliente_id: Option<i64>,
        ttl_seconds: u64,
    ) -> Result<String> {
        let Some(key) = &self.signing else { bail!("this hub holds no signing key") };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = IssuedClaims {
            sub: subject,
            role,
            cliente_id,
            iat: now,
            exp: now + ttl_seconds,
            iss: self.settings.issuer.as_deref(),
            aud: self.settings.audience.as_deref(),
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?)
    }
}

fn validation(algorithm: Algorithm, settings: &JwtSettings) -> Validation {
    // `Validation::new` pins the one algorithm: `none` and algorithm confusion are refused.
    let mut v = Validation::new(algorithm);
    v.leeway = settings.leeway_seconds;
    // A token that says it is not valid yet is refused (jsonwebtoken skips `nbf` by default).
    v.validate_nbf = true;
    let mut required: HashSet<String> = ["exp".to_owned()].into();
    match &settings.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.insert("iss".into());
        }
        None => v.iss = None,
    }
    match &settings.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.insert("aud".into());
        }
        None => v.validate_aud = false,
    }
    v.required_spec_claims = required;
    v
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default, alias = "clienteId", deserialize_with = "int_or_string")]
    cliente_id: Option<i64>,
    exp: u64,
    /// Validated by jsonwebtoken first, which takes a number and rounds it.
    #[serde(default)]
    nbf: Option<f64>,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cliente_id: Option<i64>,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// `cliente_id` as a number or a numeric string (both are in use).
fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Int(i64),
        Text(String),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        None => None,
        Some(Id::Int(i)) => Some(i),
        Some(Id::Text(s)) => Some(s.trim().parse().map_err(serde::de::Error::custom)?),
    })
}

impl Claims {
    fn principal(self) -> Result<Principal, ApiError> {
        let subject: Arc<str> = self.sub.unwrap_or_default().into();
        if self.role.as_deref() == Some(ADMIN_ROLE) {
            return Ok(Principal::Admin { subject });
        }
        match self.cliente_id {
            Some(cliente_id) if cliente_id > 0 => Ok(Principal::Tenant { subject, cliente_id }),
            _ => Err(ApiError::InvalidToken("a non-admin token needs a positive cliente_id claim".into())),
        }
    }
}

/// The authenticated caller (cheap to clone: the subject is shared).
#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    Admin { subject: Arc<str> },
    Tenant { subject: Arc<str>, cliente_id: i64 },
}

impl Principal {
    /// May this caller act on `cliente_id`'s session?
    pub fn authorize(&self, cliente_id: i64) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Tenant { cliente_id: own, .. } if *own == cliente_id => Ok(()),
            Principal::Tenant { cliente_id: own, .. } => {
                Err(ApiError::Forbidden(format!("this token is for clienteId {own}, not {cliente_id}")))
            }
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::Forbidden("this route is for admins".into())),
        }
    }

    /// The clienteIds this caller sees (None: all).
    pub fn scope(&self) -> Option<i64> {
        match self {
            Principal::Admin { .. } => None,
            Principal::Tenant { cliente_id, .. } => Some(*cliente_id),
        }
    }

    pub fn subject(&self) -> &str {
        match self {
            Principal::Admin { subject } | Principal::Tenant { subject, .. } => subject,
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (principal, _) = state.auth.verify(bearer(parts)?)?;
        tracing::Span::current().record("subject", principal.subject());
        Ok(principal)
    }
}

/// When the caller's token expires (seconds since the epoch): what lives longer than a request
/// (a live stream) ends then. Taken beside the [`Principal`] (a second look-up of the verified
/// token, not a second verification).
#[derive(Clone, Copy, Debug)]
pub struct TokenExpiry(pub u64);

impl FromRequestParts<AppState> for TokenExpiry {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (_, expires) = state.auth.verify(bearer(parts)?)?;
        Ok(TokenExpiry(expires))
    }
}

/// The bearer token of a request (ASCII), else 401 `UNAUTHORIZED`.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or(ApiError::MissingToken)?.as_bytes();
    // On bytes: `HeaderValue::to_str` checks a token of hundreds of bytes one byte at a time.
    let token = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer "));
    token
        .filter(|t| t.is_ascii())
        .and_then(|t| std::str::from_utf8(t).ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::MissingToken)
}

#[cfg(test)]
mod tests;
