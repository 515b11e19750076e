//! Tally's ingress: the HTTP API. Authenticates and validates requests, publishes commands to
//! the user's partition, waits for the worker's answer, and serves reads from Postgres.
//!
//! Only this crate knows HTTP; only workers write the ledger.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod command_ids;
pub mod dashboard;
pub mod entries;
pub mod error;
#[cfg(test)]
mod hostile_input;
pub mod openapi;
mod openapi_errors;
pub mod operations;
pub mod paging;
pub mod ratelimit;
pub mod reads;
pub mod responses;
pub mod routes;
pub mod server;
pub mod shards;
pub mod submit;
pub mod throttle;
pub mod validate;
pub mod webhooks;
pub mod write_request;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tally_common::config::CommonConfig;
use tally_common::partition::Names;
use tokio::net::TcpListener;

use crate::error::ApiError;

/// Ingress settings.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "tally-ingress", version, about = "Tally's HTTP API")]
pub struct IngressConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address the HTTP API listens on.
    #[arg(
        long,
        visible_alias = "tally-http-addr",
        env = "TALLY_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub http_addr: String,

    /// How long a synchronous write waits for its result before answering 202, in milliseconds.
    #[arg(
        long,
        visible_alias = "tally-sync-timeout-ms",
        env = "TALLY_SYNC_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub sync_timeout_ms: u64,

    /// Bearer token for `/admin/*` and the login of `/dashboard`, at least 32 characters
    /// (unset or empty: both disabled).
    #[arg(long, visible_alias = "tally-admin-token", env = "TALLY_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// How old a payment webhook's signed timestamp may be, in seconds.
    #[arg(
        long,
        visible_alias = "tally-webhook-tolerance-secs",
        env = "TALLY_WEBHOOK_TOLERANCE_SECS",
        default_value_t = 300
    )]
    pub webhook_tolerance_secs: u64,

    /// Rate limits of every app (unset: unlimited); see [`ratelimit`].
    #[command(flatten)]
    pub rate_limits: RateLimitConfig,

    /// Deadlines, the connection cap and the failed-authentication budgets; see [`server`] and
    /// [`throttle`].
    #[command(flatten)]
    pub abuse: AbuseConfig,
}

/// What a client may cost the ingress before it is cut off or throttled. The defaults are the
/// contract's figures.
#[derive(clap::Args, Clone, Debug)]
pub struct AbuseConfig {
    /// Comma-separated addresses and CIDRs of proxies whose `X-Forwarded-For` names the client
    /// address (for per-address throttling). Unset: the client is the socket's peer.
    #[arg(
        long,
        visible_alias = "tally-trusted-proxies",
        env = "TALLY_TRUSTED_PROXIES"
    )]
    pub trusted_proxies: Option<String>,

    /// Failed authentications (bad API keys, admin tokens or webhook signatures) each client
    /// address may make a minute before its requests get 429.
    #[arg(
        long,
        visible_alias = "tally-auth-failures-per-minute",
        env = "TALLY_AUTH_FAILURES_PER_MINUTE",
        default_value_t = throttle::AUTH_FAILURES_PER_MINUTE_DEFAULT,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub auth_failures_per_minute: u32,

    /// Failed dashboard logins each client address may make a minute before logins get 429.
    #[arg(
        long,
        visible_alias = "tally-login-failures-per-minute",
        env = "TALLY_LOGIN_FAILURES_PER_MINUTE",
        default_value_t = throttle::LOGIN_FAILURES_PER_MINUTE_DEFAULT,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub login_failures_per_minute: u32,

    /// Most connections served at once; past it new ones wait until one closes.
    #[arg(
        long,
        visible_alias = "tally-max-connections",
        env = "TALLY_MAX_CONNECTIONS",
        default_value_t = server::CONNECTIONS_MAX_DEFAULT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers (and a kept-alive connection may
    /// stay idle), in milliseconds.
    #[arg(
        long,
        visible_alias = "tally-header-read-timeout-ms",
        env = "TALLY_HEADER_READ_TIMEOUT_MS",
        default_value_t = server::HEADER_READ_TIMEOUT_DEFAULT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_ms: u64,

    /// How long a request body may send nothing before the request fails with 408, in
    /// milliseconds.
    #[arg(
        long,
        visible_alias = "tally-body-stall-timeout-ms",
        env = "TALLY_BODY_STALL_TIMEOUT_MS",
        default_value_t = server::BODY_STALL_TIMEOUT_DEFAULT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub body_stall_timeout_ms: u64,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: None,
            auth_failures_per_minute: throttle::AUTH_FAILURES_PER_MINUTE_DEFAULT,
            login_failures_per_minute: throttle::LOGIN_FAILURES_PER_MINUTE_DEFAULT,
            max_connections: server::CONNECTIONS_MAX_DEFAULT,
            header_read_timeout_ms: server::HEADER_READ_TIMEOUT_DEFAULT.as_millis() as u64,
            body_stall_timeout_ms: server::BODY_STALL_TIMEOUT_DEFAULT.as_millis() as u64,
        }
    }
}

