//! Benchmark: `weir-worker` between Kafka topics on Nexmark bids as JSON, against a plain
//! rdkafka consume-and-produce loop (no engine) on the same broker and the same records.
//!
//! One broker, one input partition, one worker process: per-core figures. For each query
//! and delivery guarantee a fresh worker reads the same pre-produced bids from the start;
//! the time runs from its `/readyz` until its group's committed offset reaches the end of
//! the input. Each is compared with the fastest of the raw loop's runs at the start and
//! with a raw loop run just before it (the broker's speed drifts over a run). Also
//! measured: CPU seconds of the worker (records per CPU-second), its
//! resident memory idle and at peak, end-to-end latency at half and a quarter of the
//! measured exactly-once rate, and the time to restore a task from its changelog.
//!
//! Run with `make bench` (which builds the release binaries first). Records:
//! `WEIR_BENCH_RECORDS` (default 1,000,000: each run lasts several seconds, past the
//! start-up); `WEIR_BENCH_QUERIES` (names, comma-separated) runs
//! only those queries; `WEIR_BENCH_RESTORE_MIB` sizes the large restore (default 1024, 0
//! skips it); `WEIR_BENCH_LATENCY_RATE` (records/s, comma-separated) sets the latency runs'
//! rates instead; `WEIR_BENCH_WORKER_LOG` is the workers' `RUST_LOG`
//! (`weir_worker=debug` logs each commit's phases); `WEIR_BENCH_WORKER_ENV`
//! (`NAME=value,…`) sets worker flags; `WEIR_BENCH_RAW_RUNS` (default 3) is how many
//! times the raw loop runs at the start; `WEIR_BENCH_SECURE=0` skips the SASL_SSL runs
//! (passthrough and the window query, exactly once, each right after its plaintext run,
//! as a principal of its own with a Transform's ACLs, then the raw loop over the same
//! SASL_SSL listener, to tell what the stack's TLS costs from what the worker adds).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir_tests::Kafka;
use weir_tests::records::{self, Record};
use weir_tests::worker::Worker;

#[path = "worker_throughput/raw.rs"]
mod raw;

use raw::{raw_run, raw_run_with, records_topic};

const STREAMS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: bids, namespace: NS }
spec:
  description: Nexmark bids.
  owner: bench@example.com
  topic: INPUT
  key: [auction]
  eventTime: { field: date_time, maxOutOfOrderness: 1s }
  schema:
    fields:
      - { name: auction, type: bigint, nullable: false }
      - { name: bidder, type: bigint, nullable: false }
      - { name: price, type: bigint, nullable: false }
      - { name: channel, type: string }
      - { name: url, type: string }
      - { name: date_time, type: timestamp, nullable: false }
      - { name: extra, type: string }
---
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: auctions, namespace: NS }
spec:
  description: Nexmark auctions, a table.
  owner: bench@example.com
  topic: bench.auctions
  key: [id]
  cleanupPolicy: compact
  schema:
    fields:
      - { name: id, type: bigint, nullable: false }
      - { name: seller, type: bigint, nullable: false }
      - { name: category, type: bigint, nullable: false }
---
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: { name: t, namespace: NS }
spec:
  description: Under benchmark.
  owner: bench@example.com
  output: { name: out }
  deliveryGuarantee: DELIVERY
  sql: "SQL"
"#;

