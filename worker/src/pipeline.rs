//! The processing loop: Kafka records in, through one engine per task, results out,
//! exactly once.
//!
//! A task is one partition number `p`: partition `p` of every input (inputs are
//! co-partitioned by key), one engine, and partition `p` of the changelog. Workers share
//! a consumer group, so a task moves with its partitions when workers come and go. When
//! the plan repartitions ([`crate::route`]), a routing task per input partition number
//! forwards records to the repartition topic, and a running task per repartition
//! partition runs the engine; both kinds commit in the same transactions.
//!
//! Each cycle (every `--commit-interval` or `--commit-records`, whichever comes first,
//! or after `--commit-linger` once nothing more is queued to read) the worker decodes
//! what it polled, runs it through each task's engine, and, in one Kafka transaction,
//! writes the output records, the dead letters, each changed task's state entries and
//! the consumed offsets (KIP-447: `send_offsets_to_transaction` with the consumer's group
//! metadata, so a worker that lost its partitions cannot commit). The commit's round trips
//! run on a thread of their own while the next cycle polls, decodes and computes; that
//! cycle's first record sent waits for the commit, so transactions never overlap and a
//! failed commit is that send's failure.
//! Retriable errors are retried; an abortable error aborts the transaction and rebuilds
//! every task from its changelog; a fatal error (the producer was fenced, or anything
//! unclassified) stops the worker without writing more.
//!
//! A newly assigned task is paused and restored between polls, a slice at a time, by
//! reading its changelog partition to the end; its offsets are then checked against the
//! group's committed offsets and the partitions resume from there. A changelog that
//! lost state the group says exists stops the worker with a message: it never starts
//! empty or reprocesses silently.
//!
//! At least once (`deliveryGuarantee: atLeastOnce`) uses no transactions. The same
//! background thread waits until the cycle's output and dead letters are acknowledged,
//! then writes the state and waits for it, so that state never runs ahead of what was
//! written; the offsets that covers are committed after that, from the loop.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use weir_crds::transform::{DeliveryGuarantee, OnFailure};
use weir_engine::{ChangeBatch, Engine};

use crate::changelog::{self, TaskMeta};
use crate::codec::{Decoder, Encoder, Payload, Rejection};
use crate::config::RunConfig;
use crate::dead_letter::{self, Stage};
use crate::http::Health;
use crate::metrics::{
    DeadLetterLabels, PartitionLabels, ReasonLabels, RebalanceLabels, TopicLabels,
};
use crate::route::{self, Control, Route};
use crate::transform::{Job, StartFrom};
use crate::watermark::{Mark, Progress};
use weir_engine::Watermark;

/// A crash point for tests: in a build with the `failpoints` feature, when the
/// `FAILPOINTS` environment variable configures it (`weir.commit.before_offsets=3*off->return`
/// crashes on the fourth pass), the process aborts right there, as if killed. Without the
/// feature (the product build) it compiles to nothing.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| std::process::abort())
    };
}

/// The topics and names a worker uses, resolved from the job and the flags.
#[derive(Debug, Clone)]
pub struct Names {
    /// The consumer group.
    pub group_id: String,
    /// The changelog topic.
    pub changelog: String,
    /// The dead-letter topic.
    pub dead_letters: String,
    /// The repartition topic (used when the plan repartitions).
    pub repartition: String,
    /// The producer's transactional id.
    pub transactional_id: String,
}

impl Names {
    /// The names for `job` under `config`.
    pub fn new(job: &Job, config: &RunConfig) -> Self {
        let names = weir_crds::names::TransformNames::new(&job.namespace, &job.name, 0);
        Self {
            group_id: config.group_id.clone().unwrap_or_else(|| names.group_id()),
            changelog: config
                .changelog_topic
                .clone()
                .unwrap_or_else(|| names.changelog()),
            dead_letters: config
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| names.dead_letters()),
            repartition: config
                .repartition_topic
                .clone()
                .unwrap_or_else(|| names.repartition()),
            transactional_id: names.transactional_id(&config.worker_name),
        }
    }
}

/// One record polled from a task's topics.
struct Polled {
    /// Index into the task's source topics.
    source: usize,
    /// The plan input it belongs to; `None` for a record in the repartition topic that
    /// Weir did not write.
    input: Option<usize>,
    /// A watermark record from an upstream routing task.
    control: Option<Control>,
    offset: i64,
    /// Key and value are slices of the task's arena (no allocation per record).
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

/// What a task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// Routes partition `p` of every input to the repartition topic (stateless).
    Route,
    /// Runs the engine on partition `p` of every input, or of the repartition topic.
    Run,
}

/// A task: a role and a partition number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TaskId {
    role: Role,
    partition: i32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Role::Route => write!(f, "route {}", self.partition),
            Role::Run => write!(f, "{}", self.partition),
        }
    }
}

/// One task: partition `p` of each of its source topics.
struct Task {
    /// The engine (a routing task uses it only to read watermarks off batches).
    engine: Engine,
    /// Event-time progress of what the task hears from.
    progress: Progress,
    /// Per input, when the task last had a record of it (idleness by the wall clock).
    heard: Vec<Instant>,
    /// A routing task: per input, the mark last sent downstream.
    sent: Vec<Option<Mark>>,
    buffer: Vec<Polled>,
    /// Where the buffered records' keys and values are copied, in large chunks.
    arena: BytesMut,
    /// Per input, the next offset to read: what the task's state reflects.
    offsets: BTreeMap<usize, i64>,
    /// Whether the task processed records since the last commit.
    dirty: bool,
    /// Per input, process records up to this offset one at a time: an engine error
    /// happened among them.
    careful_until: BTreeMap<usize, i64>,
    commits: u64,
    running: bool,
    late_seen: u64,
}

/// A restore in progress: reading one task's changelog partition.
struct Restore {
    id: TaskId,
    started: Instant,
    engine: Engine,
    meta: Option<TaskMeta>,
    committed: BTreeMap<usize, Option<i64>>,
    entries: u64,
    reading: bool,
}

/// What went wrong in a cycle, and what it calls for.
enum Failure {
    /// Abort the transaction and rebuild every task from the changelog.
    Abort(String),
    /// An engine error while processing a task's records: abort, rebuild, and process
    /// those records one at a time.
    Engine {
        task: TaskId,
        until: BTreeMap<usize, i64>,
        error: String,
    },
    /// Stop the worker.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Fatal(e)
    }
}

/// Counts failed deliveries (at least once: the offsets are not committed after one).
struct ProducerCtx {
    failed: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "a record could not be delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Producer_ = ThreadedProducer<ProducerCtx>;

/// The worker's state, shared by the loop and the rebalance callbacks (which run inside
/// `poll`, on the loop's thread, never while the loop holds the lock).
struct Worker {
    job: Arc<Job>,
    names: Names,
    config: RunConfig,
    exactly_once: bool,
    stateful: bool,
    producer: Arc<Producer_>,
    delivery_failures: Arc<std::sync::atomic::AtomicU64>,
    decoders: Vec<Decoder>,
    encoder: Encoder,
    /// `spec.expectations`, compiled.
    checks: weir_engine::Expectations,
    /// Each subscribed topic: the role of the tasks reading it, and its index among
    /// their sources.
    topic_index: BTreeMap<String, (Role, usize)>,
    /// The topics a running task reads: the inputs, or the repartition topic.
    run_sources: Vec<String>,
    /// The repartition stage, when the plan has one.
    route: Option<Route>,
    /// Each input's index by its DataStream id (the repartition topic names inputs so).
    input_ids: BTreeMap<String, usize>,
    /// Each input's partition count.
    input_partitions: Vec<usize>,
    tasks: BTreeMap<TaskId, Task>,
    restoring: VecDeque<TaskId>,
    restore: Option<Restore>,
    restore_consumer: BaseConsumer<RestoreCtx>,
    /// Whether this worker's transaction is open: begun, not yet handed to a commit.
    txn_open: Cell<bool>,
    /// The commit running in the background, if any.
    committing: RefCell<Option<Committing>>,
    /// At least once: per topic and partition, the offset up to which everything read has
    /// been written (output, dead letters and state), and whether it is still to commit.
    acked: RefCell<BTreeMap<(String, i32), (i64, bool)>>,
    buffered: usize,
    /// When the state-size gauges were last refreshed (measuring walks the state).
    sized: Instant,
    health: Health,
    fatal: Option<anyhow::Error>,
    /// The worker stopped on an error: closing the consumer must commit nothing (the
    /// revoke callback would otherwise commit the offsets of the record that failed).
    halted: bool,
}

struct Ctx {
    worker: Arc<Mutex<Worker>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ClientContext for Ctx {
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .get_or_create(&PartitionLabels {
                            topic: topic.clone(),
                            partition: *p,
                        })
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut w = lock(&self.worker);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                w.count_rebalance(if lost { "lost" } else { "revoke" });
                if lost {
                    // Another worker may already own these partitions: never commit.
                    w.exit_lost();
                } else if w.halted {
                    // Stopped on an error: what was not committed is processed again by
                    // the next worker, from the last commit.
                } else if let Err(e) = w.commit(consumer).and_then(|()| w.settle_all(consumer)) {
                    // The partitions go to another worker only after this commit is done.
                    w.handle(consumer, e);
                }
                w.drop_tasks(tpl);
            }
            Rebalance::Assign(_) => w.count_rebalance("assign"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    /// The answer to an offset commit made without waiting (at least once): a failed one
    /// only means its records may be read again, but it is said.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, partitions = offsets.count(), "an offset commit failed");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut w = lock(&self.worker);
            if let Err(e) = w.add_tasks(consumer, tpl) {
                w.fatal.get_or_insert(e);
            }
        }
    }
}

