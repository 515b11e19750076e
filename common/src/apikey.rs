//! API keys: `tk_` followed by 40 hex digits of randomness. Only the SHA-256 is stored.

use sha2::{Digest, Sha256};

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
