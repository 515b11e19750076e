//! The fault suite: real processes on loopback, clients writing (adds and deducts) while a
//! dependency fails, every answer recorded and then checked against the ledger. Each scenario
//! prints one line:
//!
//! ```text
//! fault broker_restart: accepted=… applied=… refused=… lost=0 doubled=0 refused_applied=0 verify=ok recovered_in=…ms …
//! ```
//!
//! - `accepted` answers were `200`, `402` or `202`; each must be applied exactly once (`lost`,
//!   `doubled`: found zero or several times in the ledger once the queue has drained);
//! - `refused` answers were `503`: each must have changed nothing (`refused_applied`), must carry
//!   `Retry-After`, and must come within the sync timeout;
//! - `recovered_in`: from the end of the fault (or, where the fault is never undone, its start)
//!   to the first `200` of a request sent after it.
//!
//! Short runs by default; `TALLY_TEST_SOAK=1` makes the load phases longer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::cluster::{stream_leader, wait_for_new_leader};
use crate::deliveries::{always_ok, Receiver};
use crate::harness::{spawn_app_with, Options, TestApp};

const SYNC_TIMEOUT_MS: u64 = 5_000;
const CLIENTS: usize = 16;
const USERS: u64 = 32;

/// The scenarios run one at a time (other tests still run beside them): each starts several
/// processes and measures recovery times, which two scenarios sharing two cores would blur.
/// The `cluster` tests, three nodes each, take their turn too.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn long() -> bool {
    std::env::var_os("TALLY_TEST_SOAK").is_some()
}

/// One request and its answer.
#[derive(Clone, Debug)]
struct Record {
    key: String,
    sent: Instant,
    done: Instant,
    /// HTTP status, 0 when no answer came at all.
    status: u16,
    retry_after: bool,
    command_id: Option<String>,
    /// Sends of the request (more than one when a connection died and it was sent again).
    attempts: u32,
}

/// Writes from [`CLIENTS`] concurrent clients to the app's ingress until `stop` is set.
async fn load(app: &TestApp, scenario: &str, stop: &AtomicBool) -> Vec<Record> {
    load_on(app, &app.base_url, false, scenario, stop).await
}

/// Writes to the ingress at `base`. With `keyed`, every request carries an `Idempotency-Key`
/// and a request that got no answer at all (the connection died) is sent again with it, as a
/// client would, until it gets one.
async fn load_on(
    app: &TestApp,
    base: &str,
    keyed: bool,
    scenario: &str,
    stop: &AtomicBool,
) -> Vec<Record> {
    let records = Mutex::new(Vec::new());
    let clients = (0..CLIENTS).map(|client| {
        let records = &records;
        async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("{scenario}-{client}-{n}");
                let user = format!("{scenario}-u{}", (client as u64 * 7 + n) % USERS);
                let (path, amount) = if n % 5 < 3 {
                    ("/credits/add", 5)
                } else {
                    ("/credits/deduct", 3)
                };
                let mut sent = Instant::now();
                let mut attempts = 0;
                let (status, retry_after, body) = loop {
                    attempts += 1;
                    let mut request = app
                        .http
                        .post(format!("{base}{path}"))
                        .bearer_auth(&app.api_key)
                        .timeout(Duration::from_millis(SYNC_TIMEOUT_MS + 15_000))
                        .json(&json!({ "user_id": user, "amount": amount, "description": key }));
                    if keyed {
                        request = request.header("idempotency-key", &key);
                    }
                    let answer = match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let retry_after = response.headers().contains_key("retry-after");
                            match response.json::<Value>().await {
                                Ok(body) => Some((status, retry_after, body)),
                                Err(_) => None,
                            }
                        }
                        Err(_) => None,
                    };
                    match answer {
                        Some(answer) => break answer,
                        None if keyed && attempts < 200 => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            // The retry's wait is what the client sees from now on.
                            sent = Instant::now();
                        }
                        None => break (0, false, Value::Null),
                    }
                };
                let record = Record {
                    key,
                    sent,
                    done: Instant::now(),
                    status,
                    retry_after,
                    command_id: body["command_id"].as_str().map(str::to_string),
                    attempts,
                };
                records.lock().unwrap().push(record);
                if status == 503 || status == 0 {
                    // A client backs off when refused.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    });
    futures::future::join_all(clients).await;
    records.into_inner().unwrap()
}