fn lock(w: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    // A panic while holding the lock stops the worker anyway; take the state as it is.
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Consumer_ = BaseConsumer<Ctx>;

/// The restore consumer's context: reaching the end of a changelog partition is how a
/// restore knows it is done, not an error to log (librdkafka reports it as one).
struct RestoreCtx;

impl ClientContext for RestoreCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::error!(error = %error, reason, "restore consumer error");
    }
}

impl ConsumerContext for RestoreCtx {}

/// Runs `job` until `stop` is set (then commits, leaves the group and returns) or a
/// fatal error.
pub fn run(
    job: Job,
    config: RunConfig,
    health: Health,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let job = Arc::new(job);
    let names = Names::new(&job, &config);
    let settings = config.kafka_settings()?;
    let base = || {
        let mut c = ClientConfig::new();
        for (k, v) in &settings {
            c.set(k, v);
        }
        c.set("log_level", "4");
        c
    };
    let exactly_once = job.delivery == DeliveryGuarantee::ExactlyOnce;
    let stateful = job.is_stateful();
    let layout = check_topics(&job, &names, &base(), stateful, config.topics_timeout)?;

    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pc = base();
    // Memory is bounded by these queues, not by the input: see `--produce-queue-kib` and
    // `--fetch-queue-kib`.
    pc.set("enable.idempotence", "true")
        .set(
            "queue.buffering.max.kbytes",
            config.produce_queue_kib.to_string(),
        )
        .set("linger.ms", "5")
        // A transaction begun right after the last one committed finds the coordinator
        // still writing that one's markers (CONCURRENT_TRANSACTIONS), and librdkafka
        // retries the offsets' requests after `retry.backoff.ms`: 100 ms by default, the
        // largest part of a commit. Retry sooner (it backs off exponentially from here).
        .set("retry.backoff.ms", "2")
        .set("partitioner", "murmur2_random");
    if exactly_once {
        pc.set("transactional.id", &names.transactional_id).set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        );
    }
    let producer: Producer_ = pc
        .create_with_context(ProducerCtx {
            failed: failed.clone(),
        })
        .context("creating the Kafka producer")?;
    if exactly_once {
        // Fences any earlier incarnation of this worker and aborts its open transaction.
        producer
            .init_transactions(Timeout::Never)
            .context("initializing transactions (is the broker reachable?)")?;
    }

    let mut rc = base();
    rc.set("group.id", format!("{}.restore", names.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let restore_consumer: BaseConsumer<RestoreCtx> = rc
        .create_with_context(RestoreCtx)
        .context("creating the restore consumer")?;

    let mut topic_index: BTreeMap<String, (Role, usize)> = BTreeMap::new();
    let run_sources = match &layout.route {
        Some(r) => {
            for (i, t) in job.input_topics.iter().enumerate() {
                topic_index.insert(t.clone(), (Role::Route, i));
            }
            topic_index.insert(r.topic.clone(), (Role::Run, 0));
            vec![r.topic.clone()]
        }
        None => {
            for (i, t) in job.input_topics.iter().enumerate() {
                topic_index.insert(t.clone(), (Role::Run, i));
            }
            job.input_topics.clone()
        }
    };
    let subscribed: Vec<String> = topic_index.keys().cloned().collect();
    let decoders = job
        .compiled
        .inputs
        .iter()
        .map(|i| Decoder::new(i, config.max_record_bytes))
        .collect();
    let encoder = Encoder::new(
        &job.compiled.output_schema,
        &job.compiled.output_key,
        job.compiled.output_kind,
    );
    let checks = weir_crds::compile::compile_expectations(&job.expectations, &job.compiled)
        .map_err(|e| anyhow!("Transform {}: {e}", job.id))?;
    let worker = Arc::new(Mutex::new(Worker {
        checks,
        job: job.clone(),
        names: names.clone(),
        config: config.clone(),
        exactly_once,
        stateful,
        producer: Arc::new(producer),
        delivery_failures: failed,
        decoders,
        encoder,
        topic_index,
        run_sources,
        input_ids: job
            .compiled
            .inputs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id(), i))
            .collect(),
        input_partitions: layout.input_partitions,
        route: layout.route,
        tasks: BTreeMap::new(),
        restoring: VecDeque::new(),
        restore: None,
        restore_consumer,
        txn_open: Cell::new(false),
        committing: RefCell::new(None),
        acked: RefCell::new(BTreeMap::new()),
        buffered: 0,
        sized: Instant::now(),
        health: health.clone(),
        fatal: None,
        halted: false,
    }));

    let mut cc = base();
    cc.set("group.id", &names.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set(
            "queued.max.messages.kbytes",
            config.fetch_queue_kib.to_string(),
        )
        // Fetch again soon after the queue drains below its bound; librdkafka's default
        // (1 s) leaves a bounded queue empty for most of each second.
        .set("fetch.queue.backoff.ms", "10")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout.as_millis() / 5)
                .max(100)
                .to_string(),
        )
        // Co-partitioned inputs must land on one worker together: the range assignor
        // gives partition p of every topic to the same member. One input can move
        // partitions one at a time (cooperative-sticky).
        .set(
            "partition.assignment.strategy",
            if subscribed.len() > 1 {
                "range"
            } else {
                "cooperative-sticky"
            },
        );
    let consumer: Consumer_ = cc
        .create_with_context(Ctx {
            worker: worker.clone(),
            metrics: health.metrics.clone(),
        })
        .context("creating the Kafka consumer")?;
    let topics: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to the input topics")?;
    tracing::info!(
        transform = %job.id,
        plan = %job.compiled.fingerprint,
        group = %names.group_id,
        inputs = ?job.input_topics,
        repartition = ?lock(&worker).route.as_ref().map(|r| r.topic.clone()),
        output = %job.output_topic,
        exactly_once,
        stateful,
        "worker started"
    );

    let result = run_loop(&consumer, &worker, &config, &stop);
    if result.is_err() {
        lock(&worker).halted = true;
    }
    if result.is_ok() {
        // Leave the group: the revoke callback commits what is left.
        consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            let _ = consumer.poll(Duration::from_millis(50));
        }
        if let Some(e) = lock(&worker).fatal.take() {
            return Err(e);
        }
        tracing::info!("worker stopped");
    }
    result
}

