//! Payment-provider signatures, verified on the raw body bytes before anything is parsed or
//! published. Every comparison is constant-time.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. The text is safe to log and to return: it holds no secret,
/// signature or body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is missing")]
    Missing,
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature timestamp is outside the {0} s tolerance")]
    Stale(i64),
    #[error("no signature matches")]
    Mismatch,
}

impl SignatureError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Stale(_) => "stale",
            Self::Mismatch => "mismatch",
        }
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn check_time(timestamp: i64, now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    // `abs_diff`: a hostile timestamp (say i64::MIN) must not overflow.
    if now.abs_diff(timestamp) > u64::try_from(tolerance_secs).unwrap_or(0) {
        Err(SignatureError::Stale(tolerance_secs))
    } else {
        Ok(())
    }
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` (other schemes such as `v0` are
/// ignored); each `v1` is HMAC-SHA256 over `"{t}.{body}"` keyed by the `whsec_…` string's
/// bytes. Valid when any `v1` matches any of `secrets` (rotation).
pub fn verify_stripe(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value),
            "v1" => {
                if let Ok(bytes) = hex::decode(value) {
                    candidates.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp.ok_or(SignatureError::Malformed)?;
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    check_time(timestamp, now, tolerance_secs)?;
    for secret in secrets {
        let expected = hmac_sha256(secret.as_bytes(), &[timestamp_text.as_bytes(), b".", body]);
        if candidates
            .iter()
            .any(|candidate| bool::from(candidate.as_slice().ct_eq(&expected)))
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The HMAC keys a Polar secret may stand for. Polar's SDKs key the HMAC with the secret
/// string's raw UTF-8 bytes; a Standard Webhooks `whsec_<base64>` secret stands for its decoded
/// bytes. Both are tried.
fn polar_keys(secret: &str) -> Vec<Vec<u8>> {
    let mut keys = vec![secret.as_bytes().to_vec()];
    if let Some(encoded) = secret.strip_prefix("whsec_") {
        let unpadded = encoded.trim_end_matches('=');
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(unpadded) {
            keys.push(decoded);
        }
    }
    keys
}

/// Polar (Standard Webhooks): `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// (space-separated `v1,<base64>`); each signature is HMAC-SHA256 over
/// `"{id}.{timestamp}.{body}"`.
pub fn verify_polar(
    webhook_id: Option<&str>,
    webhook_timestamp: Option<&str>,
    webhook_signature: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let (id, timestamp_text, header) = match (webhook_id, webhook_timestamp, webhook_signature) {
        (Some(id), Some(timestamp), Some(header)) => (id, timestamp, header),
        _ => return Err(SignatureError::Missing),
    };
    let timestamp: i64 = timestamp_text
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    let candidates: Vec<Vec<u8>> = header
        .split_whitespace()
        .filter_map(|item| item.strip_prefix("v1,"))
        .filter_map(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    check_time(timestamp, now, tolerance_secs)?;
    for secret in secrets {
        for key in polar_keys(secret) {
            let expected = hmac_sha256(
                &key,
                &[
                    id.as_bytes(),
                    b".",
                    timestamp_text.trim().as_bytes(),
                    b".",
                    body,
                ],
            );
            if candidates
                .iter()
                .any(|candidate| bool::from(candidate.as_slice().ct_eq(&expected)))
            {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors signed and checked with the providers' official libraries (stripe 16.1.0,
    /// standardwebhooks 1.1.0, polar-sdk 1.0.2); see the file's `generated_with`.
    const VECTORS: &str = include_str!("../../../tests/it/fixtures/webhook_vectors.json");

    #[test]
    fn official_library_vectors_verify_as_the_libraries_do() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        for vector in vectors["stripe"].as_array().unwrap() {
            let t = vector["timestamp"].as_i64().unwrap();
            let result = verify_stripe(
                vector["header"].as_str(),
                vector["payload"].as_str().unwrap().as_bytes(),
                &[vector["secret"].as_str().unwrap().to_string()],
                t,
                300,
            );
            assert_eq!(
                result.is_ok(),
                vector["expect"] == "valid",
                "stripe {}: {result:?}",
                vector["name"]
            );
            if result.is_ok() {
                let late = verify_stripe(
                    vector["header"].as_str(),
                    vector["payload"].as_str().unwrap().as_bytes(),
                    &[vector["secret"].as_str().unwrap().to_string()],
                    t + 301,
                    300,
                );
                assert_eq!(late, Err(SignatureError::Stale(300)));
            }
        }
        for vector in vectors["polar"].as_array().unwrap() {
            let t = vector["timestamp"].as_i64().unwrap();
            let result = verify_polar(
                vector["webhook_id"].as_str(),
                Some(&t.to_string()),
                vector["signature_header"].as_str(),
                vector["payload"].as_str().unwrap().as_bytes(),
                &[vector["secret"].as_str().unwrap().to_string()],
                t,
                300,
            );
            assert_eq!(
                result.is_ok(),
                vector["expect"] == "valid",
                "polar {}: {result:?}",
                vector["name"]
            );
        }
    }

    fn stripe_header(secret: &str, t: i64, body: &str) -> String {
        let signature = hmac_sha256(
            secret.as_bytes(),
            &[t.to_string().as_bytes(), b".", body.as_bytes()],
        );
        format!("t={t},v1={}", hex::encode(signature))
    }

    #[test]
    fn stripe_accepts_a_matching_signature_and_rejects_a_tampered_body() {
        let secrets = vec!["whsec_test".to_string()];
        let header = stripe_header("whsec_test", 1_700_000_000, "{}");
        assert_eq!(
            verify_stripe(Some(&header), b"{}", &secrets, 1_700_000_100, 300),
            Ok(())
        );
        assert_eq!(
            verify_stripe(Some(&header), b"{ }", &secrets, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_rejects_stale_missing_and_malformed_headers() {
        let secrets = vec!["whsec_test".to_string()];
        let header = stripe_header("whsec_test", 1_700_000_000, "{}");
        assert_eq!(
            verify_stripe(Some(&header), b"{}", &secrets, 1_700_000_301, 300),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify_stripe(None, b"{}", &secrets, 0, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_stripe(Some("garbage"), b"{}", &secrets, 0, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_stripe(Some("t=1,v0=aa"), b"{}", &secrets, 1, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn polar_accepts_raw_and_base64_secrets() {
        let raw = "polar_whs_abc".to_string();
        let signature = hmac_sha256(raw.as_bytes(), &[b"msg_1.1700000000.{}"]);
        let header = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        );
        let ok = verify_polar(
            Some("msg_1"),
            Some("1700000000"),
            Some(&header),
            b"{}",
            &[raw],
            1_700_000_000,
            300,
        );
        assert_eq!(ok, Ok(()));

        let key = b"0123456789abcdef";
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let signature = hmac_sha256(key, &[b"msg_1.1700000000.{}"]);
        let header = format!(
            "v1,bad v1,{}",
            base64::engine::general_purpose::STANDARD.encode(signature)
        );
        let ok = verify_polar(
            Some("msg_1"),
            Some("1700000000"),
            Some(&header),
            b"{}",
            &[secret],
            1_700_000_000,
            300,
        );
        assert_eq!(ok, Ok(()));
    }
}