/// What the ledger says about the recorded answers.
#[derive(Debug, Default)]
struct Summary {
    accepted: usize,
    applied: usize,
    refused: usize,
    lost: usize,
    doubled: usize,
    refused_applied: usize,
    refused_without_retry_after: usize,
    no_answer: usize,
    unexpected: Vec<u16>,
    slowest_refusal_ms: u128,
    slowest_answer_ms: u128,
    recovered_in_ms: Option<u128>,
    refused_after_recovery: usize,
}

impl Summary {
    fn line(&self, scenario: &str, verified: bool) -> String {
        format!(
            "fault {scenario}: accepted={} applied={} refused={} lost={} doubled={} refused_applied={} verify={} recovered_in={} slowest_refusal={}ms slowest_answer={}ms",
            self.accepted,
            self.applied,
            self.refused,
            self.lost,
            self.doubled,
            self.refused_applied,
            if verified { "ok" } else { "FAILED" },
            self.recovered_in_ms
                .map(|ms| format!("{ms}ms"))
                .unwrap_or_else(|| "never".into()),
            self.slowest_refusal_ms,
            self.slowest_answer_ms,
        )
    }

    /// The checks every scenario shares. `answer_budget`: every answer comes within the sync
    /// timeout and 2.5 s more (a publish waits at most 2 s for the broker).
    fn assert_sound(&self, scenario: &str) {
        let answer_budget = Duration::from_millis(SYNC_TIMEOUT_MS + 2_500);
        assert_eq!(self.lost, 0, "{scenario}: accepted commands lost: {self:?}");
        assert_eq!(
            self.doubled, 0,
            "{scenario}: commands applied twice: {self:?}"
        );
        assert_eq!(
            self.refused_applied, 0,
            "{scenario}: refused commands applied: {self:?}"
        );
        assert_eq!(
            self.refused_without_retry_after, 0,
            "{scenario}: 503 without Retry-After: {self:?}"
        );
        assert_eq!(
            self.no_answer, 0,
            "{scenario}: requests without answer: {self:?}"
        );
        assert!(
            self.unexpected.is_empty(),
            "{scenario}: unexpected statuses {:?}",
            self.unexpected
        );
        assert!(
            self.slowest_refusal_ms <= SYNC_TIMEOUT_MS as u128,
            "{scenario}: a 503 came after the sync timeout: {self:?}"
        );
        assert!(
            self.slowest_answer_ms <= answer_budget.as_millis(),
            "{scenario}: an answer took longer than {answer_budget:?}: {self:?}"
        );
        assert!(
            self.applied > 0 && self.recovered_in_ms.is_some(),
            "{scenario}: never recovered: {self:?}"
        );
    }
}