fn run_loop(
    consumer: &Consumer_,
    worker: &Arc<Mutex<Worker>>,
    config: &RunConfig,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut restoring;
    loop {
        {
            let mut w = lock(worker);
            w.health.beat();
            if let Some(e) = w.fatal.take() {
                return Err(e);
            }
            if stop.load(Ordering::Relaxed) {
                if let Err(f) = w.cycle(consumer).and_then(|()| w.settle_all(consumer)) {
                    w.handle(consumer, f);
                }
                return w.fatal.take().map_or(Ok(()), Err);
            }
            if let Err(f) = w.reap() {
                w.handle(consumer, f);
            }
            w.commit_acked(consumer);
            w.restore_step(consumer)?;
            restoring = w.restore.is_some() || !w.restoring.is_empty();
        }
        // A cycle gathers records until the commit interval or the record budget, or,
        // once it has lingered, until the input is caught up: commit then, for latency.
        // While a task restores, cycles are short so that the restore gets the time.
        let started = Instant::now();
        let deadline = started
            + if restoring {
                config.commit_linger
            } else {
                config.commit_interval
            };
        let linger = started + config.commit_linger;
        let mut gathered = 0usize;
        loop {
            // Records already queued are taken without waiting, and the clock is read only
            // every few of them (a clock read per record was a few percent of the loop).
            let polled = match consumer.poll(Duration::ZERO) {
                Some(polled) => Some(polled),
                None => {
                    let now = Instant::now();
                    if now >= deadline || (gathered > 0 && now >= linger) {
                        break;
                    }
                    let wait = if gathered > 0 {
                        linger - now
                    } else {
                        (deadline - now).min(Duration::from_millis(20))
                    };
                    consumer.poll(wait)
                }
            };
            match polled {
                None => {}
                Some(Ok(m)) => {
                    gathered += 1;
                    let mut w = lock(worker);
                    w.buffer(&m);
                    if w.buffered >= config.commit_records
                        || (gathered.is_multiple_of(32) && Instant::now() >= deadline)
                    {
                        break;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let mut w = lock(worker);
        if let Some(e) = w.fatal.take() {
            // Set by a rebalance callback during the polls: commit nothing more.
            return Err(e);
        }
        if let Err(f) = w.cycle(consumer) {
            w.handle(consumer, f);
        }
    }
}

/// How the worker's tasks map onto the topics, found from their partition counts.
struct Layout {
    /// The repartition stage, when the plan has one.
    route: Option<Route>,
    /// Each input's partition count.
    input_partitions: Vec<usize>,
}

/// Checks that every topic exists, with partition counts the plan can run on. Missing topics
/// are waited for up to `wait` (a topic created a moment ago may not be in the metadata yet).
fn check_topics(
    job: &Job,
    names: &Names,
    config: &ClientConfig,
    stateful: bool,
    wait: Duration,
) -> anyhow::Result<Layout> {
    let deadline = Instant::now() + wait;
    loop {
        match check_topics_once(job, names, config, stateful)? {
            Ok(layout) => return Ok(layout),
            Err(missing) if Instant::now() < deadline => {
                tracing::info!(topics = %missing.join(", "), "waiting for topics to exist");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(missing) => bail!(
                "Transform {}: these topics do not exist: {}",
                job.id,
                missing.join(", ")
            ),
        }
    }
}

/// One look at the metadata: `Ok(Err(missing))` when some topics are not there (yet).
fn check_topics_once(
    job: &Job,
    names: &Names,
    config: &ClientConfig,
    stateful: bool,
) -> anyhow::Result<Result<Layout, Vec<String>>> {
    let probe: BaseConsumer = config.create().context("creating a metadata client")?;
    let partitions = |topic: &str| -> anyhow::Result<Option<usize>> {
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        let Some(t) = md.topics().first() else {
            return Ok(None);
        };
        match t.error() {
            // Kafka hides a topic the principal may not describe; waiting would not help.
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => bail!(
                "Transform {}: Kafka does not authorize this worker's principal to use topic \
                 {topic} (TOPIC_AUTHORIZATION_FAILED): a Transform reads and writes only the \
                 topics its ACLs grant",
                job.id
            ),
            Some(_) => Ok(None),
            None if t.partitions().is_empty() => Ok(None),
            None => Ok(Some(t.partitions().len())),
        }
    };
    let mut missing = Vec::new();
    let mut counts = Vec::new();
    for t in &job.input_topics {
        match partitions(t)? {
            Some(n) => counts.push((t.clone(), n)),
            None => missing.push(t.clone()),
        }
    }
    for t in [&job.output_topic, &names.dead_letters] {
        if partitions(t)?.is_none() {
            missing.push(t.clone());
        }
    }
    let changelog = if stateful {
        let n = partitions(&names.changelog)?;
        if n.is_none() {
            missing.push(names.changelog.clone());
        }
        n
    } else {
        None
    };
    let keys = match &job.partitioning {
        Ok(p) => Route::keys_of(p).map(<[_]>::to_vec),
        Err(_) => None,
    };
    let repartition = match &keys {
        Some(_) => {
            let n = partitions(&names.repartition)?;
            if n.is_none() {
                missing.push(names.repartition.clone());
            }
            n
        }
        None => None,
    };
    if !missing.is_empty() {
        return Ok(Err(missing));
    }
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(1);
    if let Err(why) = &job.partitioning
        && max > 1
    {
        bail!(
            "Transform {}: {why}. Over {max} input partitions this plan cannot give correct \
             results: group and join each input by one set of columns, or give the inputs one \
             partition",
            job.id
        );
    }
    let route = match (keys, repartition) {
        (Some(keys), Some(n)) => Some(Route::new(
            &job.compiled,
            &keys,
            names.repartition.clone(),
            n as i32,
        )?),
        _ => None,
    };
    if route.is_none() && stateful && counts.iter().any(|(_, n)| *n != max) {
        bail!(
            "Transform {}: a stateful plan needs co-partitioned inputs with the same number of \
             partitions, but they have {}",
            job.id,
            counts
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let tasks = route.as_ref().map_or(max, |r| r.partitions as usize);
    if let Some(n) = changelog
        && n < tasks
    {
        bail!(
            "Transform {}: the changelog topic {} has {n} partitions but the plan runs {tasks} \
             tasks (one per {}partition): it needs one partition per task",
            job.id,
            names.changelog,
            if route.is_some() {
                "repartition "
            } else {
                "input "
            }
        );
    }
    Ok(Ok(Layout {
        route,
        input_partitions: counts.iter().map(|(_, n)| *n).collect(),
    }))
}

impl Worker {
    fn count_rebalance(&self, kind: &str) {
        self.health
            .metrics
            .rebalances
            .get_or_create(&RebalanceLabels { kind: kind.into() })
            .inc();
    }

    /// Handles a failed cycle or commit.
    fn handle(&mut self, consumer: &Consumer_, failure: Failure) {
        let result = match failure {
            Failure::Abort(_) if consumer.assignment_lost() => {
                // The commit failed because the group moved on without this worker.
                self.exit_lost();
                Ok(())
            }
            Failure::Abort(reason) => {
                tracing::warn!(%reason, "aborting the transaction and rebuilding the tasks");
                self.abort_and_rebuild(consumer, &reason)
            }
            Failure::Engine { task, until, error } => {
                tracing::warn!(%task, %error, "an engine error: reprocessing the records one at a time");
                let r = self.abort_and_rebuild(consumer, "engine error");
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.careful_until = until;
                }
                r
            }
            Failure::Fatal(e) => Err(e),
        };
        if let Err(e) = result {
            self.fatal.get_or_insert(e);
        }
    }

    /// Copies a polled record into its task's buffer.
    fn buffer(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(&(role, source)) = self.topic_index.get(m.topic()) else {
            return;
        };
        let id = TaskId {
            role,
            partition: m.partition(),
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if !task.running {
            // Fetched before the pause took hold; the task seeks back once restored.
            return;
        }
        let mut headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let (mut input, mut control) = (Some(source), None);
        if role == Role::Run && self.route.is_some() {
            // The repartition topic: the header names the input; a watermark record
            // carries an upstream task's progress.
            let header = |name: &str| {
                headers
                    .iter()
                    .position(|(k, _)| k == name)
                    .map(|i| headers[i].1.clone().unwrap_or_default())
            };
            input = header(route::INPUT_HEADER)
                .and_then(|id| self.input_ids.get(String::from_utf8_lossy(&id).as_ref()))
                .copied();
            if header(route::CONTROL_HEADER).as_deref() == Some(route::WATERMARK.as_bytes()) {
                control = Control::decode(m.payload()).ok();
                input = control.map(|c| c.input);
            }
            headers.retain(|(k, _)| k != route::INPUT_HEADER);
        }
        task.buffer.push(Polled {
            source,
            input,
            control,
            offset: m.offset(),
            key: m.key().map(|k| copy_into(&mut task.arena, k)),
            value: m.payload().map(|v| copy_into(&mut task.arena, v)),
            headers,
            timestamp: m.timestamp().to_millis(),
        });
        self.buffered += 1;
    }

    /// Processes every buffered record, moves event time, then commits.
    fn cycle(&mut self, consumer: &Consumer_) -> Result<(), Failure> {
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.running)
            .map(|(id, _)| *id)
            .collect();
        let records = self.buffered;
        for id in ids {
            if !self.tasks[&id].buffer.is_empty() {
                self.count_in(id);
                match id.role {
                    Role::Route => self.route_records(id)?,
                    Role::Run => self.process(id)?,
                }
            }
            self.tick(id)?;
        }
        self.buffered = 0;
        if records > 0 {
            self.health.metrics.batch_records.observe(records as f64);
        }
        self.commit(consumer)
    }

    /// Counts a task's buffered records and bytes by topic and partition (once per cycle,
    /// not per record: the metrics' label lookups cost more than a record's copy).
    fn count_in(&self, id: TaskId) {
        let sources = self.sources(id.role);
        let mut counts = vec![(0u64, 0u64); sources.len()];
        for p in &self.tasks[&id].buffer {
            let c = &mut counts[p.source];
            c.0 += 1;
            c.1 += (p.key.as_ref().map_or(0, Bytes::len) + p.value.as_ref().map_or(0, Bytes::len))
                as u64;
        }
        let metrics = &self.health.metrics;
        for (source, (records, bytes)) in counts.into_iter().enumerate() {
            if records == 0 {
                continue;
            }
            let labels = PartitionLabels {
                topic: sources[source].clone(),
                partition: id.partition,
            };
            metrics.records_in.get_or_create(&labels).inc_by(records);
            metrics.bytes_in.get_or_create(&labels).inc_by(bytes);
        }
    }

    /// Makes ready to send: waits for the commit in the background, if one runs (its
    /// failure is this call's), then begins a transaction (exactly once) if none is open.
    fn begin(&self) -> Result<(), Failure> {
        self.settle()?;
        if self.exactly_once && !self.txn_open.get() {
            self.producer.begin_transaction().map_err(classify)?;
            self.txn_open.set(true);
        }
        Ok(())
    }

    /// Waits for the commit running in the background, if any. A failed commit leaves its
    /// transaction open (to abort) and returns its failure.
    fn settle(&self) -> Result<(), Failure> {
        let Some(c) = self.committing.borrow_mut().take() else {
            return Ok(());
        };
        let result = c.handle.join().unwrap_or_else(|_| {
            Err(Failure::Fatal(anyhow!(
                "the commit thread panicked; the transaction's outcome is unknown"
            )))
        });
        match result {
            Ok(Committed { done, offsets }) => {
                self.count_commit(done.duration_since(c.started));
                let mut acked = self.acked.borrow_mut();
                for e in offsets.iter().flat_map(TopicPartitionList::elements) {
                    if let Offset::Offset(o) = e.offset() {
                        acked.insert((e.topic().to_owned(), e.partition()), (o, true));
                    }
                }
                Ok(())
            }
            Err(f) => {
                self.txn_open.set(self.exactly_once);
                Err(f)
            }
        }
    }

    /// Waits for the commit running in the background, then (at least once) commits the
    /// offsets it covers and waits for the broker's answer: for a stop or a revoke, after
    /// which this worker must have nothing left to commit.
    fn settle_all(&self, consumer: &Consumer_) -> Result<(), Failure> {
        self.settle()?;
        let tpl = self.acked_offsets(false)?;
        if tpl.count() > 0 {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| Failure::Abort(format!("committing offsets: {e}")))?;
            crash_point!("weir.commit.after_commit");
        }
        Ok(())
    }

    /// At least once: commits, without waiting, the offsets whose records are all written
    /// and not yet committed. A commit that fails only means those records may be read
    /// again (the next commit, or the one at stop or revoke, covers them).
    fn commit_acked(&self, consumer: &Consumer_) {
        match self.acked_offsets(true) {
            Ok(tpl) if tpl.count() > 0 => {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "committing offsets");
                }
                crash_point!("weir.commit.after_commit");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "committing offsets"),
        }
    }

    /// The acknowledged offsets: those not yet committed (`fresh`), or all, marking them
    /// committed.
    fn acked_offsets(&self, fresh: bool) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (offset, pending)) in self.acked.borrow_mut().iter_mut() {
            if *pending || !fresh {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                *pending = false;
            }
        }
        Ok(tpl)
    }

    /// Counts a commit that took `took`, from its start to the broker's answer.
    fn count_commit(&self, took: Duration) {
        let metrics = &self.health.metrics;
        metrics.commits.inc();
        metrics.commit_seconds.observe(took.as_secs_f64());
    }

    /// Settles the background commit if it has finished (between cycles, so that a worker
    /// with nothing more to read still learns how its last commit went).
    fn reap(&self) -> Result<(), Failure> {
        let finished = self
            .committing
            .borrow()
            .as_ref()
            .is_some_and(|c| c.handle.is_finished());
        if finished { self.settle() } else { Ok(()) }
    }

    /// The topics tasks of `role` read.
    fn sources(&self, role: Role) -> &[String] {
        match role {
            Role::Route => &self.job.input_topics,
            Role::Run => &self.run_sources,
        }
    }

    /// Marks the inputs a task has not heard from within the idle timeout as idle, then
    /// sends its progress downstream (a routing task) or advances its engine (a running
    /// task).
    fn tick(&mut self, id: TaskId) -> Result<(), Failure> {
        let idle_after = self.job.idle_timeout;
        let judges_itself = id.role == Role::Route || self.route.is_none();
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        if judges_itself {
            for (input, heard) in task.heard.iter().enumerate() {
                if self.job.compiled.inputs[input].event_time.is_some()
                    && heard.elapsed() >= idle_after
                {
                    let watermark = task
                        .progress
                        .mark(input, id.partition)
                        .map_or(Watermark::NONE, |m| m.watermark);
                    task.progress.update(
                        input,
                        id.partition,
                        Mark {
                            watermark,
                            idle: true,
                        },
                    );
                }
            }
        }
        match id.role {
            Role::Route => self.send_marks(id),
            Role::Run => {
                let out = self.advance(id)?;
                if !out.is_empty() {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.dirty = true;
                    }
                    for changes in &out {
                        self.send_output(id, changes)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Moves a running task's engine to the watermarks its progress allows; returns the
    /// output that completes.
    fn advance(&mut self, id: TaskId) -> Result<Vec<ChangeBatch>, Failure> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (input, wm) in task.progress.effective().into_iter().enumerate() {
            let Some(wm) = wm.nanos() else { continue };
            out.extend(task.engine.advance_watermark(input, wm).map_err(|e| {
                anyhow!(
                    "Transform {}: task {id}: closing windows failed: {e}",
                    self.job.id
                )
            })?);
            self.health
                .metrics
                .watermark_seconds
                .get_or_create(&PartitionLabels {
                    topic: self.job.input_topics[input].clone(),
                    partition: id.partition,
                })
                .set(wm as f64 / 1e9);
        }
        out.retain(|b| !b.is_empty());
        Ok(out)
    }

    /// A routing task: writes its progress to every repartition partition when it
    /// changed since it was last written.
    fn send_marks(&mut self, id: TaskId) -> Result<(), Failure> {
        let Some(route) = &self.route else {
            return Ok(());
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let mut controls = Vec::new();
        for (input, sent) in task.sent.iter_mut().enumerate() {
            let mark = task.progress.mark(input, id.partition);
            if mark.is_some() && mark != *sent {
                *sent = mark;
                controls.extend(mark.map(|mark| Control {
                    input,
                    partition: id.partition,
                    mark,
                }));
            }
        }
        if controls.is_empty() {
            return Ok(());
        }
        task.dirty = true;
        let (topic, partitions) = (route.topic.clone(), route.partitions);
        for c in controls {
            let value = c.encode();
            for q in 0..partitions {
                let headers = OwnedHeaders::new().insert(Header {
                    key: route::CONTROL_HEADER,
                    value: Some(route::WATERMARK.as_bytes()),
                });
                self.send(
                    BaseRecord::<'_, [u8], [u8], ()>::to(&topic)
                        .partition(q)
                        .payload(value.as_slice())
                        .headers(headers),
                )?;
            }
        }
        Ok(())
    }

    /// A routing task: forwards each buffered record to the repartition partition its
    /// key columns pick, and sets aside the records that cannot be read.
    fn route_records(&mut self, id: TaskId) -> Result<(), Failure> {
        let Some(route) = self.route.clone() else {
            return Ok(());
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let polled = std::mem::take(&mut task.buffer);
        task.dirty = true;
        let mut sends: Vec<(usize, Option<i32>)> = Vec::new();
        let mut rejects: Vec<(usize, Rejection)> = Vec::new();
        let mut start = 0;
        while start < polled.len() {
            let source = polled[start].source;
            let end = polled[start..]
                .iter()
                .position(|p| p.source != source)
                .map_or(polled.len(), |n| start + n);
            let run = &polled[start..end];
            let decoded = decode_run(&self.decoders[source], run);
            rejects.extend(
                decoded
                    .rejected
                    .into_iter()
                    .map(|(i, why)| (start + i, why)),
            );
            for (batch, rows) in decoded.batches.iter().zip(&decoded.rows) {
                let parts = route
                    .partitions_of(source, &batch.data)
                    .map_err(|e| anyhow!("Transform {}: task {id}: {e}", self.job.id))?;
                sends.extend(rows.iter().zip(parts).map(|(r, q)| (start + r, q)));
                if let Some(wm) = task.engine.watermark_of(source, &batch.data).ok().flatten() {
                    task.progress.update(
                        source,
                        id.partition,
                        Mark {
                            watermark: Watermark::at(wm),
                            idle: false,
                        },
                    );
                }
            }
            task.heard[source] = Instant::now();
            task.offsets.insert(source, run[run.len() - 1].offset + 1);
            start = end;
        }
        sends.sort_unstable_by_key(|(i, _)| *i);
        let routed = self
            .health
            .metrics
            .records_out
            .get_or_create(&TopicLabels {
                topic: route.topic.clone(),
            })
            .clone();
        for (i, q) in sends {
            let p = &polled[i];
            let Some(input) = p.input else { continue };
            let id_header = self.job.compiled.inputs[input].id();
            let mut headers = OwnedHeaders::new_with_capacity(p.headers.len() + 1);
            for (k, v) in &p.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: route::INPUT_HEADER,
                value: Some(id_header.as_bytes()),
            });
            let mut rec: BaseRecord<'_, [u8], [u8], ()> =
                BaseRecord::to(&route.topic).headers(headers);
            if let Some(q) = q {
                rec = rec.partition(q);
            }
            if let Some(k) = &p.key {
                rec = rec.key(&k[..]);
            }
            if let Some(v) = &p.value {
                rec = rec.payload(&v[..]);
            }
            self.send(rec)?;
            routed.inc();
        }
        for (i, why) in rejects {
            self.reject(id, &polled[i], Stage::Decode, &why)?;
        }
        Ok(())
    }

    /// Runs one task's buffered records through its engine and sends the results.
    fn process(&mut self, id: TaskId) -> Result<(), Failure> {
        let repartitioned = self.route.is_some();
        let Some(mut task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let polled = std::mem::take(&mut task.buffer);
        task.dirty = true;
        let mut sends: Vec<ChangeBatch> = Vec::new();
        let mut rejects: Vec<(usize, Stage, Rejection)> = Vec::new();
        let mut last: BTreeMap<usize, i64> = BTreeMap::new();
        for p in &polled {
            last.insert(p.source, p.offset);
        }
        let mut start = 0;
        while start < polled.len() {
            let first = &polled[start];
            task.offsets.insert(first.source, first.offset + 1);
            if let Some(c) = first.control {
                task.progress.update(c.input, c.partition, c.mark);
                start += 1;
                continue;
            }
            let Some(input) = first.input else {
                rejects.push((
                    start,
                    Stage::Decode,
                    Rejection {
                        class: "not_a_weir_record",
                        message: format!(
                            "a record in the repartition topic without a {} header naming \
                             one of this plan's inputs",
                            route::INPUT_HEADER
                        ),
                        field: None,
                    },
                ));
                start += 1;
                continue;
            };
            let end = polled[start..]
                .iter()
                .position(|p| p.input != Some(input) || p.control.is_some())
                .map_or(polled.len(), |n| start + n);
            let run = &polled[start..end];
            let decoded = decode_run(&self.decoders[input], run);
            for (i, why) in decoded.rejected {
                rejects.push((start + i, Stage::Decode, why));
            }
            let careful = task
                .careful_until
                .get(&run[0].source)
                .is_some_and(|until| run[0].offset <= *until);
            for (batch, rows) in decoded.batches.into_iter().zip(decoded.rows) {
                // Behind a repartition topic, time comes from the watermark records.
                let wm = if repartitioned {
                    None
                } else {
                    task.engine.watermark_of(input, &batch.data).ok().flatten()
                };
                if careful {
                    for (r, row) in rows.iter().enumerate() {
                        let one = batch.slice(r, 1);
                        let snapshot = task.engine.snapshot().map_err(|e| anyhow!("{e}"))?;
                        let late_before = task.engine.late_records();
                        match task.engine.push(input, one) {
                            Ok(out) => {
                                sends.extend(out);
                                if task.engine.late_records() > late_before {
                                    rejects.push((start + row, Stage::Engine, late()));
                                }
                            }
                            Err(e) => {
                                task.engine.restore(&snapshot).map_err(|e| anyhow!("{e}"))?;
                                rejects.push((
                                    start + row,
                                    Stage::Engine,
                                    Rejection {
                                        class: "engine",
                                        message: e.to_string(),
                                        field: None,
                                    },
                                ));
                            }
                        }
                    }
                } else {
                    // Rows behind the watermark go one at a time, so a late one is known
                    // and follows the error policy; the others go in runs, in order.
                    let behind = task
                        .engine
                        .behind_watermark(input, &batch.data)
                        .map_err(|e| anyhow!("reading event times: {e}"))?;
                    for (offset, len) in pieces(behind.as_ref(), batch.len()) {
                        let late_before = task.engine.late_records();
                        match task.engine.push(input, batch.slice(offset, len)) {
                            Ok(out) => sends.extend(out),
                            Err(e) => {
                                return Err(Failure::Engine {
                                    task: id,
                                    until: last,
                                    error: e.to_string(),
                                });
                            }
                        }
                        if behind.is_some() && len == 1 && task.engine.late_records() > late_before
                        {
                            rejects.push((start + rows[offset], Stage::Engine, late()));
                        }
                    }
                }
                if let Some(wm) = wm {
                    task.progress.update(
                        input,
                        id.partition,
                        Mark {
                            watermark: Watermark::at(wm),
                            idle: false,
                        },
                    );
                }
                if !repartitioned {
                    task.heard[input] = Instant::now();
                }
                // Windows close as the batches pass, as they would record by record.
                sends.extend(self.advance(id)?);
                let Some(t) = self.tasks.get_mut(&id) else {
                    return Ok(());
                };
                task = t;
            }
            task.offsets
                .insert(run[0].source, run[run.len() - 1].offset + 1);
            start = end;
        }
        if task
            .careful_until
            .iter()
            .all(|(i, until)| last.get(i).is_some_and(|l| l >= until))
        {
            task.careful_until.clear();
        }
        let late = task.engine.late_records();
        self.health
            .metrics
            .late_records
            .inc_by(late.saturating_sub(task.late_seen));
        task.late_seen = late;

        // Send what the task produced: output records, then dead letters.
        for changes in &sends {
            self.send_output(id, changes)?;
        }
        for (i, stage, why) in rejects {
            self.reject(id, &polled[i], stage, &why)?;
        }
        Ok(())
    }

    /// Checks the output rows against `spec.expectations`, then sends the rows that pass.
    fn send_output(&mut self, id: TaskId, changes: &ChangeBatch) -> Result<(), Failure> {
        let failures = self
            .checks
            .failures(changes)
            .map_err(|e| anyhow!("Transform {}: checking expectations: {e}", self.job.id))?;
        if failures.is_empty() {
            return self.write_output(changes);
        }
        let mut keep = vec![true; changes.len()];
        for (row, check) in failures {
            let expectation = &self.job.expectations[check];
            let one = changes.slice(row, 1);
            self.health
                .metrics
                .dead_letters
                .get_or_create(&DeadLetterLabels {
                    stage: Stage::Expectation.as_str().into(),
                    class: "expectation_failed".into(),
                    policy: policy_name(expectation.on_failure).into(),
                })
                .inc();
            self.health
                .metrics
                .expectation_failures
                .get_or_create(&crate::metrics::ExpectationLabels {
                    expectation: expectation.name.clone(),
                })
                .inc();
            if !std::mem::replace(&mut keep[row], false) {
                continue; // already set aside by an earlier check
            }
            let record = self
                .encoder
                .encode(&one)
                .map_err(|e| anyhow!("encoding an output row: {e}"))?
                .into_iter()
                .next();
            let why = Rejection {
                class: "expectation_failed",
                message: format!(
                    "expectation {} failed: {}",
                    expectation.name, expectation.check
                ),
                field: None,
            };
            match expectation.on_failure {
                OnFailure::Drop => {}
                OnFailure::Fail => {
                    return Err(Failure::Fatal(anyhow!(
                        "Transform {}: expectation {} (onFailure: fail) failed on an output row \
                         of task {id}: {}",
                        self.job.id,
                        expectation.name,
                        record
                            .as_ref()
                            .and_then(|r| r.value.as_ref())
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    )));
                }
                OnFailure::DeadLetter => {
                    let polled = Polled {
                        source: 0,
                        input: None,
                        control: None,
                        offset: -1,
                        key: record.as_ref().and_then(|r| r.key.clone()).map(Bytes::from),
                        value: record.and_then(|r| r.value).map(Bytes::from),
                        headers: Vec::new(),
                        timestamp: None,
                    };
                    let from = dead_letter::Source {
                        topic: &self.job.output_topic,
                        partition: id.partition,
                        offset: -1,
                        timestamp: None,
                    };
                    self.dead_letter(&polled, Stage::Expectation, &why, &from)?;
                }
            }
        }
        let mask: arrow::array::BooleanArray = keep.into_iter().map(Some).collect();
        let passed = changes
            .filter(&mask)
            .map_err(|e| anyhow!("filtering output rows: {e}"))?;
        self.write_output(&passed)
    }

    fn write_output(&self, changes: &ChangeBatch) -> Result<(), Failure> {
        let records = self
            .encoder
            .encode_batch(changes)
            .map_err(|e| anyhow!("encoding output rows: {e}"))?;
        let labels = TopicLabels {
            topic: self.job.output_topic.clone(),
        };
        let (mut sent, mut bytes) = (0u64, 0u64);
        let result = records.iter().try_for_each(|(key, value)| {
            let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.job.output_topic);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(v) = value {
                rec = rec.payload(v);
            }
            self.send(rec)?;
            sent += 1;
            bytes += (key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)) as u64;
            Ok(())
        });
        let metrics = &self.health.metrics;
        metrics.records_out.get_or_create(&labels).inc_by(sent);
        metrics.bytes_out.get_or_create(&labels).inc_by(bytes);
        result
    }

    /// Follows `spec.errorPolicy` for a record that could not be processed.
    fn reject(&self, id: TaskId, p: &Polled, stage: Stage, why: &Rejection) -> Result<(), Failure> {
        let topic = &self.sources(id.role)[p.source];
        let partition = id.partition;
        let policy = self.job.error_policy;
        self.health
            .metrics
            .dead_letters
            .get_or_create(&DeadLetterLabels {
                stage: stage.as_str().into(),
                class: why.class.into(),
                policy: policy_name(policy).into(),
            })
            .inc();
        match policy {
            OnFailure::Drop => Ok(()),
            OnFailure::Fail => Err(Failure::Fatal(anyhow!(
                "Transform {}: spec.errorPolicy is fail and the record at {topic}/{partition}@{} \
                 could not be processed ({} {}): {}",
                self.job.id,
                p.offset,
                stage.as_str(),
                why.class,
                why.message
            ))),
            OnFailure::DeadLetter => {
                let from = dead_letter::Source {
                    topic,
                    partition,
                    offset: p.offset,
                    timestamp: p.timestamp,
                };
                self.dead_letter(p, stage, why, &from)
            }
        }
    }

    /// Writes `p` to the dead-letter topic with its headers and the `weir.*` ones.
    fn dead_letter(
        &self,
        p: &Polled,
        stage: Stage,
        why: &Rejection,
        from: &dead_letter::Source<'_>,
    ) -> Result<(), Failure> {
        let mut headers = OwnedHeaders::new_with_capacity(p.headers.len() + 12);
        for (k, v) in &p.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        for (k, v) in dead_letter::headers(
            stage,
            why,
            from,
            &self.job.id,
            &self.job.compiled.fingerprint,
            &self.config.worker_name,
        ) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], ()> =
            BaseRecord::to(&self.names.dead_letters).headers(headers);
        if let Some(k) = &p.key {
            rec = rec.key(&k[..]);
        }
        if let Some(v) = &p.value {
            rec = rec.payload(&v[..]);
        }
        self.send(rec)
    }

    /// Queues a record, waiting while the producer's queue is full. The first record
    /// after a commit waits for that commit and begins the next transaction.
    fn send(&self, rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), Failure> {
        self.begin()?;
        produce(&self.producer, rec)
    }

    /// Commits the output, each changed task's state and the offsets. The commit runs in
    /// the background while the loop reads and computes the next cycle; the next cycle's
    /// first record sent waits for it ([`Worker::settle`]). Exactly once, the state is
    /// written into the transaction here and the background sends the offsets to the
    /// transaction, waits for the deliveries and commits. At least once, the background
    /// waits for the output's deliveries, then writes the state and waits for it; the
    /// offsets are committed once it is done ([`Worker::commit_acked`]).
    fn commit(&mut self, consumer: &Consumer_) -> Result<(), Failure> {
        let dirty: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(p, _)| *p)
            .collect();
        if dirty.is_empty() && !self.txn_open.get() {
            return Ok(());
        }
        let started = Instant::now();
        self.begin()?;
        let mut state = Vec::new();
        if self.stateful {
            for id in dirty.iter().filter(|id| id.role == Role::Run) {
                state.extend(self.take_state(*id)?);
            }
        }
        if self.exactly_once {
            crash_point!("weir.commit.before_state");
            for r in &state {
                self.send(r.record(&self.names.changelog))?;
            }
        }
        let mut tpl = TopicPartitionList::new();
        for id in &dirty {
            let task = &self.tasks[id];
            for (source, offset) in &task.offsets {
                tpl.add_partition_offset(
                    &self.sources(id.role)[*source],
                    id.partition,
                    Offset::Offset(*offset),
                )
                .map_err(|e| anyhow!("{e}"))?;
            }
        }
        let producer = self.producer.clone();
        let work: Box<dyn FnOnce() -> Result<Committed, Failure> + Send> = if self.exactly_once {
            crash_point!("weir.commit.before_offsets");
            let meta = consumer
                .group_metadata()
                .ok_or_else(|| Failure::Abort("no consumer group metadata".into()))?;
            Box::new(move || commit_transaction(&producer, &tpl, &meta))
        } else {
            let failed = self.delivery_failures.clone();
            let changelog = self.names.changelog.clone();
            Box::new(move || write_at_least_once(&producer, &failed, &changelog, &state, tpl))
        };
        let handle = std::thread::Builder::new()
            .name("weir-commit".into())
            .spawn(work)
            .map_err(|e| anyhow!("starting the commit thread: {e}"))?;
        self.txn_open.set(false);
        *self.committing.borrow_mut() = Some(Committing { handle, started });
        // A commit that fails in the background rebuilds every task from the changelog, so
        // the tasks can count this one as done now.
        for p in &dirty {
            if let Some(t) = self.tasks.get_mut(p) {
                t.dirty = false;
                t.commits += 1;
            }
        }
        if self.sized.elapsed() > Duration::from_secs(10) {
            self.sized = Instant::now();
            for (id, t) in self.tasks.iter().filter(|(id, _)| id.role == Role::Run) {
                self.health
                    .metrics
                    .state_bytes
                    .get_or_create(&crate::metrics::TaskLabels { task: id.partition })
                    .set(t.engine.stats().state_bytes as i64);
            }
        }
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged or has failed (a failed one
    /// is counted by the delivery callback). Records that cannot be delivered fail after
    /// librdkafka's `message.timeout.ms`, so this ends.
    fn wait_delivered(&self) {
        wait_delivered(&self.producer);
    }

    /// Takes a task's changed state entries and its meta record, as the records to write
    /// to its changelog partition.
    fn take_state(&mut self, id: TaskId) -> Result<Vec<StateRecord>, Failure> {
        let partition = id.partition;
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(Vec::new());
        };
        let entries = task
            .engine
            .take_state_changes()
            .map_err(|e| anyhow!("task {partition}: reading state changes: {e}"))?;
        let meta = TaskMeta {
            fingerprint: self.job.compiled.fingerprint.clone(),
            state: self.job.compiled.state_fingerprint.clone(),
            offsets: task
                .offsets
                .iter()
                .map(|(i, o)| (self.run_sources[*i].clone(), *o))
                .collect(),
            commits: task.commits + 1,
            watermarks: task.progress.marks().collect(),
        };
        let mut records: Vec<StateRecord> = entries
            .into_iter()
            .map(|(k, value)| StateRecord {
                partition,
                key: changelog::entry_key(&k),
                value,
            })
            .collect();
        records.push(StateRecord {
            partition,
            key: changelog::META_KEY.to_vec(),
            value: Some(changelog::meta_value(&meta)),
        });
        let bytes: usize = records
            .iter()
            .map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.health
            .metrics
            .changelog_bytes
            .get_or_create(&crate::metrics::TaskLabels { task: partition })
            .inc_by(bytes as u64);
        Ok(records)
    }

    /// Aborts the open transaction and rebuilds every task from its changelog.
    /// This worker lost its partitions to another one: it was stopped or cut off for
    /// longer than the session timeout (a zombie). It aborts what it had open, never
    /// commits for them, and exits non-zero, so that it restarts, rejoins the group and
    /// reads its state back from the changelog.
    fn exit_lost(&mut self) {
        // Another worker may have committed past them already.
        self.acked.borrow_mut().clear();
        let error = match self.abort_open("partitions lost") {
            Ok(()) => anyhow!(
                "worker {} lost its partitions to another worker of the group (it was stopped \
                 or cut off for longer than the session timeout, {:?}); its open transaction \
                 was aborted and it exits to rejoin",
                self.config.worker_name,
                self.config.session_timeout
            ),
            Err(e) => e.context(format!(
                "worker {} lost its partitions to another worker of the group",
                self.config.worker_name
            )),
        };
        self.fatal.get_or_insert(error);
    }

    /// Aborts the open transaction (exactly once) or waits out the sent records (at
    /// least once), counting the abort by `reason`.
    fn abort_open(&mut self, reason: &str) -> anyhow::Result<()> {
        self.health
            .metrics
            .aborts
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
        // A commit still running in the background finishes first; if it failed, its
        // transaction is the one to abort.
        if let Err(Failure::Fatal(e)) = self.settle() {
            return Err(e);
        }
        if self.exactly_once && self.txn_open.get() {
            if let Err(e) = self.producer.abort_transaction(Timeout::Never) {
                bail!("aborting the transaction failed: {e}");
            }
            self.txn_open.set(false);
        } else if !self.exactly_once {
            self.wait_delivered();
            self.delivery_failures.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn abort_and_rebuild(&mut self, consumer: &Consumer_, reason: &str) -> anyhow::Result<()> {
        self.abort_open(reason)?;
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        self.tasks.clear();
        self.restore = None;
        self.restoring.clear();
        self.buffered = 0;
        let mut tpl = TopicPartitionList::new();
        for id in &ids {
            for t in self.sources(id.role) {
                tpl.add_partition(t, id.partition);
            }
        }
        let assigned = consumer.assignment().unwrap_or_default();
        let tpl = intersect(&tpl, &assigned);
        self.add_tasks(consumer, &tpl)
    }

    /// The task reading partition `partition` of `topic`.
    fn task_of(&self, topic: &str, partition: i32) -> Option<TaskId> {
        self.topic_index.get(topic).map(|(role, _)| TaskId {
            role: *role,
            partition,
        })
    }

    fn drop_tasks(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            // Their offsets were committed at the revoke; another worker commits them next.
            self.acked
                .borrow_mut()
                .remove(&(e.topic().to_owned(), e.partition()));
            let Some(id) = self.task_of(e.topic(), e.partition()) else {
                continue;
            };
            if self.tasks.remove(&id).is_some() && id.role == Role::Run {
                self.health
                    .metrics
                    .state_bytes
                    .remove(&crate::metrics::TaskLabels {
                        task: e.partition(),
                    });
            }
            self.restoring.retain(|r| *r != id);
            if self.restore.as_ref().is_some_and(|r| r.id == id) {
                self.restore = None;
            }
        }
        self.update_ready();
    }

    /// Creates a paused, restoring task for every newly assigned partition number.
    fn add_tasks(&mut self, consumer: &Consumer_, tpl: &TopicPartitionList) -> anyhow::Result<()> {
        if tpl.count() == 0 {
            self.update_ready();
            return Ok(());
        }
        consumer
            .pause(tpl)
            .context("pausing newly assigned partitions")?;
        for e in tpl.elements() {
            let Some(id) = self.task_of(e.topic(), e.partition()) else {
                continue;
            };
            if self.tasks.contains_key(&id) {
                continue;
            }
            let inputs = self.job.compiled.inputs.len();
            // A routing task or a task of a co-partitioned plan hears from one partition
            // per input; a task behind the repartition topic from all of them.
            let progress = match (id.role, &self.route) {
                (Role::Run, Some(_)) => Progress::new(self.input_partitions.clone()),
                _ => Progress::new(vec![1; inputs]),
            };
            self.tasks.insert(
                id,
                Task {
                    engine: Engine::new(&self.job.compiled).map_err(|e| anyhow!("{e}"))?,
                    progress,
                    heard: vec![Instant::now(); inputs],
                    sent: vec![None; inputs],
                    buffer: Vec::new(),
                    arena: BytesMut::new(),
                    offsets: BTreeMap::new(),
                    dirty: false,
                    careful_until: BTreeMap::new(),
                    commits: 0,
                    running: false,
                    late_seen: 0,
                },
            );
            self.restoring.push_back(id);
        }
        self.update_ready();
        Ok(())
    }

    fn update_ready(&self) {
        let ready = !self.tasks.is_empty() && self.tasks.values().all(|t| t.running);
        self.health.ready.store(ready, Ordering::Relaxed);
        // Start-up is over once every task runs, or once the group gave this worker
        // nothing to do (more workers than partitions).
        if (ready || self.tasks.is_empty()) && self.config.release_startup_pages {
            crate::startup::release_code_pages_once();
        }
        for role in [Role::Route, Role::Run] {
            for running in [false, true] {
                let n = self
                    .tasks
                    .iter()
                    .filter(|(id, t)| id.role == role && t.running == running)
                    .count();
                self.health
                    .metrics
                    .tasks
                    .get_or_create(&crate::metrics::TaskStateLabels {
                        role: if role == Role::Route { "route" } else { "run" }.into(),
                        state: if running { "running" } else { "restoring" }.into(),
                    })
                    .set(n as i64);
            }
        }
    }

    /// Advances the restore in progress by a slice, or starts the next one.
    fn restore_step(&mut self, consumer: &Consumer_) -> anyhow::Result<()> {
        if self.restore.is_none() {
            let Some(id) = self.restoring.pop_front() else {
                return Ok(());
            };
            self.restore = Some(self.start_restore(consumer, id)?);
        }
        let slice = Instant::now() + Duration::from_millis(100);
        let Some(r) = self.restore.as_mut() else {
            return Ok(());
        };
        while r.reading && Instant::now() < slice {
            match self.restore_consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => r.reading = false,
                Some(Err(e)) => tracing::warn!(error = %e, "reading the changelog"),
                Some(Ok(m)) => match changelog::parse(m.key(), m.payload()) {
                    Ok(changelog::Record::Entry(k, v)) => {
                        crash_point!("weir.restore.entry");
                        r.engine
                            .apply_state_entry(k, v)
                            .map_err(|e| anyhow!("{}: task {}: {e}", self.names.changelog, r.id))?;
                        r.entries += 1;
                    }
                    Ok(changelog::Record::Meta(meta)) => r.meta = Some(meta),
                    Err(e) => bail!(
                        "the changelog {} partition {} at offset {}: {e}",
                        self.names.changelog,
                        r.id.partition,
                        m.offset()
                    ),
                },
            }
        }
        if r.reading {
            return Ok(());
        }
        let r = self.restore.take().expect("checked above");
        self.finish_restore(consumer, r)
    }

    fn start_restore(&mut self, consumer: &Consumer_, id: TaskId) -> anyhow::Result<Restore> {
        let partition = id.partition;
        // The committed offsets first: librdkafka waits until no open transaction holds
        // offsets of these partitions, so the changelog read next is complete.
        let mut tpl = TopicPartitionList::new();
        for t in self.sources(id.role) {
            tpl.add_partition(t, partition);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(60))
            .with_context(|| format!("reading the committed offsets of task {id}"))?;
        let committed = self
            .sources(id.role)
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let o = committed
                    .find_partition(t, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                (i, o)
            })
            .collect();
        let reading = self.stateful && id.role == Role::Run;
        if reading {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.names.changelog, partition, Offset::Beginning)?;
            self.restore_consumer
                .assign(&tpl)
                .context("assigning the changelog partition")?;
        }
        Ok(Restore {
            id,
            started: Instant::now(),
            engine: Engine::new(&self.job.compiled).map_err(|e| anyhow!("{e}"))?,
            meta: None,
            committed,
            entries: 0,
            reading,
        })
    }

    fn finish_restore(&mut self, consumer: &Consumer_, r: Restore) -> anyhow::Result<()> {
        let Restore {
            id,
            started,
            mut engine,
            meta,
            committed,
            entries,
            ..
        } = r;
        let _ = self.restore_consumer.unassign();
        let partition = id.partition;
        let sources = self.sources(id.role).to_vec();
        let task_id = id;
        let id = &self.job.id;
        let changelog = &self.names.changelog;
        let state_offsets: BTreeMap<usize, i64> = meta
            .as_ref()
            .map(|m| {
                sources
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| Some((i, *m.offsets.get(t)?)))
                    .collect()
            })
            .unwrap_or_default();
        if self.stateful && task_id.role == Role::Run {
            let plan = &self.job.compiled;
            if let Some(m) = &meta
                && !m.fits(&plan.fingerprint, &plan.state_fingerprint)
            {
                bail!(
                    "Transform {id}: the state in {changelog} partition {partition} was written \
                     by plan {} (state {}), whose stateful operators differ from plan {}'s \
                     (state {}); it cannot be used",
                    m.fingerprint,
                    if m.state.is_empty() {
                        "unrecorded"
                    } else {
                        &m.state
                    },
                    plan.fingerprint,
                    plan.state_fingerprint
                );
            }
            for (i, c) in &committed {
                let topic = &sources[*i];
                let s = state_offsets.get(i);
                let ok = match (c, s) {
                    (None, None) => true,
                    (Some(c), Some(s)) if self.exactly_once => c == s,
                    (Some(c), Some(s)) => s >= c,
                    (None, Some(_)) => !self.exactly_once,
                    (Some(_), None) => false,
                };
                if !ok {
                    bail!(
                        "Transform {id}: the consumer group committed offset {} of {topic} \
                         partition {partition}, but the state in {changelog} partition \
                         {partition} {}: the changelog was deleted or truncated. Refusing to \
                         start with state that does not match the input position; restore \
                         the changelog, or reprocess from scratch with a new consumer group",
                        c.map_or("none".to_owned(), |c| c.to_string()),
                        match s {
                            Some(s) => format!("is at offset {s}"),
                            None => "is missing".to_owned(),
                        }
                    );
                }
            }
            engine
                .finish_restore()
                .map_err(|e| anyhow!("Transform {id}: {changelog} partition {partition}: {e}"))?;
        }
        // Where each input resumes: the state's offset, else the group's, else startFrom.
        let mut tpl = TopicPartitionList::new();
        let mut offsets = BTreeMap::new();
        for (i, t) in sources.iter().enumerate() {
            let at = match state_offsets
                .get(&i)
                .copied()
                .or(committed.get(&i).copied().flatten())
            {
                Some(o) => {
                    offsets.insert(i, o);
                    Offset::Offset(o)
                }
                None => match self.job.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                    StartFrom::Timestamp(ms) => self.offset_at(consumer, t, partition, ms)?,
                },
            };
            tpl.add_partition_offset(t, partition, at)?;
        }
        let assigned = consumer.assignment().unwrap_or_default();
        let tpl = intersect(&tpl, &assigned);
        for e in tpl.elements() {
            consumer
                .seek(
                    e.topic(),
                    e.partition(),
                    e.offset(),
                    Duration::from_secs(30),
                )
                .with_context(|| format!("seeking {} partition {}", e.topic(), e.partition()))?;
        }
        consumer
            .resume(&tpl)
            .context("resuming restored partitions")?;
        let elapsed = started.elapsed();
        self.health
            .metrics
            .restore_seconds
            .observe(elapsed.as_secs_f64());
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.engine = engine;
            task.offsets = offsets;
            for (input, from, mark) in meta.iter().flat_map(|m| &m.watermarks) {
                task.progress.update(*input, *from, *mark);
            }
            task.commits = meta.as_ref().map_or(0, |m| m.commits);
            task.running = true;
            task.buffer.clear();
            task.late_seen = task.engine.late_records();
            if task_id.role == Role::Run {
                self.health
                    .metrics
                    .state_bytes
                    .get_or_create(&crate::metrics::TaskLabels { task: partition })
                    .set(task.engine.stats().state_bytes as i64);
            }
        }
        tracing::info!(
            task = %task_id,
            entries,
            ms = elapsed.as_millis() as u64,
            "task restored"
        );
        self.update_ready();
        Ok(())
    }

    fn offset_at(
        &self,
        consumer: &Consumer_,
        topic: &str,
        partition: i32,
        ms: i64,
    ) -> anyhow::Result<Offset> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(ms))?;
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(30))
            .with_context(|| {
                format!("finding the offset at startFrom in {topic} partition {partition}")
            })?;
        Ok(found
            .find_partition(topic, partition)
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::End))
    }
}