impl AbuseConfig {
    pub fn server_limits(&self) -> server::ServerLimits {
        server::ServerLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_stall_timeout: Duration::from_millis(self.body_stall_timeout_ms),
            connections_max: self.max_connections,
        }
    }
}

/// Default rate limits, per app and per ingress. `tally app set-rate-limit` overrides the API
/// budget of one app.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RateLimitConfig {
    /// Sustained API requests per second each app may make (unset: unlimited).
    #[arg(
        long,
        visible_alias = "tally-rate-limit-rps",
        env = "TALLY_RATE_LIMIT_RPS"
    )]
    pub rate_limit_rps: Option<u32>,

    /// API requests an app may make at once above its rate (default: one second's worth).
    #[arg(
        long,
        visible_alias = "tally-rate-limit-burst",
        env = "TALLY_RATE_LIMIT_BURST"
    )]
    pub rate_limit_burst: Option<u32>,

    /// Payment webhooks per second each app may receive, a budget of their own (unset: unlimited).
    #[arg(
        long,
        visible_alias = "tally-webhook-rate-limit-rps",
        env = "TALLY_WEBHOOK_RATE_LIMIT_RPS"
    )]
    pub webhook_rate_limit_rps: Option<u32>,

    /// Payment webhooks an app may receive at once above its rate (default: one second's worth).
    #[arg(
        long,
        visible_alias = "tally-webhook-rate-limit-burst",
        env = "TALLY_WEBHOOK_RATE_LIMIT_BURST"
    )]
    pub webhook_rate_limit_burst: Option<u32>,
}

impl RateLimitConfig {
    pub fn limits(&self) -> ratelimit::RateLimits {
        ratelimit::RateLimits::new(
            ratelimit::Rate::from_config(self.rate_limit_rps, self.rate_limit_burst),
            ratelimit::Rate::from_config(
                self.webhook_rate_limit_rps,
                self.webhook_rate_limit_burst,
            ),
        )
    }
}

impl IngressConfig {
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            http_addr: "127.0.0.1:0".into(),
            sync_timeout_ms: 5000,
            admin_token: None,
            webhook_tolerance_secs: 300,
            rate_limits: RateLimitConfig::default(),
            abuse: AbuseConfig::default(),
        }
    }

    pub fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_timeout_ms)
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Arc<bus::Bus>,
    /// Mints the command ids `GET /commands/{id}` can vouch for.
    pub command_ids: Arc<command_ids::CommandIds>,
    pub balances: reads::BalanceReads,
    pub config: Arc<IngressConfig>,
    pub keys: Arc<auth::KeyCache>,
    pub metrics: PrometheusHandle,
    pub limits: Arc<ratelimit::RateLimits>,
    /// The admin token's digest and the keys derived from it; `None`: admin API and dashboard
    /// off.
    pub admin: Option<Arc<admin::token::AdminToken>>,
    /// Client addresses and their failed-authentication budgets.
    pub throttle: Arc<throttle::Throttle>,
}

