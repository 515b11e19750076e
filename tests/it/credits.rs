use serde_json::json;

use crate::harness::{free_local_addr, spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn add_answers_the_new_balance_and_ledger_id() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/credits/add", json!({ "user_id": "user_abc123", "amount": 500, "description": "Starter pack purchase", "metadata": {"order": "42"} }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["user_id"], "user_abc123");
    assert_eq!(body["balance_after"], 500);
    assert!(uuid::Uuid::parse_str(body["ledger_id"].as_str().unwrap()).is_ok());
    assert_eq!(body["credit_type"], "credits");
    assert_eq!(body.as_object().unwrap().len(), 5, "exact shape: {body}");
}

#[tokio::test]
async fn deduct_spends_and_is_rejected_with_402_when_balance_is_insufficient() {
    let app = spawn_app().await;
    app.add("u1", 500).await;
    let (status, body) = app.deduct("u1", 50).await;
    assert_eq!(status, 200);
    assert_eq!(body["balance_after"], 450);

    let rows_before = app.ledger_rows().await;
    let (status, body) = app.deduct("u1", 451).await;
    assert_eq!(status, 402);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "insufficient_credits");
    assert_eq!(body["balance"], 450);
    assert_eq!(body["message"], "u1 has 450 credits, 451 requested");
    assert_eq!(
        app.ledger_rows().await,
        rows_before,
        "a rejection writes nothing"
    );
    assert_eq!(app.balance("u1").await, 450);
}

#[tokio::test]
async fn deduct_from_a_new_user_is_402_with_balance_zero() {
    let app = spawn_app().await;
    let (status, body) = app.deduct("nobody", 1).await;
    assert_eq!(status, 402);
    assert_eq!(body["balance"], 0);
}

