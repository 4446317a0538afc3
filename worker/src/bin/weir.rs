//! The weir developer CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir's command-line tool: test and explain Transforms on a laptop, with no cluster.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about)]
struct Config {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the fixture tests of every Transform in the files, against the DataStreams
    /// in the same files. Exits non-zero when a test fails.
    Test {
        /// YAML files with Transforms and the DataStreams they read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile every Transform in the files and print its plan, output and lineage.
    Explain {
        /// YAML files with Transforms and the DataStreams they read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let config = Config::parse();
    let result = match config.command {
        Command::Test { files } => weir_worker::cli::test(&files).map(|(report, ok)| {
            print!("{report}");
            ok
        }),
        Command::Explain { files } => weir_worker::cli::explain(&files).map(|out| {
            print!("{out}");
            true
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
