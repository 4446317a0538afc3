//! Restoring newly assigned tasks: each task's changelog partition read to its end, a slice
//! at a time between polls, checked against the group's committed offsets, and its
//! partitions resumed from where its state left off.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use weir_crds::transform::DeliveryGuarantee;
use weir_engine::Engine;

use super::Consumer_;
use super::layout::Layout;
use super::tasks::{TaskId, Tasks};
use crate::changelog::{self, TaskMeta};
use crate::metrics::{Metrics, Role};
use crate::transform::{Job, StartFrom};

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

/// A restore in progress: reading one task's changelog partition.
struct Restore {
    id: TaskId,
    started: Instant,
    engine: Engine,
    meta: Option<TaskMeta>,
    /// Per source, the group's committed offset.
    committed: BTreeMap<usize, Option<i64>>,
    entries: u64,
    reading: bool,
}

/// Restores the tasks waiting for it, one at a time, in the order they were assigned.
pub(super) struct Restorer {
    consumer: BaseConsumer<RestoreCtx>,
    queue: VecDeque<TaskId>,
    current: Option<Restore>,
    job: Arc<Job>,
    changelog: String,
    metrics: Arc<Metrics>,
}

impl Restorer {
    /// A restorer reading `changelog` with a consumer of `config`.
    pub fn new(
        mut config: ClientConfig,
        group: &str,
        job: Arc<Job>,
        changelog: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        let consumer = config
            .create_with_context(RestoreCtx)
            .context("creating the restore consumer")?;
        Ok(Self {
            consumer,
            queue: VecDeque::new(),
            current: None,
            job,
            changelog,
            metrics,
        })
    }

    /// Whether a task is restoring or waits to.
    pub fn is_busy(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }

    /// Queues a newly added task.
    pub fn enqueue(&mut self, id: TaskId) {
        self.queue.push_back(id);
    }

    /// Forgets a task that left this worker.
    pub fn forget(&mut self, id: TaskId) {
        self.queue.retain(|r| *r != id);
        if self.current.as_ref().is_some_and(|r| r.id == id) {
            self.current = None;
        }
    }

