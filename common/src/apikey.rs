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

/// Hex digits after the prefix.
pub const HEX_CHARS: usize = 40;

/// Whether `key` has the form of a key: the prefix and [`HEX_CHARS`] lowercase hex digits.
/// Anything else is refused without a lookup.
pub fn is_well_formed(key: &str) -> bool {
    key.strip_prefix(PREFIX).is_some_and(|digits| {
        digits.len() == HEX_CHARS
            && digits
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// The SHA-256 of a key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part of a key safe to show.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_nothing_else_is() {
        for _ in 0..100 {
            assert!(is_well_formed(&generate()));
        }
        let key = generate();
        assert!(!is_well_formed(&key.to_uppercase()));
        assert!(!is_well_formed(&key[..key.len() - 1]));
        assert!(!is_well_formed(&format!("{key}0")));
        assert!(!is_well_formed(&key.replacen("tk_", "tx_", 1)));
        assert!(!is_well_formed(&format!("tk_{}", "g".repeat(HEX_CHARS))));
        assert!(!is_well_formed(""));
    }
}
