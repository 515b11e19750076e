//! Tally's ingress: the HTTP API. Authenticates and validates requests, publishes commands to
//! the user's partition, waits for the worker's answer, and serves reads from Postgres.
//!
//! Only this crate knows HTTP; only workers write the ledger.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod dashboard;
pub mod entries;
pub mod error;
pub mod group;
#[cfg(test)]
mod hostile_input;
pub mod openapi;
mod openapi_errors;
pub mod operations;
pub mod paging;
pub mod ratelimit;
pub mod reads;
pub mod receipts;
pub mod responses;
pub mod routes;
pub mod submit;
pub mod validate;
pub mod webhooks;
pub mod write_request;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
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

    /// Bearer token for `/admin/*` and the login of `/dashboard` (unset: both disabled).
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
    pub receipts: receipts::Receipts,
    pub balances: reads::BalanceReads,
    pub config: Arc<IngressConfig>,
    pub keys: Arc<auth::KeyCache>,
    pub metrics: PrometheusHandle,
    pub limits: Arc<ratelimit::RateLimits>,
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
        .route("/credits/balance", get(routes::credits::balance))
        .route("/credits/balances", get(routes::credits::balances))
        .route("/credits/history", get(routes::credits::history))
        .route(
            "/commands/{command_id}",
            get(routes::commands::command_status),
        )
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
    let bus = bus::Bus::start(client, names, config.common.partitions).await?;
    let limits = Arc::new(config.rate_limits.limits());
    limits.set_overrides(ratelimit::RateLimits::load_overrides(&pool).await?);
    limits.start_refresh(pool.clone());
    let state = AppState {
        limits,
        receipts: receipts::Receipts::start(pool.clone()),
        balances: reads::BalanceReads::start(pool.clone()),
        pool,
        bus: Arc::new(bus),
        config: Arc::new(config),
        keys: Arc::default(),
        metrics: metrics_handle(),
    };
    tracing::info!(addr = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
