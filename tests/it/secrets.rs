//! Secrets never reach the logs. The real binaries run at the most verbose level (ingress in
//! JSON, worker in text) with every line they print captured, the CLI's diagnostics too, while
//! the traffic of the suite goes through them: valid, bogus and revoked API keys, the admin
//! token, signed, forged and stale Stripe and Polar webhooks. Then no captured line may hold a
//! key, a webhook secret, a signature or the token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{
    free_local_addr, spawn_app_with, workspace_binary, Options, TestApp, TEST_PARTITIONS,
};

const ADMIN_TOKEN: &str = "adm_9f2c41d7e0b84a35b1c6d2e8f7a90b13";
const STRIPE_SECRET: &str = "whsec_stripeLogSecret7c1e9a2b4d6f80";
/// A Standard Webhooks secret: `whsec_` and base64 of the key bytes.
const POLAR_SECRET: &str = "whsec_cG9sYXJMb2dTZWNyZXRLZXlCeXRlczA5ODc2NTQz";

/// A service process whose stdout and stderr go to one file; killed on drop.
struct LoggedProcess {
    child: Child,
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(app: &TestApp, binary: &str, log: &Path, env: &[(&str, &str)]) -> LoggedProcess {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(workspace_binary(binary))
        .env("TALLY_DATABASE_URL", &app.db.url)
        .env("TALLY_NATS_URL", app.nats.url())
        .env("TALLY_NAMESPACE", &app.namespace)
        .env("TALLY_PARTITIONS", TEST_PARTITIONS.to_string())
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|error| panic!("start {binary}: {error}"));
    LoggedProcess { child }
}