#[tokio::test]
async fn refund_of_a_deduct_gives_credits_back_until_nothing_is_left() {
    let app = spawn_app().await;
    app.add("u1", 100).await;
    let (_, deducted) = app.deduct("u1", 30).await;
    let ledger_id = deducted["ledger_id"].as_str().unwrap();

    let (status, body) = app
        .post(
            "/credits/refund",
            json!({ "ledger_id": ledger_id, "amount": 20, "description": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance_after"], 90);
    assert_eq!(body["refunded_ledger_id"], ledger_id);
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["credit_type"], "credits");
    assert_eq!(body.as_object().unwrap().len(), 6);

    let (status, body) = app
        .post(
            "/credits/refund",
            json!({ "ledger_id": ledger_id, "amount": 11 }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["message"].as_str().unwrap().starts_with("amount:"),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("only 10"),
        "{body}"
    );

    let (status, body) = app
        .post("/credits/refund", json!({ "ledger_id": ledger_id }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["balance_after"], 100);

    let (status, body) = app
        .post("/credits/refund", json!({ "ledger_id": ledger_id }))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "already_refunded");

    let refund_id = {
        let (_, history) = app.get("/credits/history?user_id=u1&limit=1").await;
        history["entries"][0]["ledger_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, body) = app
        .post("/credits/refund", json!({ "ledger_id": refund_id }))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "not_refundable");
    app.assert_verified().await;
}

#[tokio::test]
async fn refund_of_an_add_takes_credits_away_only_while_the_user_has_them() {
    let app = spawn_app().await;
    let added = app.add("u1", 100).await;
    app.deduct("u1", 70).await;
    let ledger_id = added["ledger_id"].as_str().unwrap();
    let (status, body) = app
        .post("/credits/refund", json!({ "ledger_id": ledger_id }))
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"], "insufficient_credits");
    let (status, body) = app
        .post(
            "/credits/refund",
            json!({ "ledger_id": ledger_id, "amount": 30 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance_after"], 0);
}

#[tokio::test]
async fn refund_of_an_unknown_or_malformed_ledger_id_is_404_or_400() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/credits/refund",
            json!({ "ledger_id": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    let (status, body) = app
        .post("/credits/refund", json!({ "ledger_id": "abc" }))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "ledger_id");
}

#[tokio::test]
async fn add_that_would_overflow_the_balance_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    // 9,223,372 adds of 10^12 would be needed; seed the balance close to the limit instead.
    app.add("rich", 1).await;
    sqlx::query("UPDATE accounts SET balance = 9223372036854775000 WHERE user_id = 'rich'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app
        .post("/credits/add", json!({ "user_id": "rich", "amount": 1000 }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "balance_overflow");
    assert_eq!(app.balance("rich").await, 9_223_372_036_854_775_000);
}

#[tokio::test]
async fn a_deduct_decided_on_a_remembered_balance_that_changed_is_decided_again() {
    let app = spawn_app().await;
    app.add("u1", 100).await;
    assert_eq!(app.deduct("u1", 10).await.0, 200);
    // The worker remembers a balance of 90; change the row behind its back.
    sqlx::query("UPDATE accounts SET balance = 5 WHERE user_id = 'u1'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app.deduct("u1", 10).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["balance"], 5);
    assert_eq!(app.balance("u1").await, 5);
}

#[tokio::test]
async fn plain_commands_of_a_known_user_take_the_fast_path() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let metrics_addr = free_local_addr();
    let _worker = app.spawn_worker_process_with(&[("TALLY_WORKER_METRICS_ADDR", &metrics_addr)]);
    app.add("u1", 100).await;
    for expected in [90, 80, 70] {
        let (status, body) = app.deduct("u1", 10).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["balance_after"], expected);
    }
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    let fast: u64 = metrics
        .lines()
        .find(|line| line.starts_with("tally_worker_batch_paths_total{path=\"fast\"}"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        fast, 3,
        "the deducts after the first touch skip every read:\n{metrics}"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn balance_of_an_unknown_user_is_zero_and_creates_nothing() {
    let app = spawn_app().await;
    let (status, body) = app.get("/credits/balance?user_id=ghost").await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "ghost");
    assert_eq!(body["balance"], 0);
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(accounts, 0);
    let (status, body) = app.get("/credits/balance").await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "user_id");
}

/// Concurrent reads are looked up together; each must get its own account's figures, apps kept
/// apart, unknown users zero.
#[tokio::test]
async fn concurrent_balance_reads_each_answer_their_own_account() {
    let app = spawn_app().await;
    let (_, other_key) = crate::harness::create_app(&app.pool, "other").await;
    for i in 1..=20 {
        app.add(&format!("u{i}"), i).await;
        let (status, body) = app
            .post_as(
                &other_key,
                "/credits/add",
                json!({ "user_id": format!("u{i}"), "amount": 1000 + i }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let reads = (0..400).map(|n| {
        let (key, offset) = if n % 2 == 0 {
            (app.api_key.clone(), 0)
        } else {
            (other_key.clone(), 1000)
        };
        let app = &app;
        async move {
            // Users u1..u20 exist; u21..u25 do not.
            let i = n % 25 + 1;
            let (status, body) = app
                .get_as(&key, &format!("/credits/balance?user_id=u{i}"))
                .await;
            assert_eq!(status, 200, "{body}");
            let expected = if i <= 20 { offset + i } else { 0 };
            assert_eq!(body["user_id"], format!("u{i}"));
            assert_eq!(body["balance"], expected, "read {n}: {body}");
            assert_eq!(body["available"], expected, "read {n}: {body}");
        }
    });
    futures::future::join_all(reads).await;
}

#[tokio::test]
async fn history_lists_entries_newest_first_with_exact_fields() {
    let app = spawn_app().await;
    app.post(
        "/credits/add",
        json!({ "user_id": "u1", "amount": 500, "metadata": {"order": "42"} }),
    )
    .await;
    app.post(
        "/credits/deduct",
        json!({ "user_id": "u1", "amount": 50, "description": "AI generation" }),
    )
    .await;
    let (status, body) = app.get("/credits/history?user_id=u1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["next_cursor"], serde_json::Value::Null);
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["type"], "deduct");
    assert_eq!(entries[0]["amount"], -50);
    assert_eq!(entries[0]["balance_after"], 450);
    assert_eq!(entries[0]["description"], "AI generation");
    assert_eq!(entries[0]["metadata"], json!({}));
    assert_eq!(entries[0]["source"], "api");
    assert_eq!(entries[0]["refunded_ledger_id"], serde_json::Value::Null);
    assert!(
        chrono::DateTime::parse_from_rfc3339(entries[0]["created_at"].as_str().unwrap()).is_ok()
    );
    assert_eq!(entries[1]["type"], "add");
    assert_eq!(entries[1]["amount"], 500);
    assert_eq!(entries[1]["description"], serde_json::Value::Null);
    assert_eq!(entries[1]["metadata"], json!({"order": "42"}));
}

#[tokio::test]
async fn history_pages_with_an_opaque_cursor_and_rejects_foreign_ones() {
    let app = spawn_app().await;
    for amount in 1..=5 {
        app.add("u1", amount).await;
    }
    let (_, page1) = app.get("/credits/history?user_id=u1&limit=2").await;
    let amounts: Vec<i64> = page1["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![5, 4]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!(
            "/credits/history?user_id=u1&limit=2&cursor={cursor}"
        ))
        .await;
    let cursor = page2["next_cursor"].as_str().unwrap();
    let (_, page3) = app
        .get(&format!(
            "/credits/history?user_id=u1&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(page3["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page3["next_cursor"], serde_json::Value::Null);

    for bad in ["garbage", "aDE6eA", "%%%"] {
        let (status, body) = app
            .get(&format!("/credits/history?user_id=u1&cursor={bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["field"], "cursor");
    }
    for bad in ["0", "201", "x"] {
        let (status, body) = app
            .get(&format!("/credits/history?user_id=u1&limit={bad}"))
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["field"], "limit");
    }
}

#[tokio::test]
async fn history_paging_while_writes_happen_never_skips_or_repeats() {
    let app = spawn_app().await;
    for _ in 0..30 {
        app.post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 1 }),
            &[("prefer", "respond-async")],
        )
        .await;
    }
    app.wait_processed(30, std::time::Duration::from_secs(30))
        .await;
    let (_, first) = app.get("/credits/history?user_id=u1&limit=7").await;
    let existing: Vec<String> = {
        let (_, all) = app.get("/credits/history?user_id=u1&limit=200").await;
        all["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ledger_id"].as_str().unwrap().to_string())
            .collect()
    };
    // Keep writing while paging through.
    let writer = {
        let http = app.http.clone();
        let url = app.url("/credits/add");
        let key = app.api_key.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                let _ = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(r#"{"user_id":"u1","amount":1}"#)
                    .send()
                    .await;
            }
        })
    };
    let mut seen: Vec<String> = first["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ledger_id"].as_str().unwrap().to_string())
        .collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_string);
    while let Some(next) = cursor {
        let (status, page) = app
            .get(&format!(
                "/credits/history?user_id=u1&limit=7&cursor={next}"
            ))
            .await;
        assert_eq!(status, 200);
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["ledger_id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    writer.await.unwrap();
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was repeated");
    assert_eq!(
        seen, existing,
        "every entry that existed is seen once, newest first"
    );
}
