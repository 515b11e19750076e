//! A randomized soak: concurrent clients send a mix of every write (sync and async, with and
//! without idempotency keys, some sent twice) while workers crash and restart; afterwards every
//! accepted command has been applied once and `tally verify` holds. A short run by default;
//! `TALLY_TEST_SOAK=1` runs a long one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{spawn_app_with, Options, TestApp};

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Known {
    ledger_ids: Vec<String>,
    hold_ids: Vec<String>,
    /// The ids of the commands answered `202`: each must be applied in the end.
    accepted: Vec<uuid::Uuid>,
}

async fn one_operation(
    app: &TestApp,
    rng: &mut Rng,
    known: &Mutex<Known>,
    client: usize,
    step: usize,
) -> Option<u16> {
    let user = format!("soak-{}", rng.below(12));
    let amount = 1 + rng.below(60) as i64;
    let (path, body) = match rng.below(10) {
        0..=2 => {
            let mut body = json!({ "user_id": user, "amount": amount * 3 });
            if rng.below(3) == 0 {
                body["expires_in_seconds"] = json!(1 + rng.below(3));
            }
            ("/credits/add", body)
        }
        3..=5 => (
            "/credits/deduct",
            json!({ "user_id": user, "amount": amount }),
        ),
        6 => {
            let target = {
                let known = known.lock().unwrap();
                (!known.ledger_ids.is_empty()).then(|| {
                    known.ledger_ids[rng.below(known.ledger_ids.len() as u64) as usize].clone()
                })
            }?;
            let mut body = json!({ "ledger_id": target });
            if rng.below(2) == 0 {
                body["amount"] = json!(1 + rng.below(5));
            }
            ("/credits/refund", body)
        }
        7 => (
            "/credits/hold",
            json!({ "user_id": user, "amount": amount, "expires_in_seconds": 1 + rng.below(4) }),
        ),
        _ => {
            let hold = {
                let known = known.lock().unwrap();
                (!known.hold_ids.is_empty()).then(|| {
                    known.hold_ids[rng.below(known.hold_ids.len() as u64) as usize].clone()
                })
            }?;
            if rng.below(2) == 0 {
                (
                    "/credits/capture",
                    json!({ "hold_id": hold, "amount": 1 + rng.below(3) }),
                )
            } else {
                ("/credits/release", json!({ "hold_id": hold }))
            }
        }
    };
    let key = format!("soak-{client}-{step}");
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if rng.below(3) == 0 {
        headers.push(("idempotency-key", &key));
    }
    if rng.below(4) == 0 {
        headers.push(("prefer", "respond-async"));
    }
    let (status, answer) = app.post_with(path, body.clone(), &headers).await;
    // Retry some keyed requests, as a client would after a timeout: never a second effect.
    if headers.iter().any(|(name, _)| *name == "idempotency-key") && rng.below(2) == 0 {
        let (again, _) = app.post_with(path, body, &headers).await;
        assert!(again < 500, "retry of {path} failed with {again}");
    }
    assert!(status < 500, "{path} failed with {status}: {answer}");
    if status == 202 {
        let id = answer["command_id"].as_str().expect("a 202's command_id");
        known.lock().unwrap().accepted.push(id.parse().unwrap());
    }
    if status == 200 {
        let mut known = known.lock().unwrap();
        if let Some(id) = answer["ledger_id"].as_str() {
            known.ledger_ids.push(id.to_string());
        }
        if let Some(id) = answer["hold_id"].as_str() {
            if path == "/credits/hold" {
                known.hold_ids.push(id.to_string());
            }
        }
    }
    Some(status)
}

#[tokio::test]
async fn random_writes_with_crashing_workers_keep_every_invariant() {
    let long = std::env::var_os("TALLY_TEST_SOAK").is_some();
    let operations_per_client = if long { 2_000 } else { 60 };
    let clients = 8;
    let seed: u64 = std::env::var("TALLY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a11_5eed);
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let known = Arc::new(Mutex::new(Known::default()));
    let started = Instant::now();

    let app_shared: &TestApp = &app;
    let runs = (0..clients).map(|client| {
        let known = known.clone();
        async move {
            let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut done = 0;
            for step in 0..operations_per_client {
                if one_operation(app_shared, &mut rng, &known, client, step)
                    .await
                    .is_some()
                {
                    done += 1;
                }
            }
            done
        }
    });
    // While the clients write: crash a worker mid-flight (its task is dropped, its connections
    // die), start another, stop one gracefully, start another.
    let chaos = async {
        let first = app_shared.new_worker();
        let second = app_shared.new_worker();
        let round = Duration::from_millis(if long { 5_000 } else { 400 });
        tokio::time::sleep(round).await;
        drop(first);
        let third = app_shared.new_worker();
        tokio::time::sleep(round).await;
        second.stop().await;
        let fourth = app_shared.new_worker();
        (third, fourth)
    };
    let (done, _survivors) = tokio::join!(futures::future::join_all(runs), chaos);
    let total: usize = done.iter().sum();
    assert!(
        total > clients * operations_per_client / 2,
        "too few operations ran: {total}"
    );

    // Every accepted command is applied; every expiry due is written.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let accepted = known.lock().unwrap().accepted.clone();
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM UNNEST($1::uuid[]) AS a(id)
             WHERE NOT EXISTS (SELECT 1 FROM processed_commands p
                               WHERE p.command_id = a.id AND p.status <> 'cancelled')",
        )
        .bind(&accepted)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let due: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM lots WHERE expired_at IS NULL AND expires_at <= now())
                  + (SELECT count(*) FROM holds WHERE status = 'active' AND expires_at <= now())",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if pending == 0 && due == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} accepted commands unapplied, {due} expiries unwritten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let balances: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(a) FROM accounts a WHERE balance < 0 OR held > balance",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(balances.is_empty(), "{balances:?}");
    app.assert_verified().await;
    eprintln!("soak: {total} operations in {:?}", started.elapsed());
}
