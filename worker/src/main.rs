use clap::Parser;
use tally_worker::WorkerConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = WorkerConfig::parse();
    tally_common::telemetry::init(config.common.log_format);
    match tally_worker::run(config, tally_common::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-worker: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
