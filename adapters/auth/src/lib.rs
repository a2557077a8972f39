//! JWT access control: implements the domain's [`AccessControl`] port.
//!
//! A token is checked for its signature (HS256 with the configured secret, or RS256/ES256 with the
//! configured PEM public key) and its `exp`. Claims: `sub`; `channels` (optional list of
//! `metrics`, `alerts`: the channels a client may receive; all when absent); `publish` (optional
//! bool: may use the publish API; false when absent); `where` (optional object of string to
//! string: labels every metric and alert the token receives or publishes must carry, see
//! PROTOCOL.md "Scoped tokens"). A token whose `where` is malformed is invalid, never read as
//! "no restriction". It never reads the network or the clock beyond what validation needs.
//!
//! Over 400 lines on purpose: one small crate, the verifier and its bounds in one place; nearly
//! half of it is the unit tests (and their test keys).

#![warn(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use fanout_domain::{AccessControl, AccessError, Grant};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};

/// How tokens are verified.
pub enum Key {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// RS256 or ES256 (chosen by the PEM's key type) with a public key.
    PublicKeyPem(Vec<u8>),
}

/// The configured key cannot verify anything: a secret shorter than 16 bytes, or a PEM that is
/// neither an RSA nor an EC public key. Meant to stop the server at start-up, never a request.
#[derive(Debug, thiserror::Error)]
#[error("invalid verification key: {0}")]
pub struct KeyError(String);

/// Verifies bearer tokens against one configured key: the signature, with only the algorithm
/// that key allows (so a token cannot pick a weaker one), and `exp`, with no leeway.
pub struct JwtAccess {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: bool,
    /// Kept as raw JSON, so that a malformed claim is refused with a reason naming the claim
    /// rather than serde's position in the token. `Some(Null)` for `"where":null`, which is
    /// refused like any other non-object: a scope the issuer wrote must not silently vanish.
    #[serde(default, rename = "where", deserialize_with = "present")]
    scope: Option<serde_json::Value>,
}

/// A claim that is present, even as `null`.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Most labels in a `where` claim: the bound on a metric's labels (a publish could not carry
/// more) and on a selector's matchers.
const MAX_SCOPE_LABELS: usize = 32;
/// Longest key or value in a `where` claim, in bytes: the bound on a label's key and value.
const MAX_SCOPE_TEXT: usize = 256;

/// The `where` claim as a scope: an object of at most 32 string → string entries, keys not blank,
/// without control characters, keys and values at most 256 bytes (the bounds of a label, so that
/// a scope is always something a metric can carry). `Err` is the reason the token is invalid.
fn scope(claim: Option<serde_json::Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(claim) = claim else {
        return Ok(BTreeMap::new());
    };
    let serde_json::Value::Object(entries) = claim else {
        return Err("the where claim must be an object of label name to value".into());
    };
    if entries.len() > MAX_SCOPE_LABELS {
        return Err(format!(
            "the where claim has more than {MAX_SCOPE_LABELS} labels"
        ));
    }
    let mut scope = BTreeMap::new();
    for (key, value) in entries {
        if key.trim().is_empty() {
            return Err("the where claim has an empty label name".into());
        }
        if key.chars().any(char::is_control) {
            return Err("the where claim has a label name with control characters".into());
        }
        if key.len() > MAX_SCOPE_TEXT {
            return Err(format!(
                "the where claim has a label name longer than {MAX_SCOPE_TEXT} bytes"
            ));
        }
        let serde_json::Value::String(value) = value else {
            return Err(format!(
                "the where claim's label {key} must have a string value"
            ));
        };
        if value.len() > MAX_SCOPE_TEXT {
            return Err(format!(
                "the where claim's label {key} has a value longer than {MAX_SCOPE_TEXT} bytes"
            ));
        }
        scope.insert(key, value);
    }
    Ok(scope)
}

/// The DER encoding of the object identifier of NIST P-256 (prime256v1, 1.2.840.10045.3.1.7), the
/// one curve of ES256.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Whether a PEM public key's DER names the P-256 curve (a P-384 or P-521 key parses as an EC key
/// too, and then refuses every ES256 token).
fn names_p256(pem: &[u8]) -> bool {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .flat_map(|line| line.split_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|der| der.windows(P256_OID.len()).any(|window| window == P256_OID))
}

impl JwtAccess {
    /// Access control that verifies with `key`; refused when the key is unusable.
    pub fn new(key: Key) -> Result<Self, KeyError> {
        let (key, algorithms) = match key {
            Key::Secret(secret) => {
                if secret.len() < 16 {
                    return Err(KeyError("the secret must be at least 16 bytes".into()));
                }
                (DecodingKey::from_secret(&secret), vec![Algorithm::HS256])
            }
            Key::PublicKeyPem(pem) => match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => (key, vec![Algorithm::RS256]),
                Err(_) => {
                    let key =
                        DecodingKey::from_ec_pem(&pem).map_err(|e| KeyError(e.to_string()))?;
                    if !names_p256(&pem) {
                        return Err(KeyError(
                            "an EC public key must be on the P-256 curve (ES256): on any other, \
                             no token could be verified"
                                .into(),
                        ));
                    }
                    (key, vec![Algorithm::ES256])
                }
            },
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 0;
        validation.validate_exp = true;
        Ok(Self { key, validation })
    }
}

