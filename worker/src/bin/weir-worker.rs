//! The weir-worker binary, run in each Transform's pods.

use clap::Parser;

/// Runs one Transform between Kafka topics, exactly once.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {}

fn main() -> anyhow::Result<()> {
    let _config = Config::parse();
    Ok(())
}
