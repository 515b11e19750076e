//! `tally verify` checks every lot: amount = remaining + draws − returns + expired.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{spawn_app, TestApp};

async fn post_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

async fn expiring_add(app: &TestApp, user: &str, amount: i64, seconds: i64) -> String {
    let body = post_ok(
        app,
        "/credits/add",
        json!({ "user_id": user, "amount": amount, "expires_in_seconds": seconds }),
    )
    .await;
    body["ledger_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_way_credits_leave_a_lot_is_accounted_for_and_a_corrupt_lot_is_reported() {
    // Arrange: lots drawn by deducts, holds (captured and released), refunds of a deduct and
    // of a lot's own add (which spills into the next lot), and an expiry.
    let app = spawn_app().await;
    app.add("u1", 5).await;
    let sooner = expiring_add(&app, "u1", 10, 3600).await;
    let later = expiring_add(&app, "u1", 10, 7200).await;
    let (status, deducted) = app.deduct("u1", 4).await;
    assert_eq!(status, 200, "{deducted}");
    post_ok(
        &app,
        "/credits/refund",
        json!({ "ledger_id": deducted["ledger_id"], "amount": 1 }),
    )
    .await;
    let held = post_ok(
        &app,
        "/credits/hold",
        json!({ "user_id": "u1", "amount": 6 }),
    )
    .await;
    post_ok(
        &app,
        "/credits/capture",
        json!({ "hold_id": held["hold_id"], "amount": 2 }),
    )
    .await;
    let held = post_ok(
        &app,
        "/credits/hold",
        json!({ "user_id": "u1", "amount": 3 }),
    )
    .await;
    post_ok(
        &app,
        "/credits/release",
        json!({ "hold_id": held["hold_id"] }),
    )
    .await;
    post_ok(
        &app,
        "/credits/refund",
        json!({ "ledger_id": sooner, "amount": 9 }),
    )
    .await;
    expiring_add(&app, "u2", 7, 1).await;
    app.deduct("u2", 3).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.balance("u2").await != 0 {
        assert!(Instant::now() < deadline, "u2's lot never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert: every lot adds up, including the one a refund spilled into and the expired one.
    app.assert_verified().await;
    let (_, report) = app.cli(&["verify"]).await;
    assert_eq!(report["ok"], true, "{report}");
    let spilled: i64 = sqlx::query_scalar("SELECT remaining FROM lots WHERE id = $1::text::uuid")
        .bind(&later)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        spilled < 10,
        "the refund of the sooner lot drew from the later one"
    );

    // Act: a lot loses a credit that went nowhere.
    sqlx::query("UPDATE lots SET remaining = remaining - 1 WHERE id = $1::text::uuid")
        .bind(&later)
        .execute(&app.pool)
        .await
        .unwrap();

    // Assert: verify fails, naming the lot and its figures.
    let (code, report) = app.cli(&["verify"]).await;
    assert_eq!(code, 1, "{report}");
    let violations = report["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{report}");
    assert_eq!(violations[0]["check"], "lot_conservation");
    let detail = &violations[0]["detail"];
    assert_eq!(detail["lot_id"], later.as_str());
    assert_eq!(detail["amount"], 10);
    assert!(
        detail["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("lot {later}: amount 10 <> remaining")),
        "{detail}"
    );
}
