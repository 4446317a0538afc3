//! The weir developer CLI.

use clap::Parser;

/// Weir's command-line tool: test and explain Transforms on a laptop, with no cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {}

fn main() -> anyhow::Result<()> {
    let _config = Config::parse();
    Ok(())
}