/// Waits until every accepted command is settled, then compares each answer with the ledger.
/// `recovered_from`: when the fault ended (or began, if it is never undone).
async fn check(app: &TestApp, records: &[Record], recovered_from: Instant) -> Summary {
    // Every 202 must become applied or rejected.
    for record in records.iter().filter(|r| r.status == 202) {
        let id = record
            .command_id
            .as_deref()
            .expect("a 202 names its command");
        app.wait_applied(id).await;
    }
    let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT description, count(*) FROM ledger_entries WHERE description = ANY($1) GROUP BY description",
    )
    .bind(&keys)
    .fetch_all(&app.pool)
    .await
    .expect("count entries");
    let counts: std::collections::HashMap<String, i64> = counts.into_iter().collect();
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT command_id::text, status FROM processed_commands WHERE command_id::text = ANY($1)",
    )
    .bind(
        records
            .iter()
            .filter_map(|r| r.command_id.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&app.pool)
    .await
    .expect("command statuses");
    let statuses: std::collections::HashMap<String, String> = statuses.into_iter().collect();

    let mut summary = Summary::default();
    for record in records {
        let entries = counts.get(&record.key).copied().unwrap_or(0);
        let took = record.done.duration_since(record.sent).as_millis();
        summary.slowest_answer_ms = summary.slowest_answer_ms.max(took);
        match record.status {
            200 => {
                summary.accepted += 1;
                match entries {
                    0 => summary.lost += 1,
                    1 => summary.applied += 1,
                    _ => summary.doubled += 1,
                }
            }
            402 => {
                summary.accepted += 1;
                if entries == 0 {
                    summary.applied += 1;
                } else {
                    summary.doubled += 1;
                }
            }
            202 => {
                summary.accepted += 1;
                let id = record.command_id.as_deref().unwrap_or_default();
                match (statuses.get(id).map(String::as_str), entries) {
                    (Some("applied"), 1) | (Some("rejected"), 0) => summary.applied += 1,
                    (Some("applied") | Some("rejected"), _) => summary.doubled += 1,
                    _ => summary.lost += 1,
                }
            }
            503 => {
                summary.refused += 1;
                summary.slowest_refusal_ms = summary.slowest_refusal_ms.max(took);
                if entries > 0 {
                    summary.refused_applied += 1;
                }
                if !record.retry_after {
                    summary.refused_without_retry_after += 1;
                }
            }
            0 => summary.no_answer += 1,
            other => summary.unexpected.push(other),
        }
    }
    let recovered = records
        .iter()
        .filter(|r| r.status == 200 && r.sent >= recovered_from)
        .map(|r| r.done)
        .min();
    summary.recovered_in_ms = recovered.map(|at| at.duration_since(recovered_from).as_millis());
    if let Some(at) = recovered {
        // Once writes flow again, they keep flowing.
        summary.refused_after_recovery = records
            .iter()
            .filter(|r| r.status == 503 && r.sent > at + Duration::from_millis(500))
            .count();
    }
    summary
}

/// Checks the answers against the ledger, prints the scenario's line (with `extra` figures)
/// and asserts what every scenario must hold, `tally verify` included.
async fn settle(
    app: &TestApp,
    scenario: &str,
    records: &[Record],
    recovered_from: Instant,
    extra: &str,
) -> Summary {
    let summary = check(app, records, recovered_from).await;
    let verified = verified(app).await;
    eprintln!("{} {extra}", summary.line(scenario, verified));
    summary.assert_sound(scenario);
    assert!(verified, "tally verify failed");
    summary
}

async fn verified(app: &TestApp) -> bool {
    let (code, report) = app.cli(&["verify"]).await;
    code == 0 && report["ok"] == true
}

fn phase(short_ms: u64) -> Duration {
    Duration::from_millis(if long() { short_ms * 5 } else { short_ms })
}

/// Target: the broker down for 5 s mid-load. Every write meanwhile is refused within the sync
/// timeout; the first `200` comes within seconds of the broker's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 2,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        ..Options::default()
    })
    .await;
    let stop = AtomicBool::new(false);
    let (records, back) = {
        let run = load(&app, "broker", &stop);
        let fault = async {
            tokio::time::sleep(phase(1_500)).await;
            app.nats.stop();
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::block_in_place(|| app.nats.restart());
            let back = Instant::now();
            tokio::time::sleep(phase(4_000)).await;
            stop.store(true, Ordering::Relaxed);
            back
        };
        tokio::join!(run, fault)
    };
    let summary = settle(&app, "broker_restart", &records, back, "").await;
    assert!(
        summary.refused > 0,
        "the outage refused nothing: {summary:?}"
    );
    assert_eq!(summary.refused_after_recovery, 0, "{summary:?}");
    // The target is 2 s; the bound leaves room for a loaded CI machine.
    assert!(
        summary.recovered_in_ms.unwrap() < 5_000,
        "recovery took too long: {summary:?}"
    );
}

