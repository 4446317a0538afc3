//! weir-dev runs the local stack for people: `make dev` and `make demo` call it.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use weir_tests::Stack;
use weir_tests::records::{self, Isolation, Record};

/// Run Weir's local stack: a real Kafka broker and Kubernetes control plane on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the stack in the foreground and print how to reach it; Ctrl-C stops it.
    Up,
    /// Start the stack, run Weir's demo against it, print what happened and stop.
    Demo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off,librdkafka=error".into()),
        )
        .init();
    let config = Config::parse();
    match config.command {
        Command::Up => up().await,
        Command::Demo => demo().await,
    }
}

async fn start() -> anyhow::Result<Stack> {
    eprintln!("Starting Kafka and Kubernetes (etcd, kube-apiserver, kube-controller-manager)…");
    let started = std::time::Instant::now();
    let stack = Stack::start().await.context("starting the local stack")?;
    eprintln!("Ready in {:.1}s.", started.elapsed().as_secs_f64());
    Ok(stack)
}

async fn up() -> anyhow::Result<()> {
    let stack = start().await?;
    let tools = weir_tests::tools::tools_dir().join("bin");
    println!(
        "\nThe local stack is running.\n\n\
         Kubernetes:\n  export KUBECONFIG={kubeconfig}\n  export PATH={tools}:$PATH\n  kubectl get namespaces\n\n\
         Kafka:\n  bootstrap servers: {bootstrap}\n  (any Kafka client: e.g. kcat -b {bootstrap} -L)\n\n\
         Logs and data: {dir}\n\nPress Ctrl-C to stop.",
        kubeconfig = stack.control_plane.kubeconfig_path().display(),
        tools = tools.display(),
        bootstrap = stack.bootstrap_servers(),
        dir = stack.dir().display(),
    );
    shutdown_signal().await;
    eprintln!("\nStopping…");
    drop(stack);
    eprintln!("Stopped; nothing is left running.");
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    let stack = start().await?;
    let client = stack.kube_client().await?;
    let bootstrap = stack.bootstrap_servers();

    let namespaces = Api::<Namespace>::all(client);
    let mut ns = Namespace::default();
    ns.metadata.name = Some("web".into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .context("creating namespace web")?;
    let listed = namespaces.list(&Default::default()).await?;
    println!(
        "1. Created namespace `web` in kube-apiserver {} (namespaces now: {}).",
        stack.control_plane.server(),
        listed
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let topic = "web.page-views";
    records::create_topic(&bootstrap, topic, 3).await?;
    println!("2. Created Kafka topic `{topic}` with 3 partitions on broker {bootstrap}.");

    let views = [
        (
            "u1",
            r#"{"user_id":"u1","url":"/a","ts":"2026-01-01T00:00:10Z"}"#,
        ),
        (
            "u2",
            r#"{"user_id":"u2","url":"/a","ts":"2026-01-01T00:00:50Z"}"#,
        ),
        (
            "u1",
            r#"{"user_id":"u1","url":"/b","ts":"2026-01-01T00:01:05Z"}"#,
        ),
    ];
    let produced: Vec<Record> = views.iter().map(|(k, v)| Record::new(*k, *v)).collect();
    records::produce(&bootstrap, topic, &produced).await?;
    println!("3. Produced {} page views.", produced.len());

    let consumed = records::consume(
        &bootstrap,
        topic,
        produced.len(),
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await?;
    println!("4. Consumed {} records (read_committed):", consumed.len());
    for r in &consumed {
        println!(
            "     partition {} key {} {}",
            r.partition.unwrap_or(-1),
            r.key_str(),
            r.value_str()
        );
    }
    anyhow::ensure!(
        consumed.len() == produced.len(),
        "expected {} records back, got {}",
        produced.len(),
        consumed.len()
    );
    println!("5. Stopping the stack.");
    drop(stack);
    println!(
        "Done: the demo ran against a real Kafka broker and kube-apiserver, and stopped cleanly."
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
