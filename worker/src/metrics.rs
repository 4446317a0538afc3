//! The worker's Prometheus metrics, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weir_crds::transform::OnFailure;

use crate::dead_letter::Stage;

/// Labels of a topic partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// Labels of a topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The topic.
    pub topic: String,
}

/// A label value that is one of a fixed set of names.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, (*self).into())
            }
        }
    )*};
}

/// What a task does.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Routes partition `p` of every input to the repartition topic (stateless).
    Route,
    /// Runs the engine on partition `p` of every input, or of the repartition topic.
    Run,
}

/// Whether a task runs yet.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum TaskState {
    /// Reading its state back from the changelog; its partitions are paused.
    Restoring,
    /// Processing records.
    Running,
}

/// What a rebalance did to this worker.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum RebalanceKind {
    /// Partitions were assigned.
    Assign,
    /// Partitions were revoked (after a commit).
    Revoke,
    /// Partitions were lost: another worker may own them already.
    Lost,
}

/// What happened to a record set aside: `spec.errorPolicy` or an expectation's `onFailure`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Policy(pub OnFailure);

impl From<Policy> for &'static str {
    fn from(p: Policy) -> Self {
        p.0.into()
    }
}

label_value!(Role, TaskState, RebalanceKind, Policy, Stage);

/// Labels of a dead letter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// Where it failed: decode, engine, expectation.
    pub stage: Stage,
    /// The error class.
    pub class: &'static str,
    /// What happened to it: deadLetter, drop or fail.
    pub policy: Policy,
}

/// Labels of a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels of a task (one input partition number).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task: the partition number of its inputs (of the repartition topic when the
    /// plan repartitions).
    pub task: i32,
}

/// Labels of an expectation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpectationLabels {
    /// The expectation's name.
    pub expectation: String,
}

/// Labels of a count of tasks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskStateLabels {
    /// route or run (what the task does).
    pub role: Role,
    /// restoring or running.
    pub state: TaskState,
}

/// Labels of a rebalance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RebalanceLabels {
    /// assign, revoke or lost.
    pub kind: RebalanceKind,
}

/// Everything the worker counts.
pub struct Metrics {
    registry: Registry,
    /// Records read, per input partition.
    pub records_in: Family<PartitionLabels, Counter>,
    /// Bytes read (keys and values), per input partition.
    pub bytes_in: Family<PartitionLabels, Counter>,
    /// Records written to the output, per topic.
    pub records_out: Family<TopicLabels, Counter>,
    /// Bytes written to the output, per topic.
    pub bytes_out: Family<TopicLabels, Counter>,
    /// Records set aside, by stage and class.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    /// Committed transactions (or offset commits, at least once).
    pub commits: Counter,
    /// Aborted transactions, by reason.
    pub aborts: Family<ReasonLabels, Counter>,
    /// How long a commit takes.
    pub commit_seconds: Histogram,
    /// Records processed per commit.
    pub batch_records: Histogram,
    /// Records dropped for arriving after their window closed.
    pub late_records: Counter,
    /// Each input partition's watermark, in seconds since the epoch.
    pub watermark_seconds: Family<PartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Records behind the end of each input partition.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Approximate bytes of state per task.
    pub state_bytes: Family<TaskLabels, Gauge>,
    /// Bytes written to the changelog.
    pub changelog_bytes: Family<TaskLabels, Counter>,
    /// How long restoring a task from its changelog takes.
    pub restore_seconds: Histogram,
    /// Rebalances, by kind.
    pub rebalances: Family<RebalanceLabels, Counter>,
    /// The worker's tasks, by role and state.
    pub tasks: Family<TaskStateLabels, Gauge>,
    /// Output rows that broke an expectation, by expectation.
    pub expectation_failures: Family<ExpectationLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weir_worker");
        let m = Self {
            records_in: Family::default(),
            bytes_in: Family::default(),
            records_out: Family::default(),
            bytes_out: Family::default(),
            dead_letters: Family::default(),
            commits: Counter::default(),
            aborts: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batch_records: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            late_records: Counter::default(),
            watermark_seconds: Family::default(),
            consumer_lag: Family::default(),
            state_bytes: Family::default(),
            changelog_bytes: Family::default(),
            restore_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            rebalances: Family::default(),
            tasks: Family::default(),
            expectation_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records read, per input partition",
            m.records_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Bytes read, per input partition",
            m.bytes_in.clone(),
        );
        registry.register(
            "records_out",
            "Records written, per output topic",
            m.records_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Bytes written, per output topic",
            m.bytes_out.clone(),
        );
        registry.register(
            "dead_letters",
            "Records set aside, by stage, error class and policy",
            m.dead_letters.clone(),
        );
        registry.register(
            "commits",
            "Committed transactions or offset commits",
            m.commits.clone(),
        );
        registry.register(
            "transaction_aborts",
            "Aborted transactions, by reason",
            m.aborts.clone(),
        );
        registry.register(
            "commit_seconds",
            "How long a commit takes",
            m.commit_seconds.clone(),
        );
        registry.register(
            "batch_records",
            "Records per commit",
            m.batch_records.clone(),
        );
        registry.register(
            "late_records",
            "Records dropped for arriving after their window closed",
            m.late_records.clone(),
        );
        registry.register(
            "watermark_seconds",
            "Each input partition's watermark, seconds since the epoch",
            m.watermark_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the end of each input partition",
            m.consumer_lag.clone(),
        );
        registry.register(
            "state_bytes",
            "Approximate bytes of state per task",
            m.state_bytes.clone(),
        );
        registry.register(
            "changelog_bytes",
            "Bytes written to the changelog, per task",
            m.changelog_bytes.clone(),
        );
        registry.register(
            "restore_seconds",
            "How long restoring a task from its changelog takes",
            m.restore_seconds.clone(),
        );
        registry.register("rebalances", "Rebalances, by kind", m.rebalances.clone());
        registry.register(
            "expectation_failures",
            "Output rows that broke an expectation, by expectation",
            m.expectation_failures.clone(),
        );
        registry.register(
            "tasks",
            "The worker's tasks, by role (route, run) and state (restoring, running)",
            m.tasks.clone(),
        );
        Self { registry, ..m }
    }
}

