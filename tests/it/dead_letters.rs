//! Poison commands: a command whose apply always fails is dead-lettered after bounded retries,
//! its partition keeps flowing, and `tally dead-letters retry` applies it exactly once.

use futures::future::join_all;
use serde_json::{json, Value};
use tally_common::command::{BatchedCommand, CommandBatch};
use tally_common::partition::Names;
use uuid::Uuid;

use crate::harness::{free_local_addr, spawn_app_with, Options, TestApp};

/// Makes every ledger entry described `poison` fail to insert, the way a command whose apply
/// always fails does (a non-transient database error, on the fast path and the full path).
async fn poison_entries(app: &TestApp) {
    sqlx::raw_sql(
        "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.description = 'poison' THEN
                 RAISE EXCEPTION 'poisoned entry for %', NEW.user_id;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_poison BEFORE INSERT ON ledger_entries
             FOR EACH ROW EXECUTE FUNCTION test_poison();",
    )
    .execute(&app.pool)
    .await
    .expect("install the poison trigger");
}

async fn cure_entries(app: &TestApp) {
    sqlx::raw_sql("DROP TRIGGER test_poison ON ledger_entries; DROP FUNCTION test_poison();")
        .execute(&app.pool)
        .await
        .expect("drop the poison trigger");
}

async fn entries_described(app: &TestApp, description: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE description = $1")
        .bind(description)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_poison_command_is_dead_lettered_and_a_retry_applies_it_exactly_once() {
    // Arrange: a worker process (its own metrics), a known user, then the poison.
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let metrics_addr = free_local_addr();
    let _worker = app.spawn_worker_process_with(&[("TALLY_WORKER_METRICS_ADDR", &metrics_addr)]);
    app.add("u1", 10).await;
    poison_entries(&app).await;

    // A synchronous requester learns at once that its command was set aside.
    let (status, body) = app
        .post(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "description": "poison" }),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "internal");

    // One poison among commands of the same user, published together: the batch fails, its
    // commands are tried one by one, the poison is parked and the rest apply.
    let mut burst: Vec<_> = (0..10)
        .map(|_| {
            Box::pin(app.post_with(
                "/credits/add",
                json!({ "user_id": "u1", "amount": 1 }),
                &[("prefer", "respond-async")],
            ))
        })
        .collect();
    burst.insert(
        5,
        Box::pin(app.post_with(
            "/credits/add",
            json!({ "user_id": "u1", "amount": 5, "description": "poison" }),
            &[("prefer", "respond-async")],
        )),
    );
    let accepted: Vec<(u16, Value)> = join_all(burst).await;
    for (status, body) in &accepted {
        assert_eq!(*status, 202, "{body}");
    }
    let poisoned = accepted[5].1["command_id"].as_str().unwrap().to_string();
    for (_, body) in &accepted {
        app.wait_applied(body["command_id"].as_str().unwrap()).await;
    }

    // Assert: the partition kept flowing.
    let (status, body) = app.deduct("u1", 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance_after"], 10 + 10 - 2);

    // GET /commands/{id} says the command was dead-lettered, after the stated attempts.
    let status = app.wait_applied(&poisoned).await;
    assert_eq!(status["status"], "rejected", "{status}");
    assert_eq!(status["http_status"], 500);
    assert_eq!(status["result"]["error"], "internal");
    assert_eq!(status["dead_letter"]["state"], "parked");
    assert_eq!(status["dead_letter"]["attempts"], 3);
    assert_eq!(status["dead_letter"]["retried_at"], Value::Null);
    let openapi: Value =
        serde_json::from_str(&app.get_text(&app.url("/openapi.json")).await).unwrap();
    let schemas = &openapi["components"]["schemas"];
    assert!(
        schemas["CommandStatus"]["properties"]["dead_letter"].is_object()
            && schemas["DeadLetter"]["properties"]["state"].is_object(),
        "the OpenAPI document describes dead_letter: {}",
        schemas["CommandStatus"]
    );
    let applied_one = accepted[0].1["command_id"].as_str().unwrap();
    let (_, normal) = app.get(&format!("/commands/{applied_one}")).await;
    assert_eq!(normal["dead_letter"], Value::Null, "{normal}");

    // Metrics count both; the operator's list shows both, with the reason.
    let metrics = app
        .get_text(&format!("http://{metrics_addr}/metrics"))
        .await;
    assert_eq!(
        counter(&metrics, "tally_worker_dead_letters_total"),
        2,
        "{metrics}"
    );
    let (code, listed) = app.cli(&["dead-letters", "list", "--json"]).await;
    assert_eq!(code, 0, "{listed}");
    assert_eq!(listed["count"], 2, "{listed}");
    for letter in listed["dead_letters"].as_array().unwrap() {
        assert_eq!(letter["state"], "parked");
        assert_eq!(letter["user_id"], "u1");
        assert_eq!(letter["kind"], "add");
        assert!(
            letter["error"]
                .as_str()
                .unwrap()
                .contains("poisoned entry for u1"),
            "{letter}"
        );
    }
    let other_app = Uuid::now_v7().to_string();
    let (_, none) = app
        .cli(&["dead-letters", "list", "--json", "--app", &other_app])
        .await;
    assert_eq!(none["count"], 0, "{none}");
    let (code, table) = app.cli(&["dead-letters", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        table.as_str().is_some_and(|t| t.contains(&poisoned)),
        "{table}"
    );

    // Act: the cause is fixed, the operator replays one, then the rest.
    cure_entries(&app).await;
    let (code, retried) = app.cli(&["dead-letters", "retry", &poisoned]).await;
    assert_eq!(code, 0, "{retried}");
    assert_eq!(retried["retried"], json!([poisoned]));
    let status = app.wait_applied(&poisoned).await;
    assert_eq!(status["status"], "applied", "{status}");
    assert_eq!(status["http_status"], 200);
    assert_eq!(status["dead_letter"]["state"], "retried");
    assert!(status["dead_letter"]["retried_at"].is_string(), "{status}");

    let (code, rest) = app.cli(&["dead-letters", "retry", "--all"]).await;
    assert_eq!(code, 0, "{rest}");
    assert_eq!(rest["count"], 1, "{rest}");
    app.wait_applied(rest["retried"][0].as_str().unwrap()).await;
    let (_, listed) = app
        .cli(&["dead-letters", "list", "--json", "--state", "resolved"])
        .await;
    assert_eq!(listed["count"], 2, "{listed}");

    // A replayed command that was answered is not replayed again, and a copy of it arriving
    // later (a redelivery) finds its dedupe record.
    let (code, refused) = app.cli(&["dead-letters", "retry", &poisoned]).await;
    assert_eq!(code, 1, "{refused}");
    let envelope: Value =
        sqlx::query_scalar("SELECT envelope FROM dead_letters WHERE command_id = $1")
            .bind(Uuid::parse_str(&poisoned).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let partition: i32 =
        sqlx::query_scalar("SELECT partition FROM dead_letters WHERE command_id = $1")
            .bind(Uuid::parse_str(&poisoned).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let copy = CommandBatch {
        commands: vec![BatchedCommand {
            partition: partition as u32,
            reply_to: None,
            envelope,
        }],
    };
    js.publish(
        Names::new(&app.namespace).command_batch_subject(),
        serde_json::to_vec(&copy).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Published after the copy, on the same partition: once it is answered, so is the copy.
    let (status, body) = app.deduct("u1", 1).await;
    assert_eq!(status, 200, "{body}");

    // Assert: each poison command applied exactly once; the ledger holds.
    assert_eq!(entries_described(&app, "poison").await, 2);
    assert_eq!(app.balance("u1").await, 10 + 10 - 2 + 5 + 5 - 1);
    app.assert_verified().await;
}
