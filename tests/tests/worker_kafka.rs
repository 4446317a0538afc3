//! `weir-worker` on the real broker: records flow from input topics through the engine
//! into the output topic, exactly once, through crashes, frozen workers and rescaling,
//! with bad records in the dead-letter topic.
//!
//! Every scenario is checked by an outside verifier: it reads the output topic
//! `read_committed` and compares it with the same SQL over the whole input computed by
//! the engine in batch (`weir_engine::runner`), and checks that no transaction is left
//! open. The scenarios share one broker and run side by side, each in its own topics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use weir_engine::runner::{Record as Row, Rows, render, run_records};
use weir_engine::sql::StreamKind;
use weir_tests::records::{self, Record};
use weir_tests::worker::Worker;
use weir_tests::{Kafka, wait_until};
use weir_worker::transform::Job;

/// One broker for the whole file.
async fn broker() -> &'static Kafka {
    static KAFKA: tokio::sync::OnceCell<(Kafka, PathBuf)> = tokio::sync::OnceCell::const_new();
    &KAFKA
        .get_or_init(|| async {
            let dir = tempfile::Builder::new()
                .prefix("weir-worker-kafka-")
                .tempdir()
                .expect("a temp dir")
                .keep();
            weir_tests::process::remove_when_owner_exits(&dir);
            let kafka = Kafka::start(&dir.join("kafka"))
                .await
                .expect("starting Kafka");
            (kafka, dir)
        })
        .await
        .0
}

/// A scenario's namespace, files and topics.
struct Scenario {
    ns: String,
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
    job: Job,
    partitions: i32,
    bootstrap: String,
}

const CLICKS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: clicks, namespace: NS }
spec:
  description: Clicks.
  owner: web@example.com
  partitions: PARTS
  key: [user_id]
  eventTime: { field: ts, maxOutOfOrderness: 1s }
  schema:
    fields:
      - { name: user_id, type: string, nullable: false }
      - { name: url, type: string }
      - { name: n, type: bigint, nullable: false }
      - { name: ts, type: timestamp, nullable: false }
"#;

const USERS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: users, namespace: NS }
spec:
  description: Users, a table.
  owner: web@example.com
  partitions: PARTS
  key: [user_id]
  cleanupPolicy: compact
  schema:
    fields:
      - { name: user_id, type: string, nullable: false }
      - { name: country, type: string }
"#;

impl Scenario {
    /// Writes the DataStream `clicks` and a Transform with `sql` (and extra spec lines),
    /// and creates every topic the worker needs.
    async fn new(ns: &str, partitions: i32, sql: &str, spec: &str) -> Self {
        Self::on(
            broker().await.bootstrap_servers(),
            ns,
            partitions,
            sql,
            spec,
        )
        .await
    }

    /// Like [`Scenario::new`], on the broker at `bootstrap`.
    async fn on(bootstrap: String, ns: &str, partitions: i32, sql: &str, spec: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let transform = format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: t, namespace: {ns} }}