/// What the pipeline counts, by what it means: each call names its labels' values by type,
/// so that a label can only take one of the values the metric documents.
impl Metrics {
    /// Counts a rebalance.
    pub fn rebalance(&self, kind: RebalanceKind) {
        self.rebalances
            .get_or_create(&RebalanceLabels { kind })
            .inc();
    }

    /// Counts a record set aside.
    pub fn dead_letter(&self, stage: Stage, class: &'static str, policy: OnFailure) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                stage,
                class,
                policy: Policy(policy),
            })
            .inc();
    }

    /// Counts an output row that broke `expectation`.
    pub fn expectation_failed(&self, expectation: &str) {
        self.expectation_failures
            .get_or_create(&ExpectationLabels {
                expectation: expectation.to_owned(),
            })
            .inc();
    }

    /// Counts an aborted transaction (or, at least once, a cycle given up).
    pub fn abort(&self, reason: &'static str) {
        self.aborts.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a commit that took `took`, from its start to the broker's answer.
    pub fn commit(&self, took: Duration) {
        self.commits.inc();
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Counts `records` read from a partition, of `bytes` keys and values.
    pub fn read(&self, topic: &str, partition: i32, records: u64, bytes: u64) {
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition,
        };
        self.records_in.get_or_create(&labels).inc_by(records);
        self.bytes_in.get_or_create(&labels).inc_by(bytes);
    }

    /// Counts `records` written to a topic, of `bytes` keys and values.
    pub fn written(&self, topic: &str, records: u64, bytes: u64) {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        self.records_out.get_or_create(&labels).inc_by(records);
        self.bytes_out.get_or_create(&labels).inc_by(bytes);
    }

    /// Sets an input partition's watermark, in nanoseconds since the epoch.
    pub fn watermark(&self, topic: &str, partition: i32, nanos: i64) {
        self.watermark_seconds
            .get_or_create(&PartitionLabels {
                topic: topic.to_owned(),
                partition,
            })
            .set(nanos as f64 / 1e9);
    }

    /// Sets a task's state size.
    pub fn state_size(&self, task: i32, bytes: usize) {
        self.state_bytes
            .get_or_create(&TaskLabels { task })
            .set(bytes as i64);
    }

    /// Forgets a task that left this worker.
    pub fn task_gone(&self, task: i32) {
        self.state_bytes.remove(&TaskLabels { task });
    }

    /// Counts bytes a task wrote to its changelog partition.
    pub fn changelog_written(&self, task: i32, bytes: usize) {
        self.changelog_bytes
            .get_or_create(&TaskLabels { task })
            .inc_by(bytes as u64);
    }

    /// Sets how many tasks of `role` are in `state`.
    pub fn tasks_in(&self, role: Role, state: TaskState, n: usize) {
        self.tasks
            .get_or_create(&TaskStateLabels { role, state })
            .set(n as i64);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
