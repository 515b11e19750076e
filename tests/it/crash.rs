//! A worker killed with SIGKILL in the middle of its work loses nothing and doubles nothing.

use std::time::Duration;

use serde_json::json;

use crate::harness::{free_local_addr, spawn_app_with, Options};

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_and_doubles_nothing() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let total = 600;
    // Queue commands first, so the worker meets full batches.
    let sends = (0..total).map(|i| {
        let app = &app;
        async move {
            let (status, _) = app
                .post_with(
                    "/credits/add",
                    json!({ "user_id": format!("u{}", i % 25), "amount": 1 }),
                    &[("prefer", "respond-async")],
                )
                .await;
            assert_eq!(status, 202);
        }
    });
    futures::future::join_all(sends).await;

    let mut victim = app.spawn_worker_process();
    // Kill it as soon as it has applied some, but not all, of the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_commands")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if done > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    victim.kill();
    let after_kill: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_commands")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let metrics_addr = free_local_addr();
    let _survivor = app.spawn_worker_process_with(&[("TALLY_WORKER_METRICS_ADDR", &metrics_addr)]);
    app.wait_processed(total, Duration::from_secs(60)).await;
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    assert!(metrics.contains("tally_worker_commands_total"), "{metrics}");
    let sum: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        sum, total,
        "every accepted command applied exactly once ({after_kill} done at the kill)"
    );
    app.assert_verified().await;
}
