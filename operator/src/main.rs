//! The weir-operator binary.

use clap::Parser;
use weir_operator::config::Config;
use weir_operator::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format, "info,kube=warn,rdkafka=warn");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "weir-operator starting"
    );
    if let Err(e) = weir_operator::run::run(config).await {
        tracing::error!(error = %e, "weir-operator stopped");
        eprintln!("weir-operator: {e}");
        std::process::exit(1);
    }
    Ok(())
}
