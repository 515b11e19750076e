//! Hostile input end to end: generated requests (arbitrary bodies, content types, headers,
//! query strings, path segments and keys) to every endpoint of a real deployment. Never a 5xx,
//! never a forged webhook accepted, and a refused request writes nothing.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use crate::harness::{spawn_app, TestApp};

/// Requests generated per run (each is one HTTP round trip and two counts).
const CASES: u32 = 300;

#[derive(Clone, Debug)]
enum Key {
    Valid,
    Garbage(String),
    Missing,
}

#[derive(Clone, Debug)]
struct HostileRequest {
    method: &'static str,
    /// Path and query, with `{app}` standing for the test app's id.
    path: String,
    key: Key,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    /// Provider signature headers (webhooks).
    signature_headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-2i64..2000).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z_]{1,12}".prop_map(Value::String),
        Just(Value::String(uuid::Uuid::now_v7().to_string())),
        Just(Value::String("2999-01-01T00:00:00Z".into())),
        Just(Value::String("nul\u{0}byte".into())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec(("[a-z]{1,8}", inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Objects made mostly of the fields the API knows, so that some are valid and many are
/// nearly valid.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    let field = prop_oneof![
        5 => proptest::sample::select(vec![
            "user_id", "amount", "description", "metadata", "expires_at",
            "expires_in_seconds", "ledger_id", "hold_id",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ];
    let field_value = prop_oneof![
        3 => "hostile_[a-c]".prop_map(Value::String),
        1 => "hostile_[a-c]\x00?".prop_map(Value::String),
        3 => (1i64..50).prop_map(Value::from),
        4 => value(),
    ];
    proptest::collection::vec((field, field_value), 0..6)
        .prop_map(|pairs| pairs.into_iter().collect())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => object().prop_map(|object| Value::Object(object).to_string().into_bytes()),
        1 => value().prop_map(|value| value.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "hostile_[a-c]".prop_map(String::from),
        any::<String>(),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("aDE6OTk".to_string()),
        Just("hostile_a\u{0}".to_string()),
        Just("dzE6MXwAfAA".to_string()),
        Just(String::new()),
    ]
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn query() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("user_id".to_string()),
                Just("limit".to_string()),
                Just("cursor".to_string()),
                Just("status".to_string()),
                Just("provider".to_string()),
                Just("type".to_string()),
                Just("credit_type".to_string()),
                any::<String>(),
            ],
            query_value(),
        ),
        0..4,
    )
    .prop_map(|pairs| {
        pairs
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{app}".to_string()),
        Just(uuid::Uuid::now_v7().to_string()),
        any::<String>().prop_map(|text| encode(&text)),
    ]
}

fn request() -> impl Strategy<Value = HostileRequest> {
    let target = prop_oneof![
        proptest::sample::select(vec![
            "/credits/add",
            "/credits/deduct",
            "/credits/refund",
            "/credits/hold",
            "/credits/capture",
            "/credits/release",
            "/webhook_endpoints",
        ])
        .prop_map(|path| ("POST", path.to_string())),
        (
            proptest::sample::select(vec![
                "/credits/balance",
                "/credits/history",
                "/credits/holds",
                "/webhooks/events",
                "/webhook_endpoints",
                "/events",
                "/credits/alerts",
            ]),
            query()
        )
            .prop_map(|(path, query)| ("GET", format!("{path}?{query}"))),
        path_segment().prop_map(|id| ("GET", format!("/commands/{id}"))),
        (
            proptest::sample::select(vec![
                ("GET", "/webhook_endpoints/{id}"),
                ("GET", "/webhook_endpoints/{id}/deliveries"),
                ("GET", "/events/{id}"),
                ("POST", "/webhook_endpoints/{id}/test"),
                ("POST", "/webhook_endpoints/{id}/rotate_secret"),
                ("POST", "/webhook_deliveries/{id}/redeliver"),
            ]),
            path_segment()
        )
            .prop_map(|((method, path), id)| (method, path.replace("{id}", &id))),
        (
            proptest::sample::select(vec!["stripe", "polar"]),
            path_segment()
        )
            .prop_map(|(provider, app)| ("POST", format!("/webhooks/{provider}/{app}"))),
    ];
    let key = prop_oneof![
        6 => Just(Key::Valid),
        1 => any::<String>().prop_map(Key::Garbage),
        1 => Just(Key::Missing),
    ];
    let content_type = prop_oneof![
        6 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => any::<String>().prop_map(Some),
    ];
    let idempotency_key = prop_oneof![
        3 => Just(None),
        1 => "[a-z0-9]{1,8}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
    ];
    let signature_headers = prop_oneof![
        Just(Vec::new()),
        (any::<i64>(), "[0-9a-f]{0,64}")
            .prop_map(|(t, v1)| vec![("stripe-signature", format!("t={t},v1={v1}"))]),
        (
            any::<String>(),
            any::<i64>(),
            "[A-Za-z0-9+/=]{0,44}",
            any::<String>()
        )
            .prop_map(|(id, t, sig, extra)| vec![
                ("webhook-id", id),
                ("webhook-timestamp", t.to_string()),
                ("webhook-signature", format!("v1,{sig} {extra}")),
            ]),
        any::<String>().prop_map(|text| vec![("stripe-signature", text)]),
    ];
    (
        target,
        key,
        content_type,
        idempotency_key,
        signature_headers,
        body(),
    )
        .prop_map(
            |((method, path), key, content_type, idempotency_key, signature_headers, body)| {
                HostileRequest {
                    method,
                    path,
                    key,
                    content_type,
                    idempotency_key,
                    signature_headers,
                    body,
                }
            },
        )
}

/// What a request could have changed: ledger entries and holds. (A business rejection such as
/// a 402 is recorded as the command's outcome, which is not a write to the ledger.)
async fn written(app: &TestApp) -> (i64, i64) {
    sqlx::query_as("SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM holds)")
        .fetch_one(&app.pool)
        .await
        .expect("counts")
}

async fn send(app: &TestApp, request: &HostileRequest) -> Option<(u16, String)> {
    let url = app.url(&request.path.replace("{app}", &app.app_id.to_string()));
    let mut builder = match request.method {
        "GET" => app.http.get(url),
        _ => app.http.post(url).body(request.body.clone()),
    };
    builder = match &request.key {
        Key::Valid => builder.bearer_auth(&app.api_key),
        Key::Garbage(text) => builder.header("authorization", text.as_str()),
        Key::Missing => builder,
    };
    // Header values a client library cannot even send are left out (reqwest refuses them).
    let mut headers: Vec<(&str, String)> = request.signature_headers.clone();
    headers.extend(request.content_type.clone().map(|v| ("content-type", v)));
    headers.extend(
        request
            .idempotency_key
            .clone()
            .map(|v| ("idempotency-key", v)),
    );
    for (name, value) in headers {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
            builder = builder.header(name, value);
        }
    }
    let response = builder.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

#[test]
fn hostile_requests_never_get_a_5xx_and_refused_ones_write_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime.block_on(async {
        let app = spawn_app().await;
        for provider in ["stripe", "polar"] {
            let (code, out) = app
                .cli(&[
                    "app",
                    "set-webhook-secret",
                    "--app",
                    &app.app_id.to_string(),
                    "--provider",
                    provider,
                    "--secret",
                    "whsec_aG9zdGlsZV9pbnB1dF9zZWNyZXQ=",
                ])
                .await;
            assert_eq!(code, 0, "{out}");
        }
        app.add("hostile_a", 100).await;
        app
    });

    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let result = runner.run(&request(), |request| {
        runtime.block_on(async {
            let before = written(&app).await;
            let Some((status, body)) = send(&app, &request).await else {
                return Ok(());
            };
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            if status >= 500 {
                return Err(TestCaseError::fail(format!("{status}: {body}")));
            }
            if request.path.starts_with("/webhooks/") && request.method == "POST" {
                prop_assert!(
                    !(200..300).contains(&status),
                    "a forged webhook was accepted: {status} {body}"
                );
            }
            if !(200..300).contains(&status) {
                // A refused write may still be on its way through the worker: give it time to
                // show up if it (wrongly) was published.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                prop_assert_eq!(
                    written(&app).await,
                    before,
                    "a refused request ({}) wrote something: {}",
                    status,
                    body
                );
            }
            Ok(())
        })
    });
    eprintln!(
        "hostile input: {CASES} requests, statuses {:?}",
        statuses.lock().unwrap()
    );
    runtime.block_on(async {
        if let Err(error) = result {
            panic!("{error}");
        }
        let (status, body) = app
            .post(
                "/credits/add",
                json!({ "user_id": "hostile_a", "amount": 1 }),
            )
            .await;
        assert_eq!(status, 200, "still serving: {body}");
        app.assert_verified().await;
        drop(app);
    });
}

