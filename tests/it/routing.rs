//! Routing by shard: each worker is delivered only the commands of the shards it owns, and a
//! worker of an earlier version in the membership brings back the subject every version reads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tally_common::partition::Names;
use uuid::Uuid;

use crate::harness::*;

/// The value of counter `name` on a worker's `/metrics`.
async fn counter(app: &TestApp, metrics_addr: &str, name: &str) -> u64 {
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Which database session holds each partition's lock.
async fn lock_holders(app: &TestApp) -> BTreeMap<i64, i32> {
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT objid::bigint, pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Waits until `workers` workers hold every partition between them and the holders stayed the
/// same over a few heartbeats (so the ingress has read the same membership too).
async fn wait_settled(app: &TestApp, workers: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let holders = lock_holders(app).await;
        let sessions: std::collections::BTreeSet<i32> = holders.values().copied().collect();
        if holders.len() == TEST_PARTITIONS as usize && sessions.len() == workers {
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            if lock_holders(app).await == holders {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions never settled: {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn each_worker_is_delivered_only_the_commands_it_owns() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let addrs: Vec<String> = (0..3).map(|_| free_local_addr()).collect();
    let _workers: Vec<WorkerProcess> = addrs
        .iter()
        .map(|addr| app.spawn_worker_process_with(&[("TALLY_WORKER_METRICS_ADDR", addr)]))
        .collect();
    let app = &app;
    let read = "tally_worker_commands_read_total";
    let applied = "tally_worker_commands_total";
    let users = 120;
    // A worker whose heartbeat arrives late (a loaded machine) drops out of the membership the
    // ingress reads for a moment, and messages are routed to the others meanwhile: correct, but
    // delivered to more than one worker. So a round that saw the membership move is run again.
    let mut last_failure = String::new();
    for attempt in 0..5 {
        wait_settled(app, 3).await;
        let mut before = Vec::new();
        for addr in &addrs {
            before.push((
                counter(app, addr, read).await,
                counter(app, addr, applied).await,
            ));
        }
        // Concurrent commands, so that the ingress's takes hold several workers' commands.
        futures::future::join_all((0..users).map(|i| async move {
            app.add(&format!("u{attempt}_{i}"), 1).await;
        }))
        .await;
        for i in 0..users {
            assert_eq!(app.balance(&format!("u{attempt}_{i}")).await, 1);
        }
        let mut deliveries = Vec::new();
        for (addr, (read_before, applied_before)) in addrs.iter().zip(&before) {
            deliveries.push((
                counter(app, addr, read).await - read_before,
                counter(app, addr, applied).await - applied_before,
            ));
        }
        let total: u64 = deliveries.iter().map(|(_, applied)| applied).sum();
        assert_eq!(total, users, "every command applied once: {deliveries:?}");
        if deliveries
            .iter()
            .all(|(read, applied)| read == applied && *applied > 0)
        {
            last_failure.clear();
            break;
        }
        last_failure = format!(
            "(delivered, applied) per worker: {deliveries:?}: others' commands reached a worker"
        );
    }
    assert!(last_failure.is_empty(), "{last_failure}");

    // A command republished on its own (a replayed dead letter) goes on the three-token batch
    // subject, which every worker reads besides its shards.
    let partition = tally_common::partition::partition_of(app.app_id, "solo", TEST_PARTITIONS);
    let envelope = json!({
        "command_id": Uuid::now_v7(),
        "app_id": app.app_id,
        "accepted_at": chrono::Utc::now(),
        "command": {"kind": "add", "user_id": "solo", "amount": 7,
                    "description": null, "metadata": {}},
    });
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tally_common::broker::publish_command(
        &js,
        &Names::new(&app.namespace),
        partition,
        envelope,
        None,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.balance("solo").await != 7 {
        assert!(tokio::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.assert_verified().await;
}

#[tokio::test]
async fn a_worker_of_an_earlier_version_brings_back_the_batch_subject_until_it_leaves() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let _workers = [app.spawn_worker_process(), app.spawn_worker_process()];
    wait_settled(&app, 2).await;
    // A live worker that writes no shard count, as earlier versions do. It never applies
    // anything: the partitions the per-partition assignment gives it wait for it to leave.
    let earlier = Uuid::now_v7();
    let stream = Names::new(&app.namespace).command_stream();
    sqlx::query(
        "INSERT INTO worker_heartbeats (stream, worker_id, last_seen)
         VALUES ($1, $2, now() + interval '1 hour')",
    )
    .bind(&stream)
    .bind(earlier)
    .execute(&app.pool)
    .await
    .unwrap();
    // The ingress re-reads the membership every half second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let users = 40;
    let app = &app;
    let command_ids: Vec<String> = futures::future::join_all((0..users).map(|i| async move {
        let (status, body) = app
            .post_with(
                "/credits/add",
                json!({"user_id": format!("v{i}"), "amount": 3}),
                &[("prefer", "respond-async")],
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["command_id"].as_str().unwrap().to_string()
    }))
    .await;

    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let command_stream = js.get_stream(&stream).await.unwrap();
    let batch_subject = Names::new(&app.namespace).command_batch_subject();
    assert!(
        command_stream
            .get_last_raw_message_by_subject(&batch_subject)
            .await
            .is_ok(),
        "with an earlier worker live, commands go on {batch_subject}"
    );

    // It leaves; the others take its partitions and apply what waited for it.
    sqlx::query("DELETE FROM worker_heartbeats WHERE worker_id = $1")
        .bind(earlier)
        .execute(&app.pool)
        .await
        .unwrap();
    for command_id in &command_ids {
        app.wait_applied(command_id).await;
    }
    for i in 0..users {
        assert_eq!(app.balance(&format!("v{i}")).await, 3);
    }
    app.assert_verified().await;
}
