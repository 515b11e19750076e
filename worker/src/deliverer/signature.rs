//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed
//! with the bytes of the endpoint's secret (`whsec_` + base64), one per active secret,
//! space-separated.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every endpoint secret starts with.
const SECRET_PREFIX: &str = "whsec_";

/// The signature scheme's version tag.
const VERSION: &str = "v1";

/// An endpoint secret that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's secret is not `whsec_` followed by base64")]
pub(crate) struct MalformedSecret;

/// The key of a secret: the bytes its base64 stands for.
fn key(secret: &str) -> Result<Vec<u8>, MalformedSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(MalformedSecret),
    }
}

/// The `webhook-signature` header value: one signature for each of `secrets` (the current
/// secret, then a rotated one still valid), space-separated.
pub(crate) fn sign(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, MalformedSecret> {
    let mut header = String::new();
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key(secret)?).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(VERSION);
        header.push(',');
        header.push_str(&BASE64.encode(mac.finalize().into_bytes()));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn a_signature_matches_the_reference_vector() {
        assert_eq!(sign(&[SECRET], ID, TIMESTAMP, BODY).unwrap(), SIGNATURE);
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures_current_first() {
        let previous = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let header = sign(&[SECRET, previous], ID, TIMESTAMP, BODY).unwrap();
        let (current, other) = header.split_once(' ').expect("two signatures");
        assert_eq!(current, SIGNATURE);
        assert_eq!(other, sign(&[previous], ID, TIMESTAMP, BODY).unwrap());
        assert_ne!(current, other);
    }

    /// Standard Webhooks vectors of the payment-webhook suite, made with the official library.
    const VECTORS: &str = include_str!("../../../tests/it/fixtures/webhook_vectors.json");

    #[test]
    fn signatures_match_the_official_librarys_vectors() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let mut checked = 0;
        for vector in vectors["polar"].as_array().unwrap() {
            let header = vector["signature_header"].as_str().unwrap();
            if vector["verified_by"]["standardwebhooks.Webhook(secret)"] != "valid"
                || header.contains(' ')
            {
                continue;
            }
            let signed = sign(
                &[vector["secret"].as_str().unwrap()],
                vector["webhook_id"].as_str().unwrap(),
                vector["timestamp"].as_i64().unwrap(),
                vector["payload"].as_str().unwrap().as_bytes(),
            )
            .unwrap();
            assert_eq!(signed, header, "{}", vector["name"]);
            checked += 1;
        }
        assert!(checked >= 2, "only {checked} vectors apply");
    }

    #[test]
    fn a_secret_that_does_not_decode_signs_nothing() {
        assert!(sign(&["whsec_not base64!"], ID, TIMESTAMP, BODY).is_err());
        assert!(sign(&["whsec_"], ID, TIMESTAMP, BODY).is_err());
    }
}