/// A correctly signed event can still carry text Postgres cannot store: it is recorded as
/// rejected, credits nothing, and the partition keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_payment_naming_a_user_with_a_nul_character_is_rejected_not_stuck() {
    use hmac::{Hmac, Mac};
    let app = spawn_app().await;
    let secret = "whsec_nul_test";
    let (code, out) = app
        .cli(&[
            "app",
            "set-webhook-secret",
            "--app",
            &app.app_id.to_string(),
            "--provider",
            "stripe",
            "--secret",
            secret,
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let body = json!({ "id": "evt_nul", "object": "event", "type": "payment_intent.succeeded",
        "data": { "object": { "id": "pi_nul", "object": "payment_intent", "amount": 100,
                              "metadata": { "tally_user_id": "payer\u{0}", "tally_credits": "10" } } } })
    .to_string();
    let t = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));

    let (status, answer) = app
        .post_raw(
            &format!("/webhooks/stripe/{}", app.app_id),
            &body,
            &[
                ("content-type", "application/json"),
                ("stripe-signature", &signature),
            ],
        )
        .await;

    assert_eq!(status, 200, "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let event = loop {
        let (_, page) = app.get("/webhooks/events").await;
        if let Some(event) = page["events"].as_array().and_then(|events| events.first()) {
            break event.clone();
        }
        assert!(std::time::Instant::now() < deadline, "event never recorded");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(event["outcome"], "rejected", "{event}");
    assert_eq!(app.ledger_rows().await, 0);
    app.add("after_nul", 5).await;
    app.assert_verified().await;
}
