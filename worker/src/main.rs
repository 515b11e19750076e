use anyhow::Context;
use clap::Parser;
use tally_worker::WorkerConfig;

/// glibc's allocator took a fifth of the process's CPU under load (many small, short-lived
/// allocations per request across threads); mimalloc serves the same pattern for a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = WorkerConfig::parse();
    tally_common::telemetry::init(config.common.log_format);
    let result = async {
        if let Some(addr) = &config.metrics_addr {
            serve_metrics(addr).await?;
        }
        tally_worker::run(config, tally_common::telemetry::shutdown_signal()).await
    };
    match result.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-worker: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves `/metrics` (Prometheus text) for this process on `addr`.
async fn serve_metrics(addr: &str) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(())
}
