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
//!
//! The parts, each owning its state, in the manner of Kafka Streams' StreamThread and its
//! task manager, record collector and changelog reader:
//! - `layout`: which topics the plan needs and how tasks map onto them (checked once);
//! - `tasks`: the tasks this worker owns and the records buffered for them;
//! - `process`: one task's cycle (route, or run through the engine, and move event time);
//! - `output`: output rows checked against expectations, and dead letters;
//! - `committer`: the producer, the transaction and the commit in the background;
//! - `restorer`: restoring newly assigned tasks from their changelog partitions;
//! - this module: the loop and the rebalance callbacks, which own and lend those parts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use weir_crds::transform::DeliveryGuarantee;

use crate::codec::Decoder;
use crate::config::RunConfig;
use crate::http::Health;
use crate::metrics::{PartitionLabels, RebalanceKind, Role, TaskState};
use crate::transform::Job;

/// A crash point for tests: in a build with the `failpoints` feature, when the
/// `FAILPOINTS` environment variable configures it (`weir.commit.before_offsets=3*off->return`
/// crashes on the fourth pass), the process aborts right there, as if killed. Without the
/// feature (the product build) it compiles to nothing.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| std::process::abort())
    };
}

mod committer;
mod layout;
mod output;
mod process;
mod restorer;
mod tasks;

pub use layout::Names;

use committer::Committer;
use layout::Layout;
use output::Output;
use restorer::Restorer;
use tasks::{TaskId, Tasks};