spec:
  description: Under test.
  owner: data@example.com
  output: {{ name: out }}
  sql: "{sql}"
{spec}
"#
        );
        let text = [CLICKS, USERS]
            .map(|d| {
                d.replace("NS", ns)
                    .replace("PARTS", &partitions.to_string())
            })
            .join("---")
            + "---"
            + &transform;
        let file = dir.path().join("transform.yaml");
        std::fs::write(&file, text).expect("writing the YAML");
        let job = Job::load(&[&file], None).expect("the Transform compiles");
        Self::create_topics(&bootstrap, ns, partitions, &job, &[]).await;
        Self {
            ns: ns.to_owned(),
            files: vec![file],
            dir,
            job,
            partitions,
            bootstrap,
        }
    }

    /// Creates the input, output, dead-letter and changelog topics; `changelog` adds
    /// configs to the changelog topic.
    async fn create_topics(
        bootstrap: &str,
        ns: &str,
        partitions: i32,
        job: &Job,
        changelog: &[(&str, &str)],
    ) {
        for (topic, compact) in [
            (format!("{ns}.clicks"), false),
            (format!("{ns}.users"), true),
            (
                format!("{ns}.out"),
                job.compiled.output_kind == StreamKind::Changelog,
            ),
            (format!("{ns}.t.dead-letters"), false),
            (format!("{ns}.t.changelog"), true),
            (format!("{ns}.t.repartition"), false),
        ] {
            let mut configs = if compact {
                vec![("cleanup.policy", "compact")]
            } else {
                vec![]
            };
            if topic.ends_with(".changelog") {
                configs.extend_from_slice(changelog);
            }
            records::create_topic_with(bootstrap, &topic, partitions, &configs)
                .await
                .expect("creating a topic");
        }
    }

    fn worker(&self, name: &str, env: &[(&str, String)]) -> Worker {
        Worker::start(self.dir.path(), &self.bootstrap, &self.files, name, env)
            .expect("starting a worker")
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.ns)
    }

    async fn produce(&self, records: &[Record]) {
        records::produce(&self.bootstrap, &self.topic("clicks"), records)
            .await
            .expect("producing");
    }

    /// The output's rows as the verifier reads them: every record of an append-only
    /// output, or the last row per key of a changelog.
    async fn output(&self) -> Rows {
        let read =
            records::consume_all(&self.bootstrap, &self.topic("out"), Duration::from_secs(4))
                .await
                .expect("reading the output");
        let schema = self.job.compiled.output_schema.clone();
        let values: Vec<Vec<u8>> = match self.job.compiled.output_kind {
            StreamKind::AppendOnly => read.into_iter().filter_map(|r| r.value).collect(),
            StreamKind::Changelog => {
                let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                for r in read {
                    last.insert(r.key.expect("changelog records have keys"), r.value);
                }
                last.into_values().flatten().collect()
            }
        };
        let mut rows: BTreeMap<Vec<String>, i64> = BTreeMap::new();
        for v in values {
            let mut d = arrow::json::ReaderBuilder::new(schema.clone())
                .build_decoder()
                .unwrap();
            d.decode(&v).unwrap();
            let batch = d.flush().unwrap().unwrap();
            for r in render(&schema, &batch).unwrap() {
                *rows.entry(r).or_default() += 1;
            }
        }
        rows.into_iter().collect()
    }

    /// The same SQL over every good record, computed by the engine in batch.
    fn oracle(&self, good: &[Row]) -> Rows {
        let given = vec![(format!("{}.clicks", self.ns), good.to_vec())];
        let (rows, _) = run_records(&self.job.compiled, &given).expect("the oracle runs");
        rows
    }

    /// The dead-letter topic holds exactly `record`, set aside as late, with its value.
    async fn assert_one_late_dead_letter(&self, record: &Record) {
        let dead = records::consume_all(
            &self.bootstrap,
            &self.topic("t.dead-letters"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        assert_eq!(dead.len(), 1, "{}: {dead:?}", self.ns);
        assert_eq!(dead[0].header("weir.error.class").as_deref(), Some("late"));
        assert_eq!(dead[0].value, record.value);
    }

    /// Waits until the output equals `expected`, or fails with what differs.
    async fn await_output(&self, expected: &Rows, timeout: Duration, workers: &[&Worker]) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.output().await;
            if &got == expected {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = workers.iter().map(|w| w.log_tail(20)).collect();
                panic!(
                    "the output never matched the oracle:\n{}\nworker logs:\n{}",
                    diff(expected, &got),
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until the output equals `expected`, restarting a worker that gave up (as
    /// its pod would be restarted), without crash points.
    async fn await_output_restarting(&self, expected: &Rows, workers: &mut [Worker]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            for w in workers.iter_mut() {
                if !w.is_running() {
                    eprintln!("{} gave up:\n{}", w.name(), w.log_tail(5));
                    *w = self.worker(w.name(), &fast());
                }
            }
            if &self.output().await == expected {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let refs: Vec<&Worker> = workers.iter().collect();
                self.await_output(expected, Duration::ZERO, &refs).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn assert_no_open_transactions(&self) {
        for t in ["out", "t.changelog", "t.dead-letters", "t.repartition"] {
            assert!(
                !records::open_transactions(&self.bootstrap, &self.topic(t), self.partitions)
                    .unwrap(),
                "a transaction on {} is still open",
                self.topic(t)
            );
        }
    }
}

fn diff(expected: &Rows, got: &Rows) -> String {
    let e: BTreeMap<_, _> = expected.iter().cloned().collect();
    let g: BTreeMap<_, _> = got.iter().cloned().collect();
    let mut out = Vec::new();
    for (row, n) in &e {
        if g.get(row) != Some(n) {
            out.push(format!(
                "  expected {row:?} ×{n}, got ×{}",
                g.get(row).unwrap_or(&0)
            ));
        }
    }
    for (row, n) in &g {
        if !e.contains_key(row) {
            out.push(format!("  unexpected {row:?} ×{n}"));
        }
    }
    out.truncate(20);
    format!(
        "{} expected rows, {} read; first differences:\n{}",
        expected.len(),
        got.len(),
        out.join("\n")
    )
}

/// `count` good click records over `users` users, one second apart from `start`.
fn clicks(start: usize, count: usize, users: usize) -> (Vec<Record>, Vec<Row>) {
    let base = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let mut records = Vec::with_capacity(count);
    let mut rows = Vec::with_capacity(count);
    for i in start..start + count {
        let user = format!("u{}", i % users);
        let row: Row = serde_json::from_value(serde_json::json!({
            "user_id": user,
            "url": format!("/p{}", i % 7),
            "n": i as i64,
            "ts": base + (i as i64) * 1000,
        }))
        .unwrap();
        records.push(Record::new(
            serde_json::json!({ "user_id": user }).to_string(),
            serde_json::Value::Object(row.clone()).to_string(),
        ));
        rows.push(row);
    }
    (records, rows)
}

/// A number in `range`, from the clock: enough randomness to vary crash timing.
fn pick(range: std::ops::Range<u64>) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    range.start + nanos % (range.end - range.start)
}

fn fast() -> Vec<(&'static str, String)> {
    vec![("WEIR_COMMIT_INTERVAL", "50ms".to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_at_parallelism_3_writes_every_good_record_once_and_dead_letters_the_rest() {
    let s = Scenario::new(
        "filter3",
        3,
        "SELECT user_id, url, n * 2 AS n2 FROM clicks WHERE n % 3 <> 0",
        "",
    )
    .await;
    let (mut good, rows) = clicks(0, 3000, 50);
    // Poison of every kind, spread through the input.
    let poison = [
        (
            "syntax",
            r#"{"user_id":"u1","n":"#.to_owned(),
            "json_syntax",
        ),
        (
            "comma",
            r#"{"user_id":"u1" "n":4,"ts":0}"#.to_owned(),
            "json_syntax",
        ),
        (
            "type",
            r#"{"user_id":"u1","n":"three","ts":0}"#.to_owned(),
            "type_mismatch",
        ),
        (
            "missing",
            r#"{"user_id":"u1","ts":0}"#.to_owned(),
            "missing_field",
        ),
        (
            "large",
            format!(
                r#"{{"user_id":"u1","n":1,"ts":0,"pad":"{}"}}"#,
                "x".repeat(2000)
            ),
            "too_large",
        ),
        (
            "time",
            r#"{"user_id":"u1","n":1,"ts":"2300-01-01T00:00:00Z"}"#.to_owned(),
            "time_out_of_range",
        ),
    ];
    let mut expected_dead = Vec::new();
    for (i, (what, value, class)) in poison.iter().enumerate() {
        for copy in 0..6 {
            let at = (i * 6 + copy) * 97 % good.len();
            let key = format!("{{\"user_id\":\"p{what}{copy}\"}}");
            good.insert(at, Record::new(key.clone(), value.clone()));
            expected_dead.push((key, *class));
        }
    }
    s.produce(&good).await;
    let env = [fast(), vec![("WEIR_MAX_RECORD_BYTES", "1024".to_owned())]].concat();
    let mut workers: Vec<Worker> = (0..3).map(|i| s.worker(&format!("w{i}"), &env)).collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(60)).await.unwrap();
    }
    let expected = s.oracle(&rows);
    s.await_output(
        &expected,
        Duration::from_secs(180),
        &workers.iter().collect::<Vec<_>>(),
    )
    .await;

    let dead = records::consume_all(
        &s.bootstrap,
        &s.topic("t.dead-letters"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    let mut got: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.key_str(),
                r.header("weir.error.class").unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = expected_dead
        .iter()
        .map(|(k, c)| (k.clone(), (*c).to_owned()))
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "every poison record is a dead letter, once, with its class"
    );
    for r in &dead {
        assert_eq!(r.header("weir.error.stage").as_deref(), Some("decode"));
        assert_eq!(r.header("weir.source.topic"), Some(s.topic("clicks")));
        assert!(r.header("weir.source.offset").is_some());
        assert_eq!(r.header("weir.transform"), Some(format!("{}/t", s.ns)));
        assert_eq!(
            r.header("weir.plan"),
            Some(s.job.compiled.fingerprint.clone())
        );
        assert!(r.value.is_some(), "the original value is kept");
    }
    for w in &mut workers {
        assert!(
            w.is_running(),
            "a poison record never stops a worker:\n{}",
            w.log_tail(20)
        );
        w.stop();
        assert_eq!(
            w.exit_code(),
            Some(0),
            "a stopped worker exits cleanly:\n{}",
            w.log_tail(20)
        );
    }
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_survives_workers_killed_every_few_seconds_exactly_once() {
    let s = Scenario::new(
        "killed",
        3,
        "SELECT user_id, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY user_id",
        "",
    )
    .await;
    let total = 200_000;
    let (all, rows) = clicks(0, total, 500);
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| s.worker(&format!("w{i}"), &fast()))
        .collect();
    let chunks: Vec<Vec<Record>> = all.chunks(5000).map(<[Record]>::to_vec).collect();
    let bootstrap = s.bootstrap.clone();
    let topic = s.topic("clicks");
    let producer = tokio::spawn(async move {
        for c in chunks {
            records::produce(&bootstrap, &topic, &c).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut kills = 0;
    while !producer.is_finished() || kills < 4 {
        tokio::time::sleep(Duration::from_millis(pick(2000..4000))).await;
        let i = pick(0..workers.len() as u64) as usize;
        workers[i].crash();
        kills += 1;
        workers[i] = s.worker(&format!("w{i}"), &fast());
    }
    producer.await.unwrap();
    let expected = s.oracle(&rows);
    let refs: Vec<&Worker> = workers.iter().collect();
    s.await_output(&expected, Duration::from_secs(240), &refs)
        .await;
    for w in &mut workers {
        w.stop();
    }
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tumbling_window_keeps_its_state_while_scaling_1_to_3_to_1() {
    let s = Scenario::new(
        "scaled",
        3,
        "SELECT user_id, window_start, COUNT(*) AS c, MAX(n) AS top FROM clicks \
         GROUP BY user_id, TUMBLE(ts, INTERVAL '1' MINUTE)",
        "",
    )
    .await;
    let (all, rows) = clicks(0, 9000, 30);
    let mut first = s.worker("w0", &fast());
    first.wait_ready(Duration::from_secs(60)).await.unwrap();
    s.produce(&all[..3000]).await;
    let mut more: Vec<Worker> = (1..3)
        .map(|i| s.worker(&format!("w{i}"), &fast()))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.produce(&all[3000..6000]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in &mut more {
        w.stop();
    }
    s.produce(&all[6000..]).await;
    // The last minute closes only when later records arrive; the oracle closes every
    // window at the end of input, so compare the windows a watermark has passed.
    let mut expected = s.oracle(&rows);
    let last_start = "2026-01-01T02:29:00";
    expected.retain(|(r, _)| !r[1].starts_with(last_start));
    s.await_output(&expected, Duration::from_secs(180), &[&first])
        .await;
    first.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_by_a_non_key_column_at_parallelism_3_repartitions_exactly_once() {
    // Clicks are keyed by user; counting per URL needs every URL's clicks in one task.
    let s = Scenario::new(
        "regrouped",
        3,
        "SELECT url, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY url",
        "",
    )
    .await;
    let (all, rows) = clicks(0, 9000, 30);
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| s.worker(&format!("w{i}"), &fast()))
        .collect();
    s.produce(&all[..4500]).await;
    tokio::time::sleep(Duration::from_millis(pick(1000..2500))).await;
    workers[1].crash();
    workers[1] = s.worker("w1", &fast());
    s.produce(&all[4500..]).await;
    let refs: Vec<&Worker> = workers.iter().collect();
    s.await_output(&s.oracle(&rows), Duration::from_secs(180), &refs)
        .await;
    for w in &mut workers {
        w.stop();
    }
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_does_not_stop_windows_closing_and_its_late_records_count() {
    let s = Scenario::new(
        "idle",
        3,
        "SELECT url, window_start, COUNT(*) AS c FROM clicks \
         GROUP BY url, TUMBLE(ts, INTERVAL '1' MINUTE)",
        "  windows: { idleTimeout: 2s }",
    )
    .await;
    // Ten minutes of clicks, all in partitions 0 and 1: partition 2 stays silent.
    let (mut all, rows) = clicks(0, 600, 30);
    for (i, r) in all.iter_mut().enumerate() {
        r.partition = Some((i % 2) as i32);
    }
    let mut w = s.worker("w0", &fast());
    s.produce(&all).await;
    // Every window the watermark (00:09:58) has passed closes once partition 2 is idle.
    let mut expected = s.oracle(&rows);
    expected.retain(|(r, _)| !r[1].starts_with("2026-01-01T00:09:00"));
    assert!(!expected.is_empty());
    s.await_output(&expected, Duration::from_secs(120), &[&w])
        .await;
    assert_eq!(w.metric_sum("weir_worker_late_records_total").await, 0.0);
    // Partition 2 speaks, ten minutes behind: its record is late, counted, set aside.
    let (mut late, _) = clicks(30, 1, 30);
    late[0].partition = Some(2);
    s.produce(&late).await;
    let worker = &w;
    wait_until(
        "the late record to be counted",
        Duration::from_secs(60),
        || async move {
            match worker.metric_sum("weir_worker_late_records_total").await {
                n if n >= 1.0 => Ok(()),
                _ => Err(worker.log_tail(20)),
            }
        },
    )
    .await
    .expect("the late record is counted");
    assert_eq!(
        s.output().await,
        expected,
        "a late record changed no window"
    );
    // It follows the error policy: a dead letter, with its original value.
    s.assert_one_late_dead_letter(&late[0]).await;
    w.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lateness_is_judged_record_by_record_even_in_one_burst() {
    // Four clicks written at once: the second moves the watermark (1 s out of order
    // allowed) past the first minute, so the third, 50 s behind it, is late exactly as
    // `weir test` (record by record) finds it, however the records were batched. Through
    // the repartition topic (one window over every user), where the routing task
    // forwards them in one transaction and the stateful task reads them in one batch:
    // this failed before the routing task sent a watermark before the third. (The same
    // burst straight into a window reached the worker in more than one poll here, so it
    // proved nothing; the engine's cut points have a test of their own in
    // worker/engine/tests/operators.rs.)
    {
        let (ns, sql) = (
            "burst-routed",
            "SELECT window_start, COUNT(*) AS c FROM clicks \
             GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
        );
        let s = Scenario::new(ns, 1, sql, "").await;
        let (mut all, mut rows) = clicks(0, 4, 1);
        for (i, secs) in [10i64, 70, 20, 130].into_iter().enumerate() {
            let ts = serde_json::json!(1_767_225_600_000i64 + secs * 1000);
            rows[i].insert("ts".into(), ts);
            all[i].value = Some(
                serde_json::Value::Object(rows[i].clone())
                    .to_string()
                    .into_bytes(),
            );
            all[i].partition = Some(0);
        }
        // All four are in the topic before the worker first polls.
        s.produce(&all).await;
        let mut w = s.worker("w0", &fast());
        // The windows the watermark passed: 00:00 with the first click only, 00:01.
        let expected = s.oracle(&[rows[0].clone(), rows[1].clone()]);
        s.await_output(&expected, Duration::from_secs(120), &[&w])
            .await;
        assert_eq!(
            w.metric_sum("weir_worker_late_records_total").await,
            1.0,
            "{ns}"
        );
        s.assert_one_late_dead_letter(&all[2]).await;
        w.stop();
        s.assert_no_open_transactions();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_table_join_at_parallelism_3_looks_up_each_users_current_row() {
    const COUNTRIES: [&str; 3] = ["fr", "de", "nl"];
    let s = Scenario::new(
        "joined",
        3,
        "SELECT c.user_id, c.n, u.country FROM clicks c JOIN users u ON c.user_id = u.user_id",
        "",
    )
    .await;
    let users: Vec<Row> = (0..30)
        .filter(|u| u % 5 != 0)
        .map(|u| {
            serde_json::from_value(serde_json::json!({
                "user_id": format!("u{u}"),
                "country": COUNTRIES[u % 3],
            }))
            .unwrap()
        })
        .collect();
    let user_records: Vec<Record> = users
        .iter()
        .map(|u| {
            Record::new(
                serde_json::json!({ "user_id": u["user_id"] }).to_string(),
                serde_json::Value::Object(u.clone()).to_string(),
            )
        })
        .collect();
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| s.worker(&format!("w{i}"), &fast()))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(60)).await.unwrap();
    }
    // The table first, and read by the workers, so every click finds its user's row.
    records::produce(&s.bootstrap, &s.topic("users"), &user_records)
        .await
        .unwrap();
    let (readers, wanted, users_in) = (
        &workers,
        user_records.len(),
        &format!(
            "weir_worker_records_in_total{{topic=\"{}\"",
            s.topic("users")
        ),
    );
    wait_until(
        "the users to be read",
        Duration::from_secs(30),
        || async move {
            let mut read = 0.0;
            for w in readers {
                read += w.metric_sum(users_in).await;
            }
            if read as usize >= wanted {
                Ok(())
            } else {
                Err(format!("{read} read"))
            }
        },
    )
    .await
    .expect("every user record is read");
    let (clicks_records, rows) = clicks(0, 3000, 30);
    s.produce(&clicks_records).await;
    let given = vec![
        (format!("{}.users", s.ns), users),
        (format!("{}.clicks", s.ns), rows),
    ];
    let (expected, _) = run_records(&s.job.compiled, &given).unwrap();
    assert!(!expected.is_empty());
    let refs: Vec<&Worker> = workers.iter().collect();
    s.await_output(&expected, Duration::from_secs(180), &refs)
        .await;
    for w in &mut workers {
        w.stop();
    }
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_going_away_during_a_commit_and_during_a_restore_loses_and_repeats_nothing() {
    // Its own broker: this test stops it.
    let dir = tempfile::tempdir().unwrap();
    let mut kafka = Kafka::start(&dir.path().join("kafka")).await.unwrap();
    let sql = "SELECT user_id, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY user_id";
    let s = Scenario::on(kafka.bootstrap_servers(), "outage", 2, sql, "").await;
    let (all, rows) = clicks(0, 8000, 100);

    // 1. The worker pauses between send_offsets and commit_transaction on its fourth
    // commit; the broker goes away right then, for longer than the pause.
    let mut env = fast();
    env.push((
        "FAILPOINTS",
        "weir.commit.before_commit=3*off->1*sleep(6000)".to_owned(),
    ));
    let mut workers = vec![s.worker("w0", &env)];
    workers[0]
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
    let mut chunks = all[..4000].chunks(200);
    let (mut seen, mut since) = (-1.0, tokio::time::Instant::now());
    loop {
        if let Some(chunk) = chunks.next() {
            s.produce(chunk).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let commits = workers[0].metric_sum("weir_worker_commits_total").await;
        if commits != seen {
            (seen, since) = (commits, tokio::time::Instant::now());
        } else if commits >= 3.0 && since.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the worker stopped committing:\n{}",
            workers[0].log_tail(20)
        );
    }
    kafka.stop();
    tokio::time::sleep(Duration::from_secs(8)).await;
    kafka.resume().await.unwrap();
    for chunk in chunks {
        s.produce(chunk).await;
    }
    s.await_output_restarting(&s.oracle(&rows[..4000]), &mut workers)
        .await;
    workers[0].stop();

    // 2. A new worker pauses in the middle of reading its state back; the broker goes
    // away right then.
    let mut env = fast();
    env.push((
        "FAILPOINTS",
        "weir.restore.entry=20*off->1*sleep(6000)".to_owned(),
    ));
    workers[0] = s.worker("w0", &env);
    let restoring = r#"weir_worker_tasks{role="run",state="restoring"}"#;
    let first = &workers[0];
    wait_until(
        "a restore to begin",
        Duration::from_secs(60),
        || async move {
            if first.metric_sum(restoring).await >= 1.0 {
                Ok(())
            } else {
                Err(first.log_tail(5))
            }
        },
    )
    .await
    .expect("a restore begins");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kafka.stop();
    tokio::time::sleep(Duration::from_secs(6)).await;
    kafka.resume().await.unwrap();
    s.produce(&all[4000..]).await;
    s.await_output_restarting(&s.oracle(&rows), &mut workers)
        .await;
    workers[0].stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_when_workers_are_killed() {
    futures::future::join(
        at_least_once_killed("alo", "SELECT user_id, n FROM clicks WHERE n % 2 = 0"),
        // An aggregate's output is an upsert per key: a record processed again repeats an
        // update the output already has, so at least once ends on the exact result (the
        // state is written only after the output it led to).
        at_least_once_killed(
            "alo-agg",
            "SELECT user_id, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY user_id",
        ),
    )
    .await;
}

/// Runs `sql` at least once over 20,000 records while one of two workers is killed every
/// two seconds, and checks that every output row arrived: appended rows at least once,
/// upserted rows with their final values.
async fn at_least_once_killed(ns: &str, sql: &str) {
    let s = Scenario::new(ns, 3, sql, "  deliveryGuarantee: atLeastOnce").await;
    let (all, rows) = clicks(0, 20_000, 100);
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| s.worker(&format!("w{i}"), &fast()))
        .collect();
    for chunk in all.chunks(5000) {
        s.produce(chunk).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        workers[0].crash();
        workers[0] = s.worker("w0", &fast());
    }
    let oracle = s.oracle(&rows);
    if s.job.compiled.output_kind == StreamKind::Changelog {
        s.await_output_restarting(&oracle, &mut workers).await;
    } else {
        let expected: BTreeMap<Vec<String>, i64> = oracle.into_iter().collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let got: BTreeMap<Vec<String>, i64> = s.output().await.into_iter().collect();
            let missing = expected.keys().filter(|k| !got.contains_key(*k)).count();
            if missing == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{missing} of {} rows never arrived:\n{}",
                expected.len(),
                workers[1].log_tail(20)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for w in &mut workers {
        w.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_that_lost_its_partitions_cannot_commit_duplicates() {
    let s = Scenario::new("zombie", 3, "SELECT user_id, n FROM clicks", "").await;
    let (all, rows) = clicks(0, 12_000, 60);
    let mut a = s.worker("wa", &fast());
    let mut b = s.worker("wb", &fast());
    a.wait_ready(Duration::from_secs(60)).await.unwrap();
    b.wait_ready(Duration::from_secs(60)).await.unwrap();
    s.produce(&all[..4000]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Frozen past the 6 s session timeout, b takes its partitions over.
    a.freeze();
    s.produce(&all[4000..8000]).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    a.thaw();
    // The thawed worker learns it lost its partitions, commits nothing for them and exits
    // non-zero (its pod restarts and rejoins).
    let code = a.wait_exit(Duration::from_secs(60)).await;
    assert!(
        code.is_some_and(|c| c != 0),
        "the zombie did not exit non-zero ({code:?}):\n{}",
        a.log_tail(20)
    );
    assert!(
        a.log_tail(20).contains("lost its partitions"),
        "the zombie's log does not say why it exited:\n{}",
        a.log_tail(20)
    );
    s.produce(&all[8000..]).await;
    let expected = s.oracle(&rows);
    s.await_output(&expected, Duration::from_secs(180), &[&b])
        .await;
    a.stop();
    b.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_restored_from_a_compacted_changelog_is_right() {
    let sql = "SELECT user_id, COUNT(*) AS c, MIN(n) AS lo FROM clicks GROUP BY user_id";
    let s = Scenario::new("compacted", 2, sql, "").await;
    // The changelog rolls a segment every 100 ms and is cleaned as soon as it can be.
    let admin: rdkafka::admin::AdminClient<_> =
        records::client_config(&s.bootstrap).create().unwrap();
    let changelog = s.topic("t.changelog");
    let alter =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&changelog))
            // AlterConfigs replaces every config: name the cleanup policy again.
            .set("cleanup.policy", "compact")
            .set("segment.ms", "100")
            .set("min.cleanable.dirty.ratio", "0.001")
            .set("delete.retention.ms", "100");
    for r in admin
        .alter_configs(&[alter], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let (all, rows) = clicks(0, 6000, 40);
    let mut w = s.worker("w0", &fast());
    w.wait_ready(Duration::from_secs(60)).await.unwrap();
    for chunk in all.chunks(250) {
        s.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s.await_output(&s.oracle(&rows), Duration::from_secs(60), &[&w])
        .await;
    let written = w.metric_sum("weir_worker_commits_total").await as usize;
    assert!(written >= 20, "the worker committed many times: {written}");
    w.stop();
    // Wait until the log cleaner compacted the many small segments: of the meta records
    // each commit wrote, few are left.
    let metas = |recs: &[Record]| {
        recs.iter()
            .filter(|r| r.key.as_deref() == Some(&[1u8][..]))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = metas(
            &records::consume_all(&s.bootstrap, &changelog, Duration::from_secs(2))
                .await
                .unwrap(),
        );
        if left * 2 < written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changelog was never compacted: {left} of {written} meta records left"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (more, more_rows) = clicks(6000, 400, 40);
    let mut w = s.worker("w1", &fast());
    s.produce(&more).await;
    let all_rows: Vec<Row> = rows.into_iter().chain(more_rows).collect();
    s.await_output(&s.oracle(&all_rows), Duration::from_secs(60), &[&w])
        .await;
    w.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_when_the_changelog_lost_its_state() {
    let s = Scenario::new(
        "lost",
        1,
        "SELECT user_id, COUNT(*) AS c FROM clicks GROUP BY user_id",
        "",
    )
    .await;
    let (all, rows) = clicks(0, 500, 10);
    s.produce(&all).await;
    let mut w = s.worker("w0", &fast());
    s.await_output(&s.oracle(&rows), Duration::from_secs(60), &[&w])
        .await;
    w.stop();
    // The changelog is deleted and created again, empty.
    let admin: rdkafka::admin::AdminClient<_> =
        records::client_config(&s.bootstrap).create().unwrap();
    admin
        .delete_topics(
            &[&s.topic("t.changelog")],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let mut created = false;
    for _ in 0..50 {
        if records::create_topic_with(
            &s.bootstrap,
            &s.topic("t.changelog"),
            1,
            &[("cleanup.policy", "compact")],
        )
        .await
        .is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "recreating the changelog");
    let mut w = s.worker("w0", &fast());
    let code = w.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        Some(1),
        "the worker refuses to start:\n{}",
        w.log_tail(20)
    );
    assert!(
        w.log_tail(5).contains("deleted or truncated"),
        "the refusal says why:\n{}",
        w.log_tail(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_plan_it_was_not_deployed_for_in_one_line() {
    let s = Scenario::new("planned", 1, "SELECT user_id FROM clicks", "").await;
    let mut w = s.worker("w0", &[("WEIR_PLAN_FINGERPRINT", "0".repeat(64))]);
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await, Some(1));
    let last = w.log_tail(1);
    assert!(last.contains("refusing to start"), "{last}");
    assert!(last.contains(&s.job.compiled.fingerprint), "{last}");
}

/// Crashes a worker at `point` (a `crash_point!` in the worker) on its `after`+1-th pass,
/// then runs a fresh one to the end: the output must equal the oracle.
async fn crash_at(ns: &str, point: &str, after: u32) {
    let s = Scenario::new(
        ns,
        2,
        "SELECT user_id, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY user_id",
        "",
    )
    .await;
    let (all, rows) = clicks(0, 4000, 60);
    let mut env = fast();
    env.push(("FAILPOINTS", format!("{point}={after}*off->return")));
    let mut doomed = s.worker("w0", &env);
    doomed.wait_ready(Duration::from_secs(60)).await.unwrap();
    // In small batches, so the worker commits several times before its crash.
    for chunk in all[..2000].chunks(100) {
        s.produce(chunk).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    doomed.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !doomed.is_running(),
        "{point}: the worker never reached its crash point:\n{}",
        doomed.log_tail(20)
    );
    s.produce(&all[2000..]).await;
    let mut w = s.worker("w0", &fast());
    s.await_output(&s.oracle(&rows), Duration::from_secs(120), &[&w])
        .await;
    w.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_commit_loses_and_repeats_nothing() {
    futures::future::join_all(
        [
            ("crash-state", "weir.commit.before_state"),
            ("crash-offsets", "weir.commit.before_offsets"),
            ("crash-commit", "weir.commit.before_commit"),
            ("crash-after", "weir.commit.after_commit"),
        ]
        .map(|(ns, point)| crash_at(ns, point, 3)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_restore_restores_again_from_the_start() {
    let s = Scenario::new(
        "crash-restore",
        1,
        "SELECT user_id, COUNT(*) AS c, SUM(n) AS total FROM clicks GROUP BY user_id",
        "",
    )
    .await;
    let (all, rows) = clicks(0, 3000, 200);
    let mut w = s.worker("w0", &fast());
    s.produce(&all[..1500]).await;
    s.await_output(&s.oracle(&rows[..1500]), Duration::from_secs(60), &[&w])
        .await;
    w.stop();
    // 200 groups in the changelog: crash after reading 50 of them.
    let mut env = fast();
    env.push(("FAILPOINTS", "weir.restore.entry=50*off->return".to_owned()));
    let mut doomed = s.worker("w0", &env);
    doomed.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !doomed.is_running(),
        "the restore never reached its crash point:\n{}",
        doomed.log_tail(20)
    );
    s.produce(&all[1500..]).await;
    let mut w = s.worker("w0", &fast());
    s.await_output(&s.oracle(&rows), Duration::from_secs(60), &[&w])
        .await;
    w.stop();
    s.assert_no_open_transactions();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rows_breaking_an_expectation_follow_its_policy() {
    let sql = "SELECT user_id, url, n FROM clicks";
    let checks = "  expectations:\n    - { name: small-n, check: \"n < 900\", onFailure: deadLetter }\n    - { name: no-p6, check: \"url <> '/p6'\", onFailure: drop }";
    let (s, stopping) = futures::future::join(
        Scenario::new("expected", 2, sql, checks),
        Scenario::new(
            "expected-fail",
            1,
            sql,
            "  expectations:\n    - { name: small-n, check: \"n < 900\", onFailure: fail }",
        ),
    )
    .await;
    let (all, rows) = clicks(0, 1000, 20);
    let (_, _) = futures::future::join(s.produce(&all), stopping.produce(&all)).await;
    let mut w = s.worker("w0", &fast());
    let mut doomed = stopping.worker("w0", &fast());

    // deadLetter and drop: the output holds only the rows passing both checks.
    let mut expected = s.oracle(&rows);
    expected.retain(|(r, _)| r[2].parse::<i64>().unwrap() < 900 && r[1] != "/p6");
    s.await_output(&expected, Duration::from_secs(90), &[&w])
        .await;
    let dead = records::consume_all(
        &s.bootstrap,
        &s.topic("t.dead-letters"),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    // n ≥ 900 goes to the dead letters, whatever its URL: the first failing check's
    // policy applies (rows 900..1000, one per n).
    assert_eq!(dead.len(), 100, "{:?}", dead.first());
    for r in &dead {
        assert_eq!(r.header("weir.error.stage").as_deref(), Some("expectation"));
        assert_eq!(
            r.header("weir.error.class").as_deref(),
            Some("expectation_failed")
        );
        assert!(
            r.header("weir.error.message")
                .is_some_and(|m| m.contains("small-n") && m.contains("n < 900")),
            "{:?}",
            r.header("weir.error.message")
        );
        assert_eq!(r.header("weir.source.topic"), Some(s.topic("out")));
        let row: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert!(row["n"].as_i64().unwrap() >= 900, "{row}");
    }
    assert!(w.metric_sum("weir_worker_expectation_failures_total").await > 100.0);
    w.stop();
    s.assert_no_open_transactions();

    // fail: the worker stops with the expectation's name, and commits nothing past it.
    let code = doomed.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(code, Some(1), "{}", doomed.log_tail(10));
    assert!(
        doomed.log_tail(10).contains("expectation small-n"),
        "{}",
        doomed.log_tail(10)
    );
    let written = stopping.output().await;
    assert!(
        written
            .iter()
            .all(|(r, _)| r[2].parse::<i64>().unwrap() < 900),
        "no row breaking the check was committed"
    );
}
