//! The events outbox: events are recorded in the transaction of the change that causes them,
//! only for types some enabled endpoint subscribes to, numbered per user, and relayed into one
//! delivery per subscribed endpoint with a delivery message on the broker.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{free_local_addr, spawn_app, spawn_app_with, Options, TestApp};

/// An endpoint of the test app subscribed to `events`, as the endpoints API writes it, with the
/// app's configuration version bumped so that workers reload. Its address is one the workers
/// refuse to call (loopback, without `TALLY_WEBHOOK_ALLOW_PRIVATE`): their delivery attempts
/// fail at once and never leave this machine.
async fn subscribe(app: &TestApp, events: &[&str]) -> Uuid {
    let id = Uuid::now_v7();
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, app_id, url, events, secret)
         VALUES ($1, $2, 'https://127.0.0.1:9/tally', $3, 'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=')",
    )
    .bind(id)
    .bind(app.app_id)
    .bind(&events)
    .execute(&app.pool)
    .await
    .unwrap();
    bump(&app.pool, app.app_id).await;
    id
}

async fn bump(pool: &PgPool, app_id: Uuid) {
    sqlx::query(
        "INSERT INTO app_event_config (app_id) VALUES ($1)
         ON CONFLICT (app_id) DO UPDATE SET version = app_event_config.version + 1",
    )
    .bind(app_id)
    .execute(pool)
    .await
    .unwrap();
    // Workers reload changed apps every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn set_thresholds(app: &TestApp, thresholds: &[i64]) {
    sqlx::query(
        "INSERT INTO balance_alerts (app_id, user_id, credit_type, thresholds)
         VALUES ($1, '', 'credits', $2)",
    )
    .bind(app.app_id)
    .bind(thresholds)
    .execute(&app.pool)
    .await
    .unwrap();
    bump(&app.pool, app.app_id).await;
}

/// `(type, user, sequence, relayed)` of the app's events, oldest first, once `count` are
/// relayed.
async fn relayed_events(app: &TestApp, count: usize) -> Vec<(String, String, i64, bool)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<(String, String, i64, bool)> = sqlx::query_as(
            "SELECT type, user_id, sequence, relayed FROM events WHERE app_id = $1
             ORDER BY created_at, sequence",
        )
        .bind(app.app_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if rows.iter().filter(|r| r.3).count() >= count {
            return rows;
        }
        assert!(Instant::now() < deadline, "events never relayed: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nothing_is_recorded_for_an_app_without_endpoints() {
    let app = spawn_app().await;
    app.add("u", 10).await;
    app.deduct("u", 10).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn subscribed_changes_are_recorded_numbered_and_relayed_once_per_endpoint() {
    let app = spawn_app().await;
    app.add("u", 10).await;
    let everything = subscribe(&app, &["*"]).await;
    let deducts_only = subscribe(&app, &["credits.deducted"]).await;
    set_thresholds(&app, &[5]).await;

    let (status, body) = app.deduct("u", 6).await;
    assert_eq!(status, 200, "{body}");
    app.add("v", 3).await;
    let (status, _) = app
        .post("/credits/hold", json!({ "user_id": "u", "amount": 4 }))
        .await;
    assert_eq!(status, 200);

    let events = relayed_events(&app, 4).await;
    let shown: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|(t, u, s, _)| (t.as_str(), u.as_str(), *s))
        .collect();
    assert_eq!(
        shown,
        [
            ("credits.deducted", "u", 1),
            ("balance.low", "u", 2),
            ("credits.added", "v", 1),
            ("balance.depleted", "u", 3),
        ]
    );
    let ledger_id: Option<Uuid> =
        sqlx::query_scalar("SELECT ledger_id FROM events WHERE type = 'credits.deducted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        ledger_id.map(|id| id.to_string()),
        body["ledger_id"].as_str().map(str::to_string),
        "an entry event names its entry"
    );
    let deliveries: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT endpoint_id, event_type FROM webhook_deliveries ORDER BY created_at, event_type",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let to_everything = deliveries.iter().filter(|d| d.0 == everything).count();
    let to_deducts: Vec<&str> = deliveries
        .iter()
        .filter(|d| d.0 == deducts_only)
        .map(|d| d.1.as_str())
        .collect();
    assert_eq!(to_everything, 4);
    assert_eq!(to_deducts, ["credits.deducted"]);
    // One delivery message per delivery, on the delivery stream.
    let client = async_nats::connect(&app.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names = tally_common::partition::Names::new(&app.namespace);
    let mut stream = js.get_stream(names.delivery_stream()).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    assert_eq!(messages, 5);
    app.assert_verified().await;
}

#[tokio::test]
async fn an_unrelayed_event_is_relayed_by_the_sweep() {
    let app = spawn_app().await;
    subscribe(&app, &["credits.added"]).await;
    app.add("u", 1).await;
    relayed_events(&app, 1).await;
    // As if a worker had stopped between its commit and the relay.
    sqlx::query("UPDATE events SET relayed = false")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM webhook_deliveries")
        .execute(&app.pool)
        .await
        .unwrap();
    let events = relayed_events(&app, 1).await;
    assert_eq!(events.len(), 1);
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 1);
}

/// A batch of plain deducts of a remembered user records its events on the fast path too,
/// numbered on from where the full path left them; a threshold crossed takes the full path,
/// which knows the alert state.
#[tokio::test]
async fn the_fast_path_records_events_and_leaves_alerts_to_the_full_path() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let metrics_addr = free_local_addr();
    let _worker = app.spawn_worker_process_with(&[("TALLY_WORKER_METRICS_ADDR", &metrics_addr)]);
    subscribe(&app, &["credits.deducted", "credits.added", "balance.low"]).await;
    set_thresholds(&app, &[50]).await;
    app.add("u", 100).await;
    for _ in 0..5 {
        let (status, body) = app.deduct("u", 11).await;
        assert_eq!(status, 200, "{body}");
    }
    let events = relayed_events(&app, 7).await;
    let shown: Vec<(&str, i64)> = events.iter().map(|(t, _, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(
        shown,
        [
            ("credits.added", 1),
            ("credits.deducted", 2),
            ("credits.deducted", 3),
            ("credits.deducted", 4),
            ("credits.deducted", 5),
            ("credits.deducted", 6),
            ("balance.low", 7),
        ]
    );
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    let fast: u64 = metrics
        .lines()
        .find(|line| line.starts_with("tally_worker_batch_paths_total{path=\"fast\"}"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        fast, 4,
        "four deducts on the fast path, the one crossing 50 on the full:\n{metrics}"
    );
    app.assert_verified().await;
}