/// What went wrong in a cycle, and what it calls for.
enum Failure {
    /// Abort the transaction and rebuild every task from the changelog.
    Abort(String),
    /// An engine error while processing a task's records: abort, rebuild, and process
    /// those records one at a time.
    Engine {
        task: TaskId,
        until: std::collections::BTreeMap<usize, i64>,
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

/// The worker: its parts, shared by the loop and the rebalance callbacks (which run inside
/// `poll`, on the loop's thread, never while the loop holds the lock).
struct Worker {
    job: Arc<Job>,
    config: RunConfig,
    health: Health,
    layout: Layout,
    /// One per input.
    decoders: Vec<Decoder>,
    tasks: Tasks,
    restorer: Restorer,
    output: Output,
    committer: Committer,
    /// When the state-size gauges were last refreshed (measuring walks the state).
    sized: Instant,
    fatal: Option<anyhow::Error>,
    /// The worker stopped on an error: closing the consumer must commit nothing (the
    /// revoke callback would otherwise commit the offsets of the record that failed).
    halted: bool,
}

/// The consumer's context: the rebalance callbacks hand partitions to and take them from
/// the worker.
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
                w.health.metrics.rebalance(if lost {
                    RebalanceKind::Lost
                } else {
                    RebalanceKind::Revoke
                });
                if lost {
                    // Another worker may already own these partitions: never commit.
                    w.exit_lost();
                } else if w.halted {
                    // Stopped on an error: what was not committed is processed again by
                    // the next worker, from the last commit.
                } else if let Err(e) = w
                    .commit(consumer)
                    .and_then(|()| w.committer.settle_all(consumer))
                {
                    // The partitions go to another worker only after this commit is done.
                    w.handle(consumer, e);
                }
                w.drop_tasks(tpl);
            }
            Rebalance::Assign(_) => w.health.metrics.rebalance(RebalanceKind::Assign),
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
    let layout = layout::check_topics(&job, &names, &base(), config.topics_timeout)?;

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
    let metrics = health.metrics.clone();
    let committer = Committer::new(
        pc,
        exactly_once.then_some((names.transactional_id.as_str(), config.transaction_timeout)),
        names.changelog.clone(),
        metrics.clone(),
    )?;
    let restorer = Restorer::new(
        base(),
        &names.restore_group_id,
        job.clone(),
        names.changelog.clone(),
        metrics.clone(),
    )?;
    let output = Output::new(
        job.clone(),
        names.dead_letters.clone(),
        config.worker_name.clone(),
        metrics.clone(),
    )?;
    let decoders = (job.compiled.inputs.iter())
        .zip(&job.max_future_skew_ms)
        .map(|(i, skew)| Decoder::new(i, config.max_record_bytes).with_max_future_skew(*skew))
        .collect();
    let subscribed = layout.subscribed();
    let repartition = layout.route.as_ref().map(|r| r.topic.clone());
    let worker = Arc::new(Mutex::new(Worker {
        job: job.clone(),
        config: config.clone(),
        health: health.clone(),
        layout,
        decoders,
        tasks: Tasks::default(),
        restorer,
        output,
        committer,
        sized: Instant::now(),
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
            metrics,
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
        repartition = ?repartition,
        output = %job.output_topic,
        exactly_once,
        stateful = job.is_stateful(),
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
                if let Err(f) = w
                    .cycle(consumer)
                    .and_then(|()| w.committer.settle_all(consumer))
                {
                    w.handle(consumer, f);
                }
                return w.fatal.take().map_or(Ok(()), Err);
            }
            if let Err(f) = w.committer.reap() {
                w.handle(consumer, f);
            }
            w.committer.commit_acked(consumer);
            w.restore_step(consumer)?;
            restoring = w.restorer.is_busy();
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
                    let w = &mut *w;
                    w.tasks.buffer(&w.layout, &m);
                    if w.tasks.buffered() >= config.commit_records
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

impl Worker {
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
                self.abort_and_rebuild(consumer, "abortable error")
            }
            Failure::Engine { task, until, error } => {
                tracing::warn!(%task, %error, "an engine error: reprocessing the records one at a time");
                let r = self.abort_and_rebuild(consumer, "engine error");
                if let Some(t) = self.tasks.get_mut(task) {
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

    /// Processes every buffered record, moves event time, then commits.
    fn cycle(&mut self, consumer: &Consumer_) -> Result<(), Failure> {
        let records = self.tasks.buffered();
        let mut step = process::Step {
            job: &self.job,
            layout: &self.layout,
            decoders: &self.decoders,
            output: &mut self.output,
            metrics: &self.health.metrics,
        };
        for (id, task) in self.tasks.running_mut() {
            step.cycle(&mut self.committer, id, task)?;
        }
        self.tasks.taken();
        if records > 0 {
            self.health.metrics.batch_records.observe(records as f64);
        }
        self.commit(consumer)
    }

    /// Commits the output, each changed task's state and the offsets
    /// ([`Committer::commit`]).
    fn commit(&mut self, consumer: &Consumer_) -> Result<(), Failure> {
        let dirty = self.tasks.dirty();
        if dirty.is_empty() && !self.committer.is_open() {
            return Ok(());
        }
        let started = Instant::now();
        // Waits for the last commit first: its failure rebuilds the tasks before their
        // state is taken.
        self.committer.begin()?;
        let mut state = Vec::new();
        let mut offsets = TopicPartitionList::new();
        for &id in &dirty {
            let sources = self.layout.sources(id.role);
            let Some(task) = self.tasks.get_mut(id) else {
                continue;
            };
            if self.job.is_stateful() && id.role == Role::Run {
                let records = task.take_state(id.partition, &self.job.compiled, sources)?;
                let bytes = records.iter().map(tasks::StateRecord::len).sum();
                self.health.metrics.changelog_written(id.partition, bytes);
                state.extend(records);
            }
            for (source, offset) in &task.offsets {
                offsets
                    .add_partition_offset(&sources[*source], id.partition, Offset::Offset(*offset))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        self.committer.commit(consumer, state, offsets, started)?;
        // A commit that fails in the background rebuilds every task from the changelog, so
        // the tasks can count this one as done now.
        for &id in &dirty {
            if let Some(t) = self.tasks.get_mut(id) {
                t.dirty = false;
                t.commits += 1;
            }
        }
        if self.sized.elapsed() > Duration::from_secs(10) {
            self.sized = Instant::now();
            for (id, t) in self.tasks.iter().filter(|(id, _)| id.role == Role::Run) {
                self.health
                    .metrics
                    .state_size(id.partition, t.engine.stats().state_bytes);
            }
        }
        Ok(())
    }

    /// This worker lost its partitions to another one: it was stopped or cut off for
    /// longer than the session timeout (a zombie). It aborts what it had open, never
    /// commits for them, and exits non-zero, so that it restarts, rejoins the group and
    /// reads its state back from the changelog.
    fn exit_lost(&mut self) {
        // Another worker may have committed past them already.
        self.committer.forget(None);
        let error = match self.committer.abort_open("partitions lost") {
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

    /// Aborts the open transaction and rebuilds every task from its changelog.
    fn abort_and_rebuild(
        &mut self,
        consumer: &Consumer_,
        reason: &'static str,
    ) -> anyhow::Result<()> {
        self.committer.abort_open(reason)?;
        let ids = self.tasks.clear();
        self.restorer.clear();
        let mut tpl = TopicPartitionList::new();
        for id in &ids {
            for t in self.layout.sources(id.role) {
                tpl.add_partition(t, id.partition);
            }
        }
        let assigned = consumer.assignment().unwrap_or_default();
        let tpl = intersect(&tpl, &assigned);
        self.add_tasks(consumer, &tpl)
    }

    fn drop_tasks(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            // Their offsets were committed at the revoke; another worker commits them next.
            self.committer.forget(Some((e.topic(), e.partition())));
            let Some(id) = Tasks::id_of(&self.layout, e.topic(), e.partition()) else {
                continue;
            };
            if self.tasks.remove(id) && id.role == Role::Run {
                self.health.metrics.task_gone(e.partition());
            }
            self.restorer.forget(id);
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
            let Some(id) = Tasks::id_of(&self.layout, e.topic(), e.partition()) else {
                continue;
            };
            if self.tasks.add(id, &self.job.compiled, &self.layout)? {
                self.restorer.enqueue(id);
            }
        }
        self.update_ready();
        Ok(())
    }

    /// Advances the restore in progress.
    fn restore_step(&mut self, consumer: &Consumer_) -> anyhow::Result<()> {
        if self
            .restorer
            .step(consumer, &self.layout, &mut self.tasks)?
        {
            self.update_ready();
        }
        Ok(())
    }

    fn update_ready(&self) {
        let ready = self.tasks.all_running();
        self.health.ready.store(ready, Ordering::Relaxed);
        // Start-up is over once every task runs, or once the group gave this worker
        // nothing to do (more workers than partitions).
        if (ready || self.tasks.is_empty()) && self.config.release_startup_pages {
            crate::startup::release_code_pages_once();
        }
        for role in [Role::Route, Role::Run] {
            for state in [TaskState::Restoring, TaskState::Running] {
                (self.health.metrics).tasks_in(role, state, self.tasks.count(role, state));
            }
        }
    }
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
