//! Holds (reserve → capture / release / expire) and expiring credit lots, with two workers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{create_app, spawn_app_with, Options, TestApp};

async fn two_workers() -> TestApp {
    spawn_app_with(Options {
        workers: 2,
        ..Options::default()
    })
    .await
}

async fn hold(app: &TestApp, user: &str, amount: i64, extra: Value) -> (u16, Value) {
    let mut body = json!({ "user_id": user, "amount": amount });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.post("/credits/hold", body).await
}

async fn balance_body(app: &TestApp, user: &str) -> Value {
    let (status, body) = app.get(&format!("/credits/balance?user_id={user}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn history(app: &TestApp, user: &str) -> Vec<Value> {
    let (_, body) = app
        .get(&format!("/credits/history?user_id={user}&limit=200"))
        .await;
    body["entries"].as_array().unwrap().clone()
}

/// Polls until `check` holds for the user's balance body.
async fn wait_balance(
    app: &TestApp,
    user: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = balance_body(app, user).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hold_then_capture_less_than_held_charges_the_cost_and_releases_the_rest() {
    let app = two_workers().await;
    app.add("u1", 100).await;
    let (status, held) = hold(&app, "u1", 60, json!({ "description": "generation" })).await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["success"], true);
    assert_eq!(held["amount"], 60);
    assert_eq!(held["balance"], 100);
    assert_eq!(held["available"], 40);
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(held["expires_at"].as_str().unwrap()).unwrap();
    let lifetime = expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        (890..=900).contains(&lifetime.num_seconds()),
        "default 900 s, got {lifetime}"
    );
    let hold_id = held["hold_id"].as_str().unwrap();

    let body = balance_body(&app, "u1").await;
    assert_eq!(
        (
            body["balance"].as_i64(),
            body["held"].as_i64(),
            body["available"].as_i64()
        ),
        (Some(100), Some(60), Some(40))
    );
    let (status, body) = app.deduct("u1", 41).await;
    assert_eq!(status, 402, "a deduct sees only what is available: {body}");
    assert_eq!(body["available"], 40);

    let (status, captured) = app
        .post(
            "/credits/capture",
            json!({ "hold_id": hold_id, "amount": 25 }),
        )
        .await;
    assert_eq!(status, 200, "{captured}");
    assert_eq!(captured["captured"], 25);
    assert_eq!(captured["released"], 35);
    assert_eq!(captured["balance_after"], 75);
    assert_eq!(captured["hold_id"], hold_id);
    let entries = history(&app, "u1").await;
    assert_eq!(entries[0]["type"], "deduct");
    assert_eq!(entries[0]["amount"], -25);
    assert_eq!(entries[0]["hold_id"], hold_id);
    assert_eq!(entries[0]["ledger_id"], captured["ledger_id"]);
    assert_eq!(entries.len(), 2, "a hold itself writes no entry");
    let body = balance_body(&app, "u1").await;
    assert_eq!(
        (
            body["balance"].as_i64(),
            body["held"].as_i64(),
            body["available"].as_i64()
        ),
        (Some(75), Some(0), Some(75))
    );

    let (status, body) = app
        .post("/credits/release", json!({ "hold_id": hold_id }))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "hold_not_active");
    app.assert_verified().await;
}

#[tokio::test]
async fn hold_then_release_gives_everything_back() {
    let app = two_workers().await;
    app.add("u1", 50).await;
    let (_, held) = hold(&app, "u1", 50, json!({ "expires_in_seconds": 60 })).await;
    let hold_id = held["hold_id"].as_str().unwrap();
    let (status, released) = app
        .post("/credits/release", json!({ "hold_id": hold_id }))
        .await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["released"], 50);
    assert_eq!(released["balance"], 50);
    assert_eq!(released["available"], 50);
    let (status, body) = app
        .post("/credits/capture", json!({ "hold_id": hold_id }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("hold_not_active"))
    );
    let (_, listed) = app.get("/credits/holds?user_id=u1").await;
    assert_eq!(listed["holds"][0]["status"], "released");
    assert_eq!(listed["holds"][0]["captured"], 0);
}