/// Splits `len` rows into pieces to push: each row where `single` is true alone, the
/// rows between in runs.
fn pieces(single: Option<&arrow::array::BooleanArray>, len: usize) -> Vec<(usize, usize)> {
    let Some(single) = single else {
        return vec![(0, len)];
    };
    let mut out = Vec::new();
    let mut run = 0;
    for i in 0..len {
        if single.value(i) {
            if run < i {
                out.push((run, i - run));
            }
            out.push((i, 1));
            run = i + 1;
        }
    }
    if run < len {
        out.push((run, len - run));
    }
    out
}

/// Why a late record is set aside.
fn late() -> Rejection {
    Rejection {
        class: "late",
        message: "the record arrived after the watermark had closed its window (or expired \
                  the join state it needed)"
            .into(),
        field: None,
    }
}

/// Decodes a run of records of one input.
fn decode_run(decoder: &Decoder, run: &[Polled]) -> crate::codec::Decoded {
    let payloads: Vec<Payload<'_>> = run
        .iter()
        .map(|p| Payload {
            key: p.key.as_deref(),
            value: p.value.as_deref(),
        })
        .collect();
    decoder.decode(&payloads)
}

/// The metric label of a policy.
fn policy_name(policy: OnFailure) -> &'static str {
    policy.into()
}