const QUERIES: [(&str, &str); 6] = [
    ("passthrough", "SELECT * FROM bids"),
    ("filter", "SELECT * FROM bids WHERE price % 10 = 0"),
    (
        "projection",
        "SELECT auction, bidder, price * 908 / 1000 AS euros, date_time FROM bids",
    ),
    (
        "tumbling window",
        "SELECT auction, window_start, COUNT(*) AS bids, MAX(price) AS top FROM bids \
         GROUP BY auction, TUMBLE(date_time, INTERVAL '10' SECOND)",
    ),
    (
        "stream-table join",
        "SELECT b.auction, b.price, a.category FROM bids b JOIN auctions a ON b.auction = a.id",
    ),
    (
        "aggregate (many groups)",
        "SELECT auction, bidder, COUNT(*) AS n, MAX(price) AS top FROM bids \
         GROUP BY auction, bidder",
    ),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("worker_throughput: skipped (a benchmark; run `make bench`)");
        return Ok(());
    }
    let n: usize = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir()?;
    let kafka = Kafka::start(&dir.path().join("kafka")).await?;
    let bootstrap = kafka.bootstrap_servers();
    let (bids, auctions) = nexmark(n);
    for (topic, compact) in [
        ("bench.bids", false),
        ("bench.auctions", true),
        ("bench.empty", false),
        ("bench.raw-out", false),
    ] {
        let configs: &[(&str, &str)] = if compact {
            &[("cleanup.policy", "compact")]
        } else {
            &[]
        };
        records::create_topic_with(&bootstrap, topic, 1, configs).await?;
    }
    records::produce(&bootstrap, "bench.auctions", &auctions).await?;
    for chunk in bids.chunks(50_000) {
        records::produce(&bootstrap, "bench.bids", chunk).await?;
    }
    println!("{n} bids ({} auctions) on the broker", auctions.len());

    // Baseline: consume and produce every record, nothing else. The fastest of the runs
    // (the machine is noisy; the ratios are against the best the loop did).
    let raw_runs: usize = std::env::var("WEIR_BENCH_RAW_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut raw = Duration::MAX;
    for _ in 0..raw_runs {
        let t = raw_run(&bootstrap, n).await?;
        println!("raw rdkafka loop: {:.2} s", t.as_secs_f64());
        raw = raw.min(t);
    }
    let raw_rate = n as f64 / raw.as_secs_f64();

    // Idle memory: a worker with nothing to read, ready, scraped once (as Prometheus and
    // the probes would), then left alone; with the start-up pages released (the default)
    // and kept.
    let mut idle_rss = Vec::new();
    for release in [true, false] {
        let ns = format!("idle{}", u8::from(release));
        let env = [("WEIR_RELEASE_STARTUP_PAGES", release.to_string())];
        let (s, mut w) = start(
            &dir,
            &bootstrap,
            &ns,
            "bench.empty",
            QUERIES[0].1,
            "exactlyOnce",
            &env,
        )
        .await?;
        w.metric_sum("weir_worker_records_in_total").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle_rss.push((
            release,
            ["VmRSS", "RssAnon", "RssFile"].map(|f| rss_kib(&w, f)),
        ));
        w.stop();
        drop(s);
    }

    let mut rows = Vec::new();
    let mut eos_passthrough = 0.0;
    let mut restore = None;
    // `WEIR_BENCH_QUERIES=passthrough,filter` runs only those queries (when profiling).
    let only = std::env::var("WEIR_BENCH_QUERIES").ok();
    // Also run on SASL_SSL, beside their plaintext run (`WEIR_BENCH_SECURE=0` skips it).
    let secure_queries: &[&str] = if std::env::var("WEIR_BENCH_SECURE").is_ok_and(|v| v == "0") {
        &[]
    } else {
        &["passthrough", "tumbling window"]
    };
    for (qi, (name, sql)) in QUERIES.iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|q| q == *name))
        {
            continue;
        }
        for delivery in ["exactlyOnce", "atLeastOnce"] {
            if qi == QUERIES.len() - 1 && delivery == "atLeastOnce" {
                continue;
            }
            // The raw loop again, just before: the broker slows and speeds up by a third
            // over a run (the kernel writing back earlier runs' records, other load), so
            // each row is also compared with a baseline measured under the same conditions.
            let adjacent = n as f64 / raw_run(&bootstrap, n).await?.as_secs_f64();
            let ns = format!("q{qi}{}", &delivery[..1]);
            let (files, mut w) =
                start(&dir, &bootstrap, &ns, "bench.bids", sql, delivery, &[]).await?;
            let (secs, cpu, peak) = run_to_end(&mut w, &bootstrap, &ns, n).await?;
            let rate = n as f64 / secs;
            if *name == "passthrough" && delivery == "exactlyOnce" {
                eos_passthrough = rate;
            }
            rows.push(format!(
                "| {name} | {delivery} | {rate:.0} | {:.0} | {:.2}× | {adjacent:.0} | {:.2}× | {:.1} MiB |",
                n as f64 / cpu.max(1e-3),
                rate / raw_rate,
                rate / adjacent,
                peak as f64 / 1024.0
            ));
            println!("{}", rows.last().unwrap());
            // The same worker on SASL_SSL (SCRAM-SHA-512) as a principal of its own with
            // the ACLs a Transform gets, on the same broker, right after: TLS, SASL and
            // the authorizer against plaintext.
            if delivery == "exactlyOnce" && secure_queries.contains(name) {
                let ns = format!("q{qi}s");
                let env = secure_env(&kafka, dir.path(), &ns).await?;
                let (_, mut w) =
                    start(&dir, &bootstrap, &ns, "bench.bids", sql, delivery, &env).await?;
                let (secs, cpu, peak) = run_to_end(&mut w, &bootstrap, &ns, n).await?;
                let secure = n as f64 / secs;
                rows.push(format!(
                    "| {name} | exactlyOnce over SASL_SSL | {secure:.0} | {:.0} | {:.2}× | {rate:.0} (plaintext, just before) | {:.2}× | {:.1} MiB |",
                    n as f64 / cpu.max(1e-3),
                    secure / raw_rate,
                    secure / rate,
                    peak as f64 / 1024.0
                ));
                println!("{}", rows.last().unwrap());
                // What TLS and SASL cost the stack itself: the raw loop over the same
                // listener (SCRAM-SHA-512), right after.
                let raw_secure = n as f64
                    / raw_run_with(
                        &bootstrap,
                        n,
                        kafka.operator_sasl_ssl_settings("SCRAM-SHA-512"),
                    )
                    .await?
                    .as_secs_f64();
                rows.push(format!(
                    "| raw loop | over SASL_SSL, just after | {raw_secure:.0} | | {:.2}× | {adjacent:.0} (plaintext raw loop before) | {:.2}× | worker over SASL_SSL: {:.2}× of this |",
                    raw_secure / raw_rate,
                    raw_secure / adjacent,
                    secure / raw_secure
                ));
                println!("{}", rows.last().unwrap());
            }
            if qi == QUERIES.len() - 1 {
                // Restore: a new worker reads this task's state back.
                let bytes = dir_bytes(&kafka_log_dir(dir.path(), &format!("{ns}.t.changelog-0")));
                let mut again = Worker::start(dir.path(), &bootstrap, &files, "again", &[])?;
                let t = Instant::now();
                again.wait_ready(Duration::from_secs(600)).await?;
                let own = again.metric_sum("weir_worker_restore_seconds_sum").await;
                restore = Some((bytes, t.elapsed(), Duration::from_secs_f64(own)));
                again.stop();
            }
        }
    }

    // Latency at half and a quarter of the exactly-once passthrough rate (the writer and
    // the reader share the two cores with the worker and the broker: the quarter shows
    // the latency without them saturated). Needs the passthrough's rate: skipped when
    // WEIR_BENCH_QUERIES leaves it out. `WEIR_BENCH_LATENCY_RATE` (records/s,
    // comma-separated) sets the rates instead.
    let rates: Vec<f64> = match std::env::var("WEIR_BENCH_LATENCY_RATE") {
        Ok(v) => v
            .split(',')
            .map(|r| {
                r.trim().parse().map_err(|_| {
                    anyhow::anyhow!("WEIR_BENCH_LATENCY_RATE: {r:?} is not a rate in records/s")
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Err(_) if eos_passthrough > 0.0 => vec![eos_passthrough / 2.0, eos_passthrough / 4.0],
        Err(_) => Vec::new(),
    };
    let mut latencies = Vec::new();
    for (i, rate) in rates.into_iter().enumerate() {
        latencies.push((rate, latency(&dir, &bootstrap, i, rate).await?));
    }

    println!(
        "\n| query | delivery | records/s | records per CPU-second | ratio to fastest raw loop \
         | raw loop just before | ratio to it | peak RSS |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!("{r}");
    }
    println!("\nraw rdkafka loop, fastest of {raw_runs} at the start: {raw_rate:.0} records/s");
    for (release, kib) in idle_rss {
        let [rss, anon, file] = kib.map(|k| k as f64 / 1024.0);
        let pages = if release { "released" } else { "kept" };
        println!(
            "idle RSS, start-up pages {pages}: {rss:.1} MiB ({anon:.1} MiB anonymous, \
             {file:.1} MiB mapped from files)"
        );
    }
    for (rate, (p50, p99)) in latencies {
        println!("passthrough exactly-once at {rate:.0} records/s: p50 {p50} ms, p99 {p99} ms");
    }
    // Restore of a large changelog (1 GiB by default): `WEIR_BENCH_RESTORE_MIB`, 0 skips it.
    let restore_mib: u64 = std::env::var("WEIR_BENCH_RESTORE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    if restore_mib > 0 {
        let (bytes, ready, own) = big_restore(&dir, &bootstrap, restore_mib).await?;
        let mib = bytes as f64 / (1 << 20) as f64;
        println!(
            "restore of a large changelog: {mib:.0} MiB in {:.1} s by the worker's \
             restore_seconds ({:.1} MiB/s); ready {:.1} s after the process started",
            own.as_secs_f64(),
            mib / own.as_secs_f64(),
            ready.as_secs_f64()
        );
    }
    if let Some((bytes, ready, own)) = restore {
        let mib = bytes as f64 / (1 << 20) as f64;
        println!(
            "restore: {mib:.1} MiB of changelog in {:.2} s by the worker's restore_seconds \
             ({:.1} MiB/s; 1 GiB at this rate: {:.0} s); ready {:.2} s after the process started",
            own.as_secs_f64(),
            mib / own.as_secs_f64(),
            1024.0 / (mib / own.as_secs_f64()),
            ready.as_secs_f64()
        );
    }
    Ok(())
}

/// Builds a changelog of about `mib` MiB and times a new worker reading it back. Each bid
/// is its own group and carries ~1 KiB in `extra`, which the state keeps (MAX), so the
/// state grows by about a KiB per record: 1 GiB from ~1M records, not ~9M small ones.
async fn big_restore(
    dir: &tempfile::TempDir,
    bootstrap: &str,
    mib: u64,
) -> anyhow::Result<(u64, Duration, Duration)> {
    const INPUT: &str = "bench.big-bids";
    records::create_topic_with(bootstrap, INPUT, 1, &[]).await?;
    let n = ((mib << 20) / 1100) as usize;
    let pad = "x".repeat(1000);
    for start in (0..n).step_by(50_000) {
        let chunk: Vec<Record> = (start..(start + 50_000).min(n))
            .map(|i| {
                Record::new(
                    serde_json::json!({ "auction": i }).to_string(),
                    serde_json::json!({
                        "auction": i, "bidder": i, "price": i, "channel": "c", "url": "u",
                        "date_time": 1_700_000_000_000u64 + i as u64, "extra": format!("{pad}{i}"),
                    })
                    .to_string(),
                )
            })
            .collect();
        records::produce(bootstrap, INPUT, &chunk).await?;
    }
    let sql = "SELECT auction, bidder, MAX(extra) AS e FROM bids GROUP BY auction, bidder";
    let (files, mut w) = start(dir, bootstrap, "big", INPUT, sql, "exactlyOnce", &[]).await?;
    wait_committed(bootstrap, "weir.big.t", INPUT, n as i64).await?;
    w.stop();
    let bytes = dir_bytes(&kafka_log_dir(dir.path(), "big.t.changelog-0"));
    let mut again = Worker::start(dir.path(), bootstrap, &files, "big-again", &[])?;
    let t = Instant::now();
    again.wait_ready(Duration::from_secs(1800)).await?;
    let ready = t.elapsed();
    let own = again.metric_sum("weir_worker_restore_seconds_sum").await;
    again.stop();
    Ok((bytes, ready, Duration::from_secs_f64(own)))
}

/// `n` bids and the auctions they bid on, as JSON records keyed like their DataStreams.
fn nexmark(n: usize) -> (Vec<Record>, Vec<Record>) {
    use nexmark::event::Event;
    let mut bids = Vec::with_capacity(n);
    let mut auctions = Vec::new();
    let config = nexmark::config::NexmarkConfig::default();
    for e in nexmark::EventGenerator::new(config) {
        match e {
            Event::Bid(b) => {
                bids.push(Record::new(
                    serde_json::json!({ "auction": b.auction }).to_string(),
                    serde_json::json!({
                        "auction": b.auction, "bidder": b.bidder, "price": b.price,
                        "channel": b.channel, "url": b.url, "date_time": b.date_time,
                        "extra": b.extra,
                    })
                    .to_string(),
                ));
                if bids.len() == n {
                    break;
                }
            }
            Event::Auction(a) => auctions.push(Record::new(
                serde_json::json!({ "id": a.id }).to_string(),
                serde_json::json!({ "id": a.id, "seller": a.seller, "category": a.category })
                    .to_string(),
            )),
            Event::Person(_) => {}
        }
    }
    (bids, auctions)
}

/// Writes the files for `sql` over `input` under namespace `ns`, creates its topics and
/// starts a release worker; returns when the worker is ready.
async fn start(
    dir: &tempfile::TempDir,
    bootstrap: &str,
    ns: &str,
    input: &str,
    sql: &str,
    delivery: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Vec<PathBuf>, Worker)> {
    let text = STREAMS
        .replace("NS", ns)
        .replace("INPUT", input)
        .replace("DELIVERY", delivery)
        .replace("SQL", sql);
    let file = dir.path().join(format!("{ns}.yaml"));
    std::fs::write(&file, text)?;
    for (t, compact) in [
        ("out", false),
        ("t.dead-letters", false),
        ("t.changelog", true),
        ("t.repartition", false),
    ] {
        let configs: &[(&str, &str)] = if compact {
            &[("cleanup.policy", "compact")]
        } else {
            &[]
        };
        records::create_topic_with(bootstrap, &format!("{ns}.{t}"), 1, configs).await?;
    }
    let files = vec![file];
    let log = (
        "RUST_LOG",
        std::env::var("WEIR_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".to_owned()),
    );
    // `WEIR_BENCH_WORKER_ENV=WEIR_COMMIT_RECORDS=50000,…` sets worker flags (the test kit
    // gives the worker no environment of its own).
    let extra = std::env::var("WEIR_BENCH_WORKER_ENV").unwrap_or_default();
    let extra = extra
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k, v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("WEIR_BENCH_WORKER_ENV: {kv:?} is not NAME=value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let env: Vec<_> = std::iter::once(log)
        .chain(env.iter().cloned())
        .chain(extra)
        .collect();
    let mut w = Worker::start(dir.path(), bootstrap, &files, ns, &env)?;
    w.wait_ready(Duration::from_secs(120)).await?;
    Ok((files, w))
}

/// Times a started worker until its group has committed all `n` input records, then stops
/// it: seconds, CPU seconds and peak RSS (KiB).
async fn run_to_end(
    w: &mut Worker,
    bootstrap: &str,
    ns: &str,
    n: usize,
) -> anyhow::Result<(f64, f64, u64)> {
    let started = Instant::now();
    let cpu0 = cpu_seconds(w);
    wait_committed(bootstrap, &format!("weir.{ns}.t"), "bench.bids", n as i64).await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(w) - cpu0;
    let peak = rss_kib(w, "VmHWM");
    w.stop();
    Ok((secs, cpu, peak))
}

/// Worker settings for the broker's SASL_SSL listener as a principal of its own
/// (`weir.<ns>.t`, SCRAM-SHA-512), holding the ACLs the operator gives a Transform that reads
/// the bench's inputs: what a secured Transform's worker pays for TLS, SASL and the
/// authorizer.
async fn secure_env(
    kafka: &Kafka,
    dir: &Path,
    ns: &str,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    use weir_operator::kafka_admin::acl::ScramMechanism;
    use weir_operator::transform::principal::{PlanTopics, desired_acls, managed_principal};
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", kafka.bootstrap_servers());
    let admin = weir_operator::kafka_admin::KafkaAdmin::new(config)?;
    let names = weir_crds::names::TransformNames::new(ns, "t", 0);
    let user = names.principal_user();
    let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
    admin
        .set_scram(&user, ScramMechanism::Sha512, &password)
        .await?;
    let topics = PlanTopics {
        inputs: vec!["bench.bids".into(), "bench.auctions".into()],
        output: format!("{ns}.out"),
        internal: [names.dead_letters(), names.changelog(), names.repartition()].into(),
    };
    // The bench names each worker after its namespace: its transactional id is
    // `weir.<ns>.t.<ns>`.
    let acls = desired_acls(&managed_principal(&names), &names, ns, &topics);
    admin.create_acls(acls.into_iter().collect()).await?;
    let file = dir.join(format!("{ns}.password"));
    std::fs::write(&file, &password)?;
    Ok(vec![
        (
            "WEIR_KAFKA_BOOTSTRAP_SERVERS",
            kafka.sasl_ssl_bootstrap_servers(),
        ),
        ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("WEIR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("WEIR_KAFKA_SASL_USERNAME", user),
        ("WEIR_KAFKA_SASL_PASSWORD_FILE", file.display().to_string()),
        (
            "WEIR_KAFKA_TLS_CA_FILE",
            kafka.pki().ca_path().display().to_string(),
        ),
    ])
}

/// Waits until `group` has committed offset `end` of partition 0 of `topic`.
async fn wait_committed(bootstrap: &str, group: &str, topic: &str, end: i64) -> anyhow::Result<()> {
    let consumer: BaseConsumer = records::client_config(bootstrap)
        .set("group.id", group)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        if let Some(e) = c.find_partition(topic, 0)
            && e.offset() == Offset::Offset(end)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{group} never reached the end of {topic}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// p50 and p99 milliseconds from producing a bid to reading it, committed, from the output
/// of an exactly-once passthrough, at `rate` records/s for 12 s. The first 2 s are a
/// warm-up and not counted (the clients' first fetches and metadata requests).
async fn latency(
    dir: &tempfile::TempDir,
    bootstrap: &str,
    run: usize,
    rate: f64,
) -> anyhow::Result<(u64, u64)> {
    let (input, ns) = (format!("bench.live{run}"), format!("lat{run}"));
    records::create_topic_with(bootstrap, &input, 1, &[]).await?;
    let (_, mut w) = start(
        dir,
        bootstrap,
        &ns,
        &input,
        QUERIES[0].1,
        "exactlyOnce",
        &[],
    )
    .await?;
    let bootstrap = bootstrap.to_owned();
    let total = (rate * 12.0) as usize;
    let warm_up = (rate * 2.0) as usize;
    let reader = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u64>> {
            let consumer: BaseConsumer = records::client_config(&bootstrap)
                .set("group.id", "bench.latency")
                .set("isolation.level", "read_committed")
                .create()?;
            records_topic(&consumer, &format!("{ns}.out"))?;
            let mut lat = Vec::with_capacity(total);
            let deadline = Instant::now() + Duration::from_secs(120);
            while lat.len() < total && Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let now = now_ms();
                    // Only the send time is read: the reader shares the machine's two cores
                    // with the worker and the broker, so it does as little as it can.
                    let v: Sent<'_> = serde_json::from_slice(m.payload().unwrap_or_default())?;
                    let sent: u64 = v.extra.parse().unwrap_or(0);
                    lat.push(now.saturating_sub(sent));
                }
            }
            Ok(lat)
        })
    };
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // librdkafka's default linger (5 ms): a producer batching as real ones do, not
        // one request per record.
        let producer: ThreadedProducer<_> = records::client_config(&bootstrap)
            .set("linger.ms", "5")
            .create()?;
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Written with format! (not a serde_json::Value per record): the writer too
            // shares the cores with what it measures.
            let (auction, now) = (i % 1000, now_ms());
            let value = format!(
                r#"{{"auction":{auction},"bidder":{i},"price":{i},"channel":"c","url":"u","date_time":{now},"extra":"{now}"}}"#
            );
            let key = format!(r#"{{"auction":{auction}}}"#);
            let mut rec = BaseRecord::to(input.as_str())
                .key(key.as_bytes())
                .payload(value.as_bytes());
            while let Err((_, r)) = producer.send(rec) {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    });
    writer.await??;
    let mut lat = reader.await??;
    lat.drain(..warm_up.min(lat.len()));
    w.stop();
    anyhow::ensure!(!lat.is_empty(), "no output was read");
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

/// The field of an output record the latency reader needs.
#[derive(serde::Deserialize)]
struct Sent<'a> {
    extra: &'a str,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn proc_file(w: &Worker, file: &str) -> String {
    w.pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/{file}")).ok())
        .unwrap_or_default()
}

/// A `/proc/<pid>/status` field in KiB.
fn rss_kib(w: &Worker, field: &str) -> u64 {
    proc_file(w, "status")
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU seconds of the worker process so far.
fn cpu_seconds(w: &Worker) -> f64 {
    let stat = proc_file(w, "stat");
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command's ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn kafka_log_dir(root: &Path, name: &str) -> PathBuf {
    fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|f| f == name) {
                return Some(p);
            }
            if p.is_dir()
                && let Some(found) = find(&p, name)
            {
                return Some(found);
            }
        }
        None
    }
    find(root, name).unwrap_or_default()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
