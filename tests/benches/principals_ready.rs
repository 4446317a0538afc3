//! Benchmark: what per-Transform principals and ACLs cost the operator. 2,000 DataStreams
//! (1,800 inputs and the 200 outputs of 200 Transforms) over 10 namespaces are applied at
//! once to an operator on the broker's SASL_SSL listener with the StandardAuthorizer, and
//! the clock runs until every DataStream and Transform is Ready for its generation. Twice,
//! each on a fresh stack: with `--transform-principals=none` (the baseline: no SCRAM
//! credentials, Secrets or ACLs) and with `managed` (a SCRAM credential, a Secret and
//! exactly the plan's ACLs per Transform). The Transforms run at parallelism 0: 200 worker
//! processes would measure this machine, not the operator.
//!
//! `WEIR_BENCH_TRANSFORMS` (default 200) and `WEIR_BENCH_INPUTS` (default 1,800) change the
//! sizes. Run with `make bench`.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use weir_crds::{DataStream, Transform};
use weir_operator::kafka_admin::KafkaAdmin;
use weir_tests::fixtures::data_stream;
use weir_tests::{Operator, OperatorOptions, Stack, install_crds};

const NAMESPACES: usize = 10;
const IN_FLIGHT: usize = 32;

mod common;

fn namespace(i: usize) -> String {
    format!("bench-{}", i % NAMESPACES)
}

fn transform(i: usize) -> Transform {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: t{i:04}, namespace: {ns} }}
spec:
  description: Views of one page.
  owner: web@example.com
  sql: "SELECT user_id, url, ts FROM s{i:04} WHERE url = '/a'"
  output: {{ name: out{i:04} }}
  parallelism: 0
"#,
        ns = namespace(i)
    ))
    .expect("valid Transform")
}

struct Run {
    ready: Duration,
    peak_kib: u64,
    acls: usize,
}

async fn run(mode: &str, inputs: usize, transforms: usize) -> anyhow::Result<Run> {
    let stack = Stack::start().await?;
    let client = stack.kube_client().await?;
    install_crds(&client).await?;
    let mut options = OperatorOptions::on_sasl_ssl(&stack)?;
    options.resync_interval = "5m";
    options
        .env
        .push(("WEIR_TRANSFORM_PRINCIPALS", mode.to_owned()));
    let operator = Operator::start(&stack, options).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for n in 0..NAMESPACES {
        let mut ns = k8s_openapi::api::core::v1::Namespace::default();
        ns.metadata.name = Some(namespace(n));
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let started = Instant::now();
    let creates = (0..inputs)
        .map(|i| {
            let api = Api::<DataStream>::namespaced(client.clone(), &namespace(i));
            Box::pin(async move {
                let mut ds = data_stream(&format!("s{i:04}"), "");
                ds.spec.partitions = 1;
                api.create(&PostParams::default(), &ds).await.map(|_| ())
            }) as futures::future::BoxFuture<'static, kube::Result<()>>
        })
        .chain((0..transforms).map(|i| {
            let api = Api::<Transform>::namespaced(client.clone(), &namespace(i));
            Box::pin(async move {
                api.create(&PostParams::default(), &transform(i))
                    .await
                    .map(|_| ())
            }) as futures::future::BoxFuture<'static, kube::Result<()>>
        }));
    common::run_all(creates, IN_FLIGHT, "create").await;

    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut peak_kib = 0;
    loop {
        peak_kib = peak_kib.max(operator.peak_rss_kib());
        let (ds_ready, tf_ready) = common::ready_counts(&client).await?;
        if ds_ready == inputs + transforms && tf_ready == transforms {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{mode}: after 20 minutes only {ds_ready} DataStreams and {tf_ready} Transforms \
             are Ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = started.elapsed();
    peak_kib = peak_kib.max(operator.peak_rss_kib());
    // How many ACLs the broker holds for the Transforms' principals.
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    let kit = KafkaAdmin::new(config)?;
    let mut acls = 0;
    for i in 0..transforms {
        acls += kit
            .acls(&format!("User:weir.{}.t{i:04}", namespace(i)))
            .await?
            .len();
    }
    Ok(Run {
        ready,
        peak_kib,
        acls,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("principals_ready: skipped (a benchmark; run `make bench`)");
        return Ok(());
    }
    let size = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let transforms = size("WEIR_BENCH_TRANSFORMS", 200);
    let inputs = size("WEIR_BENCH_INPUTS", 1_800).max(transforms);
    let baseline = run("none", inputs, transforms).await?;
    let managed = run("managed", inputs, transforms).await?;
    println!(
        "principals_ready: {} DataStreams and {transforms} Transforms over {NAMESPACES} \
         namespaces, operator on SASL_SSL with the StandardAuthorizer",
        inputs + transforms
    );
    for (what, r) in [("none (baseline)", &baseline), ("managed", &managed)] {
        println!(
            "  {what:<16} all Ready {:>8.2} s   operator peak RSS {:>6.1} MiB   {} ACLs",
            r.ready.as_secs_f64(),
            r.peak_kib as f64 / 1024.0,
            r.acls
        );
    }
    println!(
        "  ratio (managed / none)  {:>6.2}x",
        managed.ready.as_secs_f64() / baseline.ready.as_secs_f64()
    );
    Ok(())
}
