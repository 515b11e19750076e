use anyhow::Context;
use clap::Parser;
use tally_ingress::IngressConfig;

/// glibc's allocator took a fifth of the process's CPU under load (many small, short-lived
/// allocations per request across threads); mimalloc serves the same pattern for a fraction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = IngressConfig::parse();
    tally_common::telemetry::init(config.common.log_format);
    let result = async {
        let listener = tokio::net::TcpListener::bind(&config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.http_addr))?;
        tally_ingress::run(config, listener, tally_common::telemetry::shutdown_signal()).await
    };
    match result.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-ingress: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
