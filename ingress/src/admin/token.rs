//! `TALLY_ADMIN_TOKEN`: checked once at start, then kept only as a digest and as the keys
//! derived from it.
//!
//! - A presented token is compared by its SHA-256 with the configured token's, in constant
//!   time: neither its content nor its length shows in the time the answer takes.
//! - The dashboard's session cookies and CSRF tokens are signed with keys derived from the
//!   token by HKDF-SHA256 (one key per use), never with the token itself, so a MAC seen by a
//!   client says nothing about the token, and changing the token still ends every session.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest admin token accepted: 32 characters of a random token are far past guessing,
/// however many ingresses answer guesses.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;

/// HKDF salt: names the purpose of every derived key, so that no other use of the token can
/// ever produce the same keys.
const KEY_SALT: &[u8] = b"tally admin token v1";

/// The configured admin token, as the ingress keeps it.
pub struct AdminToken {
    digest: [u8; 32],
    session_key: [u8; 32],
    csrf_key: [u8; 32],
}

/// The configured token is too short.
#[derive(Debug, thiserror::Error)]
#[error(
    "TALLY_ADMIN_TOKEN must be at least {ADMIN_TOKEN_CHARS_MIN} characters (it has {0}); \
     generate one with `openssl rand -hex 32`"
)]
pub struct TooShort(usize);

impl AdminToken {
    /// The token of the configuration: `None` when unset or empty (admin API and dashboard off),
    /// an error when shorter than [`ADMIN_TOKEN_CHARS_MIN`].
    pub fn from_config(token: Option<&str>) -> Result<Option<Self>, TooShort> {
        match token {
            None | Some("") => Ok(None),
            Some(token) => Self::new(token).map(Some),
        }
    }

    pub fn new(token: &str) -> Result<Self, TooShort> {
        let chars = token.chars().count();
        if chars < ADMIN_TOKEN_CHARS_MIN {
            return Err(TooShort(chars));
        }
        let keys = Hkdf::<Sha256>::new(Some(KEY_SALT), token.as_bytes());
        let derive = |info: &[u8]| {
            let mut key = [0u8; 32];
            keys.expand(info, &mut key)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            session_key: derive(b"dashboard session cookie"),
            csrf_key: derive(b"dashboard csrf token"),
        })
    }

    /// Whether `presented` is the token (constant time, by digest).
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(presented.ct_eq(&self.digest))
    }

    /// The key of the session cookie's MAC.
    pub fn session_key(&self) -> &[u8; 32] {
        &self.session_key
    }

    /// The key of the CSRF tokens' MAC.
    pub fn csrf_key(&self) -> &[u8; 32] {
        &self.csrf_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_short_token_is_refused_naming_the_variable_and_an_empty_one_is_off() {
        let error = AdminToken::from_config(Some("short"))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("TALLY_ADMIN_TOKEN"), "{error}");
        assert!(AdminToken::from_config(Some(&TOKEN[1..])).is_err());
        assert!(AdminToken::from_config(Some("")).unwrap().is_none());
        assert!(AdminToken::from_config(None).unwrap().is_none());
        assert!(AdminToken::from_config(Some(TOKEN)).unwrap().is_some());
    }

    #[test]
    fn only_the_token_itself_matches() {
        let token = AdminToken::new(TOKEN).unwrap();
        assert!(token.matches(TOKEN));
        assert!(!token.matches(&TOKEN[1..]));
        assert!(!token.matches(&format!("{TOKEN}x")));
        assert!(!token.matches(""));
    }

    #[test]
    fn derived_keys_differ_from_each_other_and_follow_the_token() {
        let one = AdminToken::new(TOKEN).unwrap();
        let other = AdminToken::new(&TOKEN.replace('0', "1")).unwrap();
        assert_ne!(one.session_key(), one.csrf_key());
        assert_ne!(one.session_key(), other.session_key());
        assert_ne!(&one.session_key()[..], TOKEN.as_bytes());
    }
}