    /// Forgets every task.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.current = None;
    }

    /// Advances the restore in progress by a slice, or starts the next one; whether a
    /// task finished restoring and runs now.
    pub fn step(
        &mut self,
        consumer: &Consumer_,
        layout: &Layout,
        tasks: &mut Tasks,
    ) -> anyhow::Result<bool> {
        if self.current.is_none() {
            let Some(id) = self.queue.pop_front() else {
                return Ok(false);
            };
            self.current = Some(self.start(consumer, layout.sources(id.role), id)?);
        }
        let slice = Instant::now() + Duration::from_millis(100);
        let Some(r) = self.current.as_mut() else {
            return Ok(false);
        };
        while r.reading && Instant::now() < slice {
            match self.consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => r.reading = false,
                Some(Err(e)) => tracing::warn!(error = %e, "reading the changelog"),
                Some(Ok(m)) => match changelog::parse(m.key(), m.payload()) {
                    Ok(changelog::Record::Entry(k, v)) => {
                        crash_point!("weir.restore.entry");
                        r.engine
                            .apply_state_entry(k, v)
                            .map_err(|e| anyhow!("{}: task {}: {e}", self.changelog, r.id))?;
                        r.entries += 1;
                    }
                    Ok(changelog::Record::Meta(meta)) => r.meta = Some(meta),
                    Err(e) => bail!(
                        "the changelog {} partition {} at offset {}: {e}",
                        self.changelog,
                        r.id.partition,
                        m.offset()
                    ),
                },
            }
        }
        if r.reading {
            return Ok(false);
        }
        let r = self.current.take().expect("checked above");
        self.finish(consumer, layout.sources(r.id.role), tasks, r)?;
        Ok(true)
    }

    fn start(
        &mut self,
        consumer: &Consumer_,
        sources: &[String],
        id: TaskId,
    ) -> anyhow::Result<Restore> {
        let partition = id.partition;
        // The committed offsets first: librdkafka waits until no open transaction holds
        // offsets of these partitions, so the changelog read next is complete.
        let mut tpl = TopicPartitionList::new();
        for t in sources {
            tpl.add_partition(t, partition);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(60))
            .with_context(|| format!("reading the committed offsets of task {id}"))?;
        let committed = (sources.iter().enumerate())
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
        let reading = self.job.is_stateful() && id.role == Role::Run;
        if reading {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.changelog, partition, Offset::Beginning)?;
            self.consumer
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

    fn finish(
        &mut self,
        consumer: &Consumer_,
        sources: &[String],
        tasks: &mut Tasks,
        r: Restore,
    ) -> anyhow::Result<()> {
        let Restore {
            id,
            started,
            mut engine,
            meta,
            committed,
            entries,
            ..
        } = r;
        let _ = self.consumer.unassign();
        let partition = id.partition;
        let job = &self.job;
        let state_offsets = state_offsets(meta.as_ref(), sources);
        if job.is_stateful() && id.role == Role::Run {
            let plan = &job.compiled;
            let found = Found {
                transform: &job.id,
                changelog: &self.changelog,
                partition,
                sources,
            };
            found.check_plan(meta.as_ref(), &plan.fingerprint, &plan.state_fingerprint)?;
            found.check_offsets(
                &committed,
                &state_offsets,
                job.delivery == DeliveryGuarantee::ExactlyOnce,
            )?;
            engine.finish_restore().map_err(|e| {
                anyhow!(
                    "Transform {}: {} partition {partition}: {e}",
                    job.id,
                    self.changelog
                )
            })?;
        }
        // Where each source resumes: the state's offset, else the group's, else startFrom.
        let mut tpl = TopicPartitionList::new();
        let mut offsets = BTreeMap::new();
        for (i, t) in sources.iter().enumerate() {
            let resume = state_offsets
                .get(&i)
                .copied()
                .or(committed.get(&i).copied().flatten());
            let at = match resume {
                Some(o) => {
                    offsets.insert(i, o);
                    Offset::Offset(o)
                }
                None => match job.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                    StartFrom::Timestamp(ms) => offset_at(consumer, t, partition, ms)?,
                },
            };
            tpl.add_partition_offset(t, partition, at)?;
        }
        let assigned = consumer.assignment().unwrap_or_default();
        let tpl = super::intersect(&tpl, &assigned);
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
        self.metrics.restore_seconds.observe(elapsed.as_secs_f64());
        if let Some(task) = tasks.get_mut(id) {
            task.engine = engine;
            task.offsets = offsets;
            for (input, from, mark) in meta.iter().flat_map(|m| &m.watermarks) {
                task.progress.update(*input, *from, *mark);
            }
            task.commits = meta.as_ref().map_or(0, |m| m.commits);
            task.running = true;
            // Idleness counts from now, when its inputs are read again: a restore longer
            // than the idle timeout must not declare them idle at once and make their
            // backlog late.
            task.heard.fill(Instant::now());
            task.buffer.clear();
            task.late_seen = task.engine.late_records();
            if id.role == Role::Run {
                self.metrics
                    .state_size(partition, task.engine.stats().state_bytes);
            }
        }
        tracing::info!(
            task = %id,
            entries,
            ms = elapsed.as_millis() as u64,
            "task restored"
        );
        Ok(())
    }
}

/// Per source, the offset the restored state says comes next.
fn state_offsets(meta: Option<&TaskMeta>, sources: &[String]) -> BTreeMap<usize, i64> {
    meta.map(|m| {
        (sources.iter().enumerate())
            .filter_map(|(i, t)| Some((i, *m.offsets.get(t)?)))
            .collect()
    })
    .unwrap_or_default()
}

/// Whether restored state at `state` fits the group's committed offset `committed`.
/// Exactly once they commit together, so they are equal; at least once the state is
/// written before the offsets, so it may be ahead (its records are then read again), never
/// behind. State missing where the group committed means the changelog lost it.
fn state_fits(committed: Option<i64>, state: Option<i64>, exactly_once: bool) -> bool {
    match (committed, state) {
        (None, None) => true,
        (Some(c), Some(s)) if exactly_once => c == s,
        (Some(c), Some(s)) => s >= c,
        (None, Some(_)) => !exactly_once,
        (Some(_), None) => false,
    }
}

/// What a restore found in one task's changelog partition, for its checks' messages.
struct Found<'a> {
    transform: &'a str,
    changelog: &'a str,
    partition: i32,
    sources: &'a [String],
}