impl AccessControl for JwtAccess {
    fn verify(&self, token: Option<&str>) -> Result<Grant, AccessError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AccessError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AccessError::Invalid(e.to_string()))?
            .claims;
        // RFC 7519 §4.1.4: valid only before `exp`. jsonwebtoken takes the second of `exp` itself
        // too (`exp < now` is its test): up to a second of leeway, where the docs promise none.
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if claims.exp <= now {
            return Err(AccessError::Invalid("ExpiredSignature".to_owned()));
        }
        let scope = scope(claims.scope).map_err(AccessError::Invalid)?;
        let allows = |channel: &str| {
            claims
                .channels
                .as_ref()
                .is_none_or(|channels| channels.iter().any(|c| c == channel))
        };
        Ok(Grant {
            subject: claims.sub.clone().unwrap_or_else(|| "unnamed".to_owned()),
            metrics: allows("metrics"),
            alerts: allows("alerts"),
            publish: claims.publish,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    /// Seconds since the Unix epoch, for issuing test tokens.
    fn now_seconds() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap_or_default()
    }

    fn access() -> JwtAccess {
        JwtAccess::new(Key::Secret(SECRET.to_vec())).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn grants_follow_the_claims() {
        let exp = now_seconds() + 60;
        let grant = access().verify(Some(&token(
            serde_json::json!({"sub":"dash","exp":exp,"channels":["metrics"]}),
            SECRET,
        )));
        let grant = grant.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (grant.metrics, grant.alerts, grant.publish),
            (true, false, false)
        );
        assert_eq!(grant.subject, "dash");
        let publisher = access().verify(Some(&token(
            serde_json::json!({"exp":exp,"publish":true}),
            SECRET,
        )));
        assert!(publisher.is_ok_and(|g| g.publish && g.metrics && g.alerts));
    }

    #[test]
    fn refuses_missing_forged_and_expired_tokens() {
        assert_eq!(access().verify(None), Err(AccessError::Missing));
        let exp = now_seconds() + 60;
        let forged = token(
            serde_json::json!({"exp":exp}),
            b"another-secret-of-32-bytes-long!",
        );
        assert!(matches!(
            access().verify(Some(&forged)),
            Err(AccessError::Invalid(_))
        ));
        let expired = token(serde_json::json!({"exp":now_seconds() - 5}), SECRET);
        assert!(matches!(
            access().verify(Some(&expired)),
            Err(AccessError::Invalid(_))
        ));
        // Its last second is past too (valid only before `exp`; jsonwebtoken took it).
        let ending = token(serde_json::json!({"exp":now_seconds()}), SECRET);
        assert!(matches!(
            access().verify(Some(&ending)),
            Err(AccessError::Invalid(_))
        ));
        assert!(JwtAccess::new(Key::Secret(b"short".to_vec())).is_err());
    }

    /// The grant of a fresh token with `claims` added to `exp` and `publish`.
    fn verify_with(claims: serde_json::Value) -> Result<Grant, AccessError> {
        let mut all = serde_json::json!({"exp": now_seconds() + 60, "publish": true});
        if let (Some(all), serde_json::Value::Object(claims)) = (all.as_object_mut(), claims) {
            all.extend(claims);
        }
        access().verify(Some(&token(all, SECRET)))
    }

    fn invalid_because(claims: serde_json::Value) -> String {
        match verify_with(claims) {
            Err(AccessError::Invalid(reason)) => reason,
            other => panic!("not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn the_where_claim_is_the_scope() {
        let grant = verify_with(serde_json::json!({"where": {"tenant": "acme", "env": "prod"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let expected = [("env", "prod"), ("tenant", "acme")]
            .map(|(key, value)| (key.to_owned(), value.to_owned()));
        assert_eq!(grant.scope, BTreeMap::from(expected));
        assert!(grant.publish);
    }

    #[test]
    fn without_a_where_claim_the_scope_is_empty() {
        let absent = verify_with(serde_json::json!({})).unwrap_or_else(|e| panic!("{e}"));
        assert!(absent.scope.is_empty());
        let empty = verify_with(serde_json::json!({"where": {}})).unwrap_or_else(|e| panic!("{e}"));
        assert!(empty.scope.is_empty());
    }

    #[test]
    fn a_where_claim_that_is_not_an_object_makes_the_token_invalid() {
        for claim in [
            serde_json::json!("tenant=acme"),
            serde_json::json!(["tenant", "acme"]),
            serde_json::json!(null),
            serde_json::json!(7),
        ] {
            assert_eq!(
                invalid_because(serde_json::json!({ "where": claim })),
                "the where claim must be an object of label name to value",
                "{claim}"
            );
        }
    }

    #[test]
    fn a_where_value_that_is_not_a_string_makes_the_token_invalid() {
        for value in [
            serde_json::json!(1),
            serde_json::json!(null),
            serde_json::json!(["acme"]),
        ] {
            assert_eq!(
                invalid_because(serde_json::json!({"where": {"tenant": value}})),
                "the where claim's label tenant must have a string value"
            );
        }
    }

    #[test]
    fn where_keys_must_be_named_and_printable() {
        assert_eq!(
            invalid_because(serde_json::json!({"where": {"": "acme"}})),
            "the where claim has an empty label name"
        );
        assert_eq!(
            invalid_because(serde_json::json!({"where": {"ten\nant": "acme"}})),
            "the where claim has a label name with control characters"
        );
    }

    #[test]
    fn where_keys_values_and_entries_are_bounded() {
        let long = "x".repeat(257);
        assert_eq!(
            invalid_because(serde_json::json!({"where": {long.clone(): "acme"}})),
            "the where claim has a label name longer than 256 bytes"
        );
        assert_eq!(
            invalid_because(serde_json::json!({"where": {"tenant": long}})),
            "the where claim's label tenant has a value longer than 256 bytes"
        );
        let at_bound = serde_json::json!({"where": {"x".repeat(256): "y".repeat(256)}});
        assert!(verify_with(at_bound).is_ok());
        let labels = |count: usize| -> serde_json::Map<String, serde_json::Value> {
            (0..count)
                .map(|i| (format!("label{i}"), serde_json::json!("v")))
                .collect()
        };
        assert!(verify_with(serde_json::json!({"where": labels(32)})).is_ok());
        assert_eq!(
            invalid_because(serde_json::json!({"where": labels(33)})),
            "the where claim has more than 32 labels"
        );
    }

    /// A P-384 public key made with openssl for this test only.
    const TEST_P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEZ+zonWbHXwslYz5NsvjGrNTyrkI5qNF9
tZqX4mURVPyc9N41BMMkB4i8IYFJo37iVinC6JaXstco4aMVpMIx8Flb2DRj6k/U
XAtk97VaUFV23v+6oTgIn7C1wRJQERGa
-----END PUBLIC KEY-----
";

    /// ES256 takes P-256 keys only: a P-384 key parses as an EC key, and then every token would
    /// be refused, so the key itself is refused (at start and by `check-config`).
    #[test]
    fn an_ec_key_on_another_curve_than_p256_is_refused() {
        let refused = JwtAccess::new(Key::PublicKeyPem(TEST_P384_PUBLIC.as_bytes().to_vec()));
        assert!(
            refused.as_ref().is_err_and(|e| e.0.contains("P-256")),
            "{:?}",
            refused.err()
        );
        assert!(JwtAccess::new(Key::PublicKeyPem(TEST_EC_PUBLIC.as_bytes().to_vec())).is_ok());
    }

    /// A P-256 key pair made with openssl for this test only; it protects nothing.
    const TEST_EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQxZsXsoren8O8jyz
Y+CYoDkBKnKH3RFjzh1Etp173AOhRANCAATtUlqXrdQpULSMBkGJnSGfvjg0LgCw
4fDxU4frKu8mVB4ufNkDNnFogry2FLSQQr6ld7lu9k/XLJ5Q+It4FGBF
-----END PRIVATE KEY-----
";
    const TEST_EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7VJal63UKVC0jAZBiZ0hn744NC4A
sOHw8VOH6yrvJlQeLnzZAzZxaIK8thS0kEK+pXe5bvZP1yyeUPiLeBRgRQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn es256_tokens_verify_with_the_public_key_and_hs256_ones_do_not() {
        let access = JwtAccess::new(Key::PublicKeyPem(TEST_EC_PUBLIC.as_bytes().to_vec()))
            .unwrap_or_else(|e| panic!("{e}"));
        let signing =
            EncodingKey::from_ec_pem(TEST_EC_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let claims = serde_json::json!({ "sub": "es", "exp": now_seconds() + 60, "publish": true });
        let es256 = encode(
            &Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &signing,
        )
        .unwrap_or_default();
        assert!(access
            .verify(Some(&es256))
            .is_ok_and(|grant| grant.publish && grant.subject == "es"));
        // An HS256 token must not pass where a public key is configured (algorithm confusion).
        let hs256 = token(claims, SECRET);
        assert!(matches!(
            access.verify(Some(&hs256)),
            Err(AccessError::Invalid(_))
        ));
    }
}
