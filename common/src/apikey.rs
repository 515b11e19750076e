//! API keys: `tk_` followed by 40 hex digits of randomness. Only the SHA-256 is stored.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Prefix of every API key, so a leaked key is recognisable.
pub const PREFIX: &str = "tk_";
/// Characters of a key shown in listings (prefix included).
pub const DISPLAY_CHARS: usize = 10;

/// A fresh random key.
pub fn generate() -> String {
    let bytes: [u8; 20] = rand::random();
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of a key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part of a key safe to show.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_CHARS).collect()
}

/// Creates a key for `app_id` and stores its hash; the key itself is returned, once.
pub async fn insert<'e>(executor: impl sqlx::PgExecutor<'e>, app_id: Uuid) -> sqlx::Result<String> {
    let key = generate();
    sqlx::query("INSERT INTO api_keys (id, app_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(app_id)
        .bind(&hash(&key)[..])
        .bind(display_prefix(&key))
        .execute(executor)
        .await?;
    Ok(key)
}
