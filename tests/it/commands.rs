use serde_json::json;

use crate::harness::{create_app, free_local_addr, spawn_app, spawn_app_with, Options, TestApp};

#[tokio::test]
async fn respond_async_answers_202_and_the_status_url_follows_the_command() {
    let app = spawn_app().await;
    let (status, accepted) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5 }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["success"], true);
    assert_eq!(accepted["status"], "accepted");
    let command_id = accepted["command_id"].as_str().unwrap();
    assert_eq!(accepted["status_url"], format!("/commands/{command_id}"));

    let applied = app.wait_applied(command_id).await;
    assert_eq!(applied["command_id"], command_id);
    assert_eq!(applied["status"], "applied");
    assert_eq!(applied["http_status"], 200);
    assert_eq!(applied["result"]["balance_after"], 5);
    assert_eq!(applied["result"]["success"], true);
}

#[tokio::test]
async fn a_rejected_async_command_carries_the_sync_answer() {
    let app = spawn_app().await;
    let (_, accepted) = app
        .post_with(
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": 5 }),
            &[("prefer", "respond-async")],
        )
        .await;
    let result = app
        .wait_applied(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(result["status"], "rejected");
    assert_eq!(result["http_status"], 402);
    assert_eq!(result["result"]["error"], "insufficient_credits");
}

#[tokio::test]
async fn a_command_is_pending_until_a_worker_applies_it() {
    let mut app = spawn_app_with(Options {
        workers: 0,
        sync_timeout_ms: 300,
        ..Options::default()
    })
    .await;
    // No worker: a synchronous call times out into 202, and stays pending.
    let (status, accepted) = app
        .post("/credits/add", json!({ "user_id": "u1", "amount": 9 }))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let (status, pending) = app.get(accepted["status_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["http_status"], serde_json::Value::Null);
    assert_eq!(pending["result"], serde_json::Value::Null);
    app.start_worker();
    let applied = app
        .wait_applied(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(applied["result"]["balance_after"], 9);
}

/// A `202` writes nothing: its id, signed by the ingress, is what says `pending`. Only the app
/// it was minted for can read it, and an id with one bit changed is unknown.
#[tokio::test]
async fn a_202_writes_no_row_and_its_signed_id_reads_pending_for_its_own_app_only() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let (status, one) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5 }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 202, "{one}");
    let (status, batch) = app
        .post_with(
            "/credits/batch",
            json!({ "operations": [
                { "op": "add", "user_id": "u2", "amount": 1 },
                { "op": "deduct", "user_id": "u3", "amount": 1 }
            ] }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let mut ids = vec![one["command_id"].as_str().unwrap().to_string()];
    for result in batch["results"].as_array().unwrap() {
        assert_eq!(result["status"], 202, "{batch}");
        ids.push(result["body"]["command_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 3, "{batch}");
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM command_receipts) + (SELECT count(*) FROM processed_commands)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0, "an accepted command wrote a row");

    let (_, other_key) = create_app(&app.pool, "other").await;
    for id in &ids {
        let (status, pending) = app.get(&format!("/commands/{id}")).await;
        assert_eq!((status, pending["status"].as_str()), (200, Some("pending")));
        let (status, body) = app.get_as(&other_key, &format!("/commands/{id}")).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let changed = uuid::Uuid::from_u128(uuid::Uuid::parse_str(id).unwrap().as_u128() ^ 1);
        let (status, _) = app.get(&format!("/commands/{changed}")).await;
        assert_eq!(status, 404, "{changed}");
    }
}

#[tokio::test]
async fn unknown_command_is_404_and_malformed_id_is_400() {
    let app = spawn_app().await;
    let (status, body) = app
        .get(&format!("/commands/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, body) = app.get("/commands/nope").await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "command_id");
}

#[tokio::test]
async fn a_command_the_broker_did_not_accept_is_503_and_changes_nothing() {
    let app = spawn_app().await;
    app.add("u1", 10).await;
    app.nats.stop();
    let (status, body) = app
        .post("/credits/add", json!({ "user_id": "u1", "amount": 5 }))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    // Fire-and-forget too: refused, and cancelled so that no copy can take effect.
    let (status, body) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 7 }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_commands WHERE status = 'cancelled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(cancelled, 2, "each refused command is cancelled");
    app.nats.restart();
    // Once the broker is back, writes flow again and the refused one never appears.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = app
            .post_with(
                "/credits/add",
                json!({ "user_id": "u1", "amount": 1 }),
                &[("idempotency-key", "after-restart")],
            )
            .await;
        eprintln!("after restart: {status} {body}");
        if status == 200 {
            assert_eq!(body["balance_after"], 11);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes never resumed: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.balance("u1").await, 11);
    app.assert_verified().await;
}

/// The worker's count of applied batches, from its metrics.
async fn batches_applied(app: &TestApp, metrics_addr: &str) -> u64 {
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    metrics
        .lines()
        .find(|line| line.starts_with("tally_worker_batches_total "))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A busy lane lets a batch of fire-and-forget commands wait for more (`TALLY_APPLY_LINGER_MS`),
/// and a command someone waits on ends the wait: both are applied in one transaction, and the
/// synchronous request is answered without waiting out the linger.
#[tokio::test]
async fn a_busy_lane_holds_fire_and_forget_commands_until_a_synchronous_one_comes() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let metrics_addr = free_local_addr();
    let _worker = app.spawn_worker_process_with(&[
        ("TALLY_WORKER_METRICS_ADDR", &metrics_addr),
        ("TALLY_APPLY_LINGER_MS", "1000"),
    ]);
    app.add("u1", 1_000).await;
    // One batch of 20 makes the lane busy (it was not: nothing waits on it).
    let operations: Vec<_> = (0..20)
        .map(|_| json!({ "op": "deduct", "user_id": "u1", "amount": 1 }))
        .collect();
    let (status, answer) = app
        .post_with(
            "/credits/batch",
            json!({ "operations": operations }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let last = answer["results"][19]["body"]["command_id"]
        .as_str()
        .unwrap();
    assert_eq!(app.wait_applied(last).await["status"], "applied");
    let before = batches_applied(&app, &metrics_addr).await;

    let (status, accepted) = app
        .post_with(
            "/credits/deduct",
            json!({ "user_id": "u2", "amount": 1 }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let (status, deducted) = app.deduct("u1", 1).await;
    assert_eq!(status, 200, "{deducted}");
    assert_eq!(deducted["balance_after"], 979);

    let lingered = app
        .wait_applied(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(lingered["http_status"], 402, "{lingered}");
    assert_eq!(
        batches_applied(&app, &metrics_addr).await,
        before + 1,
        "the fire-and-forget deduct waited for the synchronous one, and they were applied together"
    );
    app.assert_verified().await;
}
