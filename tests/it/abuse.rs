//! Denial of service and brute force, against a real deployment: connections that stall their
//! headers or bodies are cut at short configured deadlines while other clients are served, the
//! connection cap queues rather than refuses, failed authentication is budgeted per client
//! address without database lookups, forged webhooks never spend an app's webhook budget,
//! dashboard logins are throttled, and unsafe configuration stops the ingress at start.
//!
//! Clients take other loopback addresses (127.0.0.2, …) to stand for other machines.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{create_key, spawn_app, spawn_app_with, workspace_binary, Options, TestApp};

/// The contract's failed-authentication budget of an address, a minute.
const AUTH_FAILURES_PER_MINUTE: usize = 100;
/// The contract's failed-login budget of an address, a minute.
const LOGIN_FAILURES_PER_MINUTE: usize = 10;
const STRIPE_SECRET: &str = "whsec_abuse_test_secret";
/// Short deadlines of the timeout tests, in place of the contract's 10 s and 30 s.
const HEADER_DEADLINE: Duration = Duration::from_millis(1_500);
const BODY_STALL_DEADLINE: Duration = Duration::from_millis(1_000);
/// How long past its deadline a stalled connection may take to be seen closed before the test
/// calls it never closed (a loaded machine is slow; this is not a performance figure).
const CLOSE_SLACK: Duration = Duration::from_secs(15);

fn host_port(app: &TestApp) -> String {
    app.base_url.trim_start_matches("http://").to_string()
}

/// Opens a connection and writes `bytes`, then sends nothing more; with the instant just before
/// it connected (the server cannot start its deadline earlier).
async fn stall(app: &TestApp, bytes: &[u8]) -> (TcpStream, Instant) {
    let opened = Instant::now();
    let mut stream = TcpStream::connect(host_port(app)).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    (stream, opened)
}

/// Reads until the server closes the connection: what it sent and how long the connection
/// lived; `None` if it is still open `limit` after it was opened.
async fn until_closed(
    mut stream: TcpStream,
    opened: Instant,
    limit: Duration,
) -> Option<(String, Duration)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.checked_sub(opened.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((String::from_utf8_lossy(&received).into(), opened.elapsed()))
            }
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

/// An HTTP client whose connections come from `local` (a loopback address standing for another
/// machine); redirects are not followed.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().expect("address"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `GET /credits/balance` with `authorization` (if any) and extra headers: status,
/// `Retry-After`, body.
async fn balance_with(
    app: &TestApp,
    client: &reqwest::Client,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut request = client.get(app.url("/credits/balance?user_id=abuse"));
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.expect("request")).await
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

