//! Credit types: several balances per user, each with its own lots and holds, through the HTTP
//! API; and the migration that gives every balance written before types existed the default
//! type.

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{spawn_app, TestApp, TestDatabase};

/// A write that must succeed; its answer.
pub async fn write(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, body).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

#[tokio::test]
async fn each_credit_type_is_a_balance_of_its_own() {
    let app = spawn_app().await;
    write(
        &app,
        "/credits/add",
        json!({ "user_id": "u", "amount": 100 }),
    )
    .await;
    let added = write(
        &app,
        "/credits/add",
        json!({ "user_id": "u", "amount": 5, "credit_type": "image", "expires_in_seconds": 3600 }),
    )
    .await;
    assert_eq!(added["credit_type"], "image");
    assert_eq!(added["balance_after"], 5);

    let spent = write(
        &app,
        "/credits/deduct",
        json!({ "user_id": "u", "amount": 3, "credit_type": "image" }),
    )
    .await;
    assert_eq!(spent["balance_after"], 2);
    let (status, refused) = app
        .post(
            "/credits/deduct",
            json!({ "user_id": "u", "amount": 3, "credit_type": "image" }),
        )
        .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["balance"], 2);
    assert_eq!(
        refused["message"],
        "u has 2 credits of type image, 3 requested"
    );

    let (_, default) = app.get("/credits/balance?user_id=u").await;
    assert_eq!(default["credit_type"], "credits");
    assert_eq!(default["balance"], 100);
    let (_, image) = app
        .get("/credits/balance?user_id=u&credit_type=image")
        .await;
    assert_eq!(image["balance"], 2);
    assert_eq!(image["available"], 2);
    assert_eq!(image["next_expiry"]["amount"], 2);
    let (_, unknown) = app.get("/credits/balance?user_id=u&credit_type=chat").await;
    assert_eq!(unknown["balance"], 0, "{unknown}");
    assert_eq!(unknown["credit_type"], "chat");

    let (status, all) = app.get("/credits/balances?user_id=u").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["user_id"], "u");
    let balances: Vec<(String, i64)> = all["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["credit_type"].as_str().unwrap().to_string(),
                b["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(balances, [("credits".into(), 100), ("image".into(), 2)]);
    let (_, nobody) = app.get("/credits/balances?user_id=nobody").await;
    assert_eq!(nobody["balances"], json!([]));

    let (_, history) = app.get("/credits/history?user_id=u").await;
    let types: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["credit_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["image", "image", "credits"],
        "newest first, every type"
    );
    let (_, images) = app
        .get("/credits/history?user_id=u&credit_type=image")
        .await;
    let amounts: Vec<i64> = images["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [-3, 5]);
    assert_eq!(images["entries"][0]["balance_after"], 2);
    app.assert_verified().await;
}

#[tokio::test]
async fn refunds_captures_and_releases_act_on_their_own_type() {
    let app = spawn_app().await;
    write(
        &app,
        "/credits/add",
        json!({ "user_id": "u", "amount": 50 }),
    )
    .await;
    write(
        &app,
        "/credits/add",
        json!({ "user_id": "u", "amount": 40, "credit_type": "chat" }),
    )
    .await;
    let spent = write(
        &app,
        "/credits/deduct",
        json!({ "user_id": "u", "amount": 10, "credit_type": "chat" }),
    )
    .await;
    let refunded = write(
        &app,
        "/credits/refund",
        json!({ "ledger_id": spent["ledger_id"], "amount": 4 }),
    )
    .await;
    assert_eq!(refunded["credit_type"], "chat");
    assert_eq!(refunded["balance_after"], 34);

    let held = write(
        &app,
        "/credits/hold",
        json!({ "user_id": "u", "amount": 20, "credit_type": "chat" }),
    )
    .await;
    assert_eq!(held["credit_type"], "chat");
    assert_eq!(held["available"], 14);
    let (_, chat) = app.get("/credits/balance?user_id=u&credit_type=chat").await;
    assert_eq!(chat["held"], 20);
    let (_, default) = app.get("/credits/balance?user_id=u").await;
    assert_eq!(default["held"], 0, "a hold reserves from its own type only");

    let captured = write(
        &app,
        "/credits/capture",
        json!({ "hold_id": held["hold_id"], "amount": 5 }),
    )
    .await;
    assert_eq!(captured["credit_type"], "chat");
    assert_eq!(captured["balance_after"], 29);
    let second = write(
        &app,
        "/credits/hold",
        json!({ "user_id": "u", "amount": 9, "credit_type": "chat" }),
    )
    .await;
    let released = write(
        &app,
        "/credits/release",
        json!({ "hold_id": second["hold_id"] }),
    )
    .await;
    assert_eq!(released["credit_type"], "chat");
    assert_eq!(released["available"], 29);

    let (_, holds) = app.get("/credits/holds?user_id=u&credit_type=chat").await;
    assert_eq!(holds["holds"].as_array().unwrap().len(), 2);
    assert_eq!(holds["holds"][0]["credit_type"], "chat");
    let (_, none) = app
        .get("/credits/holds?user_id=u&credit_type=credits")
        .await;
    assert_eq!(none["holds"], json!([]));
    assert_eq!(app.balance("u").await, 50);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_bad_credit_type_is_400_naming_it_and_writes_nothing() {
    let app = spawn_app().await;
    for bad in [
        json!(""),
        json!("Image"),
        json!("a b"),
        json!("x".repeat(65)),
        json!(7),
    ] {
        let (status, body) = app
            .post(
                "/credits/add",
                json!({ "user_id": "u", "amount": 1, "credit_type": bad }),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["field"], "credit_type", "{body}");
    }
    for path in [
        "/credits/balance?user_id=u&credit_type=A",
        "/credits/history?user_id=u&credit_type=",
        "/credits/holds?user_id=u&credit_type=no%20spaces",
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["field"], "credit_type", "{body}");
    }
    assert_eq!(app.ledger_rows().await, 0);
}

/// A user's commands of every type share one partition and one numbering: concurrent writes to
/// two types of one user keep every balance exact and the entries numbered without gaps.
#[tokio::test]
async fn concurrent_writes_to_several_types_of_one_user_stay_exact() {
    let app = spawn_app().await;
    let mut writes = Vec::new();
    for i in 0..60 {
        let credit_type = ["credits", "image", "chat"][i % 3];
        let app = &app;
        writes.push(async move {
            app.post(
                "/credits/add",
                json!({ "user_id": "u", "amount": 2, "credit_type": credit_type }),
            )
            .await
        });
    }
    for (status, body) in futures::future::join_all(writes).await {
        assert_eq!(status, 200, "{body}");
    }
    let (_, all) = app.get("/credits/balances?user_id=u").await;
    for balance in all["balances"].as_array().unwrap() {
        assert_eq!(balance["balance"], 40, "{all}");
    }
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM ledger_entries WHERE user_id = 'u' ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(seqs, (1..=60).collect::<Vec<i64>>());
    app.assert_verified().await;
}

/// Applies the migrations before credit types, writes a ledger the way that schema did, then
/// applies the rest: every balance, entry, lot, hold and payment is of the default type, and
/// the balances and entries read back as before.
#[tokio::test]
async fn balances_written_before_types_existed_become_the_default_type() {
    let database = TestDatabase::create().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    let before_types = tempfile_migrations(8);
    sqlx::migrate::Migrator::new(before_types.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let app_id = Uuid::now_v7();
    let entry = Uuid::now_v7();
    let hold = Uuid::now_v7();
    for statement in [
        format!("INSERT INTO apps (id, name) VALUES ('{app_id}', 'old')"),
        format!(
            "INSERT INTO accounts (app_id, user_id, balance, held, entry_count)
             VALUES ('{app_id}', 'u', 30, 5, 1)"
        ),
        format!(
            "INSERT INTO ledger_entries (id, app_id, user_id, seq, type, amount, balance_after,
                                         source, command_id, lot_id, expires_at)
             VALUES ('{entry}', '{app_id}', 'u', 1, 'payment', 30, 30, 'stripe', '{entry}',
                     '{entry}', now() + interval '1 day')"
        ),
        format!(
            "INSERT INTO lots (id, app_id, user_id, amount, remaining, expires_at)
             VALUES ('{entry}', '{app_id}', 'u', 30, 25, now() + interval '1 day')"
        ),
        format!(
            "INSERT INTO holds (id, app_id, user_id, amount, status, expires_at, command_id)
             VALUES ('{hold}', '{app_id}', 'u', 5, 'active', now() + interval '1 hour', '{hold}')"
        ),
        format!(
            "INSERT INTO payments (app_id, provider, payment_ref, ledger_id, user_id, credits)
             VALUES ('{app_id}', 'stripe', 'pi_1', '{entry}', 'u', 30)"
        ),
        format!(
            "INSERT INTO processed_commands (command_id, app_id, status) VALUES ('{entry}', '{app_id}', 'applied')"
        ),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }

    tally_common::db::migrate(&pool).await.unwrap();

    for table in ["accounts", "ledger_entries", "lots", "holds", "payments"] {
        let types: Vec<String> =
            sqlx::query_scalar(&format!("SELECT DISTINCT credit_type FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(types, ["credits"], "{table}");
    }
    let (balance, held, count): (i64, i64, i64) = sqlx::query_as(
        "SELECT balance, held, entry_count FROM accounts
         WHERE app_id = $1 AND user_id = 'u' AND credit_type = 'credits'",
    )
    .bind(app_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((balance, held, count), (30, 5, 1));
    let refused = sqlx::query(&format!(
        "INSERT INTO accounts (app_id, user_id, credit_type) VALUES ('{app_id}', 'u', 'Bad Type')"
    ))
    .execute(&pool)
    .await;
    assert!(refused.is_err(), "the database refuses a malformed type");
    pool.close().await;
}

/// A directory with the project's migrations numbered below `first_left_out`.
fn tempfile_migrations(first_left_out: u32) -> TempDir {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let dir = TempDir::new();
    for file in std::fs::read_dir(source).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let number: u32 = name[..4].parse().unwrap();
        if number < first_left_out {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("tally-it-migrations-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
