//! JWT access control: implements the domain's [`AccessControl`] port.
//!
//! A token is checked for its signature (HS256 with the configured secret, or RS256/ES256 with the
//! configured PEM public key) and its `exp`. Claims: `sub`; `channels` (optional list of
//! `metrics`, `alerts`: the channels a client may receive; all when absent); `publish` (optional
//! bool: may use the publish API; false when absent). It never reads the network or the clock
//! beyond what validation needs.

#![warn(missing_docs, unreachable_pub)]

use std::time::{Duration, UNIX_EPOCH};

use fanout_domain::{AccessControl, AccessError, Grant};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

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
                Err(_) => (
                    DecodingKey::from_ec_pem(&pem).map_err(|e| KeyError(e.to_string()))?,
                    vec![Algorithm::ES256],
                ),
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
            scope: Default::default(),
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
        assert!(JwtAccess::new(Key::Secret(b"short".to_vec())).is_err());
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
