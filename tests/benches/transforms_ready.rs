//! Benchmark: apply 200 DataStreams and 100 Transforms at once and time until all are
//! Ready, with the operator's peak memory; then the time from applying one more Transform
//! to its first output record, through the operator, the scheduler and a worker pod on the
//! local node.
//!
//! Baselines, measured in the same run: for Ready, creating the same 300 topics (inputs
//! and outputs) straight through the Kafka admin API plus compiling and testing the 100
//! Transforms in one process (the work the operator cannot skip); for the first output, the
//! same Transform run as a bare `weir-worker` process on its YAML files.
//!
//! The 100 Transforms run at parallelism 0 (Ready means compiled, tested, output and
//! internal topics created, workload applied): 100 worker processes would measure this
//! machine, not the operator. Run with `make bench`.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use rdkafka::ClientConfig;
use weir_crds::{DataStream, Transform};
use weir_operator::kafka_admin::{DesiredTopic, KafkaAdmin};
use weir_tests::fixtures::data_stream;
use weir_tests::records::{self, Record};
use weir_tests::worker::Worker;
use weir_tests::{Images, LocalNode, Operator, OperatorOptions, Stack, install_crds};

const STREAMS: usize = 200;
const TRANSFORMS: usize = 100;
const IN_FLIGHT: usize = 32;

fn transform(i: usize, parallelism: i32) -> Transform {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: t{i:03}, namespace: default }}
spec:
  description: Views of one page.
  owner: web@example.com
  sql: "SELECT user_id, url, ts FROM s{i:03} WHERE url = '/a'"
  output: {{ name: out{i:03} }}
  parallelism: {parallelism}
  tests:
    - name: keeps /a
      given:
        s{i:03}:
          - {{ user_id: u1, url: /a, ts: "2026-01-01T00:00:00Z" }}
          - {{ user_id: u2, url: /b, ts: "2026-01-01T00:00:01Z" }}
      expect:
        - {{ user_id: u1 }}
"#
    ))
    .expect("valid Transform")
}

fn stream(i: usize) -> DataStream {
    let mut ds = data_stream(&format!("s{i:03}"), "");
    ds.metadata.namespace = Some("default".into());
    ds.spec.partitions = 1;
    ds
}

mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("transforms_ready: skipped (a benchmark; run `make bench`)");
        return Ok(());
    }

    // Baseline: the topics through the admin API, and the compile and tests in-process.
    let baseline = {
        let stack = Stack::start().await?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", stack.bootstrap_servers());
        let topics = KafkaAdmin::new(config)?;
        let started = Instant::now();
        let names: Vec<String> = (0..STREAMS)
            .map(|i| format!("default.s{i:03}"))
            .chain((0..TRANSFORMS).map(|i| format!("default.out{i:03}")))
            .collect();
        common::run_all(
            names.into_iter().map(|name| {
                let topics = topics.clone();
                async move {
                    let t = DesiredTopic {
                        name,
                        partitions: 1,
                        replication_factor: 1,
                        configs: Default::default(),
                    };
                    topics.create(&t).await
                }
            }),
            IN_FLIGHT,
            "baseline create",
        )
        .await;

        let streams: Vec<_> = (0..STREAMS)
            .map(|i| weir_crds::compile::stream_input(&stream(i)).expect("input"))
            .collect();
        for i in 0..TRANSFORMS {
            let tf = transform(i, 0);
            let compiled = weir_crds::compile::compile_transform(&tf, &streams)?;
            let outcomes = weir_crds::compile::run_tests(&tf, &compiled);
            anyhow::ensure!(
                outcomes
                    .iter()
                    .all(|(_, o)| o.as_ref().is_ok_and(|r| r.passed()))
            );
        }
        started.elapsed()
    };

    let stack = Stack::start().await?;
    let client = stack.kube_client().await?;
    install_crds(&client).await?;
    let node = LocalNode::start(
        &stack.control_plane.kubeconfig_path(),
        &stack.dir().join("node"),
        Images::workspace()?,
    )
    .await?;
    let operator = Operator::start(
        &stack,
        OperatorOptions {
            resync_interval: "5m",
            ..OperatorOptions::default()
        },
    )
    .await?;
    let streams = Api::<DataStream>::namespaced(client.clone(), "default");
    let transforms = Api::<Transform>::namespaced(client.clone(), "default");

    let started = Instant::now();
    let creates = (0..STREAMS)
        .map(|i| {
            let api = streams.clone();
            Box::pin(async move {
                api.create(&PostParams::default(), &stream(i))
                    .await
                    .map(|_| ())
            }) as futures::future::BoxFuture<'static, kube::Result<()>>
        })
        .chain((0..TRANSFORMS).map(|i| {
            let api = transforms.clone();
            Box::pin(async move {
                api.create(&PostParams::default(), &transform(i, 0))
                    .await
                    .map(|_| ())
            }) as futures::future::BoxFuture<'static, kube::Result<()>>
        }));
    common::run_all(creates, IN_FLIGHT, "create").await;

    let applied = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut peak_kib = 0;
    loop {
        peak_kib = peak_kib.max(operator.peak_rss_kib());
        let (ds_ready, tf_ready) = common::ready_counts(&client).await?;
        if ds_ready == STREAMS + TRANSFORMS && tf_ready == TRANSFORMS {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after 15 minutes only {ds_ready} DataStreams and {tf_ready} Transforms are Ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = started.elapsed();
    peak_kib = peak_kib.max(operator.peak_rss_kib());

    // First output: one more Transform (a worker pod) over an input that already has data.
    let bootstrap = stack.bootstrap_servers();
    let i = TRANSFORMS;
    let input: Vec<Record> = (0..100)
        .map(|n| {
            Record::new(
                format!("{{\"user_id\":\"u{n}\"}}"),
                format!("{{\"user_id\":\"u{n}\",\"url\":\"/a\",\"ts\":\"2026-01-01T00:00:00Z\"}}"),
            )
        })
        .collect();
    records::produce(&bootstrap, &format!("default.s{i:03}"), &input).await?;
    let started = Instant::now();
    transforms
        .patch(
            &format!("t{i:03}"),
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&transform(i, 1)),
        )
        .await?;
    let first = first_record(&bootstrap, &format!("default.out{i:03}")).await?;
    let first_output = started.elapsed();
    let _ = first;

    // Its baseline: the same Transform as a bare worker process on its files.
    let dir = stack.dir().join("bare");
    std::fs::create_dir_all(&dir)?;
    let j = i + 1;
    records::produce(&bootstrap, &format!("default.s{j:03}"), &input).await?;
    let mut out = stream(j);
    out.metadata.name = Some(format!("out{j:03}"));
    for topic in [
        format!("default.out{j:03}"),
        format!("default.t{j:03}.dead-letters"),
    ] {
        records::create_topic(&bootstrap, &topic, 1).await?;
    }
    let files = [
        ("input.yaml", serde_yaml::to_string(&stream(j))?),
        ("output.yaml", serde_yaml::to_string(&out)?),
        ("transform.yaml", serde_yaml::to_string(&transform(j, 1))?),
    ];
    let mut paths = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        paths.push(p);
    }
    let started = Instant::now();
    let _worker = Worker::start(&dir, &bootstrap, &paths, "bare-0", &[])?;
    first_record(&bootstrap, &format!("default.out{j:03}")).await?;
    let bare_first_output = started.elapsed();

    println!(
        "transforms_ready: {STREAMS} DataStreams and {TRANSFORMS} Transforms (+{TRANSFORMS} output DataStreams)"
    );
    println!(
        "  applied in                   {:>8.2} s",
        applied.as_secs_f64()
    );
    println!(
        "  all Ready after              {:>8.2} s",
        all_ready.as_secs_f64()
    );
    println!(
        "  operator peak RSS            {:>8.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!(
        "  baseline: 300 topics via the admin API + 100 compiles and tests in-process {:>8.2} s",
        baseline.as_secs_f64()
    );
    println!(
        "  ratio (all Ready / baseline) {:>8.2}x",
        all_ready.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  apply to first output record {:>8.2} s (operator, scheduler, worker pod)",
        first_output.as_secs_f64()
    );
    println!(
        "  baseline: bare weir-worker start to first output {:>8.2} s",
        bare_first_output.as_secs_f64()
    );
    println!(
        "  ratio (apply / bare worker)  {:>8.2}x",
        first_output.as_secs_f64() / bare_first_output.as_secs_f64()
    );
    node.shutdown().await;
    Ok(())
}

/// Waits for the first committed record of `topic`.
async fn first_record(bootstrap: &str, topic: &str) -> anyhow::Result<Record> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(got) = records::consume(
            bootstrap,
            topic,
            1,
            records::Isolation::ReadCommitted,
            Duration::from_millis(500),
        )
        .await
            && let Some(r) = got.into_iter().next()
        {
            return Ok(r);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no record in {topic} after 5 minutes"
        );
    }
}
