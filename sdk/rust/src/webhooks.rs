//! Verifying the events Tally sends to your webhook endpoints (Standard Webhooks).
//!
//! ```
//! use tally_client::webhooks::{self, VerifyError};
//!
//! fn receive(body: &[u8], headers: &reqwest::header::HeaderMap, secret: &str) -> u16 {
//!     match webhooks::verify(body, headers, secret) {
//!         // Deliveries repeat: act once per `event.id` (the `webhook-id` header).
//!         Ok(event) if event.event_type == "balance.low" => 204,
//!         Ok(_) => 204,
//!         Err(VerifyError::InvalidSecret) => panic!("not a whsec_ secret"),
//!         Err(_) => 400,
//!     }
//! }
//! ```
//!
//! Each delivery carries `webhook-id` (the event id, the same on every attempt),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`: one or more space-separated
//! `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the bytes the endpoint's
//! `whsec_<base64>` secret encodes (two while a secret is being rotated).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::types::Event;

/// How far a delivery's timestamp may be from now, either way (Standard Webhooks' default).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
const SECRET_PREFIX: &str = "whsec_";

/// Why a delivery was refused: answer it with a 400 and never act on its body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing webhook-id, webhook-timestamp or webhook-signature header")]
    MissingHeaders,
    #[error("webhook-timestamp {0:?} is not Unix seconds")]
    InvalidTimestamp(String),
    #[error("webhook-timestamp is {age_secs} s old (tolerance {tolerance_secs} s)")]
    TimestampTooOld { age_secs: u64, tolerance_secs: u64 },
    #[error("webhook-timestamp is {ahead_secs} s ahead (tolerance {tolerance_secs} s)")]
    TimestampTooNew {
        ahead_secs: u64,
        tolerance_secs: u64,
    },
    #[error("no webhook-signature matches the body")]
    InvalidSignature,
    #[error("the body is not a JSON event: {0}")]
    InvalidBody(String),
    /// The secret given is not `whsec_` and base64: a mistake of the receiver, not the sender.
    #[error("the webhook secret is not whsec_ followed by base64")]
    InvalidSecret,
}

/// A request's headers, however the receiver's framework holds them; names are looked up in
/// any case.
pub trait Headers {
    /// The value of header `name` (lowercase), if present and text.
    fn header(&self, name: &str) -> Option<&str>;
}

/// `http::HeaderMap`: axum's, hyper's and reqwest's.
impl Headers for reqwest::header::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|value| value.to_str().ok())
    }
}

fn find<'a, K: AsRef<str> + 'a, V: AsRef<str> + 'a>(
    pairs: impl IntoIterator<Item = (&'a K, &'a V)>,
    name: &str,
) -> Option<&'a str> {
    pairs
        .into_iter()
        .find(|(key, _)| key.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_ref())
}

impl<K: AsRef<str>, V: AsRef<str>, S> Headers for HashMap<K, V, S> {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for BTreeMap<K, V> {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        find(self.iter().map(|(key, value)| (key, value)), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Headers for [(K, V); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// What [`verify_with`] checks the timestamp against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How far `webhook-timestamp` may be from `now`, either way.
    pub tolerance: Duration,
    /// The time to check it against; `None`: now.
    pub now: Option<SystemTime>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            tolerance: DEFAULT_TOLERANCE,
            now: None,
        }
    }
}

/// Checks a delivery's signature and timestamp (5 minutes of tolerance) on its raw body, then
/// parses it. `body`: the request body exactly as received; `secret`: the endpoint's
/// `whsec_...` secret.
pub fn verify(
    body: &[u8],
    headers: &(impl Headers + ?Sized),
    secret: &str,
) -> Result<Event, VerifyError> {
    verify_with(body, headers, secret, VerifyOptions::default())
}

/// [`verify`] with another tolerance, or another time to check the timestamp against.
pub fn verify_with(
    body: &[u8],
    headers: &(impl Headers + ?Sized),
    secret: &str,
    options: VerifyOptions,
) -> Result<Event, VerifyError> {
    let key = secret_key(secret)?;
    let present = |name| headers.header(name).filter(|value| !value.is_empty());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        present("webhook-id"),
        present("webhook-timestamp"),
        present("webhook-signature"),
    ) else {
        return Err(VerifyError::MissingHeaders);
    };
    check_timestamp(timestamp, &options)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    // Each candidate is compared in constant time (`verify_slice`), every one of them.
    let matched = v1_signatures(signatures)
        .iter()
        .fold(false, |matched, candidate| {
            mac.clone().verify_slice(candidate).is_ok() | matched
        });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    serde_json::from_slice(body).map_err(|error| VerifyError::InvalidBody(error.to_string()))
}

