//! Plans: the product catalogue's modes, auto top-up charges as they travel from the charger to
//! the ledger, and the apps' Stripe secret keys, sealed at rest.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// How a catalogue product credits: once per purchase, or an allowance per billing period that
/// expires at the period's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductMode {
    OneTime,
    Subscription,
}

impl ProductMode {
    pub const ALL: [Self; 2] = [Self::OneTime, Self::Subscription];
    /// Their names, as the API writes them.
    pub const NAMES: [&'static str; 2] = ["one_time", "subscription"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == text)
    }
}

/// What Stripe said about a charge it refused or could not make.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeError {
    /// Stripe's error `code` (`card_declined`, `authentication_required` …), or Tally's own
    /// (`stripe_key_missing`).
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: String,
}

/// The answer to one auto top-up charge, applied to the ledger like any command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChargeResult {
    /// Stripe created the PaymentIntent (succeeded or processing): the credits arrive with its
    /// `payment_intent.succeeded` webhook.
    Charged { payment_intent_id: String },
    /// The customer must authenticate the payment (`requires_action`).
    ActionRequired { payment_intent_id: String },
    /// Declined, or refused by Stripe's API.
    Failed {
        payment_intent_id: Option<String>,
        error: ChargeError,
    },
}

/// A payment made by an auto top-up attempt (metadata `tally_auto_topup_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoTopupPayment {
    pub attempt_id: Uuid,
    pub currency: Option<String>,
}

/// Consecutive failed attempts after which a user's auto top-up is disabled.
pub const FAILURES_BEFORE_DISABLED: i32 = 3;

/// The key that seals the apps' Stripe secret keys (`TALLY_SECRET_KEY`). Its text never
/// appears in `Debug` output.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Derives the sealing key from the configured text (HKDF-SHA256).
    pub fn derive(text: &str) -> Self {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(b"tally secret key"), text.as_bytes())
            .expand(b"stripe secret keys, aes-256-gcm", &mut key)
            .expect("32 bytes is a valid HKDF length");
        Self(key)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SecretKey(…)")
    }
}

/// Why `TALLY_SECRET_KEY` was refused.
#[derive(Debug, thiserror::Error)]
#[error("TALLY_SECRET_KEY must be at least 32 characters")]
pub struct SecretKeyTooShort;

impl FromStr for SecretKey {
    type Err = SecretKeyTooShort;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.chars().count() < 32 {
            return Err(SecretKeyTooShort);
        }
        Ok(Self::derive(text))
    }
}

/// A Stripe secret key as stored: sealed when a [`SecretKey`] is configured (`nonce` set),
/// else the key's own bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub secret: Vec<u8>,
    pub nonce: Option<Vec<u8>>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("StoredKey(…)")
    }
}

/// Why a stored key could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the Stripe key is encrypted and TALLY_SECRET_KEY is not set")]
    NoSecretKey,
    #[error("the Stripe key does not open with this TALLY_SECRET_KEY")]
    WrongSecretKey,
}

impl StoredKey {
    /// Seals `stripe_key` for the app under `key`, or keeps it as given without one.
    pub fn seal(app_id: Uuid, stripe_key: &str, key: Option<&SecretKey>) -> Self {
        let Some(key) = key else {
            return Self {
                secret: stripe_key.as_bytes().to_vec(),
                nonce: None,
            };
        };
        let nonce: [u8; 12] = rand::random();
        let cipher = Aes256Gcm::new(&key.0.into());
        let secret = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: stripe_key.as_bytes(),
                    aad: app_id.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any message of this size");
        Self {
            secret,
            nonce: Some(nonce.to_vec()),
        }
    }

    /// The key as given to [`StoredKey::seal`] for the same app.
    pub fn open(&self, app_id: Uuid, key: Option<&SecretKey>) -> Result<String, OpenError> {
        let plain = match &self.nonce {
            None => self.secret.clone(),
            Some(nonce) => {
                let key = key.ok_or(OpenError::NoSecretKey)?;
                if nonce.len() != 12 {
                    return Err(OpenError::WrongSecretKey);
                }
                Aes256Gcm::new(&key.0.into())
                    .decrypt(
                        Nonce::from_slice(nonce),
                        aes_gcm::aead::Payload {
                            msg: &self.secret,
                            aad: app_id.as_bytes(),
                        },
                    )
                    .map_err(|_| OpenError::WrongSecretKey)?
            }
        };
        String::from_utf8(plain).map_err(|_| OpenError::WrongSecretKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_secret_and_app() {
        let key: SecretKey = "a secret of at least thirty-two chars".parse().unwrap();
        let app = Uuid::now_v7();
        let sealed = StoredKey::seal(app, "sk_test_123", Some(&key));
        assert!(!sealed
            .secret
            .windows(b"sk_test".len())
            .any(|w| w == b"sk_test"));
        assert_eq!(sealed.open(app, Some(&key)).unwrap(), "sk_test_123");
        assert!(sealed.open(Uuid::now_v7(), Some(&key)).is_err());
        let other: SecretKey = "another secret of thirty-two chars!!".parse().unwrap();
        assert!(sealed.open(app, Some(&other)).is_err());
        assert!(matches!(
            sealed.open(app, None),
            Err(OpenError::NoSecretKey)
        ));
        assert!("short".parse::<SecretKey>().is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(…)");
    }

    #[test]
    fn without_a_secret_the_key_is_kept_as_given() {
        let app = Uuid::now_v7();
        let stored = StoredKey::seal(app, "sk_test_9", None);
        assert_eq!(stored.nonce, None);
        assert_eq!(stored.open(app, None).unwrap(), "sk_test_9");
    }
}