/// The process-wide metrics recorder (installed once, shared by every ingress in the process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/credits/add", post(routes::credits::add))
        .route("/credits/deduct", post(routes::credits::deduct))
        .route("/credits/refund", post(routes::credits::refund))
        .route("/credits/hold", post(routes::holds::hold))
        .route("/credits/capture", post(routes::holds::capture))
        .route("/credits/release", post(routes::holds::release))
        .route("/credits/holds", get(routes::holds::list))
        .route("/credits/batch", post(routes::batch::batch))
        .route(
            "/credits/alerts",
            get(routes::alerts::get_alerts)
                .put(routes::alerts::put_alerts)
                .delete(routes::alerts::delete_alerts),
        )
        .route(
            "/credits/auto_topup",
            get(routes::plans::get_auto_topup)
                .put(routes::plans::put_auto_topup)
                .delete(routes::plans::delete_auto_topup),
        )
        .route("/products", get(routes::plans::list_products))
        .route(
            "/products/{provider}/{product_id}",
            put(routes::plans::put_product).delete(routes::plans::delete_product),
        )
        .route("/credits/balance", get(routes::credits::balance))
        .route("/credits/balances", get(routes::credits::balances))
        .route("/credits/history", get(routes::credits::history))
        .route(
            "/commands/{command_id}",
            get(routes::commands::command_status),
        )
        .route(
            "/webhook_endpoints",
            get(routes::endpoints::list_endpoints).post(routes::endpoints::create_endpoint),
        )
        .route(
            "/webhook_endpoints/{id}",
            get(routes::endpoints::get_endpoint)
                .patch(routes::endpoints::update_endpoint)
                .delete(routes::endpoints::delete_endpoint),
        )
        .route(
            "/webhook_endpoints/{id}/rotate_secret",
            post(routes::endpoints::rotate_secret),
        )
        .route(
            "/webhook_endpoints/{id}/test",
            post(routes::deliveries::send_test),
        )
        .route(
            "/webhook_endpoints/{id}/deliveries",
            get(routes::deliveries::list_deliveries),
        )
        .route(
            "/webhook_deliveries/{id}/redeliver",
            post(routes::deliveries::redeliver),
        )
        .route("/events", get(routes::events::list_outbound_events))
        .route("/events/{id}", get(routes::events::get_outbound_event))
        .route("/webhooks/stripe", post(webhooks::stripe_single))
        .route("/webhooks/stripe/{app_id}", post(webhooks::stripe_for_app))
        .route("/webhooks/polar", post(webhooks::polar_single))
        .route("/webhooks/polar/{app_id}", post(webhooks::polar_for_app))
        .route("/webhooks/events", get(webhooks::list_events))
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::ops::openapi))
        .merge(admin::routes())
        .merge(dashboard::routes())
        .fallback(not_found)
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// A span and a counter per request, labelled by the matched route.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("http", http.method = %method, http.route = %route);
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tally_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tally_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Connects to Postgres and NATS (migrating and provisioning), then serves on `listener` until
/// `shutdown` resolves.
pub async fn run(
    config: IngressConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Configuration first: a bad token or proxy list stops the ingress before it connects.
    let admin = admin::token::AdminToken::from_config(config.admin_token.as_deref())?.map(Arc::new);
    let throttle = Arc::new(throttle::Throttle::from_config(&config.abuse)?);
    let pool = tally_common::db::connect(
        &config.common.database_url,
        config.common.db_pool_size,
        tally_common::db::Planning::Lookups,
    )
    .await?;
    tally_common::db::migrate(&pool).await?;
    let client = tally_common::broker::connect(&config.common.nats_url, "tally-ingress").await?;
    let names = Names::new(&config.common.namespace);
    tally_common::broker::provision(
        &async_nats::jetstream::new(client.clone()),
        &names,
        config.common.partitions,
        config.common.stream_replicas,
        tally_common::broker::Replicas::Warn,
    )
    .await?;
    let shards = shards::Shards::start(pool.clone(), &names, config.common.partitions).await;
    let bus = bus::Bus::start(client, names, config.common.partitions, shards).await?;
    let limits = Arc::new(config.rate_limits.limits());
    limits.set_overrides(ratelimit::RateLimits::load_overrides(&pool).await?);
    limits.start_refresh(pool.clone());
    let state = AppState {
        limits,
        command_ids: Arc::new(command_ids::CommandIds::load(&pool).await?),
        balances: reads::BalanceReads::start(pool.clone()),
        pool,
        bus: Arc::new(bus),
        config: Arc::new(config),
        keys: Arc::default(),
        metrics: metrics_handle(),
        admin,
        throttle,
    };
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    let limits = state.config.abuse.server_limits();
    server::serve(listener, router(state), limits, shutdown).await;
    Ok(())
}