/// The elements of `a` that are also in `b`, with `a`'s offsets.
fn intersect(a: &TopicPartitionList, b: &TopicPartitionList) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for e in a.elements() {
        if b.find_partition(e.topic(), e.partition()).is_some() {
            let _ = out.add_partition_offset(e.topic(), e.partition(), e.offset());
        }
    }
    out
}

/// `bytes` copied to the end of `arena`, as a slice of it. The arena grows in chunks of at
/// least 64 KiB, so most records cost a copy and no allocation.
fn copy_into(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if arena.capacity() < bytes.len() {
        arena.reserve(bytes.len().max(64 * 1024));
    }
    arena.extend_from_slice(bytes);
    arena.split().freeze()
}

/// A commit handed to the background.
struct Committing {
    handle: std::thread::JoinHandle<Result<Committed, Failure>>,
    started: Instant,
}

/// A commit the background finished.
struct Committed {
    /// When it was done.
    done: Instant,
    /// At least once: the offsets to commit, now that what they cover is written.
    offsets: Option<TopicPartitionList>,
}

/// A changelog record: a state entry (a tombstone when `value` is `None`) or a task's meta
/// record.
struct StateRecord {
    partition: i32,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl StateRecord {
    fn record<'a>(&'a self, changelog: &'a str) -> BaseRecord<'a, [u8], [u8], ()> {
        let rec = BaseRecord::to(changelog)
            .partition(self.partition)
            .key(self.key.as_slice());
        match &self.value {
            Some(v) => rec.payload(v.as_slice()),
            None => rec,
        }
    }
}

/// Commits the open transaction with the consumed offsets (KIP-447: with the consumer's
/// group metadata, so a worker that lost its partitions cannot commit).
fn commit_transaction(
    producer: &Producer_,
    offsets: &TopicPartitionList,
    meta: &rdkafka::consumer::ConsumerGroupMetadata,
) -> Result<Committed, Failure> {
    let started = Instant::now();
    retry(|| producer.send_offsets_to_transaction(offsets, meta, Timeout::Never))?;
    let offsets_sent = Instant::now();
    crash_point!("weir.commit.before_commit");
    // commit_transaction waits for the deliveries itself, but in steps of 100 ms
    // (librdkafka's flush with rust-rdkafka's polling thread): waiting here first makes a
    // commit take milliseconds, not a tenth of a second.
    wait_delivered(producer);
    let delivered = Instant::now();
    retry(|| producer.commit_transaction(Timeout::Never))?;
    crash_point!("weir.commit.after_commit");
    let done = Instant::now();
    tracing::debug!(
        offsets_ms = offsets_sent.duration_since(started).as_secs_f64() * 1e3,
        deliveries_ms = delivered.duration_since(offsets_sent).as_secs_f64() * 1e3,
        commit_ms = done.duration_since(delivered).as_secs_f64() * 1e3,
        "committed"
    );
    Ok(Committed {
        done,
        offsets: None,
    })
}

/// At least once: waits until the cycle's output and dead letters are acknowledged, then
/// writes the state and waits for it (state never runs ahead of what was written), and
/// hands back the offsets that are then safe to commit.
fn write_at_least_once(
    producer: &Producer_,
    failed: &std::sync::atomic::AtomicU64,
    changelog: &str,
    state: &[StateRecord],
    offsets: TopicPartitionList,
) -> Result<Committed, Failure> {
    flush(producer, failed)?;
    crash_point!("weir.commit.before_state");
    if !state.is_empty() {
        for r in state {
            produce(producer, r.record(changelog))?;
        }
        flush(producer, failed)?;
    }
    crash_point!("weir.commit.before_offsets");
    Ok(Committed {
        done: Instant::now(),
        offsets: Some(offsets),
    })
}

/// Waits for every record sent so far and fails if any was not delivered. Not
/// `Producer::flush`, which waits in steps of 100 ms.
fn flush(producer: &Producer_, failed: &std::sync::atomic::AtomicU64) -> Result<(), Failure> {
    wait_delivered(producer);
    if failed.swap(0, Ordering::Relaxed) > 0 {
        return Err(Failure::Abort("records could not be delivered".into()));
    }
    Ok(())
}

/// Sends a record, waiting while librdkafka's queue is full.
fn produce(producer: &Producer_, mut rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), Failure> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(classify(e)),
        }
    }
}