impl Found<'_> {
    /// The state was written by a plan whose state this plan can use.
    fn check_plan(&self, meta: Option<&TaskMeta>, plan: &str, state: &str) -> anyhow::Result<()> {
        let Some(m) = meta.filter(|m| !m.fits(plan, state)) else {
            return Ok(());
        };
        bail!(
            "Transform {}: the state in {} partition {} was written by plan {} (state {}), \
             whose stateful operators differ from plan {plan}'s (state {state}); it cannot be \
             used",
            self.transform,
            self.changelog,
            self.partition,
            m.fingerprint,
            if m.state.is_empty() {
                "unrecorded"
            } else {
                &m.state
            },
        );
    }

    /// The state's offsets fit the group's committed offsets ([`state_fits`]).
    fn check_offsets(
        &self,
        committed: &BTreeMap<usize, Option<i64>>,
        state: &BTreeMap<usize, i64>,
        exactly_once: bool,
    ) -> anyhow::Result<()> {
        for (i, c) in committed {
            let s = state.get(i).copied();
            if state_fits(*c, s, exactly_once) {
                continue;
            }
            let partition = self.partition;
            bail!(
                "Transform {}: the consumer group committed offset {} of {} partition \
                 {partition}, but the state in {} partition {partition} {}: the changelog was \
                 deleted or truncated. Refusing to start with state that does not match the \
                 input position; restore the changelog, or reprocess from scratch with a new \
                 consumer group",
                self.transform,
                c.map_or("none".to_owned(), |c| c.to_string()),
                self.sources[*i],
                self.changelog,
                match s {
                    Some(s) => format!("is at offset {s}"),
                    None => "is missing".to_owned(),
                }
            );
        }
        Ok(())
    }
}

/// The offset of the first record at or after `ms` in a partition, or its end.
fn offset_at(consumer: &Consumer_, topic: &str, partition: i32, ms: i64) -> anyhow::Result<Offset> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Found, TaskMeta, state_fits, state_offsets};

    #[test]
    fn exactly_once_state_and_offsets_are_equal_at_least_once_state_may_lead() {
        for exactly_once in [true, false] {
            assert!(state_fits(None, None, exactly_once));
            assert!(state_fits(Some(5), Some(5), exactly_once));
            assert!(!state_fits(Some(5), Some(4), exactly_once), "state behind");
            assert!(!state_fits(Some(5), None, exactly_once), "state lost");
        }
        assert!(!state_fits(Some(5), Some(6), true));
        assert!(state_fits(Some(5), Some(6), false));
        assert!(!state_fits(None, Some(6), true));
        assert!(state_fits(None, Some(6), false));
    }

    fn meta(fingerprint: &str, state: &str, offsets: &[(&str, i64)]) -> TaskMeta {
        TaskMeta {
            fingerprint: fingerprint.into(),
            state: state.into(),
            offsets: offsets.iter().map(|(t, o)| (t.to_string(), *o)).collect(),
            commits: 3,
            watermarks: Vec::new(),
        }
    }

    const SOURCES: &[String] = &[];

    fn found(sources: &[String]) -> Found<'_> {
        Found {
            transform: "web/t",
            changelog: "weir.web.t.changelog",
            partition: 2,
            sources,
        }
    }

    #[test]
    fn a_truncated_changelog_is_refused_with_the_offsets_on_both_sides() {
        let sources = vec!["web.a".to_owned(), "web.b".to_owned()];
        let m = meta("p1", "s1", &[("web.a", 10)]);
        let state = state_offsets(Some(&m), &sources);
        assert_eq!(state, BTreeMap::from([(0, 10)]));
        let committed = BTreeMap::from([(0, Some(10)), (1, Some(7))]);
        let e = found(&sources)
            .check_offsets(&committed, &state, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("committed offset 7 of web.b partition 2")
                && e.contains("weir.web.t.changelog partition 2 is missing"),
            "{e}"
        );
        let committed = BTreeMap::from([(0, Some(10)), (1, None)]);
        found(&sources)
            .check_offsets(&committed, &state, true)
            .unwrap();
    }

    #[test]
    fn state_of_another_plan_is_refused_unless_its_state_means_the_same() {
        let f = found(SOURCES);
        f.check_plan(None, "p2", "s1").unwrap();
        f.check_plan(Some(&meta("p1", "s1", &[])), "p2", "s1")
            .unwrap();
        let e = f
            .check_plan(Some(&meta("p1", "s1", &[])), "p2", "s2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("written by plan p1 (state s1)") && e.contains("plan p2's (state s2)"),
            "{e}"
        );
        // State from before Weir recorded its meaning fits only the same plan.
        f.check_plan(Some(&meta("p1", "", &[])), "p1", "s2")
            .unwrap();
        let e = f
            .check_plan(Some(&meta("p1", "", &[])), "p2", "s2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(state unrecorded)"), "{e}");
    }
}
