//! Tokens for workers started with `--auth-secret SECRET`: JWTs (HS256) with the claims
//! OPERATIONS.md documents (`sub`, `exp`, `channels`, `publish`, `where`).

use serde_json::{json, Value};

/// The secret of every worker a test starts with authentication on.
pub const SECRET: &str = "test-secret-of-at-least-32-bytes!";

/// Now, in Unix seconds (for `exp` claims).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `claims` signed with [`SECRET`], as they are.
pub fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `claims` with an `exp` ten minutes ahead, signed with [`SECRET`].
pub fn valid_token(mut claims: Value) -> String {
    claims["exp"] = json!(now() + 600);
    token(claims)
}

/// A token valid for ten minutes but signed with another secret than [`SECRET`]: forged.
pub fn forged_token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "exp": now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-32-bytes-long!!"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}