/// Waits until every record sent so far is acknowledged or has failed.
fn wait_delivered(producer: &Producer_) {
    while producer.in_flight_count() > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Retries a transactional call while its error is retriable.
fn retry(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), Failure> {
    let mut tries = 0;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}

/// What a Kafka error calls for: abort for abortable errors and failed flushes, stop for
/// fatal and unclassified ones.
fn classify(e: KafkaError) -> Failure {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => Failure::Fatal(anyhow!(
            "a fatal transaction error (fenced by a newer worker?): {e}"
        )),
        KafkaError::Transaction(t) if t.txn_requires_abort() || t.is_retriable() => {
            Failure::Abort(format!("{e}"))
        }
        KafkaError::Flush(_) => Failure::Abort(format!("{e}")),
        _ => Failure::Fatal(anyhow!("an unexpected Kafka error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_behind_the_watermark_are_pushed_alone_and_the_rest_in_runs() {
        let mask: arrow::array::BooleanArray = [false, true, true, false, false, true]
            .into_iter()
            .map(Some)
            .collect();
        assert_eq!(
            super::pieces(Some(&mask), 6),
            vec![(0, 1), (1, 1), (2, 1), (3, 2), (5, 1)]
        );
        assert_eq!(super::pieces(None, 4), vec![(0, 4)]);
    }
}