/// Target: on a 3-node cluster at R3, the stream leader killed mid-load and kept down: writes
/// are refused only until a new leader is elected, then accepted while the node is still down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_loses_the_stream_leader() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 2,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        nats_nodes: 3,
        stream_replicas: 3,
        ..Options::default()
    })
    .await;
    let leader = stream_leader(&app).await;
    let stop = AtomicBool::new(false);
    let killed = Mutex::new(None::<Instant>);
    let elected = Mutex::new(None::<Instant>);
    {
        let app_ref = &app;
        let run = load(app_ref, "cluster", &stop);
        let fault = async {
            tokio::time::sleep(phase(1_500)).await;
            *killed.lock().unwrap() = Some(Instant::now());
            app_ref.nats_node(&leader).stop();
            // NATS's own election (4–9 s, longer on a busy machine), timed to tell it apart from
            // Tally's recovery; the load goes on for a while after it, the node still down.
            if tokio::time::timeout(
                Duration::from_secs(60),
                wait_for_new_leader(app_ref, &leader),
            )
            .await
            .is_ok()
            {
                *elected.lock().unwrap() = Some(Instant::now());
            }
            tokio::time::sleep(phase(4_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        let (records, ()) = tokio::join!(run, fault);
        let killed_at = killed.lock().unwrap().expect("killed");
        let new_leader = stream_leader(app_ref).await;
        let elected_in = elected
            .lock()
            .unwrap()
            .map(|at| format!("{}ms", at.duration_since(killed_at).as_millis()))
            .unwrap_or_else(|| "never".into());
        let summary = settle(
            app_ref,
            "cluster_leader_loss",
            &records,
            killed_at,
            &format!("leader={leader} new_leader={new_leader} elected_in={elected_in}"),
        )
        .await;
        assert_ne!(new_leader, leader, "no new leader was elected");
        assert_eq!(summary.refused_after_recovery, 0, "{summary:?}");
        let elected_at = elected.lock().unwrap().expect("a new leader within 60 s");
        let after_election = summary
            .recovered_in_ms
            .unwrap()
            .saturating_sub(elected_at.duration_since(killed_at).as_millis());
        assert!(
            after_election < 5_000,
            "writes were not accepted again soon after the election, the node still down: {summary:?}"
        );
    }
    // Back with the others, it catches up; the stream stays whole.
    tokio::task::block_in_place(|| app.nats_node(&leader).restart());
    let _ = stream_leader(&app).await;
    assert!(
        verified(&app).await,
        "tally verify failed after the node returned"
    );
}

/// A Postgres cluster of its own (`initdb`, `pg_ctl`) on a free port, removed on drop.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("tally-it-pg-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let this = Self { dir, port, bin };
        if is_root() {
            // Postgres refuses to run as root; its files belong to the postgres user.
            let status = Command::new("chown")
                .args(["-R", "postgres:", &this.dir.display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "cannot chown the cluster's directory");
        }
        let data = this.data().display().to_string();
        this.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        this.start_server();
        this
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn start_server(&self) {
        let data = self.data().display().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Stops it at once (`immediate`: like a crash; the restart replays the WAL).
    fn stop_server(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// `program` of the Postgres installation, run as the postgres user when this is root
    /// (Postgres refuses to run as root).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where `initdb` and `pg_ctl` live: `TALLY_PG_BIN_DIR`, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn postgres_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TALLY_PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let has_initdb = |dir: &PathBuf| dir.join("initdb").exists();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_initdb(&dir) {
            return dir;
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(has_initdb)
        .collect();
    candidates.sort();
    candidates.pop().expect(
        "the Postgres restart test needs initdb and pg_ctl (Debian: postgresql); set TALLY_PG_BIN_DIR to their directory",
    )
}

/// Target: Postgres stopped mid-load for 5 s and started again: ingress and workers recover by
/// themselves, writes meanwhile are refused or wait within the sync timeout, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let postgres = PrivatePostgres::start();
    let app = spawn_app_with(Options {
        workers: 2,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        database_server: Some(postgres.url()),
        ..Options::default()
    })
    .await;
    let stop = AtomicBool::new(false);
    let back = Mutex::new(None::<Instant>);
    let records = {
        let run = load(&app, "postgres", &stop);
        let fault = async {
            tokio::time::sleep(phase(1_500)).await;
            let postgres = &postgres;
            tokio::task::block_in_place(|| postgres.stop_server());
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::block_in_place(|| postgres.start_server());
            *back.lock().unwrap() = Some(Instant::now());
            tokio::time::sleep(phase(6_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(run, fault).0
    };
    let back = back.lock().unwrap().expect("restarted");
    let summary = settle(&app, "postgres_restart", &records, back, "").await;
    assert!(
        summary.recovered_in_ms.unwrap() < 5_000,
        "recovery took too long: {summary:?}"
    );
    drop(app);
}

/// Worker processes SIGKILLed one after another mid-load, each replaced by a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_kills_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 0,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        ..Options::default()
    })
    .await;
    let stop = AtomicBool::new(false);
    let kills = if long() { 10 } else { 3 };
    let last_kill = Mutex::new(None::<Instant>);
    let records = {
        let run = load(&app, "workers", &stop);
        let fault = async {
            let mut workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
            for round in 0..kills {
                tokio::time::sleep(phase(1_200)).await;
                workers[round % 2].kill();
                workers[round % 2] = app.spawn_worker_process();
                *last_kill.lock().unwrap() = Some(Instant::now());
            }
            tokio::time::sleep(phase(3_000)).await;
            stop.store(true, Ordering::Relaxed);
            workers
        };
        let (records, _workers) = tokio::join!(run, fault);
        records
    };
    let last_kill = last_kill.lock().unwrap().expect("killed");
    settle(
        &app,
        "worker_kills",
        &records,
        last_kill,
        &format!("kills={kills}"),
    )
    .await;
}

/// Workers scaled 1 → 4 → 1 mid-load: partitions move twice, nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_scale_up_and_down_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 1,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        ..Options::default()
    })
    .await;
    let stop = AtomicBool::new(false);
    let scaled_down = Mutex::new(None::<Instant>);
    let records = {
        let run = load(&app, "scale", &stop);
        let fault = async {
            tokio::time::sleep(phase(1_000)).await;
            let extra: Vec<_> = (0..3).map(|_| app.new_worker()).collect();
            tokio::time::sleep(phase(2_000)).await;
            for worker in extra {
                worker.stop().await;
            }
            *scaled_down.lock().unwrap() = Some(Instant::now());
            tokio::time::sleep(phase(2_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(run, fault).0
    };
    let scaled_down = scaled_down.lock().unwrap().expect("scaled down");
    settle(&app, "scale_1_4_1", &records, scaled_down, "").await;
}

/// Every Postgres backend of the deployment terminated, repeatedly, mid-load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backends_terminated_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 2,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        ..Options::default()
    })
    .await;
    let admin = sqlx::PgPool::connect(&format!(
        "{}/postgres",
        std::env::var("TALLY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    ))
    .await
    .expect("connect as admin");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.pool)
        .await
        .expect("database name");
    let stop = AtomicBool::new(false);
    let last = Mutex::new((None::<Instant>, 0_i64));
    let records = {
        let run = load(&app, "backends", &stop);
        let fault = async {
            for _ in 0..if long() { 20 } else { 4 } {
                tokio::time::sleep(phase(800)).await;
                let terminated: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
                )
                .bind(&database)
                .fetch_one(&admin)
                .await
                .expect("terminate backends");
                let mut last = last.lock().unwrap();
                *last = (Some(Instant::now()), last.1 + terminated);
            }
            tokio::time::sleep(phase(3_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(run, fault).0
    };
    let (at, terminated) = *last.lock().unwrap();
    settle(
        &app,
        "postgres_backends_terminated",
        &records,
        at.expect("terminated"),
        &format!("backends_terminated={terminated}"),
    )
    .await;
}

/// A `tally-ingress` process on a fixed port, for killing.
struct IngressProcess {
    child: std::process::Child,
}

impl IngressProcess {
    fn start(app: &TestApp, addr: &str) -> Self {
        let child = Command::new(crate::harness::workspace_binary("tally-ingress"))
            .env("TALLY_HTTP_ADDR", addr)
            .env("TALLY_DATABASE_URL", &app.db.url)
            .env("TALLY_NATS_URL", &app.nats_url)
            .env("TALLY_NAMESPACE", &app.namespace)
            .env(
                "TALLY_PARTITIONS",
                crate::harness::TEST_PARTITIONS.to_string(),
            )
            .env("TALLY_SYNC_TIMEOUT_MS", SYNC_TIMEOUT_MS.to_string())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tally-ingress");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "tally-ingress did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for IngressProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ingress process SIGKILLed mid-load and started again: requests cut off are retried by
/// their clients with the same `Idempotency-Key`, and each takes effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingress_kills_mid_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        workers: 2,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        ..Options::default()
    })
    .await;
    let addr = crate::harness::free_local_addr();
    let base = format!("http://{addr}");
    let ingress = Mutex::new(IngressProcess::start(&app, &addr));
    let stop = AtomicBool::new(false);
    let kills = if long() { 8 } else { 2 };
    let back = Mutex::new(None::<Instant>);
    let records = {
        let run = load_on(&app, &base, true, "ingress", &stop);

        let fault = async {
            for _ in 0..kills {
                tokio::time::sleep(phase(1_200)).await;
                tokio::task::block_in_place(|| {
                    let mut ingress = ingress.lock().unwrap();
                    ingress.kill();
                    *ingress = IngressProcess::start(&app, &addr);
                });
                *back.lock().unwrap() = Some(Instant::now());
            }
            tokio::time::sleep(phase(2_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(run, fault).0
    };
    let back = back.lock().unwrap().expect("restarted");
    let resent = records.iter().filter(|r| r.attempts > 1).count();
    settle(
        &app,
        "ingress_kills",
        &records,
        back,
        &format!("kills={kills} resent={resent}"),
    )
    .await;
    assert!(resent > 0, "no request was cut off by the kills");
}

/// Target: with an endpoint subscribed to every credit change, every worker SIGKILLed
/// mid-load, then the broker restarted, then Postgres restarted: every applied change still
/// has its event, and every event reaches the endpoint (at least once; the receiver dedupes on
/// `webhook-id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_the_endpoint_through_worker_kills_broker_and_postgres_restarts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let postgres = PrivatePostgres::start();
    let app = spawn_app_with(Options {
        workers: 0,
        sync_timeout_ms: SYNC_TIMEOUT_MS,
        database_server: Some(postgres.url()),
        webhook_allow_private: true,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(always_ok).await;
    let (status, endpoint) = app
        .post(
            "/webhook_endpoints",
            json!({ "url": receiver.url("/tally"), "events": ["credits.added", "credits.deducted"] }),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let mut workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
    // Workers load an app's event rules within a second of a change.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let stop = AtomicBool::new(false);
    let back = Mutex::new(None::<Instant>);
    let records = {
        let run = load(&app, "events", &stop);
        let fault = async {
            tokio::time::sleep(phase(1_500)).await;
            for worker in &mut workers {
                worker.kill();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
            tokio::time::sleep(phase(1_500)).await;
            app.nats.stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| app.nats.restart());
            tokio::time::sleep(phase(1_500)).await;
            let postgres = &postgres;
            tokio::task::block_in_place(|| postgres.stop_server());
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| postgres.start_server());
            *back.lock().unwrap() = Some(Instant::now());
            tokio::time::sleep(phase(3_000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(run, fault).0
    };
    let back = back.lock().unwrap().expect("restarted");
    let summary = check(&app, &records, back).await;
    summary.assert_sound("events_faults");

    // Every applied add and deduct of the load, by ledger id.
    let changes: BTreeSet<String> = sqlx::query_scalar::<_, Uuid>(
        "SELECT id FROM ledger_entries WHERE app_id = $1 AND type IN ('add', 'deduct')",
    )
    .bind(app.app_id)
    .fetch_all(&app.pool)
    .await
    .expect("ledger")
    .into_iter()
    .map(|id| id.to_string())
    .collect();
    assert!(!changes.is_empty());
    let settled = Instant::now();
    let deadline = settled + Duration::from_secs(60);
    let (received, calls) = loop {
        let calls = receiver.calls();
        let received: BTreeMap<String, String> = calls
            .iter()
            .map(|call| {
                let envelope = call.json();
                (
                    call.header("webhook-id").to_string(),
                    envelope["data"]["ledger_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        if received.len() >= changes.len() || Instant::now() > deadline {
            break (received, calls.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delivered: BTreeSet<String> = received.values().cloned().collect();
    let missing = changes.difference(&delivered).count();
    let unknown = delivered.difference(&changes).count();
    let verified = verified(&app).await;
    eprintln!(
        "{} changes={} events_received={} calls={calls} duplicates={} missing={missing} unknown={unknown} drained_after_load_in={}ms",
        summary.line("events_faults", verified),
        changes.len(),
        received.len(),
        calls - received.len(),
        settled.elapsed().as_millis()
    );
    assert!(verified, "tally verify failed");
    assert_eq!(received.len(), delivered.len(), "one event per change");
    assert_eq!(
        (missing, unknown),
        (0, 0),
        "every change's event, and no other"
    );
    drop(workers);
}
