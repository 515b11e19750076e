//! The contract's bad-input table: each case is a 4xx naming the field, and nothing is written.

use serde_json::json;

use crate::harness::spawn_app;

#[tokio::test]
async fn bad_write_bodies_are_400_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let long = "x".repeat(1001);
    let many: serde_json::Map<String, serde_json::Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        ("/credits/add", json!({ "amount": 5 }), "user_id"),
        (
            "/credits/add",
            json!({ "user_id": "", "amount": 5 }),
            "user_id",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u".repeat(256), "amount": 5 }),
            "user_id",
        ),
        (
            "/credits/add",
            json!({ "user_id": 42, "amount": 5 }),
            "user_id",
        ),
        ("/credits/add", json!({ "user_id": "u1" }), "amount"),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": "5" }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5.5 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5.0 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 0 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": -5 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 1_000_000_000_001i64 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 18446744073709551615u64 }),
            "amount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "ammount": 5 }),
            "ammount",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "description": long }),
            "description",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "description": 7 }),
            "description",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "metadata": "x" }),
            "metadata",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "metadata": { "n": 1 } }),
            "metadata",
        ),
        (
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "metadata": many }),
            "metadata",
        ),
        (
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": -1 }),
            "amount",
        ),
        (
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": 1, "extra": true }),
            "extra",
        ),
        (
            "/credits/refund",
            json!({ "ledger_id": "not-a-uuid" }),
            "ledger_id",
        ),
        ("/credits/refund", json!({ "amount": 5 }), "ledger_id"),
        (
            "/credits/refund",
            json!({ "ledger_id": uuid::Uuid::now_v7(), "amount": 0 }),
            "amount",
        ),
        (
            "/credits/refund",
            json!({ "ledger_id": uuid::Uuid::now_v7(), "user_id": "u1" }),
            "user_id",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = app.post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
        assert_eq!(answer["success"], false);
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    assert_eq!(app.ledger_rows().await, 0);
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0, "no user was created");
}

#[tokio::test]
async fn malformed_json_wrong_type_and_oversized_bodies_are_rejected() {
    let app = spawn_app().await;
    let auth = format!("Bearer {}", app.api_key);
    let json_type = ("content-type", "application/json");
    let (status, body) = app
        .post_raw(
            "/credits/add",
            "{\"user_id\": ",
            &[("authorization", &auth), json_type],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    let (status, body) = app
        .post_raw(
            "/credits/add",
            "[1,2]",
            &[("authorization", &auth), json_type],
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = app
        .post_raw(
            "/credits/add",
            r#"{"user_id":"u1","amount":5}"#,
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"], "unsupported_media_type");
    let (status, _) = app
        .post_raw(
            "/credits/add",
            r#"{"user_id":"u1","amount":5}"#,
            &[("authorization", &auth), ("content-type", "text/plain")],
        )
        .await;
    assert_eq!(status, 415);

    let huge = format!(
        r#"{{"user_id":"u1","amount":5,"description":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, body) = app
        .post_raw(
            "/credits/add",
            &huge,
            &[("authorization", &auth), json_type],
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    assert_eq!(app.ledger_rows().await, 0);
}

#[tokio::test]
async fn bad_idempotency_key_is_400_naming_the_header() {
    let app = spawn_app().await;
    let long = "k".repeat(256);
    let (status, body) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5 }),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "Idempotency-Key");
    assert_eq!(app.ledger_rows().await, 0);
}

#[tokio::test]
async fn missing_malformed_unknown_and_revoked_keys_are_401() {
    let app = spawn_app().await;
    let body = r#"{"user_id":"u1","amount":5}"#;
    for auth in [
        None,
        Some("Basic abc"),
        Some("Bearer "),
        Some("Bearer tk_unknown"),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let (status, answer) = app.post_raw("/credits/add", body, &headers).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(answer["error"], "unauthorized");
    }

    let key = crate::harness::create_key(&app.pool, app.app_id).await;
    let (status, _) = app.get_as(&key, "/credits/balance?user_id=u1").await;
    assert_eq!(status, 200);
    let (code, out) = app.cli(&["key", "revoke", "--key", &key]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, json!({ "ok": true }));
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (status, _) = app.get_as(&key, "/credits/balance?user_id=u1").await;
    assert_eq!(status, 401, "a revoked key stops working within 5 s");
}
