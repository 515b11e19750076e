use anyhow::Context;
use clap::Parser;
use tally_ingress::IngressConfig;

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
