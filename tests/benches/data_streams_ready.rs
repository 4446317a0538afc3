//! Benchmark: apply 2,000 DataStreams over 10 namespaces at once and time until all are
//! Ready, with the operator's peak memory. The baseline, measured in the same run on a
//! fresh broker, is creating the same 2,000 topics straight through the Kafka admin API.
//! `WEIR_BENCH_DATASTREAMS` and `WEIR_BENCH_NAMESPACES` change the sizes.
//!
//! Run with `make bench` (which builds the release binaries first).

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use rdkafka::ClientConfig;
use weir_crds::DataStream;
use weir_operator::kafka_admin::{DesiredTopic, KafkaAdmin};
use weir_tests::fixtures::data_stream;
use weir_tests::{Operator, OperatorOptions, Stack, install_crds};

const COUNT: usize = 2_000;
const NAMESPACES: usize = 10;
const IN_FLIGHT: usize = 32;

mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then only say so.
    if !std::env::args().any(|a| a == "--bench") {
        println!("data_streams_ready: skipped (a benchmark; run `make bench`)");
        return Ok(());
    }
    let count = std::env::var("WEIR_BENCH_DATASTREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(COUNT);
    let namespaces: usize = std::env::var("WEIR_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NAMESPACES)
        .max(1);
    let namespace = |i: usize| format!("bench-{}", i % namespaces);

    // Baseline: the same topics through the admin API, on its own fresh broker.
    let baseline = {
        let stack = Stack::start().await?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", stack.bootstrap_servers());
        let topics = KafkaAdmin::new(config)?;
        let started = Instant::now();
        common::run_all(
            (0..count).map(|i| {
                let topics = topics.clone();
                async move {
                    let t = DesiredTopic {
                        name: format!("{}.s{i:04}", namespace(i)),
                        partitions: 3,
                        replication_factor: 1,
                        configs: [("retention.ms".to_owned(), "604800000".to_owned())].into(),
                    };
                    topics.create(&t).await
                }
            }),
            IN_FLIGHT,
            "baseline create",
        )
        .await;

        started.elapsed()
    };

    let stack = Stack::start().await?;
    let client = stack.kube_client().await?;
    install_crds(&client).await?;
    let operator = Operator::start(
        &stack,
        OperatorOptions {
            resync_interval: "5m",
            ..OperatorOptions::default()
        },
    )
    .await?;
    let namespace_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some(namespace(n));
        namespace_api.create(&PostParams::default(), &ns).await?;
    }

    let started = Instant::now();
    common::run_all(
        (0..count).map(|i| {
            let api = Api::<DataStream>::namespaced(client.clone(), &namespace(i));
            async move {
                api.create(
                    &PostParams::default(),
                    &data_stream(&format!("s{i:04}"), ""),
                )
                .await
            }
        }),
        IN_FLIGHT,
        "create",
    )
    .await;

    let applied = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak_kib = 0;
    loop {
        peak_kib = peak_kib.max(operator.peak_rss_kib());
        let (ready, _) = common::ready_counts(&client).await?;
        if ready == count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready} of {count} DataStreams Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = started.elapsed();
    peak_kib = peak_kib.max(operator.peak_rss_kib());

    println!("data_streams_ready: {count} DataStreams over {namespaces} namespaces");
    println!("  applied in            {:>8.2} s", applied.as_secs_f64());
    println!("  all Ready after       {:>8.2} s", all_ready.as_secs_f64());
    println!(
        "  operator peak RSS     {:>8.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "  baseline: {count} topics via the admin API  {:>8.2} s",
        baseline.as_secs_f64()
    );
    println!(
        "  ratio (all Ready / baseline)  {:>8.2}x",
        all_ready.as_secs_f64() / baseline.as_secs_f64()
    );
    Ok(())
}