/// The CLI with its stderr (diagnostics) appended to `log`; its stdout is its answer.
async fn cli_logged(app: &TestApp, log: &Path, args: &[&str]) -> (i32, Value) {
    cli_stdin_logged(app, log, args, &[], "").await
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

struct Traffic {
    http: reqwest::Client,
    base_url: String,
}

impl Traffic {
    /// Waits until the ingress answers `/readyz`.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .http
            .get(format!("{}/readyz", self.base_url))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            assert!(Instant::now() < deadline, "the ingress never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base_url);
        let mut request = match method {
            "GET" => self.http.get(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_default()),
        };
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn stripe(&self, app_id: &str, secret: &str, t: i64, event_id: &str) -> u16 {
        let body = json!({ "id": event_id, "object": "event", "type": "payment_intent.succeeded",
            "data": { "object": { "id": format!("pi_{event_id}"), "object": "payment_intent",
                                  "amount": 500, "amount_received": 500, "currency": "usd",
                                  "metadata": { "tally_user_id": "payer", "tally_credits": "50" } } } })
        .to_string();
        let signature = hex::encode(hmac(secret.as_bytes(), format!("{t}.{body}").as_bytes()));
        let (status, _) = self
            .send(
                "POST",
                &format!("/webhooks/stripe/{app_id}"),
                None,
                &[("stripe-signature", format!("t={t},v1={signature}"))],
                Some(body),
            )
            .await;
        status
    }

    async fn polar(&self, app_id: &str, key: &[u8], t: i64, order_id: &str) -> u16 {
        let body = json!({ "type": "order.paid", "data": { "id": order_id, "status": "paid",
            "metadata": { "tally_user_id": "payer", "tally_credits": "70" } } })
        .to_string();
        let webhook_id = format!("msg_{order_id}");
        let signature = base64::engine::general_purpose::STANDARD
            .encode(hmac(key, format!("{webhook_id}.{t}.{body}").as_bytes()));
        let (status, _) = self
            .send(
                "POST",
                &format!("/webhooks/polar/{app_id}"),
                None,
                &[
                    ("webhook-id", webhook_id),
                    ("webhook-timestamp", t.to_string()),
                    ("webhook-signature", format!("v1,{signature}")),
                ],
                Some(body),
            )
            .await;
        status
    }
}

/// Lines of `log` holding any of `secrets` (or the secret part of an API key).
fn leaks(log: &str, secrets: &[String]) -> Vec<String> {
    let needles: Vec<String> = secrets
        .iter()
        .flat_map(|secret| {
            let mut needles = vec![secret.clone()];
            if secret.starts_with(tally_common::apikey::PREFIX) {
                needles.push(secret[tally_common::apikey::DISPLAY_CHARS..].to_string());
            }
            needles
        })
        .collect();
    log.lines()
        .filter(|line| needles.iter().any(|needle| line.contains(needle.as_str())))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_secret_signature_or_token_reaches_any_log() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("tally-it-logs-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let (ingress_log, worker_log, cli_log): (PathBuf, PathBuf, PathBuf) = (
        dir.join("ingress.log"),
        dir.join("worker.log"),
        dir.join("cli.log"),
    );
    let addr = free_local_addr();
    let _ingress = spawn_logged(
        &app,
        "tally-ingress",
        &ingress_log,
        &[
            ("TALLY_HTTP_ADDR", &addr),
            ("TALLY_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TALLY_LOG_FORMAT", "json"),
            ("TALLY_RATE_LIMIT_RPS", "1000"),
        ],
    );
    let _worker = spawn_logged(&app, "tally-worker", &worker_log, &[]);
    let traffic = Traffic {
        http: reqwest::Client::new(),
        base_url: format!("http://{addr}"),
    };
    traffic.wait_ready().await;
    let mut secrets: Vec<String> = vec![
        ADMIN_TOKEN.into(),
        STRIPE_SECRET.into(),
        POLAR_SECRET.into(),
        app.api_key.clone(),
    ];

    // Apps, keys and secrets through the CLI.
    let (code, created) = cli_logged(&app, &cli_log, &["app", "create", "--name", "logs"]).await;
    assert_eq!(code, 0, "{created}");
    let app_id = created["app_id"].as_str().expect("app id").to_string();
    let key = created["api_key"].as_str().expect("key").to_string();
    let (_, second) = cli_logged(&app, &cli_log, &["key", "create", "--app", &app_id]).await;
    let revoked = second["api_key"].as_str().expect("key").to_string();
    let (code, out) = cli_logged(&app, &cli_log, &["key", "revoke", "--key", &revoked]).await;
    assert_eq!(code, 0, "{out}");
    for (provider, secret) in [("stripe", STRIPE_SECRET), ("polar", POLAR_SECRET)] {
        let (code, out) = cli_logged(
            &app,
            &cli_log,
            &[
                "app",
                "set-webhook-secret",
                "--app",
                &app_id,
                "--provider",
                provider,
                "--secret",
                secret,
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}");
    }
    let bogus = tally_common::apikey::generate();
    secrets.extend([key.clone(), revoked.clone(), bogus.clone()]);

    // API traffic: writes, reads, replays and refusals.
    for (path, body) in [
        ("/credits/add", json!({ "user_id": "u1", "amount": 100 })),
        ("/credits/deduct", json!({ "user_id": "u1", "amount": 30 })),
        (
            "/credits/deduct",
            json!({ "user_id": "u1", "amount": 10_000 }),
        ),
        ("/credits/hold", json!({ "user_id": "u1", "amount": 5 })),
        ("/credits/add", json!({ "user_id": "u1", "ammount": 1 })),
    ] {
        let (status, body) = traffic
            .send(
                "POST",
                path,
                Some(&key),
                &[("idempotency-key", format!("idem-{path}-{body}"))],
                Some(body.to_string()),
            )
            .await;
        assert!(status < 500, "{status} {body}");
    }
    assert_eq!(
        traffic
            .send("GET", "/credits/balance?user_id=u1", Some(&key), &[], None)
            .await
            .0,
        200
    );
    tokio::time::sleep(tally_ingress::auth::KEY_CACHE_TTL).await;
    for bad in [&revoked, &bogus, &ADMIN_TOKEN.to_string()] {
        let (status, _) = traffic
            .send("GET", "/credits/balance?user_id=u1", Some(bad), &[], None)
            .await;
        assert_eq!(status, 401, "refused key");
    }
    let (status, _) = traffic
        .send(
            "GET",
            "/credits/balance?user_id=u1",
            None,
            &[("authorization", format!("Basic {key}"))],
            None,
        )
        .await;
    assert_eq!(status, 401);
    for path in ["/admin/apps", "/dashboard"] {
        let (status, _) = traffic
            .send("GET", path, Some(ADMIN_TOKEN), &[], None)
            .await;
        assert!(status < 500);
    }

    // Webhooks: signed, forged with another secret, stale.
    let now = chrono::Utc::now().timestamp();
    let polar_key = base64::engine::general_purpose::STANDARD
        .decode(POLAR_SECRET.trim_start_matches("whsec_"))
        .expect("base64 secret");
    let mut signatures = Vec::new();
    let sign = |secret: &str, t: i64, body: &str| {
        hex::encode(hmac(secret.as_bytes(), format!("{t}.{body}").as_bytes()))
    };
    assert_eq!(
        traffic.stripe(&app_id, STRIPE_SECRET, now, "evt_ok").await,
        200
    );
    assert_eq!(
        traffic
            .stripe(&app_id, "whsec_forged", now, "evt_forged")
            .await,
        400
    );
    assert_eq!(
        traffic
            .stripe(&app_id, STRIPE_SECRET, now - 3600, "evt_stale")
            .await,
        400
    );
    assert_eq!(traffic.polar(&app_id, &polar_key, now, "ord_ok").await, 200);
    assert_eq!(
        traffic.polar(&app_id, b"forged", now, "ord_forged").await,
        400
    );
    // The signatures those requests carried (recomputed: same bodies, same times).
    for (secret, t, event_id) in [
        (STRIPE_SECRET, now, "evt_ok"),
        ("whsec_forged", now, "evt_forged"),
        (STRIPE_SECRET, now - 3600, "evt_stale"),
    ] {
        let body = json!({ "id": event_id, "object": "event", "type": "payment_intent.succeeded",
            "data": { "object": { "id": format!("pi_{event_id}"), "object": "payment_intent",
                                  "amount": 500, "amount_received": 500, "currency": "usd",
                                  "metadata": { "tally_user_id": "payer", "tally_credits": "50" } } } })
        .to_string();
        signatures.push(sign(secret, t, &body));
    }
    for (key_bytes, order_id) in [(&polar_key[..], "ord_ok"), (&b"forged"[..], "ord_forged")] {
        let body = json!({ "type": "order.paid", "data": { "id": order_id, "status": "paid",
            "metadata": { "tally_user_id": "payer", "tally_credits": "70" } } })
        .to_string();
        signatures.push(base64::engine::general_purpose::STANDARD.encode(hmac(
            key_bytes,
            format!("msg_{order_id}.{now}.{body}").as_bytes(),
        )));
    }
    secrets.extend(signatures);

    // Both payments are applied by the logging worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, balance) = traffic
            .send(
                "GET",
                "/credits/balance?user_id=payer",
                Some(&key),
                &[],
                None,
            )
            .await;
        if balance["balance"] == 120 {
            break;
        }
        assert!(Instant::now() < deadline, "payments not applied: {balance}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut captured = String::new();
    for log in [&ingress_log, &worker_log, &cli_log] {
        captured.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    let ingress_text = std::fs::read_to_string(&ingress_log).unwrap_or_default();
    assert!(
        ingress_text.contains("webhook refused") && ingress_text.lines().count() > 50,
        "the ingress's logs were not captured at full verbosity"
    );
    assert!(
        std::fs::read_to_string(&worker_log)
            .unwrap_or_default()
            .lines()
            .count()
            > 10,
        "the worker's logs were not captured"
    );
    let found = leaks(&captured, &secrets);
    assert!(
        found.is_empty(),
        "{} log lines hold a secret, e.g.: {}",
        found.len(),
        found.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`cli_logged`] with extra environment variables, writing `stdin` to its standard input.
async fn cli_stdin_logged(
    app: &TestApp,
    log: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (i32, Value) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(workspace_binary("tally"))
        .args(args)
        .env("TALLY_DATABASE_URL", &app.db.url)
        .env("TALLY_NATS_URL", app.nats.url())
        .env("TALLY_NAMESPACE", &app.namespace)
        .env("TALLY_PARTITIONS", TEST_PARTITIONS.to_string())
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tally");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().await.expect("tally output");
    let mut captured = std::fs::read(log).unwrap_or_default();
    captured.extend_from_slice(&output.stderr);
    std::fs::write(log, captured).expect("append cli log");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), value)
}

/// An app's Stripe secret key, set through the CLI and the admin API, used by a worker's auto
/// top-up charges (accepted, then refused by Stripe as unknown): no log line of any process at
/// the most verbose level holds it, nor `TALLY_SECRET_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stripe_secret_key_reaches_no_log() {
    const STRIPE_KEY: &str = "sk_test_51LogCheckStripeKey9f8e7d6c5b4a";
    const OTHER_KEY: &str = "rk_test_51OtherRestrictedKey0a1b2c3d4e";
    const SEALING: &str = "sealing-secret-for-the-log-check-0123456789";
    let stripe = crate::stripe_standin::StripeStandIn::start(STRIPE_KEY).await;
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("tally-it-stripe-logs-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let (ingress_log, worker_log, cli_log) = (
        dir.join("ingress.log"),
        dir.join("worker.log"),
        dir.join("cli.log"),
    );
    let base = stripe.base_url();
    let plans_env = [
        ("TALLY_STRIPE_API_BASE", base.as_str()),
        ("TALLY_SECRET_KEY", SEALING),
    ];
    let addr = free_local_addr();
    let mut ingress_env = vec![
        ("TALLY_HTTP_ADDR", addr.as_str()),
        ("TALLY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TALLY_LOG_FORMAT", "json"),
    ];
    ingress_env.extend(plans_env);
    let _ingress = spawn_logged(&app, "tally-ingress", &ingress_log, &ingress_env);
    let _worker = spawn_logged(&app, "tally-worker", &worker_log, &plans_env);
    let traffic = Traffic {
        http: reqwest::Client::new(),
        base_url: format!("http://{addr}"),
    };
    traffic.wait_ready().await;
    let app_id = app.app_id.to_string();

    // Set through the CLI (standard input), refused when malformed, then through the API.
    let args = ["app", "set-stripe-key", "--app", app_id.as_str()];
    let (code, out) = cli_stdin_logged(&app, &cli_log, &args, &plans_env, OTHER_KEY).await;
    assert_eq!(code, 0, "{out}");
    let (code, _) =
        cli_stdin_logged(&app, &cli_log, &args, &plans_env, &format!("{STRIPE_KEY}!")).await;
    assert_ne!(code, 0);
    let response = traffic
        .http
        .put(format!(
            "{}/admin/apps/{app_id}/stripe_key",
            traffic.base_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "secret_key": format!("{STRIPE_KEY} ") }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    let response = traffic
        .http
        .put(format!(
            "{}/admin/apps/{app_id}/stripe_key",
            traffic.base_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "secret_key": STRIPE_KEY }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret FROM app_stripe_keys WHERE app_id = $1")
            .bind(app.app_id)
            .fetch_one(&app.pool)
            .await
            .expect("stored key");
    assert!(
        !String::from_utf8_lossy(&stored).contains("LogCheck"),
        "the key is stored in the clear"
    );

    // A charge with the key, then one Stripe refuses (the key is no longer valid there).
    let key = &app.api_key;
    for (path, body) in [
        ("/credits/add", json!({ "user_id": "payer", "amount": 100 })),
        (
            "/credits/auto_topup",
            json!({ "user_id": "payer", "enabled": true, "threshold": 90, "credits": 500,
                    "amount": 500, "currency": "usd", "stripe_customer_id": "cus_1",
                    "stripe_payment_method_id": "pm_1" }),
        ),
    ] {
        let response = traffic
            .http
            .request(
                if path == "/credits/add" {
                    reqwest::Method::POST
                } else {
                    reqwest::Method::PUT
                },
                format!("{}{path}", traffic.base_url),
            )
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = traffic
        .send(
            "POST",
            "/credits/deduct",
            Some(key),
            &[],
            Some(json!({ "user_id": "payer", "amount": 20 }).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stripe.requests().is_empty() {
        assert!(Instant::now() < deadline, "no charge was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stripe.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );
    // Applied: the charge's answer went through the worker's logs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, settings) = traffic
            .send(
                "GET",
                "/credits/auto_topup?user_id=payer",
                Some(key),
                &[],
                None,
            )
            .await;
        if settings["last_attempt"]["payment_intent_id"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the charge never applied: {settings}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut captured = String::new();
    for log in [&ingress_log, &worker_log, &cli_log] {
        captured.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    assert!(
        std::fs::read_to_string(&worker_log)
            .unwrap_or_default()
            .contains("Stripe answered an auto top-up charge"),
        "the worker's trace of its call to Stripe was not captured"
    );
    let secrets: Vec<String> = [STRIPE_KEY, OTHER_KEY, SEALING]
        .iter()
        .flat_map(|secret| [secret.to_string(), secret[8..].to_string()])
        .collect();
    let found = leaks(&captured, &secrets);
    assert!(
        found.is_empty(),
        "{} log lines hold a Stripe key, e.g.: {}",
        found.len(),
        found.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_leak_check_finds_a_key_even_without_its_prefix() {
    let key = tally_common::apikey::generate();
    let log = format!("line one\nauthorization: {}\nline three", &key[10..]);
    assert_eq!(leaks(&log, &[key]).len(), 1);
    assert!(leaks("nothing here", &["secret".into()]).is_empty());
}
