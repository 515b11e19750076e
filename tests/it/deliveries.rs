//! Outbound event deliveries: the worker's deliverer calls real receivers on loopback.
//!
//! Endpoints, events and deliveries are written straight into their tables, and the delivery
//! messages published on the delivery subject, as the relay does; receivers are HTTP servers
//! in the test that record every call and answer as the test says. Signatures are checked
//! with the `standardwebhooks` crate, as an integrator would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_common::events::DeliveryMessage;
use tally_common::partition::Names;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::harness::{spawn_app_with, Options, TestApp};

/// How a receiver answers a call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reply {
    Status(u16),
    /// A redirect to this path of the same receiver.
    Redirect(&'static str),
    /// `200` after this long.
    SlowOk(Duration),
    /// Never answers.
    Hang,
}

/// One call a receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    at: Instant,
}

impl Call {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("header text")
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// An HTTP server on a loopback port that records every call and answers the `n`th (from 0)
/// with `reply(n)`.
pub(crate) struct Receiver {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    server: JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(reply: fn(usize) -> Reply) -> Self {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let recorded = calls.clone();
        let router = axum::Router::new().fallback(
            move |uri: Uri, headers: HeaderMap, body: Bytes| async move {
                let answer = {
                    let mut calls = recorded.lock().unwrap();
                    calls.push(Call {
                        path: uri.path().to_string(),
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    reply(calls.len() - 1)
                };
                answer_with(answer).await
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            calls,
            server,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `count` calls came in; all of them.
    pub(crate) async fn wait_calls(&self, count: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} calls arrived",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer_with(reply: Reply) -> Response {
    match reply {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Redirect(path) => {
            (StatusCode::TEMPORARY_REDIRECT, [("location", path)]).into_response()
        }
        Reply::SlowOk(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

pub(crate) fn always_ok(_: usize) -> Reply {
    Reply::Status(200)
}

fn always_unavailable(_: usize) -> Reply {
    Reply::Status(503)
}

/// An endpoint as the API would create it.
struct Endpoint {
    id: Uuid,
    secret: String,
}

/// A delivery's row.
#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    status: String,
    attempts: i32,
    last_status_code: Option<i16>,
    last_error: Option<String>,
    last_attempt_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// A deployment, with what the relay would write and publish.
struct Deliveries {
    app: TestApp,
    js: jetstream::Context,
    names: Names,
}

/// Every deployment of these tests retries after 1 s, then after 1 s again, then gives up.
fn short_schedule(config: &mut tally_worker::WorkerConfig) {
    config.webhook_retry_schedule = "1s,1s".parse().unwrap();
}

impl Deliveries {
    /// A deployment whose endpoints may be on loopback.
    async fn start() -> Self {
        Self::start_with(Options {
            webhook_allow_private: true,
            worker: short_schedule,
            ..Options::default()
        })
        .await
    }

    async fn start_with(options: Options) -> Self {
        let app = spawn_app_with(options).await;
        let client = async_nats::connect(app.nats_url.as_str())
            .await
            .expect("connect to NATS");
        let names = Names::new(&app.namespace);
        Self {
            app,
            js: jetstream::new(client),
            names,
        }
    }

    fn new_secret() -> String {
        let bytes = [*Uuid::new_v4().as_bytes(), *Uuid::new_v4().as_bytes()].concat();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    async fn endpoint(&self, url: &str) -> Endpoint {
        let endpoint = Endpoint {
            id: Uuid::now_v7(),
            secret: Self::new_secret(),
        };
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, app_id, url, events, secret)
             VALUES ($1, $2, $3, ARRAY['*'], $4)",
        )
        .bind(endpoint.id)
        .bind(self.app.app_id)
        .bind(url)
        .bind(&endpoint.secret)
        .execute(&self.app.pool)
        .await
        .expect("insert endpoint");
        endpoint
    }

    /// Gives `endpoint` a previous secret that signs for `valid_for` more (an interval).
    async fn rotated(&self, endpoint: &Endpoint, previous: &str, valid_for: &str) {
        sqlx::query(
            "UPDATE webhook_endpoints
             SET previous_secret = $2, previous_secret_until = now() + $3::interval
             WHERE id = $1",
        )
        .bind(endpoint.id)
        .bind(previous)
        .bind(valid_for)
        .execute(&self.app.pool)
        .await
        .expect("rotate");
    }

    async fn sql(&self, statement: &str, id: Uuid) {
        sqlx::query(statement)
            .bind(id)
            .execute(&self.app.pool)
            .await
            .expect(statement);
    }

    /// A `balance.low` event, and its delivery to `endpoint` (pending, never attempted).
    async fn delivery(&self, endpoint: &Endpoint) -> (Uuid, Uuid) {
        let (event_id, delivery_id) = (Uuid::now_v7(), Uuid::now_v7());
        sqlx::query(
            "INSERT INTO events (id, app_id, user_id, type, sequence, data, relayed)
             VALUES ($1, $2, 'user_1', 'balance.low', 1, $3, true)",
        )
        .bind(event_id)
        .bind(self.app.app_id)
        .bind(json!({ "threshold": 100, "balance": 40, "held": 0, "available": 40 }))
        .execute(&self.app.pool)
        .await
        .expect("insert event");
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, app_id, event_type)
             VALUES ($1, $2, $3, $4, 'balance.low')",
        )
        .bind(delivery_id)
        .bind(event_id)
        .bind(endpoint.id)
        .bind(self.app.app_id)
        .execute(&self.app.pool)
        .await
        .expect("insert delivery");
        (event_id, delivery_id)
    }

    /// Publishes a delivery message, as the relay (or a redelivery request) does.
    async fn publish(&self, delivery_id: Uuid, redeliver: bool) {
        let message = DeliveryMessage {
            delivery_id,
            redeliver,
        };
        self.js
            .publish(
                self.names.delivery_subject(),
                serde_json::to_vec(&message).unwrap().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    async fn row(&self, delivery_id: Uuid) -> DeliveryRow {
        sqlx::query_as(
            "SELECT status, attempts, last_status_code, last_error, last_attempt_at,
                    next_attempt_at
             FROM webhook_deliveries WHERE id = $1",
        )
        .bind(delivery_id)
        .fetch_one(&self.app.pool)
        .await
        .expect("delivery row")
    }

    /// Waits until the delivery has `status` and `attempts`.
    async fn wait_for(&self, delivery_id: Uuid, status: &str, attempts: i32) -> DeliveryRow {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let row = self.row(delivery_id).await;
            if row.status == status && row.attempts == attempts {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "delivery is {row:?}, not {status} after {attempts} attempts"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every delivery message was acked (the work queue keeps only the others).
    async fn wait_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = self
            .js
            .get_stream(self.names.delivery_stream())
            .await
            .expect("delivery stream");
        loop {
            let left = stream.info().await.expect("stream info").state.messages;
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} delivery messages left");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn failing_since(&self, endpoint: &Endpoint) -> Option<DateTime<Utc>> {
        sqlx::query_scalar("SELECT failing_since FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint.id)
            .fetch_one(&self.app.pool)
            .await
            .expect("endpoint")
    }
}

/// Verifies a call's signature with the Standard Webhooks library, keyed by `secret`.
fn verify(call: &Call, secret: &str) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(&call.body, &call.headers)
}

#[tokio::test]
async fn a_delivery_arrives_with_the_standard_webhooks_headers_and_a_verifiable_signature() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_ok).await;
    let endpoint = deliveries.endpoint(&receiver.url("/hooks/tally")).await;
    let (event_id, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    let calls = receiver.wait_calls(1, Duration::from_secs(10)).await;
    let call = &calls[0];
    assert_eq!(call.path, "/hooks/tally");
    assert_eq!(call.header("content-type"), "application/json");
    assert_eq!(call.header("webhook-id"), event_id.to_string());
    let timestamp: i64 = call.header("webhook-timestamp").parse().expect("seconds");
    assert!((Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(call.header("webhook-signature").starts_with("v1,"));
    verify(call, &endpoint.secret).expect("the signature verifies");
    verify(call, &Deliveries::new_secret()).expect_err("another secret does not verify it");
    let envelope = call.json();
    assert_eq!(envelope["id"], event_id.to_string());
    assert_eq!(envelope["type"], "balance.low");
    assert_eq!(envelope["app_id"], deliveries.app.app_id.to_string());
    assert_eq!(envelope["user_id"], "user_1");
    assert_eq!(envelope["sequence"], 1);
    assert_eq!(envelope["data"]["available"], 40);

    let row = deliveries.wait_for(delivery_id, "succeeded", 1).await;
    assert_eq!(row.last_status_code, Some(200));
    assert_eq!(row.last_error, None);
    assert!(row.last_attempt_at.is_some());
    assert_eq!(row.next_attempt_at, None);
    assert_eq!(deliveries.failing_since(&endpoint).await, None);
}

#[tokio::test]
async fn a_credit_change_reaches_a_subscribed_endpoint_through_the_outbox_and_the_relay() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_ok).await;
    let endpoint = deliveries.endpoint(&receiver.url("/credits")).await;
    deliveries
        .sql(
            "INSERT INTO app_event_config (app_id) VALUES ($1)
             ON CONFLICT (app_id) DO UPDATE SET version = app_event_config.version + 1",
            deliveries.app.app_id,
        )
        .await;
    // Workers reload an app's event rules within a second of a change.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let added = deliveries.app.add("user_7", 25).await;

    let calls = receiver.wait_calls(1, Duration::from_secs(10)).await;
    verify(&calls[0], &endpoint.secret).expect("signed");
    let envelope = calls[0].json();
    assert_eq!(envelope["type"], "credits.added");
    assert_eq!(envelope["user_id"], "user_7");
    assert_eq!(envelope["data"]["amount"], 25);
    assert_eq!(envelope["data"]["ledger_id"], added["ledger_id"]);
    assert_eq!(
        calls[0].header("webhook-id"),
        envelope["id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn during_a_rotation_a_delivery_carries_both_signatures_and_either_secret_verifies_it() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_ok).await;
    let rotated = deliveries.endpoint(&receiver.url("/rotated")).await;
    let previous = Deliveries::new_secret();
    deliveries.rotated(&rotated, &previous, "24 hours").await;
    // A rotation more than 24 hours ago: the previous secret no longer signs.
    let expired = deliveries.endpoint(&receiver.url("/expired")).await;
    deliveries.rotated(&expired, &previous, "-1 second").await;

    for endpoint in [&rotated, &expired] {
        let (_, delivery_id) = deliveries.delivery(endpoint).await;
        deliveries.publish(delivery_id, false).await;
    }

    let calls = receiver.wait_calls(2, Duration::from_secs(10)).await;
    let on = |path: &str| calls.iter().find(|call| call.path == path).unwrap().clone();
    let during = on("/rotated");
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    verify(&during, &rotated.secret).expect("the new secret verifies it");
    verify(&during, &previous).expect("the previous secret verifies it");
    let after = on("/expired");
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    verify(&after, &expired.secret).expect("the new secret verifies it");
    verify(&after, &previous).expect_err("the expired secret does not");
}

#[tokio::test]
async fn a_failed_attempt_is_retried_on_schedule_with_the_same_webhook_id() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(|call| match call {
        0 => Reply::Status(500),
        _ => Reply::Status(200),
    })
    .await;
    let endpoint = deliveries.endpoint(&receiver.url("/flaky")).await;
    let (event_id, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    let failed = receiver.wait_calls(1, Duration::from_secs(10)).await;
    let row = deliveries.wait_for(delivery_id, "pending", 1).await;
    assert_eq!(row.last_status_code, Some(500));
    assert!(row.last_error.unwrap().contains("500"));
    assert!(row.next_attempt_at.is_some());
    assert!(deliveries.failing_since(&endpoint).await.is_some());

    let calls = receiver.wait_calls(2, Duration::from_secs(10)).await;
    assert_eq!(calls.len(), 2, "{failed:?}");
    for call in &calls {
        assert_eq!(call.header("webhook-id"), event_id.to_string());
        verify(call, &endpoint.secret).expect("every attempt is signed");
    }
    let waited = calls[1].at - calls[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    let row = deliveries.wait_for(delivery_id, "succeeded", 2).await;
    assert_eq!(row.last_status_code, Some(200));
    assert_eq!(row.last_error, None);
    assert_eq!(deliveries.failing_since(&endpoint).await, None);
}

#[tokio::test]
async fn a_delivery_whose_schedule_runs_out_has_failed() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_unavailable).await;
    let endpoint = deliveries.endpoint(&receiver.url("/down")).await;
    let (_, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    // The first attempt and one retry per delay of the schedule.
    let row = deliveries.wait_for(delivery_id, "failed", 3).await;
    assert_eq!(row.last_status_code, Some(503));
    assert!(row.last_error.unwrap().contains("503"));
    assert_eq!(row.next_attempt_at, None);
    deliveries.wait_queue_empty().await;
    assert_eq!(receiver.calls().len(), 3);
    assert!(deliveries.failing_since(&endpoint).await.is_some());
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_another_endpoints_deliveries() {
    let deliveries = Deliveries::start_with(Options {
        webhook_allow_private: true,
        // Few slots, so that a hanging endpoint could take them all if nothing stopped it.
        worker: |config| {
            config.delivery_concurrency = 8;
            config.delivery_endpoint_concurrency = 2;
        },
        ..Options::default()
    })
    .await;
    let hanging = Receiver::start(|_| Reply::Hang).await;
    let healthy = Receiver::start(always_ok).await;
    let stuck = deliveries.endpoint(&hanging.url("/stuck")).await;
    let fine = deliveries.endpoint(&healthy.url("/fine")).await;
    for _ in 0..20 {
        let (_, delivery_id) = deliveries.delivery(&stuck).await;
        deliveries.publish(delivery_id, false).await;
    }
    hanging.wait_calls(2, Duration::from_secs(10)).await;

    let started = Instant::now();
    let mut fine_deliveries = Vec::new();
    for _ in 0..5 {
        let (_, delivery_id) = deliveries.delivery(&fine).await;
        deliveries.publish(delivery_id, false).await;
        fine_deliveries.push(delivery_id);
    }

    healthy.wait_calls(5, Duration::from_secs(5)).await;
    for delivery_id in fine_deliveries {
        deliveries.wait_for(delivery_id, "succeeded", 1).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the healthy endpoint waited {:?}",
        started.elapsed()
    );
    // The hanging endpoint never had more than its share of attempts at once.
    assert_eq!(hanging.calls().len(), 2);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(|_| Reply::Redirect("/elsewhere")).await;
    let endpoint = deliveries.endpoint(&receiver.url("/moved")).await;
    let (_, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    let row = deliveries.wait_for(delivery_id, "failed", 3).await;
    assert_eq!(row.last_status_code, Some(307));
    assert!(row.last_error.unwrap().contains("redirect"));
    let paths: Vec<String> = receiver.calls().into_iter().map(|call| call.path).collect();
    assert_eq!(paths, ["/moved", "/moved", "/moved"]);
}

#[tokio::test]
async fn a_private_address_is_refused_unless_the_deployment_allows_it() {
    let deliveries = Deliveries::start_with(Options {
        worker: short_schedule,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(always_ok).await;
    let endpoint = deliveries
        .endpoint(&format!(
            "https://127.0.0.1:{}/internal",
            receiver.addr.port()
        ))
        .await;
    let (_, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    let row = deliveries.wait_for(delivery_id, "failed", 3).await;
    let reason = row.last_error.expect("a reason");
    assert!(reason.contains("127.0.0.1"), "{reason}");
    assert_eq!(row.last_status_code, None);
    assert!(receiver.calls().is_empty());
}

#[tokio::test]
async fn cancelled_deliveries_and_those_of_deleted_or_disabled_endpoints_are_not_sent() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_ok).await;
    let live = deliveries.endpoint(&receiver.url("/live")).await;
    let (_, cancelled) = deliveries.delivery(&live).await;
    deliveries
        .sql(
            "UPDATE webhook_deliveries SET status = 'cancelled' WHERE id = $1",
            cancelled,
        )
        .await;
    let deleted = deliveries.endpoint(&receiver.url("/deleted")).await;
    let (_, to_deleted) = deliveries.delivery(&deleted).await;
    deliveries
        .sql(
            "UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1",
            deleted.id,
        )
        .await;
    let disabled = deliveries.endpoint(&receiver.url("/disabled")).await;
    let (_, to_disabled) = deliveries.delivery(&disabled).await;
    deliveries
        .sql(
            "UPDATE webhook_endpoints SET enabled = false WHERE id = $1",
            disabled.id,
        )
        .await;

    for delivery_id in [cancelled, to_deleted, to_disabled] {
        deliveries.publish(delivery_id, false).await;
    }

    deliveries.wait_queue_empty().await;
    assert!(receiver.calls().is_empty());
    assert_eq!(deliveries.row(cancelled).await.attempts, 0);
    let row = deliveries.wait_for(to_deleted, "cancelled", 0).await;
    assert_eq!(row.last_error.as_deref(), Some("endpoint deleted"));
    let row = deliveries.wait_for(to_disabled, "failed", 0).await;
    assert_eq!(row.last_error.as_deref(), Some("endpoint disabled"));
}

#[tokio::test]
async fn a_redelivery_sends_a_succeeded_delivery_again_and_a_repeated_message_does_not() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_ok).await;
    let endpoint = deliveries.endpoint(&receiver.url("/again")).await;
    let (event_id, delivery_id) = deliveries.delivery(&endpoint).await;
    deliveries.publish(delivery_id, false).await;
    deliveries.wait_for(delivery_id, "succeeded", 1).await;

    // The relay's message again (a republish): the delivery is settled, nothing is sent.
    deliveries.publish(delivery_id, false).await;
    deliveries.wait_queue_empty().await;
    assert_eq!(receiver.calls().len(), 1);

    deliveries.publish(delivery_id, true).await;

    let calls = receiver.wait_calls(2, Duration::from_secs(10)).await;
    assert_eq!(calls[1].header("webhook-id"), event_id.to_string());
    verify(&calls[1], &endpoint.secret).expect("signed");
    deliveries.wait_for(delivery_id, "succeeded", 2).await;
}

#[tokio::test]
async fn an_endpoint_that_failed_for_five_days_is_disabled() {
    let deliveries = Deliveries::start().await;
    let receiver = Receiver::start(always_unavailable).await;
    let endpoint = deliveries.endpoint(&receiver.url("/gone")).await;
    deliveries
        .sql(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute'
             WHERE id = $1",
            endpoint.id,
        )
        .await;
    let (_, delivery_id) = deliveries.delivery(&endpoint).await;

    deliveries.publish(delivery_id, false).await;

    let row = deliveries.wait_for(delivery_id, "failed", 1).await;
    assert_eq!(row.last_status_code, Some(503));
    let (enabled, reason): (bool, Option<String>) =
        sqlx::query_as("SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint.id)
            .fetch_one(&deliveries.app.pool)
            .await
            .unwrap();
    assert!(!enabled);
    assert!(reason.unwrap().contains("5 days"));
    let version: i64 = sqlx::query_scalar("SELECT version FROM app_event_config WHERE app_id = $1")
        .bind(deliveries.app.app_id)
        .fetch_one(&deliveries.app.pool)
        .await
        .expect("the app's event configuration changed");
    assert!(version >= 1);
}

#[tokio::test]
async fn a_stopping_worker_finishes_the_attempt_in_flight() {
    let mut deliveries = Deliveries::start().await;
    let receiver = Receiver::start(|_| Reply::SlowOk(Duration::from_secs(1))).await;
    let endpoint = deliveries.endpoint(&receiver.url("/slow")).await;
    let (_, delivery_id) = deliveries.delivery(&endpoint).await;
    deliveries.publish(delivery_id, false).await;
    receiver.wait_calls(1, Duration::from_secs(10)).await;

    let worker = deliveries.app.workers.remove(0);
    worker.stop().await;

    let row = deliveries.row(delivery_id).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    assert_eq!(receiver.calls().len(), 1);
}