#[tokio::test]
async fn concurrent_holds_cannot_together_exceed_the_balance() {
    let app = two_workers().await;
    app.add("u1", 100).await;
    let holds = (0..20).map(|_| hold(&app, "u1", 10, json!({})));
    let answers = futures::future::join_all(holds).await;
    let ok = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused = answers
        .iter()
        .filter(|(status, body)| *status == 402 && body["error"] == "insufficient_credits")
        .count();
    assert_eq!((ok, refused), (10, 10));
    let body = balance_body(&app, "u1").await;
    assert_eq!(
        (body["held"].as_i64(), body["available"].as_i64()),
        (Some(100), Some(0))
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn holds_are_validated_and_scoped_to_their_app() {
    let app = two_workers().await;
    app.add("u1", 100).await;
    let (status, body) = hold(&app, "u1", 10, json!({ "expires_in_seconds": 86_401 })).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("expires_in_seconds"))
    );
    let (status, body) = hold(&app, "u1", 0, json!({})).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("amount")));
    let (_, held) = hold(&app, "u1", 10, json!({})).await;
    let hold_id = held["hold_id"].as_str().unwrap();
    let (status, body) = app
        .post(
            "/credits/capture",
            json!({ "hold_id": hold_id, "amount": 11 }),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("amount")),
        "{body}"
    );
    let (status, body) = app
        .post("/credits/capture", json!({ "hold_id": "nope" }))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("hold_id")));
    let (status, _) = app
        .post(
            "/credits/release",
            json!({ "hold_id": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(status, 404);

    let (_, other_key) = create_app(&app.pool, "other").await;
    let response = app
        .http
        .post(app.url("/credits/capture"))
        .bearer_auth(&other_key)
        .header("content-type", "application/json")
        .body(json!({ "hold_id": hold_id }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "another app's hold is 404");
    let (status, body) = app
        .post("/credits/capture", json!({ "hold_id": hold_id }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["captured"], 10);
}

#[tokio::test]
async fn an_uncaptured_hold_expires_once_across_a_worker_restart() {
    let mut app = two_workers().await;
    app.add("u1", 100).await;
    let (_, held) = hold(&app, "u1", 30, json!({ "expires_in_seconds": 1 })).await;
    let hold_id = held["hold_id"].as_str().unwrap().to_string();
    // Stop every worker before the hold expires; start new ones after.
    for worker in std::mem::take(&mut app.workers) {
        worker.stop().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        balance_body(&app, "u1").await["held"],
        30,
        "nobody released it yet"
    );
    app.start_worker();
    app.start_worker();
    let started = Instant::now();
    wait_balance(&app, "u1", "the expired hold is released", |b| {
        b["held"] == 0 && b["available"] == 100
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, listed) = app.get("/credits/holds?user_id=u1&status=expired").await;
    assert_eq!(listed["holds"][0]["hold_id"], hold_id.as_str());
    let (status, body) = app
        .post("/credits/capture", json!({ "hold_id": hold_id }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("hold_not_active"))
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired: i64 = sqlx::query_scalar("SELECT count(*) FROM holds WHERE status = 'expired'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    app.assert_verified().await;
}

#[tokio::test]
async fn expiring_credits_are_spent_first_and_leave_with_an_expire_entry_on_time() {
    let app = two_workers().await;
    app.add("u1", 10).await;
    let (status, later) = app
        .post(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 10, "expires_in_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, 200, "{later}");
    let (status, soon) = app
        .post(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 10, "expires_in_seconds": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{soon}");
    let body = balance_body(&app, "u1").await;
    assert_eq!(body["balance"], 30);
    assert_eq!(body["next_expiry"]["amount"], 10);

    app.deduct("u1", 4).await;
    let body = balance_body(&app, "u1").await;
    assert_eq!(
        body["next_expiry"]["amount"], 6,
        "the soonest lot is burned first: {body}"
    );

    // The soonest lot's 6 credits leave at its expiry, whether or not anything reads the user.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let body = wait_balance(&app, "u1", "the lot expires", |b| b["balance"] == 20).await;
    assert_eq!(body["next_expiry"]["amount"], 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    let expire = loop {
        let entries = history(&app, "u1").await;
        if let Some(entry) = entries.iter().find(|e| e["type"] == "expire") {
            break entry.clone();
        }
        assert!(Instant::now() < deadline, "no expire entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(expire["amount"], -6);
    assert_eq!(expire["source"], "system");
    assert_eq!(expire["lot_id"], soon["ledger_id"]);
    let soon_entry = history(&app, "u1")
        .await
        .into_iter()
        .find(|e| e["ledger_id"] == soon["ledger_id"])
        .unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(soon_entry["expires_at"].as_str().unwrap()).unwrap();
    let written_at =
        chrono::DateTime::parse_from_rfc3339(expire["created_at"].as_str().unwrap()).unwrap();
    let lateness = written_at - expires_at;
    assert!(
        lateness >= chrono::Duration::zero() && lateness < chrono::Duration::seconds(2),
        "written {lateness} after expiry"
    );

    // The rest burns: the later lot first, the never-expiring credits last.
    app.deduct("u1", 15).await;
    let body = balance_body(&app, "u1").await;
    assert_eq!(body["balance"], 5);
    assert_eq!(body["next_expiry"], Value::Null);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_refund_into_an_expired_lot_expires_again_at_once() {
    let app = two_workers().await;
    app.post(
        "/credits/add",
        json!({ "user_id": "u1", "amount": 10, "expires_in_seconds": 1 }),
    )
    .await;
    let (_, deducted) = app.deduct("u1", 4).await;
    wait_balance(&app, "u1", "the lot expires", |b| b["balance"] == 0).await;
    let (status, refunded) = app
        .post(
            "/credits/refund",
            json!({ "ledger_id": deducted["ledger_id"] }),
        )
        .await;
    assert_eq!(status, 200, "{refunded}");
    let entries = history(&app, "u1").await;
    let kinds: Vec<(&str, i64)> = entries
        .iter()
        .take(2)
        .map(|e| (e["type"].as_str().unwrap(), e["amount"].as_i64().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("expire", -4), ("refund", 4)]);
    assert_eq!(balance_body(&app, "u1").await["balance"], 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn expiry_input_is_validated() {
    let app = two_workers().await;
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let future = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let cases = [
        (
            json!({ "user_id": "u", "amount": 1, "expires_at": past }),
            "expires_at",
        ),
        (
            json!({ "user_id": "u", "amount": 1, "expires_at": "tomorrow" }),
            "expires_at",
        ),
        (
            json!({ "user_id": "u", "amount": 1, "expires_at": future, "expires_in_seconds": 5 }),
            "expires_at",
        ),
        (
            json!({ "user_id": "u", "amount": 1, "expires_in_seconds": 0 }),
            "expires_in_seconds",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/credits/add", body.clone()).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{body}: {answer}"
        );
    }
    let (status, body) = app
        .post(
            "/credits/add",
            json!({ "user_id": "u", "amount": 7, "expires_at": future }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let entries = history(&app, "u").await;
    assert!(entries[0]["expires_at"].is_string());
    assert_eq!(entries[0]["lot_id"], entries[0]["ledger_id"]);
}

#[tokio::test]
async fn holds_list_pages_and_filters_by_status() {
    let app = two_workers().await;
    app.add("u1", 100).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, held) = hold(&app, "u1", 1, json!({})).await;
        ids.push(held["hold_id"].as_str().unwrap().to_string());
    }
    app.post("/credits/release", json!({ "hold_id": ids[0] }))
        .await;
    let (_, page) = app.get("/credits/holds?user_id=u1&limit=2").await;
    let mut seen: Vec<String> = page["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hold_id"].as_str().unwrap().to_string())
        .collect();
    let mut cursor = page["next_cursor"].as_str().map(str::to_string);
    while let Some(next) = cursor {
        let (status, page) = app
            .get(&format!("/credits/holds?user_id=u1&limit=2&cursor={next}"))
            .await;
        assert_eq!(status, 200);
        seen.extend(
            page["holds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["hold_id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let (_, active) = app.get("/credits/holds?user_id=u1&status=active").await;
    assert_eq!(active["holds"].as_array().unwrap().len(), 4);
    let first = &active["holds"][0];
    for field in [
        "hold_id",
        "amount",
        "captured",
        "status",
        "expires_at",
        "created_at",
    ] {
        assert!(!first[field].is_null(), "{field} missing: {first}");
    }
    let (status, body) = app.get("/credits/holds?user_id=u1&status=bogus").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("status")));
}