fn secret_key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| VerifyError::InvalidSecret)?;
    if key.is_empty() {
        return Err(VerifyError::InvalidSecret);
    }
    Ok(key)
}

fn check_timestamp(timestamp: &str, options: &VerifyOptions) -> Result<(), VerifyError> {
    let invalid = || VerifyError::InvalidTimestamp(timestamp.to_string());
    if !timestamp.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let sent_secs: u64 = timestamp.parse().map_err(|_| invalid())?;
    let now = options.now.unwrap_or_else(SystemTime::now);
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let tolerance_secs = options.tolerance.as_secs();
    if now_secs > sent_secs && now_secs - sent_secs > tolerance_secs {
        return Err(VerifyError::TimestampTooOld {
            age_secs: now_secs - sent_secs,
            tolerance_secs,
        });
    }
    if sent_secs > now_secs && sent_secs - now_secs > tolerance_secs {
        return Err(VerifyError::TimestampTooNew {
            ahead_secs: sent_secs - now_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

/// The decoded `v1` signatures of a `webhook-signature` header; other versions and malformed
/// entries are skipped.
fn v1_signatures(header: &str) -> Vec<Vec<u8>> {
    header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|signature| {
            base64::engine::general_purpose::STANDARD
                .decode(signature)
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    /// A ping as Tally sends it, signed once with Python's hmac module (the TypeScript SDK's
    /// test has the same vector).
    const PING: &str = r#"{"id":"01936b2e-7c4a-7d2e-9f3a-2b1c0d9e8f7a","type":"ping","created_at":"2024-05-06T07:08:09.123Z","app_id":"01936b2e-0000-7000-8000-000000000001","user_id":null,"sequence":1,"data":{}}"#;
    const PING_ID: &str = "01936b2e-7c4a-7d2e-9f3a-2b1c0d9e8f7a";
    const PING_AT: &str = "1714979289";
    const PING_SIGNATURE: &str = "v1,5z+cp9Jm/TvbWT5sQkyG6q7TufNrOnrp40tmf+ZIa7Y=";

    fn at(secs: u64) -> VerifyOptions {
        VerifyOptions {
            now: Some(UNIX_EPOCH + Duration::from_secs(secs)),
            ..VerifyOptions::default()
        }
    }

    fn ping_headers(signature: &str) -> [(&'static str, String); 3] {
        [
            ("webhook-id", PING_ID.to_string()),
            ("webhook-timestamp", PING_AT.to_string()),
            ("webhook-signature", signature.to_string()),
        ]
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// The headers the `standardwebhooks` crate signs `body` with, as of `timestamp`.
    fn signed_by_standardwebhooks(
        secret: &str,
        id: &str,
        timestamp: u64,
        body: &str,
    ) -> reqwest::header::HeaderMap {
        let signature = standardwebhooks::Webhook::new(secret)
            .expect("a whsec_ secret")
            .sign(id, timestamp as i64, body.as_bytes())
            .expect("signed");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers
    }

    #[test]
    fn a_fixed_vector_verifies_and_parses_into_the_event() {
        let event = verify_with(
            PING.as_bytes(),
            &ping_headers(PING_SIGNATURE),
            SECRET,
            at(1714979289),
        )
        .expect("verified");
        assert_eq!(event.id.to_string(), PING_ID);
        assert_eq!(event.event_type, "ping");
        assert_eq!(event.user_id, None);
        assert_eq!(event.sequence, 1);
    }

    #[test]
    fn a_delivery_signed_by_the_standardwebhooks_crate_verifies() {
        let body = PING.replace("\"ping\"", "\"balance.low\"");
        let headers = signed_by_standardwebhooks(SECRET, PING_ID, now_secs(), &body);
        let event = verify(body.as_bytes(), &headers, SECRET).expect("verified");
        assert_eq!(event.event_type, "balance.low");
        // And what this verifies, the crate verifies too.
        let theirs = standardwebhooks::Webhook::new(SECRET).unwrap();
        assert!(theirs.verify(body.as_bytes(), &headers).is_ok());
    }

    #[test]
    fn any_one_of_several_signatures_is_enough_and_other_versions_are_ignored() {
        let both = format!("v1,AAAA v1,bm90IHRoaXM= {PING_SIGNATURE}");
        assert!(verify_with(
            PING.as_bytes(),
            &ping_headers(&both),
            SECRET,
            at(1714979289)
        )
        .is_ok());
        let other_version = PING_SIGNATURE.replace("v1,", "v2,");
        assert_eq!(
            verify_with(
                PING.as_bytes(),
                &ping_headers(&other_version),
                SECRET,
                at(1714979289)
            )
            .unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn a_tampered_body_or_another_secret_is_refused() {
        let tampered = PING.replace("\"sequence\":1", "\"sequence\":2");
        let headers = ping_headers(PING_SIGNATURE);
        assert_eq!(
            verify_with(tampered.as_bytes(), &headers, SECRET, at(1714979289)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";
        assert_eq!(
            verify_with(PING.as_bytes(), &headers, other, at(1714979289)).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn a_timestamp_more_than_the_tolerance_away_is_refused_either_way() {
        let headers = ping_headers(PING_SIGNATURE);
        let sent = 1714979289;
        assert!(matches!(
            verify_with(PING.as_bytes(), &headers, SECRET, at(sent + 301)),
            Err(VerifyError::TimestampTooOld { age_secs: 301, .. })
        ));
        assert!(matches!(
            verify_with(PING.as_bytes(), &headers, SECRET, at(sent - 301)),
            Err(VerifyError::TimestampTooNew {
                ahead_secs: 301,
                ..
            })
        ));
        assert!(verify_with(PING.as_bytes(), &headers, SECRET, at(sent + 300)).is_ok());
        let wider = VerifyOptions {
            tolerance: Duration::from_secs(600),
            ..at(sent + 500)
        };
        assert!(verify_with(PING.as_bytes(), &headers, SECRET, wider).is_ok());
        // Today, the vector is long past.
        assert!(matches!(
            verify(PING.as_bytes(), &headers, SECRET),
            Err(VerifyError::TimestampTooOld { .. })
        ));
    }

    #[test]
    fn missing_headers_a_bad_timestamp_a_body_that_is_no_event_and_a_bad_secret() {
        let headers = [("Webhook-Id", PING_ID), ("Webhook-Timestamp", PING_AT)];
        assert_eq!(
            verify(PING.as_bytes(), &headers, SECRET).unwrap_err(),
            VerifyError::MissingHeaders
        );
        let mut garbled = ping_headers(PING_SIGNATURE);
        garbled[1].1 = "-5".into();
        assert!(matches!(
            verify(PING.as_bytes(), &garbled, SECRET),
            Err(VerifyError::InvalidTimestamp(_))
        ));
        let body = "[1]";
        let headers = signed_by_standardwebhooks(SECRET, PING_ID, now_secs(), body);
        assert!(matches!(
            verify(body.as_bytes(), &headers, SECRET),
            Err(VerifyError::InvalidBody(_))
        ));
        assert_eq!(
            verify(PING.as_bytes(), &headers, "whsec_***").unwrap_err(),
            VerifyError::InvalidSecret
        );
    }

    #[test]
    fn headers_are_found_in_any_case_in_maps_and_slices() {
        let map: HashMap<String, String> = ping_headers(PING_SIGNATURE)
            .into_iter()
            .map(|(name, value)| (name.to_uppercase(), value))
            .collect();
        assert!(verify_with(PING.as_bytes(), &map, SECRET, at(1714979289)).is_ok());
        let tree: BTreeMap<&str, String> = ping_headers(PING_SIGNATURE).into_iter().collect();
        assert!(verify_with(PING.as_bytes(), &tree, SECRET, at(1714979289)).is_ok());
    }
}
