//! `tally-bench-receiver ADDR`: receives Tally's outbound events for `bench/run` and reports
//! what arrived. It answers every delivery `200`, or `500` while failing (`POST /fail`, then
//! `POST /recover`), and keeps per distinct event (`webhook-id`) when it was first answered
//! `200` and how long after the event was recorded (the envelope's `created_at`, written in the
//! transaction of the change): the delivery lag. `GET /stats` reports the counts, the lag's
//! median and 99th percentile, and the arrival times of the first and last delivered event;
//! `POST /reset` starts over. It does not check signatures (the tests do): it measures.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Tally {
    failing: bool,
    /// Every request, answered 200 or 500.
    requests: u64,
    refused: u64,
    /// Events answered 200 at least once.
    delivered: HashSet<String>,
    /// Delivery lag of each event's first 200, in milliseconds.
    lags_ms: Vec<f64>,
    first_ms: Option<f64>,
    last_ms: Option<f64>,
}

type Shared = Arc<Mutex<Tally>>;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

async fn receive(State(tally): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let arrived = now_ms();
    let id = headers
        .get("webhook-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let recorded = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|event| chrono::DateTime::parse_from_rfc3339(event["created_at"].as_str()?).ok())
        .map(|at| at.timestamp_micros() as f64 / 1000.0);
    let mut tally = tally.lock().expect("tally lock");
    tally.requests += 1;
    if tally.failing {
        tally.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if tally.delivered.insert(id) {
        if let Some(recorded) = recorded {
            tally.lags_ms.push(arrived - recorded);
        }
        tally.first_ms.get_or_insert(arrived);
        tally.last_ms = Some(arrived);
    }
    StatusCode::OK
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn stats(State(tally): State<Shared>) -> Json<Value> {
    let tally = tally.lock().expect("tally lock");
    let mut lags = tally.lags_ms.clone();
    lags.sort_by(|a, b| a.total_cmp(b));
    Json(json!({
        "requests": tally.requests, "refused": tally.refused, "delivered": tally.delivered.len(),
        "lag_p50_ms": percentile(&lags, 50.0), "lag_p99_ms": percentile(&lags, 99.0),
        "first_ms": tally.first_ms, "last_ms": tally.last_ms,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9400".into());
    let tally = Shared::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .route("/stats", get(stats))
        .route(
            "/fail",
            post(|State(t): State<Shared>| async move {
                t.lock().expect("tally lock").failing = true;
            }),
        )
        .route(
            "/recover",
            post(|State(t): State<Shared>| async move {
                t.lock().expect("tally lock").failing = false;
            }),
        )
        .route(
            "/reset",
            post(|State(t): State<Shared>| async move {
                *t.lock().expect("tally lock") = Tally::default();
            }),
        )
        .with_state(tally);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the receiver's address");
    axum::serve(listener, app).await.expect("serve");
}
