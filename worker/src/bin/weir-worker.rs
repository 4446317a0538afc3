//! The weir-worker binary, run in each Transform's pods.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use weir_worker::config::{LogFormat, RunConfig};
use weir_worker::http::Health;
use weir_worker::transform::Job;

/// Weir's data plane: runs a Transform's SQL between Kafka topics.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a Transform: consume its inputs, write its output, until SIGTERM.
    Run(RunConfig),
}

fn main() -> ExitCode {
    let Command::Run(config) = Cli::parse().command;
    init_logs(config.log_format);
    // Crash points for tests, from FAILPOINTS, in builds that have them.
    #[cfg(feature = "failpoints")]
    let _crash_points = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set, but this build has no crash points: ignored");
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "weir-worker stopped");
            eprintln!("weir-worker: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: RunConfig) -> anyhow::Result<()> {
    let job = Job::load(&config.files, config.transform.as_deref())?;
    if let Some(expected) = &config.fingerprint
        && *expected != job.compiled.fingerprint
    {
        anyhow::bail!(
            "Transform {}: the SQL and schemas compile to plan {}, not the plan {expected} this \
             worker was deployed for; refusing to start",
            job.id,
            job.compiled.fingerprint
        );
    }
    let health = Health::default();
    health.beat();
    let stop = Arc::new(AtomicBool::new(false));

    // HTTP endpoints and signals on a small runtime beside the processing loop.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(weir_worker::http::serve(listener, health.clone(), async {
        let _ = rx.await;
    }));
    let signalled = stop.clone();
    runtime.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: committing and leaving the group");
        signalled.store(true, Ordering::Relaxed);
    });

    let result = weir_worker::pipeline::run(job, config, health, stop);
    let _ = tx.send(());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
