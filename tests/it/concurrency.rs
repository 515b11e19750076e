use std::time::Duration;

use serde_json::json;

use crate::harness::{spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn concurrent_deducts_never_overspend() {
    let app = spawn_app_with(Options {
        workers: 2,
        apply_lanes: 3,
        ..Options::default()
    })
    .await;
    app.add("u1", 1000).await;
    let deducts = (0..200).map(|_| app.deduct("u1", 10));
    let answers = futures::future::join_all(deducts).await;
    let ok = answers.iter().filter(|(status, _)| *status == 200).count();
    let rejected = answers
        .iter()
        .filter(|(status, body)| *status == 402 && body["error"] == "insufficient_credits")
        .count();
    assert_eq!((ok, rejected), (100, 100));
    assert_eq!(app.balance("u1").await, 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn commands_of_each_user_apply_in_order_across_two_workers() {
    // Three apply lanes per worker: order must hold within each lane's partitions.
    let app = spawn_app_with(Options {
        workers: 2,
        apply_lanes: 3,
        ..Options::default()
    })
    .await;
    let users: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    let async_header = [("prefer", "respond-async")];
    let sends = users.iter().map(|user| {
        let app = &app;
        async move {
            let (status, _) = app
                .post_with(
                    "/credits/add",
                    json!({ "user_id": user, "amount": 50 }),
                    &async_header,
                )
                .await;
            assert_eq!(status, 202);
            for _ in 0..50 {
                let (status, _) = app
                    .post_with(
                        "/credits/deduct",
                        json!({ "user_id": user, "amount": 1 }),
                        &async_header,
                    )
                    .await;
                assert_eq!(status, 202);
            }
        }
    });
    futures::future::join_all(sends).await;
    app.wait_processed(20 * 51, Duration::from_secs(60)).await;
    for user in &users {
        assert_eq!(app.balance(user).await, 0, "{user}");
        let (_, history) = app
            .get(&format!("/credits/history?user_id={user}&limit=200"))
            .await;
        let entries = history["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 51, "every deduct applied for {user}");
        assert_eq!(
            entries.last().unwrap()["type"],
            "add",
            "the add came first for {user}"
        );
    }
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_commands WHERE status = 'rejected'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rejected, 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn partitions_are_shared_by_workers_that_join_and_leave() {
    let mut app = spawn_app().await;
    app.start_worker();
    app.start_worker();
    for round in 0..3 {
        for i in 0..30 {
            app.add(&format!("u{i}"), 1).await;
        }
        if round == 0 {
            let leaving = app.workers.remove(0);
            leaving.stop().await;
        }
    }
    for i in 0..30 {
        assert_eq!(app.balance(&format!("u{i}")).await, 3);
    }
    let owners: i64 = sqlx::query_scalar("SELECT count(*) FROM worker_heartbeats")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owners, 2, "a worker that stops leaves the membership");
    app.assert_verified().await;
}
