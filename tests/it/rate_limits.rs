//! Per-app rate limits through HTTP: a token bucket per app for the API and another for
//! payment webhooks, `429 rate_limited` with `Retry-After`, overrides from the CLI picked up by
//! a running ingress.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tally_ingress::RateLimitConfig;
use tokio::sync::oneshot;

use crate::harness::{create_app, spawn_app, TestApp};

const STRIPE_SECRET: &str = "whsec_rate_limit_secret";

/// A second ingress on the test deployment, with the given rate limits; stopped on drop.
struct LimitedIngress {
    base_url: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for LimitedIngress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LimitedIngress {
    async fn start(app: &TestApp, rate_limits: RateLimitConfig) -> Self {
        let mut config = tally_ingress::IngressConfig::new(app.common_config());
        config.rate_limits = rate_limits;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ingress");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tally_ingress::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let ingress = Self {
            base_url,
            http: reqwest::Client::new(),
            _stop: stop,
            task,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ingress
            .http
            .get(format!("{}/readyz", ingress.base_url))
            .send()
            .await
            .map_or(true, |response| !response.status().is_success())
        {
            assert!(
                !ingress.task.is_finished(),
                "ingress stopped during start-up"
            );
            assert!(Instant::now() < deadline, "ingress never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ingress
    }

    /// `GET /credits/balance` of one user with `key`: status, `Retry-After`, body.
    async fn balance(&self, key: &str) -> (u16, Option<String>, Value) {
        let response = self
            .http
            .get(format!("{}/credits/balance?user_id=rl_user", self.base_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    async fn add(&self, key: &str, user: &str, amount: i64) -> (u16, Option<String>, Value) {
        let response = self
            .http
            .post(format!("{}/credits/add", self.base_url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(json!({ "user_id": user, "amount": amount }).to_string())
            .send()
            .await
            .expect("request");
        read(response).await
    }

    async fn stripe_payment(
        &self,
        app: &TestApp,
        event_id: &str,
        user: &str,
    ) -> (u16, Option<String>, Value) {
        let body = json!({ "id": event_id, "object": "event", "type": "payment_intent.succeeded",
            "data": { "object": { "id": format!("pi_{event_id}"), "object": "payment_intent",
                                  "amount": 1000, "amount_received": 1000, "currency": "usd",
                                  "metadata": { "tally_user_id": user, "tally_credits": "100" } } } })
        .to_string();
        let t = chrono::Utc::now().timestamp();
        let mut mac = Hmac::<Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        let response = self
            .http
            .post(format!("{}/webhooks/stripe/{}", self.base_url, app.app_id))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    async fn rate_limited_count(&self, kind: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        let prefix = format!("tally_ingress_rate_limited_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |value| value.trim().parse().expect("counter value"))
    }
}

async fn read(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").to_string());
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, body)
}

fn limits(rps: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        rate_limit_rps: Some(rps),
        rate_limit_burst: Some(burst),
        ..RateLimitConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_burst_get_429_with_retry_after_and_write_nothing() {
    let app = spawn_app().await;
    let ingress = LimitedIngress::start(&app, limits(1, 3)).await;
    let metric_before = ingress.rate_limited_count("api").await;

    for _ in 0..3 {
        let (status, _, body) = ingress.add(&app.api_key, "rl_user", 10).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = ingress.add(&app.api_key, "rl_user", 10).await;

    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["success"], false);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, _, _) = ingress.balance(&app.api_key).await;
    assert_eq!(status, 429, "reads draw on the same budget");
    assert_eq!(app.ledger_rows().await, 3, "a refused write wrote nothing");
    assert!(ingress.rate_limited_count("api").await >= metric_before + 2);

    // Another app has a bucket of its own.
    let (_, other_key) = create_app(&app.pool, "other").await;
    let (status, _, body) = ingress.balance(&other_key).await;
    assert_eq!(status, 200, "{body}");

    // After Retry-After the app is admitted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = ingress.add(&app.api_key, "rl_user", 10).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.balance("rl_user").await, 40);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_api_calls_never_refuses_a_payment_webhook() {
    let app = spawn_app().await;
    let (code, out) = app
        .cli(&[
            "app",
            "set-webhook-secret",
            "--app",
            &app.app_id.to_string(),
            "--provider",
            "stripe",
            "--secret",
            STRIPE_SECRET,
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let ingress = LimitedIngress::start(
        &app,
        RateLimitConfig {
            webhook_rate_limit_rps: Some(1),
            webhook_rate_limit_burst: Some(2),
            ..limits(1, 1)
        },
    )
    .await;
    let (status, _, _) = ingress.balance(&app.api_key).await;
    assert_eq!(status, 200);
    let (status, _, _) = ingress.balance(&app.api_key).await;
    assert_eq!(status, 429, "the API budget is spent");

    let (first, _, body) = ingress.stripe_payment(&app, "evt_rl_1", "payer").await;
    assert_eq!(first, 200, "{body}");
    let (second, _, body) = ingress.stripe_payment(&app, "evt_rl_2", "payer").await;
    assert_eq!(second, 200, "{body}");
    let (third, retry_after, body) = ingress.stripe_payment(&app, "evt_rl_3", "payer").await;

    assert_eq!(third, 429, "webhooks have a budget too: {body}");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(ingress.rate_limited_count("webhook").await >= 1);
    app.wait_processed(2, Duration::from_secs(20)).await;
    assert_eq!(
        app.balance("payer").await,
        200,
        "only accepted events credit"
    );
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_override_set_with_the_cli_reaches_a_running_ingress() {
    let app = spawn_app().await;
    let ingress = LimitedIngress::start(&app, RateLimitConfig::default()).await;
    for _ in 0..20 {
        let (status, _, body) = ingress.balance(&app.api_key).await;
        assert_eq!(status, 200, "no default means unlimited: {body}");
    }
    let app_id = app.app_id.to_string();

    let (code, out) = app
        .cli(&[
            "app",
            "set-rate-limit",
            "--app",
            &app_id,
            "--rps",
            "1",
            "--burst",
            "2",
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["rate_limit"], json!({ "rps": 1, "burst": 2 }));
    let limited_after = first_429_within(&ingress, &app.api_key, Duration::from_secs(5)).await;
    assert!(limited_after.is_some(), "the override never took effect");

    let (code, out) = app
        .cli(&["app", "set-rate-limit", "--app", &app_id, "--unlimited"])
        .await;
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(tally_ingress::ratelimit::OVERRIDES_REFRESH_INTERVAL * 2).await;
    for _ in 0..20 {
        let (status, _, body) = ingress.balance(&app.api_key).await;
        assert_eq!(status, 200, "--unlimited lifts the limit: {body}");
    }

    let (code, out) = app
        .cli(&["app", "set-rate-limit", "--app", &app_id, "--default"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["rate_limit"], "default");
    let (code, _) = app
        .cli(&["app", "set-rate-limit", "--app", &app_id, "--rps", "0"])
        .await;
    assert_ne!(code, 0, "a zero rate is refused");
}

/// Sends balance reads (about 50 a second) until one is refused; how long that took.
async fn first_429_within(
    ingress: &LimitedIngress,
    key: &str,
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let (status, retry_after, body) = ingress.balance(key).await;
        match status {
            200 => {}
            429 => {
                assert!(retry_after.is_some(), "429 without Retry-After");
                return Some(started.elapsed());
            }
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
