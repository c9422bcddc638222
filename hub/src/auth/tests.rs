use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

fn settings() -> JwtSettings {
    JwtSettings { issuer: Some("leadmaster".into()), audience: Some("whatsapp".into()), leeway_seconds: 30 }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn valid(extra: serde_json::Value) -> serde_json::Value {
    let mut claims = json!({"sub": "u", "iss": "leadmaster", "aud": "whatsapp", "exp": now() + 600});
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    claims
}

fn principal(auth: &Authenticator, token: &str) -> Result<Principal, ApiError> {
    auth.verify(token).map(|(principal, _)| principal)
}

fn code(result: Result<Principal, ApiError>) -> String {
    result.map(|_| "OK".to_owned()).unwrap_or_else(|e| e.code().to_owned())
}

#[test]
fn hs256_roles_and_tenants() {
    let auth = Authenticator::hs256(SECRET, settings()).unwrap();
    let admin = principal(&auth, &hs256(valid(json!({"role": "admin"})), SECRET)).unwrap();
    assert_eq!(admin, Principal::Admin { subject: "u".into() });
    assert!(admin.authorize(7).is_ok() && admin.require_admin().is_ok());

    let tenant = principal(&auth, &hs256(valid(json!({"cliente_id": 51})), SECRET)).unwrap();
    assert!(tenant.authorize(51).is_ok());
    assert_eq!(tenant.authorize(52).unwrap_err().code(), "FORBIDDEN");
    assert_eq!(tenant.require_admin().unwrap_err().code(), "FORBIDDEN");
    // A numeric string and the camelCase spelling are the same claim.
    let text = principal(&auth, &hs256(valid(json!({"clienteId": "51"})), SECRET)).unwrap();
    assert_eq!(text.scope(), Some(51));
    // A tenant without a clienteId has nothing to act on.
    assert_eq!(code(principal(&auth, &hs256(valid(json!({"role": "user"})), SECRET))), "INVALID_TOKEN");
}

#[test]
fn refused_tokens() {
    let auth = Authenticator::hs256(SECRET, settings()).unwrap();
    let admin = json!({"role": "admin"});
    let expired = valid(json!({"role": "admin", "exp": now() - 120}));
    assert_eq!(code(principal(&auth, &hs256(expired, SECRET))), "TOKEN_EXPIRED");
    // Not valid yet (beyond the leeway): refused; within the leeway: accepted.
    let early = valid(json!({"role": "admin", "nbf": now() + 120}));
    assert_eq!(code(principal(&auth, &hs256(early, SECRET))), "INVALID_TOKEN");
    let skewed = valid(json!({"role": "admin", "nbf": now() + 10}));
    assert_eq!(code(principal(&auth, &hs256(skewed, SECRET))), "OK");
    let exp = now() + 600;
    let (_, expires) = auth.verify(&hs256(valid(json!({"role": "admin", "exp": exp})), SECRET)).unwrap();
    assert_eq!(expires, exp);
    // Within the leeway it still counts.
    let just = valid(json!({"role": "admin", "exp": now() - 5}));
    assert_eq!(code(principal(&auth, &hs256(just, SECRET))), "OK");
    let other_key = b"another-secret-also-32-bytes-long!!!";
    assert_eq!(code(principal(&auth, &hs256(valid(admin.clone()), other_key))), "INVALID_TOKEN");
    let wrong_aud = valid(json!({"role": "admin", "aud": "other"}));
    assert_eq!(code(principal(&auth, &hs256(wrong_aud, SECRET))), "INVALID_TOKEN");
    let wrong_iss = valid(json!({"role": "admin", "iss": "other"}));
    assert_eq!(code(principal(&auth, &hs256(wrong_iss, SECRET))), "INVALID_TOKEN");
    let mut no_exp = valid(admin.clone());
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(code(principal(&auth, &hs256(no_exp, SECRET))), "INVALID_TOKEN");
    // `alg: none`, unsigned.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(valid(admin.clone()).to_string());
    assert_eq!(code(principal(&auth, &format!("{header}.{body}."))), "INVALID_TOKEN");
    assert_eq!(code(principal(&auth, "not a token")), "INVALID_TOKEN");
    assert!(Authenticator::hs256(b"short", settings()).is_err());
}

#[test]
fn es256_from_pem_and_jwks_pins_the_algorithm() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pem = dir.join("key.pem");
    std::fs::write(&pem, key.public_key_pem()).unwrap();
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let es256 = |claims: serde_json::Value, kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &signing).unwrap()
    };
    let auth = Authenticator::public_keys(&pem, settings()).unwrap();
    assert!(!auth.can_sign());
    assert_eq!(code(principal(&auth, &es256(valid(json!({"cliente_id": 3})), None))), "OK");
    // An HS256 token "signed" with the public key (algorithm confusion) is refused.
    let confused = hs256(valid(json!({"role": "admin"})), key.public_key_pem().as_bytes());
    assert_eq!(code(principal(&auth, &confused)), "INVALID_TOKEN");

    let raw = key.public_key_raw();
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]});
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let auth = Authenticator::public_keys(&file, settings()).unwrap();
    assert_eq!(code(principal(&auth, &es256(valid(json!({"role": "admin"})), Some("k1")))), "OK");
    assert_eq!(code(principal(&auth, &es256(valid(json!({"role": "admin"})), Some("k2")))), "INVALID_TOKEN");
}

