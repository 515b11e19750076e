//! `POST /credits/batch`: many operations in one call, each as if sent alone, or one user's
//! adds, deducts and holds all or none.

use serde_json::{json, Value};

use crate::harness::{spawn_app, TestApp};

async fn batch(app: &TestApp, body: Value) -> (u16, Value) {
    app.post("/credits/batch", body).await
}

fn statuses(answer: &Value) -> Vec<i64> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn each_operation_is_applied_as_if_sent_alone_in_the_order_given() {
    let app = spawn_app().await;
    let earlier = app.add("ann", 50).await;
    let (_, held) = app
        .post("/credits/hold", json!({ "user_id": "ann", "amount": 10 }))
        .await;
    let (_, other_hold) = app
        .post("/credits/hold", json!({ "user_id": "ann", "amount": 5 }))
        .await;

    let (status, answer) = batch(
        &app,
        json!({ "operations": [
            { "op": "add", "user_id": "bob", "amount": 30, "credit_type": "image" },
            { "op": "deduct", "user_id": "bob", "amount": 20, "credit_type": "image" },
            { "op": "deduct", "user_id": "bob", "amount": 20, "credit_type": "image" },
            { "op": "refund", "ledger_id": earlier["ledger_id"], "amount": 5 },
            { "op": "capture", "hold_id": held["hold_id"], "amount": 4 },
            { "op": "release", "hold_id": other_hold["hold_id"] },
            { "op": "hold", "user_id": "bob", "amount": 10, "credit_type": "image" },
            { "op": "refund", "ledger_id": "00000000-0000-7000-8000-000000000000" }
        ] }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), [200, 200, 402, 200, 200, 200, 200, 404]);
    let results = answer["results"].as_array().unwrap();
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], index);
    }
    assert_eq!(
        results[1]["body"]["balance_after"], 10,
        "in order, per user"
    );
    assert_eq!(results[2]["body"]["error"], "insufficient_credits");
    assert_eq!(
        results[3]["body"]["refunded_ledger_id"],
        earlier["ledger_id"]
    );
    assert_eq!(results[3]["body"]["balance_after"], 45);
    assert_eq!(results[4]["body"]["captured"], 4);
    assert_eq!(results[5]["body"]["released"], 5);
    assert_eq!(results[6]["body"]["available"], 0);
    assert_eq!(results[7]["body"]["error"], "not_found");

    // Each answer is the command's own: readable at /commands/{id} like any command's.
    let (_, history) = app.get("/credits/history?user_id=bob").await;
    let command_id: String =
        sqlx::query_scalar("SELECT command_id::text FROM ledger_entries WHERE id = $1::text::uuid")
            .bind(results[1]["body"]["ledger_id"].as_str().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let (_, status) = app.get(&format!("/commands/{command_id}")).await;
    assert_eq!(status["result"], results[1]["body"]);
    assert_eq!(history["entries"].as_array().unwrap().len(), 2);
    assert_eq!(app.balance("ann").await, 41);
    app.assert_verified().await;
}

