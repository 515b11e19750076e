//! `spawn_app()`: a real nats-server (JetStream, fsync on every write) on a free port with its
//! own store, a fresh Postgres database, an ingress on port 0 and workers — all torn down when
//! the test ends. Set `TEST_LOG=1` to see the services' logs.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tally_common::config::CommonConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Partitions of a test deployment: enough to spread users over two workers, few enough to
/// start fast.
pub const TEST_PARTITIONS: u32 = 8;

pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber_init();
    }
}

fn tracing_subscriber_init() -> Result<(), ()> {
    tally_common::telemetry::init(tally_common::telemetry::LogFormat::Text);
    Ok(())
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A nats-server process with its own store directory, killed and removed on drop.
pub struct NatsServer {
    pub port: u16,
    store: PathBuf,
    /// Extra configuration (a cluster block), appended to the basic one.
    extra_config: String,
    /// Its name in its cluster (`n0`, `n1`, …), if it is in one.
    name: Option<String>,
    child: std::sync::Mutex<Option<Child>>,
}

impl NatsServer {
    pub fn start() -> Self {
        let server = Self::new(String::new(), None, free_port());
        server.spawn();
        server
    }

    fn new(extra_config: String, name: Option<String>, port: u16) -> Self {
        let store = std::env::temp_dir().join(format!("tally-it-nats-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&store).expect("create nats store dir");
        Self {
            port,
            store,
            extra_config,
            name,
            child: std::sync::Mutex::new(None),
        }
    }

    /// A JetStream cluster of `nodes` servers on loopback, all started (they elect a meta
    /// leader by themselves; [`spawn_app_with`] waits until JetStream answers).
    pub fn cluster(nodes: usize) -> Vec<Self> {
        let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
        let cluster = format!("tally-it-{}", &Uuid::now_v7().simple().to_string()[20..]);
        let servers: Vec<Self> = ports
            .iter()
            .enumerate()
            .map(|(index, (port, route_port))| {
                let routes: Vec<String> = ports
                    .iter()
                    .filter(|(_, other)| other != route_port)
                    .map(|(_, other)| format!("\"nats-route://127.0.0.1:{other}\""))
                    .collect();
                let extra = format!(
                    "server_name: n{index}\ncluster {{ name: {cluster}, listen: \"127.0.0.1:{route_port}\", routes: [{}] }}\n",
                    routes.join(", ")
                );
                Self::new(extra, Some(format!("n{index}")), *port)
            })
            .collect();
        for server in &servers {
            server.spawn();
        }
        servers
    }

    /// The server's name in its cluster (`n0`, `n1`, …), if it is in one.
    pub fn server_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&self) {
        let binary =
            std::env::var("TALLY_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let config = self.store.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n{}",
                self.port,
                self.store.join("js").display(),
                self.extra_config
            ),
        )
        .expect("write nats config");
        let log = std::fs::File::create(self.store.join("nats.log")).expect("nats log");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (set TALLY_NATS_SERVER_BIN to a nats-server >= 2.11; ./scripts/test does): {e}"));
        *self.child.lock().expect("nats child") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.store.join("nats.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL), keeping its store.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("nats child").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A database of its own, dropped at the end of the test.
pub struct TestDatabase {
    pub url: String,
    name: String,
    server_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server_url = std::env::var("TALLY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        Self::create_on(&server_url).await
    }

    /// A database on the Postgres server at `server_url` (`postgres://user@host:port`).
    pub async fn create_on(server_url: &str) -> Self {
        let server_url = server_url.to_string();
        let name = format!("tally_it_{}", Uuid::now_v7().simple());
        let admin = PgPool::connect(&format!("{server_url}/postgres"))
            .await
            .expect("connect to Postgres");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        Self {
            url: format!("{server_url}/{name}"),
            name,
            server_url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = format!("{}/postgres", self.server_url);
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(admin) = PgPool::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// An in-process worker, stopped gracefully on request or aborted on drop.
pub struct WorkerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl WorkerHandle {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("worker task")
                .expect("worker exits cleanly");
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A worker in its own OS process (for crash tests).
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of a binary of this workspace (built by `cargo build --bins`, as ./scripts/test does).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (./scripts/test does)",
        path.display()
    );
    path
}

pub struct TestApp {
    pub nats: NatsServer,
    /// The other nodes of a NATS cluster ([`Options::nats_nodes`] > 1).
    pub nats_peers: Vec<NatsServer>,
    /// Every NATS node's URL, comma-separated, as `TALLY_NATS_URL` takes them.
    pub nats_url: String,
    pub db: TestDatabase,
    pub pool: PgPool,
    pub namespace: String,
    pub base_url: String,
    pub app_id: Uuid,
    pub api_key: String,
    pub http: reqwest::Client,
    pub workers: Vec<WorkerHandle>,
    /// `TALLY_APPLY_LANES` of the in-process workers.
    pub apply_lanes: usize,
    pub stream_replicas: u16,
    /// `TALLY_WEBHOOK_ALLOW_PRIVATE` of every service.
    pub webhook_allow_private: bool,
    /// Changes to the configuration of every worker started.
    worker: fn(&mut tally_worker::WorkerConfig),
    /// `TALLY_STRIPE_API_BASE` and `TALLY_SECRET_KEY` of every service.
    pub stripe_api_base: Option<String>,
    pub secret_key: Option<String>,
    /// Dropping it shuts the ingress down.
    _ingress_stop: oneshot::Sender<()>,
    ingress: Option<JoinHandle<anyhow::Result<()>>>,
}

/// `TALLY_ADMIN_TOKEN` of every test ingress (at least 32 characters, as the ingress demands).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct Options {
    pub workers: usize,
    pub sync_timeout_ms: u64,
    pub apply_lanes: usize,
    /// NATS servers: 1, or a JetStream cluster of that many nodes.
    pub nats_nodes: usize,
    /// `TALLY_STREAM_REPLICAS`.
    pub stream_replicas: u16,
    /// Postgres server to create the test database on (default: `TALLY_TEST_DATABASE_URL`).
    pub database_server: Option<String>,
    /// Changes to the ingress's configuration (short deadlines, small budgets).
    pub ingress: fn(&mut tally_ingress::IngressConfig),
    /// `TALLY_WEBHOOK_ALLOW_PRIVATE`: event endpoints on loopback (the tests' receivers).
    pub webhook_allow_private: bool,
    /// Changes to the workers' configuration (a short retry schedule).
    pub worker: fn(&mut tally_worker::WorkerConfig),
    /// `TALLY_STRIPE_API_BASE` (a stand-in for Stripe's API).
    pub stripe_api_base: Option<String>,
    /// `TALLY_SECRET_KEY`.
    pub secret_key: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            sync_timeout_ms: 5000,
            apply_lanes: 1,
            nats_nodes: 1,
            stream_replicas: 1,
            database_server: None,
            ingress: |_| {},
            webhook_allow_private: false,
            worker: |_| {},
            stripe_api_base: None,
            secret_key: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    init_logs();
    let mut nats_nodes = if options.nats_nodes > 1 {
        NatsServer::cluster(options.nats_nodes)
    } else {
        vec![NatsServer::start()]
    };
    let nats_url = nats_nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    if nats_nodes.len() > 1 {
        wait_for_jetstream(&nats_url).await;
    }
    let nats = nats_nodes.remove(0);
    let db = match &options.database_server {
        Some(server) => TestDatabase::create_on(server).await,
        None => TestDatabase::create().await,
    };
    let namespace = format!("t{}", &Uuid::now_v7().simple().to_string()[20..]);
    let pool = PgPool::connect(&db.url)
        .await
        .expect("connect test database");
    tally_common::db::migrate(&pool).await.expect("migrate");
    let (app_id, api_key) = create_app(&pool, "test").await;

    let mut common = common_config(&db.url, &nats_url, &namespace);
    common.stream_replicas = options.stream_replicas;
    common.webhook_allow_private = options.webhook_allow_private;
    apply_plans(&mut common, &options.stripe_api_base, &options.secret_key);
    let mut ingress_config = tally_ingress::IngressConfig::new(common);
    ingress_config.sync_timeout_ms = options.sync_timeout_ms;
    ingress_config.admin_token = Some(ADMIN_TOKEN.into());
    (options.ingress)(&mut ingress_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ingress");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (ingress_stop, stopped) = oneshot::channel::<()>();
    let ingress = tokio::spawn(tally_ingress::run(ingress_config, listener, async move {
        let _ = stopped.await;
    }));

    let mut app = TestApp {
        nats,
        nats_peers: nats_nodes,
        nats_url,
        stream_replicas: options.stream_replicas,
        webhook_allow_private: options.webhook_allow_private,
        worker: options.worker,
        stripe_api_base: options.stripe_api_base,
        secret_key: options.secret_key,
        db,
        pool,
        namespace,
        base_url,
        app_id,
        api_key,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client"),
        workers: Vec::new(),
        apply_lanes: options.apply_lanes,
        _ingress_stop: ingress_stop,
        ingress: Some(ingress),
    };
    for _ in 0..options.workers {
        app.start_worker();
    }
    app.wait_ready().await;
    app
}

/// Waits until a cluster has elected its JetStream meta leader (a busy machine may take longer
/// than the services' start-up timeout).
async fn wait_for_jetstream(nats_url: &str) {
    let servers: Vec<async_nats::ServerAddr> = nats_url
        .split(',')
        .map(|url| url.parse().expect("NATS URL"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match async_nats::connect(servers.clone()).await {
            Ok(client) => break client,
            Err(error) => assert!(
                Instant::now() < deadline,
                "cannot reach the cluster: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let js = async_nats::jetstream::new(client);
    while js.query_account().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the cluster never elected a JetStream leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Points the services at a stand-in for Stripe's API and sets the key that seals Stripe keys.
fn apply_plans(
    common: &mut CommonConfig,
    stripe_api_base: &Option<String>,
    secret_key: &Option<String>,
) {
    if let Some(base) = stripe_api_base {
        common.stripe_api_base = base.clone();
    }
    common.secret_key = secret_key
        .as_deref()
        .map(|text| text.parse().expect("a valid TALLY_SECRET_KEY"));
}

pub fn common_config(database_url: &str, nats_url: &str, namespace: &str) -> CommonConfig {
    let mut common = CommonConfig::new(database_url, nats_url, namespace);
    common.partitions = TEST_PARTITIONS;
    common.db_pool_size = 8;
    common
}

/// Creates an app and a key directly in the database, as `tally app create` does.
pub async fn create_app(pool: &PgPool, name: &str) -> (Uuid, String) {
    tally_common::apps::create(pool, name).await.expect("app")
}

pub async fn create_key(pool: &PgPool, app_id: Uuid) -> String {
    tally_common::apps::insert_key(pool, app_id)
        .await
        .expect("key")
}

/// A free `127.0.0.1:<port>` address, e.g. for a worker process's metrics endpoint.
pub fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("local addr").port()
    )
}

impl TestApp {
    /// The NATS node named `name` (see [`NatsServer::server_name`]).
    pub fn nats_node(&self, name: &str) -> &NatsServer {
        std::iter::once(&self.nats)
            .chain(&self.nats_peers)
            .find(|node| node.server_name() == Some(name))
            .unwrap_or_else(|| panic!("no NATS node named {name}"))
    }

    /// The body of a `GET` of `url` (an absolute URL), as text.
    pub async fn get_text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    }

    pub fn common_config(&self) -> CommonConfig {
        let mut common = common_config(&self.db.url, &self.nats_url, &self.namespace);
        common.stream_replicas = self.stream_replicas;
        common.webhook_allow_private = self.webhook_allow_private;
        apply_plans(&mut common, &self.stripe_api_base, &self.secret_key);
        common
    }

    pub fn start_worker(&mut self) {
        let worker = self.new_worker();
        self.workers.push(worker);
    }

    /// Starts an in-process worker owned by the caller: dropping the handle kills it.
    pub fn new_worker(&self) -> WorkerHandle {
        let mut config = tally_worker::WorkerConfig::new(self.common_config());
        config.apply_lanes = self.apply_lanes;
        (self.worker)(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tally_worker::run(config, async move {
            let _ = stopped.await;
        }));
        WorkerHandle {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts `tally-worker` as a separate process against this deployment.
    pub fn spawn_worker_process(&self) -> WorkerProcess {
        self.spawn_worker_process_with(&[])
    }

    /// Like [`TestApp::spawn_worker_process`], with extra environment variables.
    pub fn spawn_worker_process_with(&self, env: &[(&str, &str)]) -> WorkerProcess {
        let mut command = Command::new(workspace_binary("tally-worker"));
        if let Some(base) = &self.stripe_api_base {
            command.env("TALLY_STRIPE_API_BASE", base);
        }
        if let Some(key) = &self.secret_key {
            command.env("TALLY_SECRET_KEY", key);
        }
        let child = command
            .envs(env.iter().copied())
            .env("TALLY_DATABASE_URL", &self.db.url)
            .env("TALLY_NATS_URL", &self.nats_url)
            .env("TALLY_NAMESPACE", &self.namespace)
            .env("TALLY_PARTITIONS", TEST_PARTITIONS.to_string())
            .env("TALLY_STREAM_REPLICAS", self.stream_replicas.to_string())
            .env(
                "TALLY_WEBHOOK_ALLOW_PRIVATE",
                self.webhook_allow_private.to_string(),
            )
            .env(
                "RUST_LOG",
                if std::env::var_os("TEST_LOG").is_some() {
                    "info"
                } else {
                    "error"
                },
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start tally-worker");
        WorkerProcess { child }
    }

    /// Runs the `tally` CLI against this deployment. Asynchronously: the test's runtime must keep
    /// driving the in-process services meanwhile (a starting worker may hold the migration lock
    /// the CLI waits for).
    pub async fn cli(&self, args: &[&str]) -> (i32, Value) {
        self.cli_with(args, &[]).await
    }

    /// [`TestApp::cli`] with extra (or overriding) environment variables.
    pub async fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
        let output = tokio::process::Command::new(workspace_binary("tally"))
            .args(args)
            .env("TALLY_DATABASE_URL", &self.db.url)
            .env("TALLY_NATS_URL", &self.nats_url)
            .env("TALLY_NAMESPACE", &self.namespace)
            .env("TALLY_PARTITIONS", TEST_PARTITIONS.to_string())
            .env("TALLY_STREAM_REPLICAS", self.stream_replicas.to_string())
            .envs(env.iter().copied())
            .output()
            .await
            .expect("run tally");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::String(format!(
            "stdout: {stdout} stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
        (output.status.code().unwrap_or(-1), value)
    }

    /// `tally verify` must pass.
    pub async fn assert_verified(&self) {
        let (code, report) = self.cli(&["verify"]).await;
        assert_eq!(code, 0, "tally verify failed: {report}");
        assert_eq!(report["ok"], true);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
            {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            if self.ingress.as_ref().is_some_and(|task| task.is_finished()) {
                let stopped = self.ingress.take().expect("checked above").await;
                panic!("ingress stopped during start-up: {stopped:?}");
            }
            assert!(Instant::now() < deadline, "ingress never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// POST with this app's key; returns status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        into_json(
            self.http
                .post(self.url(path))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        into_json(request.send().await.expect("request")).await
    }

    pub async fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        into_json(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        into_json(
            self.http
                .get(self.url(path))
                .bearer_auth(&self.api_key)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> (u16, Value) {
        into_json(
            self.http
                .get(self.url(path))
                .bearer_auth(key)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    pub async fn add(&self, user: &str, amount: i64) -> Value {
        let (status, body) = self
            .post("/credits/add", json!({ "user_id": user, "amount": amount }))
            .await;
        assert_eq!(status, 200, "add failed: {body}");
        body
    }

    pub async fn deduct(&self, user: &str, amount: i64) -> (u16, Value) {
        self.post(
            "/credits/deduct",
            json!({ "user_id": user, "amount": amount }),
        )
        .await
    }

    pub async fn balance(&self, user: &str) -> i64 {
        let (status, body) = self.get(&format!("/credits/balance?user_id={user}")).await;
        assert_eq!(status, 200, "balance failed: {body}");
        body["balance"].as_i64().expect("balance")
    }

    pub async fn ledger_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Waits until `GET /commands/{id}` is no longer pending.
    pub async fn wait_applied(&self, command_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/commands/{command_id}")).await;
            assert_eq!(status, 200, "{body}");
            if body["status"] != "pending" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "command {command_id} still pending"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every processed command count reaches `count`.
    pub async fn wait_processed(&self, count: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_commands WHERE status <> 'cancelled'",
            )
            .fetch_one(&self.pool)
            .await
            .expect("count");
            if done >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {count} commands processed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `method path` with `key`, and a JSON body if given.
    pub async fn send_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        into_json(request.send().await.expect("request")).await
    }

    /// [`TestApp::send_as`] with the app's key.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send_as(&self.api_key, method, path, body).await
    }

    /// Adds a payment-webhook secret of `provider` to the app, through the CLI.
    pub async fn set_webhook_secret(&self, provider: &str, secret: &str) {
        let app_id = self.app_id.to_string();
        let args = [
            "app",
            "set-webhook-secret",
            "--app",
            &app_id,
            "--provider",
            provider,
            "--secret",
            secret,
        ];
        let (code, out) = self.cli(&args).await;
        assert_eq!(code, 0, "{out}");
    }

    /// The audit record of the payment webhook `event_id`, once a worker has applied it.
    pub async fn webhook_event(&self, event_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, page) = self.get("/webhooks/events?limit=200").await;
            assert_eq!(status, 200, "{page}");
            if let Some(event) = page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["event_id"] == event_id)
            {
                return event.clone();
            }
            assert!(Instant::now() < deadline, "event {event_id} never recorded");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A dashboard session: a client that does not follow redirects, and the session cookie
    /// (`name=value`) the admin token's login gave it.
    pub async fn dashboard_session(&self) -> (reqwest::Client, String) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let login = client
            .post(self.url("/dashboard/login"))
            .form(&[("token", ADMIN_TOKEN)])
            .send()
            .await
            .expect("login");
        assert_eq!(login.status().as_u16(), 303);
        let line = login.headers()["set-cookie"].to_str().expect("cookie");
        let cookie = line.split(';').next().expect("name=value").to_string();
        (client, cookie)
    }
}

async fn into_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = &self.ingress {
            task.abort();
        }
        self.workers.clear();
    }
}