#[test]
fn issued_tokens_verify() {
    let auth = Authenticator::hs256(SECRET, settings()).unwrap();
    let token = auth.issue("acme", "tenant", Some(9), 60).unwrap();
    assert_eq!(
        principal(&auth, &token).unwrap(),
        Principal::Tenant { subject: "acme".into(), cliente_id: 9 }
    );
}

#[test]
fn a_cached_verification_still_refuses_an_expired_or_early_token() {
    let auth = Authenticator::hs256(SECRET, settings()).unwrap();
    let (issued, exp) = (now(), now() + 600);
    let token = hs256(valid(json!({"cliente_id": 4, "exp": exp, "nbf": issued})), SECRET);
    let at = |time: u64| code(auth.verify_at(&token, time).map(|(p, _)| p));
    assert_eq!(at(issued), "OK");
    assert_eq!(auth.verified.len(), 1);
    assert_eq!(auth.verify(&token).unwrap().1, exp, "from the cache: the same expiry");
    assert_eq!(auth.verified.len(), 1);
    // The cached token is checked against the clock as a fresh verification would be,
    // leeway (30 s) included.
    assert_eq!(at(exp + 30), "OK");
    assert_eq!(at(exp + 31), "TOKEN_EXPIRED");
    assert_eq!(at(issued - 30), "OK");
    assert_eq!(at(issued - 31), "INVALID_TOKEN");
    // Another payload under the cached token's signature is not the cached token.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(valid(json!({"role": "admin"})).to_string());
    assert_eq!(code(principal(&auth, &format!("{}.{forged}.{}", parts[0], parts[2]))), "INVALID_TOKEN");
    // Refused tokens are not cached.
    assert_eq!(auth.verified.len(), 1);
}

#[test]
fn the_verified_tokens_are_bounded() {
    let tokens = verified::VerifiedTokens::default();
    let entry = verified::Verified {
        principal: Principal::Admin { subject: "u".into() },
        expires: now() + 600,
        not_before: None,
    };
    for i in 0..verified::GENERATION * 3 {
        tokens.insert(&format!("token-{i}"), entry.clone());
        // A token in use stays.
        assert!(tokens.get("token-0").is_some());
    }
    assert!(tokens.len() <= 2 * verified::GENERATION);
    assert!(tokens.get("token-1").is_none(), "an unused token aged out");
}