/// `tally_ingress_<name>{kind="<kind>"}` from `/metrics` (the recorder is shared by every
/// ingress of the test process, so only increases are meaningful).
async fn counter(app: &TestApp, name: &str, kind: &str) -> u64 {
    let text = app.get_text(&app.url("/metrics")).await;
    let prefix = format!("tally_ingress_{name}{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().expect("counter value"))
}

/// Transactions the test database has committed or rolled back, as Postgres counts them.
async fn transactions(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await
    .expect("pg_stat_database")
}

fn malformed_key(i: usize) -> String {
    format!("Bearer not-a-key-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_headers_are_cut_at_the_deadline_while_other_clients_are_served() {
    let app = spawn_app_with(Options {
        ingress: |config| config.abuse.header_read_timeout_ms = HEADER_DEADLINE.as_millis() as u64,
        ..Options::default()
    })
    .await;
    app.add("abuse", 5).await;

    // 1,000 connections: half send part of a request's headers, half nothing at all.
    let mut stalled = Vec::new();
    for i in 0..1_000 {
        let bytes: &[u8] = if i % 2 == 0 {
            b"GET /credits/balance?user_id=abuse HTTP/1.1\r\nHost: tally\r\nAuthoriz"
        } else {
            b""
        };
        stalled.push(stall(&app, bytes).await);
    }
    let last_opened = Instant::now();

    // Clients that send whole requests are answered meanwhile.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(app.balance("abuse").await, 5);
        slowest = slowest.max(started.elapsed());
    }
    let served_within_deadline = last_opened.elapsed() < HEADER_DEADLINE;

    let closes = stalled
        .into_iter()
        .map(|(stream, opened)| {
            tokio::spawn(until_closed(stream, opened, HEADER_DEADLINE + CLOSE_SLACK))
        })
        .collect::<Vec<_>>();
    let mut lived = Vec::new();
    for close in closes {
        let (received, life) = close
            .await
            .expect("reader")
            .expect("a stalled connection was never closed");
        assert!(
            received.is_empty() || received.starts_with("HTTP/1.1 408"),
            "{received}"
        );
        assert!(
            life >= HEADER_DEADLINE,
            "closed before the deadline: {life:?}"
        );
        lived.push(life);
    }
    lived.sort();
    println!(
        "abuse stalled_headers: connections=1000 deadline={HEADER_DEADLINE:?} lived_min={:?} lived_max={:?} \
         real_requests=20 slowest_real_answer={slowest:?} all_answered_while_held={served_within_deadline}",
        lived[0],
        lived[lived.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_is_answered_408_and_closed_and_writes_nothing() {
    let app = spawn_app_with(Options {
        ingress: |config| {
            config.abuse.body_stall_timeout_ms = BODY_STALL_DEADLINE.as_millis() as u64
        },
        ..Options::default()
    })
    .await;
    app.add("warm", 1).await;
    let rows_before = app.ledger_rows().await;

    // 50 writes whose 1,000-byte body stops after 10 bytes.
    let head = format!(
        "POST /credits/add HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user_id\"",
        app.api_key
    );
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(stall(&app, head.as_bytes()).await);
    }
    assert_eq!(app.balance("warm").await, 1, "others are served meanwhile");

    let mut lived = Vec::new();
    for (stream, opened) in stalled {
        let (received, life) = until_closed(stream, opened, BODY_STALL_DEADLINE + CLOSE_SLACK)
            .await
            .expect("a stalled body was never given up");
        assert!(received.starts_with("HTTP/1.1 408"), "{received}");
        assert!(received.contains("request_timeout"), "{received}");
        assert!(life >= BODY_STALL_DEADLINE, "{life:?}");
        lived.push(life);
    }
    assert_eq!(
        app.ledger_rows().await,
        rows_before,
        "a refused write wrote nothing"
    );
    lived.sort();
    println!(
        "abuse stalled_bodies: requests=50 deadline={BODY_STALL_DEADLINE:?} answered=408 lived_min={:?} lived_max={:?}",
        lived[0],
        lived[lived.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_connection_cap_new_connections_wait_until_one_closes() {
    const CAP: usize = 16;
    let app = spawn_app_with(Options {
        ingress: |config| config.abuse.max_connections = CAP,
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(
            stall(&app, b"GET /healthz HTTP/1.1\r\nHost: tally\r\n")
                .await
                .0,
        );
    }

    // A whole request on one more connection is not served while the cap is reached …
    let (mut waiting, opened) = stall(&app, b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n").await;
    let mut buffer = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buffer)).await;
    assert!(early.is_err(), "served past the connection cap");

    // … and is served as soon as connections close: queued, not refused.
    drop(held);
    let read = tokio::time::timeout(CLOSE_SLACK, waiting.read(&mut buffer))
        .await
        .expect("never served after the cap freed")
        .expect("read");
    let answer = String::from_utf8_lossy(&buffer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!(
        "abuse connection_cap: cap={CAP} held={CAP} queued_request_served_after={:?}",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentication_is_throttled_per_address_without_database_lookups() {
    let app = spawn_app().await;
    let attacker = client_from("127.0.0.2");
    let neighbour = client_from("127.0.0.3");
    let bearer = format!("Bearer {}", app.api_key);
    // The app's key is known to be valid: it was used from the attacker's address before.
    let (status, _, body) = balance_with(&app, &attacker, Some(&bearer), &[]).await;
    assert_eq!(status, 200, "{body}");
    let unused = format!("Bearer {}", create_key(&app.pool, app.app_id).await);
    let throttled_before = counter(&app, "rate_limited_total", "failed_auth").await;

    // Take the key table away: a lookup now fails with a 500, so every answer below that is not
    // a 500 was given without one.
    sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_away")
        .execute(&app.pool)
        .await
        .expect("rename");
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    let mut retry_after = None;
    for i in 0..AUTH_FAILURES_PER_MINUTE + 50 {
        let key = match i % 3 {
            0 => malformed_key(i),
            1 => "Bearer TK_0123".to_string(),
            _ => String::new(),
        };
        let authorization = (!key.is_empty()).then_some(key.as_str());
        let (status, after, body) = balance_with(&app, &attacker, authorization, &[]).await;
        *answers.entry(status).or_default() += 1;
        if status == 429 {
            assert_eq!(body["error"], "rate_limited", "{body}");
            retry_after = after;
        }
    }
    assert_eq!(
        answers,
        [(401, AUTH_FAILURES_PER_MINUTE), (429, 50)].into(),
        "malformed and missing keys: 401 without a lookup, then 429"
    );
    let seconds: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&seconds), "{seconds}");
    // Over budget, a well-formed key not known to be valid is refused without a lookup …
    let (status, _, _) = balance_with(&app, &attacker, Some(&unused), &[]).await;
    assert_eq!(status, 429);
    // … while the known key still passes, and another address is unaffected (its well-formed
    // key is looked up — and fails, the table being away).
    let (status, _, body) = balance_with(&app, &attacker, Some(&bearer), &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = balance_with(&app, &neighbour, Some("Bearer nope"), &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = balance_with(&app, &neighbour, Some(&unused), &[]).await;
    assert_eq!(status, 500, "a well-formed key under budget is looked up");
    sqlx::query("ALTER TABLE api_keys_away RENAME TO api_keys")
        .execute(&app.pool)
        .await
        .expect("rename back");
    let (status, _, body) = balance_with(&app, &neighbour, Some(&unused), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        counter(&app, "rate_limited_total", "failed_auth").await >= throttled_before + 51,
        "throttled attempts are counted"
    );

    // The figure: a flood of 1,500 random malformed keys from one more address.
    let flooder = client_from("127.0.0.4");
    let before = transactions(&app).await;
    let mut refused = 0;
    for _ in 0..1_500 {
        let key = format!("Bearer tk_{}", uuid::Uuid::new_v4().simple());
        let (status, _, _) = balance_with(&app, &flooder, Some(&key), &[]).await;
        refused += usize::from(status == 429);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let spent = transactions(&app).await - before;
    assert_eq!(refused, 1_500 - AUTH_FAILURES_PER_MINUTE);
    assert!(spent < 300, "the flood cost {spent} database transactions");
    println!(
        "abuse bad_key_flood: keys=1500 answered_401={AUTH_FAILURES_PER_MINUTE} answered_429={refused} \
         database_transactions_during_flood={spent} (the deployment's own background work included)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_budgeted_and_spoofing_fails() {
    let app = spawn_app_with(Options {
        ingress: |config| config.abuse.trusted_proxies = Some("127.0.0.0/24".into()),
        ..Options::default()
    })
    .await;
    let proxy = client_from("127.0.0.5");
    for i in 0..AUTH_FAILURES_PER_MINUTE {
        let (status, _, _) = balance_with(
            &app,
            &proxy,
            Some(&malformed_key(i)),
            &[("x-forwarded-for", "198.51.100.1")],
        )
        .await;
        assert_eq!(status, 401);
    }
    let as_client = |forwarded: &'static str| {
        let (app, proxy) = (&app, &proxy);
        async move {
            balance_with(
                app,
                proxy,
                Some("Bearer nope"),
                &[("x-forwarded-for", forwarded)],
            )
            .await
            .0
        }
    };
    assert_eq!(as_client("198.51.100.1").await, 429);
    // What a client writes on the left of the header does not make it someone else.
    assert_eq!(as_client("198.51.100.2, 198.51.100.1").await, 429);
    // Another client behind the same proxy is unaffected.
    assert_eq!(as_client("198.51.100.2").await, 401);
    assert_eq!(as_client("198.51.100.1, 198.51.100.2").await, 401);

    // Without TALLY_TRUSTED_PROXIES the header is not believed: the peer is the client.
    let direct = spawn_app().await;
    let client = client_from("127.0.0.6");
    for i in 0..AUTH_FAILURES_PER_MINUTE {
        let forwarded = format!("203.0.113.{}", i % 250);
        let (status, _, _) = balance_with(
            &direct,
            &client,
            Some(&malformed_key(i)),
            &[("x-forwarded-for", &forwarded)],
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = balance_with(
        &direct,
        &client,
        Some("Bearer nope"),
        &[("x-forwarded-for", "203.0.113.251")],
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_admin_tokens_are_throttled_and_the_right_one_still_passes() {
    let app = spawn_app().await;
    let client = client_from("127.0.0.7");
    let admin_apps = |token: String| {
        let (app, client) = (&app, &client);
        async move {
            read(
                client
                    .get(app.url("/admin/apps"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        }
    };
    for i in 0..AUTH_FAILURES_PER_MINUTE {
        let (status, _, _) = admin_apps(format!("wrong-admin-token-{i:0>20}")).await;
        assert_eq!(status, 401);
    }
    let (status, retry_after, body) = admin_apps("wrong".into()).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
    // API calls from the address are throttled too: one budget for every failure.
    let (status, _, _) = balance_with(&app, &client, Some("Bearer nope"), &[]).await;
    assert_eq!(status, 429);
    let (status, _, body) = admin_apps(crate::harness::ADMIN_TOKEN.into()).await;
    assert_eq!(status, 200, "{body}");
}

fn stripe_payment(event_id: &str, user: &str) -> String {
    json!({ "id": event_id, "object": "event", "type": "payment_intent.succeeded",
        "data": { "object": { "id": format!("pi_{event_id}"), "object": "payment_intent",
                              "amount": 1000, "amount_received": 1000, "currency": "usd",
                              "metadata": { "tally_user_id": user, "tally_credits": "100" } } } })
    .to_string()
}

fn stripe_signature(secret: &str, body: &str) -> String {
    let t = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_stripe(
    app: &TestApp,
    client: &reqwest::Client,
    body: &str,
    signature: &str,
) -> (u16, Option<String>, Value) {
    read(
        client
            .post(app.url(&format!("/webhooks/stripe/{}", app.app_id)))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body.to_string())
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_webhooks_never_spend_the_apps_webhook_budget() {
    let app = spawn_app_with(Options {
        ingress: |config| {
            config.rate_limits.webhook_rate_limit_rps = Some(1);
            config.rate_limits.webhook_rate_limit_burst = Some(1);
        },
        ..Options::default()
    })
    .await;
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
    let forger = client_from("127.0.0.8");
    let stripe = client_from("127.0.0.9");

    for i in 0..40 {
        let body = stripe_payment(&format!("evt_forged_{i}"), "mallory");
        let forged = stripe_signature("whsec_not_the_secret", &body);
        let (status, _, body) = post_stripe(&app, &forger, &body, &forged).await;
        assert_eq!(status, 400, "{body}");
    }
    let genuine = stripe_payment("evt_genuine_0", "payer");
    let (status, _, body) = post_stripe(
        &app,
        &stripe,
        &genuine,
        &stripe_signature(STRIPE_SECRET, &genuine),
    )
    .await;
    assert_eq!(status, 200, "40 forgeries left the budget whole: {body}");
    // Genuine deliveries do draw on it (1 a second): of five more sent at once, some wait.
    let mut accepted = 1;
    let mut refused = 0;
    for i in 1..=5 {
        let body = stripe_payment(&format!("evt_genuine_{i}"), "payer");
        let (status, _, _) = post_stripe(
            &app,
            &stripe,
            &body,
            &stripe_signature(STRIPE_SECRET, &body),
        )
        .await;
        match status {
            200 => accepted += 1,
            429 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 1, "a signed delivery draws on the budget");

    // Forgeries are failed authentications of their address.
    for i in 40..AUTH_FAILURES_PER_MINUTE {
        let body = stripe_payment(&format!("evt_forged_{i}"), "mallory");
        let (status, _, _) = post_stripe(&app, &forger, &body, "t=1,v1=00").await;
        assert_eq!(status, 400);
    }
    let body = stripe_payment("evt_forged_last", "mallory");
    let (status, retry_after, _) = post_stripe(&app, &forger, &body, "t=1,v1=00").await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    app.wait_processed(accepted, Duration::from_secs(20)).await;
    assert_eq!(app.balance("payer").await, 100 * accepted);
    assert_eq!(app.balance("mallory").await, 0);
}

async fn login(
    app: &TestApp,
    client: &reqwest::Client,
    token: &str,
) -> (u16, Option<String>, String) {
    let response = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("login");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_logins_are_throttled_after_ten_failures_per_address() {
    let app = spawn_app().await;
    let guesser = client_from("127.0.0.10");
    for i in 0..LOGIN_FAILURES_PER_MINUTE {
        let (status, _, _) = login(&app, &guesser, &format!("guess-{i}")).await;
        assert_eq!(status, 401);
    }
    let (status, retry_after, page) = login(&app, &guesser, "guess-again").await;
    assert_eq!(status, 429);
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&seconds));
    assert!(page.contains("too many failed"), "{page}");
    // Past the budget even the right token waits: a guess must not tell right from wrong.
    let (status, _, _) = login(&app, &guesser, crate::harness::ADMIN_TOKEN).await;
    assert_eq!(status, 429);
    // Another address logs in.
    let (status, _, _) = login(
        &app,
        &client_from("127.0.0.11"),
        crate::harness::ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 303);
}

/// Runs `tally-ingress` with `env` and returns its exit code and standard error once it stops
/// (it must stop by itself within 30 s).
async fn ingress_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(workspace_binary("tally-ingress"))
        .env("TALLY_HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tally-ingress");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tally-ingress did not stop by itself")
        .expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test]
async fn unsafe_configuration_stops_the_ingress_at_start_naming_what_is_wrong() {
    let app = spawn_app().await;
    let (code, stderr) = ingress_start(&[
        ("TALLY_DATABASE_URL", &app.db.url),
        ("TALLY_NATS_URL", &app.nats_url),
        ("TALLY_ADMIN_TOKEN", "short"),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("TALLY_ADMIN_TOKEN must be at least 32 characters"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the token itself is not printed: {stderr}"
    );

    let (code, stderr) = ingress_start(&[
        ("TALLY_DATABASE_URL", &app.db.url),
        ("TALLY_NATS_URL", &app.nats_url),
        ("TALLY_TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal"),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("TALLY_TRUSTED_PROXIES"), "{stderr}");

    // NATS credentials never reach the start-up error.
    let closed = crate::harness::free_local_addr();
    let (code, stderr) = ingress_start(&[
        ("TALLY_DATABASE_URL", &app.db.url),
        (
            "TALLY_NATS_URL",
            &format!("nats://tally:n4ts-pa55word@{closed}"),
        ),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach NATS at nats://***@"),
        "{stderr}"
    );
    assert!(!stderr.contains("n4ts-pa55word"), "{stderr}");
}

#[tokio::test]
async fn a_webhook_secret_is_read_from_standard_input_without_secret() {
    let app = spawn_app().await;
    let mut child = tokio::process::Command::new(workspace_binary("tally"))
        .args([
            "app",
            "set-webhook-secret",
            "--app",
            &app.app_id.to_string(),
            "--provider",
            "stripe",
        ])
        .env("TALLY_DATABASE_URL", &app.db.url)
        .env("TALLY_NATS_URL", &app.nats_url)
        .env("TALLY_NAMESPACE", &app.namespace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tally");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"whsec_from_standard_input\n")
        .await
        .expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("tally");
    assert!(output.status.success(), "{output:?}");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE app_id = $1")
            .bind(app.app_id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, ["whsec_from_standard_input"]);
}
