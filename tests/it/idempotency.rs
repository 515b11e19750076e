use serde_json::json;

use crate::harness::spawn_app;

#[tokio::test]
async fn same_key_and_body_replays_the_first_response_exactly() {
    let app = spawn_app().await;
    let body = json!({ "user_id": "u1", "amount": 100, "metadata": { "a": "1", "b": "2" } });
    let (status, first) = app
        .post_with("/credits/add", body, &[("idempotency-key", "k1")])
        .await;
    assert_eq!(status, 200);
    // Same JSON value, other key order and whitespace.
    let auth = format!("Bearer {}", app.api_key);
    let (status, second) = app
        .post_raw(
            "/credits/add",
            r#"{ "metadata": {"b":"2","a":"1"},   "amount": 100, "user_id": "u1" }"#,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("idempotency-key", "k1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(first, second);
    assert_eq!(app.balance("u1").await, 100);
}

#[tokio::test]
async fn a_replayed_402_stays_402_after_a_top_up() {
    let app = spawn_app().await;
    let body = json!({ "user_id": "u1", "amount": 50 });
    let (status, first) = app
        .post_with(
            "/credits/deduct",
            body.clone(),
            &[("idempotency-key", "d1")],
        )
        .await;
    assert_eq!(status, 402);
    app.add("u1", 100).await;
    let (status, second) = app
        .post_with("/credits/deduct", body, &[("idempotency-key", "d1")])
        .await;
    assert_eq!(status, 402);
    assert_eq!(first, second);
    assert_eq!(app.balance("u1").await, 100);
}

#[tokio::test]
async fn same_key_with_another_body_or_path_is_a_conflict() {
    let app = spawn_app().await;
    app.post_with(
        "/credits/add",
        json!({ "user_id": "u1", "amount": 100 }),
        &[("idempotency-key", "k")],
    )
    .await;
    let (status, body) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 101 }),
            &[("idempotency-key", "k")],
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "idempotency_conflict");
    let (status, body) = app
        .post_with(
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": 100 }),
            &[("idempotency-key", "k")],
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "idempotency_conflict");
    assert_eq!(app.balance("u1").await, 100);
}

#[tokio::test]
async fn keys_are_scoped_to_the_app() {
    let app = spawn_app().await;
    let (_, other_key) = crate::harness::create_app(&app.pool, "other").await;
    app.post_with(
        "/credits/add",
        json!({ "user_id": "u1", "amount": 100 }),
        &[("idempotency-key", "shared")],
    )
    .await;
    let response = app
        .http
        .post(app.url("/credits/add"))
        .bearer_auth(&other_key)
        .header("content-type", "application/json")
        .header("idempotency-key", "shared")
        .body(json!({ "user_id": "u1", "amount": 7 }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, balance) = app.get_as(&other_key, "/credits/balance?user_id=u1").await;
    assert_eq!(balance["balance"], 7);
}

#[tokio::test]
async fn concurrent_duplicates_take_effect_once() {
    let app = spawn_app().await;
    app.add("u1", 1000).await;
    let requests = (0..20).map(|_| {
        app.post_with(
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": 10 }),
            &[("idempotency-key", "same")],
        )
    });
    let answers = futures::future::join_all(requests).await;
    let ledger_ids: std::collections::HashSet<String> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body["ledger_id"].as_str().unwrap().to_string())
        .collect();
    for (status, body) in &answers {
        assert!(
            *status == 200 || (*status == 409 && body["error"] == "idempotency_in_progress"),
            "{status} {body}"
        );
    }
    assert_eq!(ledger_ids.len(), 1, "every replay names the same entry");
    assert_eq!(app.balance("u1").await, 990);
    app.assert_verified().await;
}
