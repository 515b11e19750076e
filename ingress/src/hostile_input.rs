//! Property tests of every request decoder and both webhook verifiers: whatever bytes, headers
//! or JSON arrive, they never panic, and what they refuse is a 4xx naming what is wrong — never
//! a 5xx. (The same holds end to end through HTTP: `tests/it/hostile_input.rs`.)

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, page_limit};
use crate::validate::{self, Fields};
use crate::webhooks::{events, signature};

/// Field names the decoders know, mixed with arbitrary ones, so that generated objects reach
/// every getter and not only the unknown-field check.
const KNOWN_FIELDS: &[&str] = &[
    "user_id",
    "amount",
    "description",
    "metadata",
    "expires_at",
    "expires_in_seconds",
    "ledger_id",
    "hold_id",
    "id",
    "type",
    "data",
    "object",
    "tally_user_id",
    "tally_credits",
    "payment_intent",
    "amount_refunded",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KNOWN_FIELDS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-3i64..=3).prop_map(Value::from),
        Just(Value::from(1_000_000_000_000i64)),
        Just(Value::from(1_000_000_000_001i64)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(u64::MAX)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
        "[0-9a-f-]{36}".prop_map(Value::String),
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((field_name(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((field_name(), json_value()), 0..10)
        .prop_map(|pairs| pairs.into_iter().collect())
}

/// Bodies: raw bytes, JSON, and JSON with a byte flipped.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|value| value.to_string().into_bytes()),
        (json_object(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(object, at, byte)| {
                let mut bytes = Value::Object(object).to_string().into_bytes();
                let at = at.index(bytes.len());
                bytes[at] = byte;
                bytes
            }
        ),
    ]
}

/// A header value as a client could send it (any visible bytes, or arbitrary bytes that
/// happen to be legal in a header).
fn header_value() -> impl Strategy<Value = Option<HeaderValue>> {
    prop_oneof![
        any::<String>().prop_map(|text| HeaderValue::from_str(&text).ok()),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|bytes| HeaderValue::from_bytes(&bytes).ok()),
        Just(Some(HeaderValue::from_static("application/json"))),
    ]
}

fn is_client_error(error: &ApiError) -> bool {
    (400..500).contains(&error.code().status())
}

/// Every getter a request handler uses, in the order the handlers use them: each either reads
/// the field or refuses it with a 4xx naming it.
fn decode_everything(object: Map<String, Value>) -> Vec<Result<(), ApiError>> {
    let all: Vec<&str> = KNOWN_FIELDS.to_vec();
    let mut results = Vec::new();
    match Fields::new(object.clone(), &all) {
        Err(error) => results.push(Err(error)),
        Ok(mut fields) => {
            results.push(fields.user_id("user_id").map(drop));
            results.push(fields.amount("amount").map(drop));
            results.push(fields.optional_amount("amount").map(drop));
            results.push(fields.description().map(drop));
            results.push(fields.metadata().map(drop));
            results.push(fields.optional_time("expires_at").map(drop));
            results.push(
                fields
                    .optional_integer("expires_in_seconds", 1, 86_400)
                    .map(drop),
            );
            results.push(fields.uuid("ledger_id").map(drop));
            results.push(fields.uuid("hold_id").map(drop));
            results.push(fields.finish());
        }
    }
    // And the unknown-field check of each real handler's allow-list.
    for allowed in [
        &[
            "user_id",
            "amount",
            "description",
            "metadata",
            "expires_at",
            "expires_in_seconds",
        ][..],
        &["user_id", "amount", "description", "metadata"][..],
        &["ledger_id", "amount", "description", "metadata"][..],
        &["hold_id", "amount"][..],
        &["hold_id"][..],
    ] {
        results.push(Fields::new(object.clone(), allowed).map(drop));
    }
    results
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_body_of_any_bytes_and_content_type_is_read_or_refused_with_a_4xx(
        bytes in body(),
        content_type in header_value(),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(axum::http::header::CONTENT_TYPE, value);
        }
        let result = futures::executor::block_on(validate::json_object(&headers, Body::from(bytes)));
        if let Err(error) = result {
            prop_assert!(is_client_error(&error), "{error:?}");
        }
    }

    #[test]
    fn a_body_past_the_limit_is_413(extra in 1usize..4096) {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bytes = vec![b' '; tally_common::limits::BODY_BYTES_MAX + extra];
        let error = futures::executor::block_on(validate::json_object(&headers, Body::from(bytes)))
            .unwrap_err();
        prop_assert_eq!(error.code().status(), 413);
    }

    #[test]
    fn every_field_getter_reads_or_refuses_with_a_4xx_naming_the_field(object in json_object()) {
        for result in decode_everything(object) {
            if let Err(error) = result {
                prop_assert!(is_client_error(&error), "{error:?}");
                if let ApiError::InvalidRequest { field, .. } = &error {
                    prop_assert!(field.is_some(), "a field error names its field: {error:?}");
                }
            }
        }
    }

    #[test]
    fn request_headers_of_any_value_never_fail_with_a_5xx(
        idempotency_key in header_value(),
        prefer in header_value(),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(value) = idempotency_key {
            headers.insert(HeaderName::from_static("idempotency-key"), value);
        }
        if let Some(value) = prefer {
            headers.insert(HeaderName::from_static("prefer"), value);
        }
        if let Err(error) = validate::idempotency_key(&headers) {
            prop_assert!(is_client_error(&error), "{error:?}");
        }
        let _ = validate::prefers_async(&headers);
    }

    #[test]
    fn query_parameters_of_any_value_never_fail_with_a_5xx(
        query in proptest::collection::hash_map(
            prop_oneof![Just("user_id".to_string()), Just("limit".to_string()),
                        Just("cursor".to_string()), any::<String>()],
            prop_oneof![any::<String>(), any::<i64>().prop_map(|n| n.to_string())],
            0..5,
        ),
    ) {
        let query: HashMap<String, String> = query;
        for result in [validate::query_user_id(&query).map(drop), page_limit(&query).map(drop)] {
            if let Err(error) = result {
                prop_assert!(is_client_error(&error), "{error:?}");
            }
        }
        if let Some(cursor) = query.get("cursor") {
            for kind in ["h1", "w1", "k1"] {
                if let Err(error) = decode_cursor(kind, cursor) {
                    prop_assert!(is_client_error(&error), "{error:?}");
                }
            }
        }
    }

    #[test]
    fn a_cursor_reads_back_what_it_was_issued_with(kind in "[a-z][0-9]", position in any::<String>()) {
        prop_assert_eq!(decode_cursor(&kind, &encode_cursor(&kind, &position)).unwrap(), position);
    }

    #[test]
    fn the_request_hash_ignores_whitespace_and_key_order(object in json_object()) {
        let compact = Value::Object(object.clone()).to_string();
        let reversed: Map<String, Value> = object.into_iter().rev().collect();
        let pretty = serde_json::to_string_pretty(&Value::Object(reversed)).unwrap();
        let parse = |text: &str| serde_json::from_str::<Map<String, Value>>(text).unwrap();
        prop_assert_eq!(
            validate::request_hash("POST", "/credits/add", &parse(&compact)),
            validate::request_hash("POST", "/credits/add", &parse(&pretty))
        );
    }

    #[test]
    fn the_stripe_verifier_refuses_anything_unsigned_without_panicking(
        header in prop_oneof![
            any::<Option<String>>(),
            (any::<i64>(), proptest::collection::vec("[0-9a-f]{0,70}", 0..4), any::<String>())
                .prop_map(|(t, v1s, extra)| {
                    let mut header = format!("t={t}");
                    for v1 in v1s { header.push_str(&format!(",v1={v1}")); }
                    Some(format!("{header},{extra}"))
                }),
        ],
        bytes in body(),
        secrets in proptest::collection::vec(any::<String>(), 0..3),
        now in any::<i64>(),
        tolerance in any::<i64>(),
    ) {
        let verified = signature::verify_stripe(header.as_deref(), &bytes, &secrets, now, tolerance);
        prop_assert!(verified.is_err(), "an unsigned request verified");
    }

    #[test]
    fn the_polar_verifier_refuses_anything_unsigned_without_panicking(
        id in any::<Option<String>>(),
        timestamp in prop_oneof![
            any::<Option<String>>(),
            any::<i64>().prop_map(|t| Some(t.to_string())),
        ],
        header in prop_oneof![
            any::<Option<String>>(),
            proptest::collection::vec("[A-Za-z0-9+/=]{0,60}", 0..4)
                .prop_map(|sigs| Some(sigs.iter().map(|s| format!("v1,{s}")).collect::<Vec<_>>().join(" "))),
        ],
        bytes in body(),
        secrets in proptest::collection::vec(
            prop_oneof![any::<String>(), "[A-Za-z0-9+/=]{0,48}".prop_map(|s| format!("whsec_{s}"))],
            0..3,
        ),
        now in any::<i64>(),
        tolerance in any::<i64>(),
    ) {
        let verified = signature::verify_polar(
            id.as_deref(), timestamp.as_deref(), header.as_deref(), &bytes, &secrets, now, tolerance,
        );
        prop_assert!(verified.is_err(), "an unsigned request verified");
    }

    #[test]
    fn a_correctly_signed_stripe_event_verifies_whatever_its_body(
        bytes in body(),
        secret in "whsec_[A-Za-z0-9]{1,40}",
        now in 0i64..4_000_000_000,
        skew in -300i64..=300,
    ) {
        use hmac::Mac;
        let t = now + skew;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&bytes);
        let header = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        prop_assert_eq!(
            signature::verify_stripe(Some(&header), &bytes, &[secret], now, 300),
            Ok(())
        );
    }

    #[test]
    fn provider_events_of_any_shape_parse_or_are_refused_without_panicking(event in json_value()) {
        let _ = events::stripe(&event);
        let _ = events::polar(&event);
    }
}

#[test]
fn a_nul_character_is_refused_naming_its_field_before_it_reaches_postgres() {
    let object = |value: Value| value.as_object().cloned().unwrap();
    let error = validate::check_user_id("user_id", "a\0b".into()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "user_id: must not contain the NUL character"
    );
    let mut fields = Fields::new(
        object(serde_json::json!({ "description": "x\u{0}" })),
        &["description"],
    )
    .unwrap();
    assert!(fields
        .description()
        .unwrap_err()
        .to_string()
        .starts_with("description:"));
    let mut fields = Fields::new(
        object(serde_json::json!({ "metadata": { "k\u{0}": "v" } })),
        &["metadata"],
    )
    .unwrap();
    assert!(fields
        .metadata()
        .unwrap_err()
        .to_string()
        .starts_with("metadata:"));
    let mut fields = Fields::new(
        object(serde_json::json!({ "metadata": { "k": "\u{0}" } })),
        &["metadata"],
    )
    .unwrap();
    assert!(fields
        .metadata()
        .unwrap_err()
        .to_string()
        .starts_with("metadata:"));
    assert!(decode_cursor("w1", &encode_cursor("w1", "1|\0|\0")).is_err());
}