#[tokio::test]
async fn an_invalid_operation_refuses_the_whole_batch_naming_it_and_sends_nothing() {
    let app = spawn_app().await;
    let ok = json!({ "op": "add", "user_id": "u", "amount": 1 });
    let cases = [
        (
            json!({ "operations": [ok, ok, { "op": "deduct", "user_id": "u", "amount": 0 }] }),
            "operations[2].amount",
        ),
        (
            json!({ "operations": [ok, { "op": "transfer", "user_id": "u" }] }),
            "operations[1].op",
        ),
        (
            json!({ "operations": [{ "user_id": "u", "amount": 1 }] }),
            "operations[0].op",
        ),
        (
            json!({ "operations": [ok, { "op": "add", "user_id": "u", "amount": 1, "ammount": 2 }] }),
            "operations[1].ammount",
        ),
        (
            json!({ "operations": [ok, { "op": "refund", "ledger_id": "nope" }] }),
            "operations[1].ledger_id",
        ),
        (json!({ "operations": [ok, "add"] }), "operations[1]"),
        (
            json!({ "operations": [{ "op": "add", "user_id": "u", "amount": 1, "idempotency_key": "" }] }),
            "operations[0].idempotency_key",
        ),
        (json!({ "operations": [] }), "operations"),
        (
            json!({ "operations": vec![ok.clone(); 1001] }),
            "operations",
        ),
        (
            json!({ "operations": [ok], "atomically": true }),
            "atomically",
        ),
        (json!({ "operations": [ok], "atomic": "yes" }), "atomic"),
        (
            json!({ "atomic": true, "operations": [ok, { "op": "refund", "ledger_id": "00000000-0000-7000-8000-000000000000" }] }),
            "operations[1].op",
        ),
        (
            json!({ "atomic": true, "operations": [ok, { "op": "add", "user_id": "v", "amount": 1 }] }),
            "operations[1].user_id",
        ),
        (
            json!({ "atomic": true, "operations": [{ "op": "add", "user_id": "u", "amount": 1, "idempotency_key": "k" }] }),
            "operations[0].idempotency_key",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = batch(&app, body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
        assert_eq!(answer["field"], field, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
    // Bodies up to 1 MiB are read (a single request's limit is 64 KiB); beyond, 413.
    let description = "x".repeat(900);
    let big: Vec<Value> = (0..200)
        .map(|i| json!({ "op": "add", "user_id": format!("u{i}"), "amount": 1, "description": description }))
        .collect();
    let (status, answer) = batch(&app, json!({ "operations": big })).await;
    assert_eq!(status, 200, "a 180 KiB batch is read: {answer}");
    let longest = "x".repeat(1000);
    let huge: Vec<Value> = (0..1000)
        .map(|i| json!({ "op": "add", "user_id": format!("u{i}"), "amount": 1, "description": longest }))
        .collect();
    let rows = app.ledger_rows().await;
    let (status, answer) = batch(&app, json!({ "operations": huge })).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        app.ledger_rows().await,
        rows,
        "nothing of a refused batch is written"
    );
}

#[tokio::test]
async fn an_operations_key_works_like_that_requests_idempotency_key() {
    let app = spawn_app().await;
    app.add("u", 100).await;
    let deduct =
        json!({ "op": "deduct", "user_id": "u", "amount": 7, "idempotency_key": "order-1" });
    let (_, first) = batch(&app, json!({ "operations": [deduct] })).await;
    assert_eq!(first["results"][0]["status"], 200, "{first}");
    let (_, again) = batch(&app, json!({ "operations": [deduct, deduct] })).await;
    assert_eq!(again["results"][0]["body"], first["results"][0]["body"]);
    assert_eq!(again["results"][1]["body"], first["results"][0]["body"]);

    // The same key and body sent alone is the same request: replayed.
    let (status, alone) = app
        .post_with(
            "/credits/deduct",
            json!({ "user_id": "u", "amount": 7 }),
            &[("idempotency-key", "order-1")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(alone, first["results"][0]["body"]);
    // A key first used alone is replayed inside a batch too.
    let (_, single) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "u", "amount": 3 }),
            &[("idempotency-key", "top-up-9")],
        )
        .await;
    let (_, mixed) = batch(
        &app,
        json!({ "operations": [
            { "op": "add", "user_id": "u", "amount": 3, "idempotency_key": "top-up-9" },
            { "op": "add", "user_id": "u", "amount": 4, "idempotency_key": "order-1" }
        ] }),
    )
    .await;
    assert_eq!(mixed["results"][0]["body"], single);
    assert_eq!(mixed["results"][1]["status"], 409, "{mixed}");
    assert_eq!(mixed["results"][1]["body"]["error"], "idempotency_conflict");
    assert_eq!(app.balance("u").await, 96, "100 - 7 + 3, once each");
    app.assert_verified().await;
}

#[tokio::test]
async fn the_batchs_own_key_replays_the_whole_answer() {
    let app = spawn_app().await;
    let body = json!({ "operations": [
        { "op": "add", "user_id": "u", "amount": 10 },
        { "op": "deduct", "user_id": "u", "amount": 4 },
        { "op": "deduct", "user_id": "u", "amount": 40 }
    ] });
    let key = [("idempotency-key", "batch-1")];
    let (status, first) = app.post_with("/credits/batch", body.clone(), &key).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(statuses(&first), [200, 200, 402]);
    app.add("u", 100).await;
    let (status, replay) = app.post_with("/credits/batch", body.clone(), &key).await;
    assert_eq!(status, 200);
    assert_eq!(
        replay, first,
        "the same answer, a 402 included, after a top-up"
    );
    let (status, conflict) = app
        .post_with(
            "/credits/batch",
            json!({ "operations": [{ "op": "add", "user_id": "u", "amount": 11 }] }),
            &key,
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"], "idempotency_conflict");
    assert_eq!(app.balance("u").await, 106);
    app.assert_verified().await;
}

#[tokio::test]
async fn respond_async_answers_a_202_per_operation_and_each_is_applied() {
    let app = spawn_app().await;
    let operations: Vec<Value> = (0..50)
        .map(|i| json!({ "op": "add", "user_id": format!("u{}", i % 5), "amount": 2 }))
        .collect();
    let (status, answer) = app
        .post_with(
            "/credits/batch",
            json!({ "operations": operations }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for result in answer["results"].as_array().unwrap() {
        assert_eq!(result["status"], 202);
        assert_eq!(result["body"]["status"], "accepted");
        let applied = app
            .wait_applied(result["body"]["command_id"].as_str().unwrap())
            .await;
        assert_eq!(applied["status"], "applied", "{applied}");
    }
    for user in 0..5 {
        assert_eq!(app.balance(&format!("u{user}")).await, 20);
    }
}

#[tokio::test]
async fn an_atomic_batch_applies_all_or_nothing() {
    let app = spawn_app().await;
    app.add("u", 10).await;
    let (status, answer) = batch(
        &app,
        json!({ "atomic": true, "operations": [
            { "op": "add", "user_id": "u", "amount": 5, "credit_type": "image" },
            { "op": "deduct", "user_id": "u", "amount": 8 },
            { "op": "hold", "user_id": "u", "amount": 2 }
        ] }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(statuses(&answer), [200, 200, 200]);
    assert_eq!(answer["results"][1]["body"]["balance_after"], 2);
    assert_eq!(answer["results"][2]["body"]["available"], 0);

    let rows = app.ledger_rows().await;
    let (status, refused) = batch(
        &app,
        json!({ "atomic": true, "operations": [
            { "op": "add", "user_id": "u", "amount": 100, "credit_type": "chat" },
            { "op": "deduct", "user_id": "u", "amount": 50, "credit_type": "chat" },
            { "op": "deduct", "user_id": "u", "amount": 1 },
            { "op": "add", "user_id": "u", "amount": 1 }
        ] }),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "batch_rejected");
    assert_eq!(refused["failed_index"], 2);
    assert_eq!(refused["failed"]["error"], "insufficient_credits");
    assert_eq!(refused["failed"]["available"], 0);
    assert_eq!(app.ledger_rows().await, rows, "nothing of it was written");
    let (_, chat) = app.get("/credits/balance?user_id=u&credit_type=chat").await;
    assert_eq!(chat["balance"], 0);

    let (status, accepted) = app
        .post_with(
            "/credits/batch",
            json!({ "atomic": true, "operations": [{ "op": "add", "user_id": "u", "amount": 1 }] }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let applied = app
        .wait_applied(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(applied["result"]["results"][0]["body"]["balance_after"], 3);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_batch_the_broker_did_not_accept_is_503_changes_nothing_and_frees_its_keys() {
    let app = spawn_app().await;
    app.add("u", 10).await;
    let body = json!({ "operations": [
        { "op": "deduct", "user_id": "u", "amount": 3, "idempotency_key": "op-1" },
        { "op": "add", "user_id": "v", "amount": 3 }
    ] });
    let key = [("idempotency-key", "refused-batch")];
    app.nats.stop();
    let (status, answer) = app.post_with("/credits/batch", body.clone(), &key).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    let (status, answer) = app
        .post_with(
            "/credits/batch",
            json!({ "operations": [{ "op": "add", "user_id": "w", "amount": 1 }] }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_commands WHERE status = 'cancelled'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        cancelled, 3,
        "each refused command of both batches is cancelled"
    );
    app.nats.restart();
    // The same request, keys and all, goes through once the broker is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answer = loop {
        let (status, answer) = app.post_with("/credits/batch", body.clone(), &key).await;
        if status == 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "batches never resumed: {status} {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(statuses(&answer), [200, 200]);
    assert_eq!(answer["results"][0]["body"]["balance_after"], 7);
    assert_eq!(app.balance("v").await, 3);
    assert_eq!(app.balance("w").await, 0);
    app.assert_verified().await;
}
