//! The producer and the commit protocol: every record the worker writes goes through the
//! [`Committer`], which begins the transaction on the first one, and commits the output,
//! the state and the consumed offsets together in the background.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::Failure;
use super::tasks::StateRecord;
use crate::metrics::Metrics;

/// Counts failed deliveries (at least once: the offsets are not committed after one).
pub(super) struct ProducerCtx {
    failed: Arc<AtomicU64>,
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

/// How the worker's writes become durable.
enum Delivery {
    /// Exactly once: one Kafka transaction per cycle, with the consumed offsets in it.
    Transactional {
        /// Begun, and not yet handed to a commit.
        open: bool,
    },
    /// At least once: no transactions; offsets are committed once what they cover is
    /// acknowledged.
    AtLeastOnce {
        /// Deliveries that failed since the last check.
        failed: Arc<AtomicU64>,
        acked: Acked,
    },
}

/// Owns the producer and the transaction state.
pub(super) struct Committer {
    producer: Arc<Producer_>,
    delivery: Delivery,
    /// The commit running in the background, if any.
    committing: Option<Committing>,
    /// The changelog topic state records go to.
    changelog: String,
    metrics: Arc<Metrics>,
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

impl Committer {
    /// The producer for `config`: transactional under `transactional_id` if given (which
    /// fences any earlier incarnation of this worker and aborts its open transaction).
    pub fn new(
        mut config: ClientConfig,
        transactional_id: Option<(&str, Duration)>,
        changelog: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        if let Some((id, timeout)) = transactional_id {
            config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", timeout.as_millis().to_string());
        }
        let failed = Arc::new(AtomicU64::new(0));
        let producer: Producer_ = config
            .create_with_context(ProducerCtx {
                failed: failed.clone(),
            })
            .context("creating the Kafka producer")?;
        let delivery = if transactional_id.is_some() {
            producer
                .init_transactions(Timeout::Never)
                .context("initializing transactions (is the broker reachable?)")?;
            Delivery::Transactional { open: false }
        } else {
            Delivery::AtLeastOnce {
                failed,
                acked: Acked::default(),
            }
        };
        Ok(Self {
            producer: Arc::new(producer),
            delivery,
            committing: None,
            changelog,
            metrics,
        })
    }

    /// Whether a transaction is open: begun, not yet handed to a commit.
    pub fn is_open(&self) -> bool {
        matches!(self.delivery, Delivery::Transactional { open: true })
    }

    /// Makes ready to send: waits for the commit in the background, if one runs (its
    /// failure is this call's), then begins a transaction (exactly once) if none is open.
    pub fn begin(&mut self) -> Result<(), Failure> {
        self.settle()?;
        if let Delivery::Transactional { open } = &mut self.delivery
            && !*open
        {
            self.producer.begin_transaction().map_err(classify)?;
            *open = true;
        }
        Ok(())
    }

    /// Queues a record, waiting while the producer's queue is full. The first record
    /// after a commit waits for that commit and begins the next transaction.
    pub fn send(&mut self, rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), Failure> {
        self.begin()?;
        produce(&self.producer, rec)
    }

    /// Waits for the commit running in the background, if any. A failed commit leaves its
    /// transaction open (to abort) and returns its failure.
    fn settle(&mut self) -> Result<(), Failure> {
        let Some(c) = self.committing.take() else {
            return Ok(());
        };
        let result = c.handle.join().unwrap_or_else(|_| {
            Err(Failure::Fatal(anyhow!(
                "the commit thread panicked; the transaction's outcome is unknown"
            )))
        });
        match (result, &mut self.delivery) {
            (Ok(Committed { done, offsets }), delivery) => {
                self.metrics.commit(done.duration_since(c.started));
                if let (Delivery::AtLeastOnce { acked, .. }, Some(offsets)) = (delivery, offsets) {
                    acked.written(&offsets);
                }
                Ok(())
            }
            (Err(f), Delivery::Transactional { open }) => {
                *open = true;
                Err(f)
            }
            (Err(f), Delivery::AtLeastOnce { .. }) => Err(f),
        }
    }

    /// Settles the background commit if it has finished (between cycles, so that a worker
    /// with nothing more to read still learns how its last commit went).
    pub fn reap(&mut self) -> Result<(), Failure> {
        if self
            .committing
            .as_ref()
            .is_some_and(|c| c.handle.is_finished())
        {
            self.settle()
        } else {
            Ok(())
        }
    }

    /// Commits what was sent since the last commit, `state` (the changed tasks' changelog
    /// records) and `offsets` (the changed tasks' next offsets), in the background while
    /// the loop reads and computes the next cycle; the next cycle's first record sent waits
    /// for it. Exactly once, the state is written into the transaction here and the
    /// background sends the offsets to the transaction, waits for the deliveries and
    /// commits. At least once, the background waits for the output's deliveries, then
    /// writes the state and waits for it; the offsets are committed once it is done
    /// ([`Committer::commit_acked`]). `started` is when the commit began, for its metric.
    pub fn commit(
        &mut self,
        consumer: &super::Consumer_,
        state: Vec<StateRecord>,
        offsets: TopicPartitionList,
        started: Instant,
    ) -> Result<(), Failure> {
        self.begin()?;
        let producer = self.producer.clone();
        let work: Box<dyn FnOnce() -> Result<Committed, Failure> + Send> = match &self.delivery {
            Delivery::Transactional { .. } => {
                crash_point!("weir.commit.before_state");
                for r in &state {
                    produce(&producer, record(&self.changelog, r))?;
                }
                crash_point!("weir.commit.before_offsets");
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| Failure::Abort("no consumer group metadata".into()))?;
                Box::new(move || commit_transaction(&producer, &offsets, &meta))
            }
            Delivery::AtLeastOnce { failed, .. } => {
                let failed = failed.clone();
                let changelog = self.changelog.clone();
                Box::new(move || {
                    write_at_least_once(&producer, &failed, &changelog, &state, offsets)
                })
            }
        };
        let handle = std::thread::Builder::new()
            .name("weir-commit".into())
            .spawn(work)
            .map_err(|e| anyhow!("starting the commit thread: {e}"))?;
        if let Delivery::Transactional { open } = &mut self.delivery {
            *open = false;
        }
        self.committing = Some(Committing { handle, started });
        Ok(())
    }

    /// At least once: commits, without waiting, the offsets whose records are all written
    /// and not yet committed. A commit that fails only means those records may be read
    /// again (the next commit, or the one at stop or revoke, covers them).
    pub fn commit_acked(&mut self, consumer: &super::Consumer_) {
        let Delivery::AtLeastOnce { acked, .. } = &mut self.delivery else {
            return;
        };
        match offsets(acked.take(true)) {
            Ok(tpl) if tpl.count() > 0 => {
                if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
                    tracing::warn!(error = %e, "committing offsets");
                }
                crash_point!("weir.commit.after_commit");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "committing offsets"),
        }
    }

    /// Waits for the commit running in the background, then (at least once) commits the
    /// offsets it covers and waits for the broker's answer: for a stop or a revoke, after
    /// which this worker must have nothing left to commit.
    pub fn settle_all(&mut self, consumer: &super::Consumer_) -> Result<(), Failure> {
        self.settle()?;
        let Delivery::AtLeastOnce { acked, .. } = &mut self.delivery else {
            return Ok(());
        };
        let tpl = offsets(acked.take(false))?;
        if tpl.count() > 0 {
            consumer
                .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| Failure::Abort(format!("committing offsets: {e}")))?;
            crash_point!("weir.commit.after_commit");
        }
        Ok(())
    }

    /// Forgets the written offsets of a partition this worker no longer owns (they were
    /// committed at the revoke; another worker commits them next), or of all (`None`:
    /// the partitions were lost and another worker may have committed past them).
    pub fn forget(&mut self, partition: Option<(&str, i32)>) {
        if let Delivery::AtLeastOnce { acked, .. } = &mut self.delivery {
            match partition {
                Some((topic, p)) => acked.forget(topic, p),
                None => acked.clear(),
            }
        }
    }

    /// Aborts the open transaction (exactly once) or waits out the sent records (at
    /// least once), counting the abort by `reason`.
    pub fn abort_open(&mut self, reason: &'static str) -> anyhow::Result<()> {
        self.metrics.abort(reason);
        // A commit still running in the background finishes first; if it failed, its
        // transaction is the one to abort.
        if let Err(Failure::Fatal(e)) = self.settle() {
            return Err(e);
        }
        match &mut self.delivery {
            Delivery::Transactional { open } => {
                if *open {
                    if let Err(e) = self.producer.abort_transaction(Timeout::Never) {
                        bail!("aborting the transaction failed: {e}");
                    }
                    *open = false;
                }
            }
            Delivery::AtLeastOnce { failed, .. } => {
                wait_delivered(&self.producer);
                failed.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// At least once: per topic and partition, the offset up to which everything read has been
/// written (output, dead letters and state), and whether it is still to commit.
#[derive(Default)]
struct Acked(BTreeMap<(String, i32), (i64, bool)>);

impl Acked {
    /// What a finished commit wrote: offsets now safe to commit.
    fn written(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.0
                    .insert((e.topic().to_owned(), e.partition()), (o, true));
            }
        }
    }

    /// The offsets not yet committed (`fresh`), or all, marking them committed.
    fn take(&mut self, fresh: bool) -> Vec<(&str, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), (offset, pending)) in self.0.iter_mut() {
            if *pending || !fresh {
                out.push((topic.as_str(), *partition, *offset));
                *pending = false;
            }
        }
        out
    }

    fn forget(&mut self, topic: &str, partition: i32) {
        self.0.remove(&(topic.to_owned(), partition));
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// `list` as a Kafka partition list.
fn offsets(list: Vec<(&str, i32, i64)>) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in list {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// A state record as a record of the changelog.
fn record<'a>(changelog: &'a str, r: &'a StateRecord) -> BaseRecord<'a, [u8], [u8], ()> {
    let rec = BaseRecord::to(changelog)
        .partition(r.partition)
        .key(r.key.as_slice());
    match &r.value {
        Some(v) => rec.payload(v.as_slice()),
        None => rec,
    }
}

/// Commits the open transaction with the consumed offsets (KIP-447: with the consumer's
/// group metadata, so a worker that lost its partitions cannot commit).
fn commit_transaction(
    producer: &Producer_,
    offsets: &TopicPartitionList,
    meta: &ConsumerGroupMetadata,
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
    failed: &AtomicU64,
    changelog: &str,
    state: &[StateRecord],
    offsets: TopicPartitionList,
) -> Result<Committed, Failure> {
    flush(producer, failed)?;
    crash_point!("weir.commit.before_state");
    if !state.is_empty() {
        for r in state {
            produce(producer, record(changelog, r))?;
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
fn flush(producer: &Producer_, failed: &AtomicU64) -> Result<(), Failure> {
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

/// Waits until every record sent so far is acknowledged or has failed (a failed one is
/// counted by the delivery callback). Records that cannot be delivered fail after
/// librdkafka's `message.timeout.ms`, so this ends.
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
    use rdkafka::{Offset, TopicPartitionList};

    use super::{Acked, Failure, classify};

    fn written(list: &[(&str, i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in list {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o)).unwrap();
        }
        tpl
    }

    #[test]
    fn written_offsets_are_committed_once_and_all_of_them_at_a_stop() {
        let mut acked = Acked::default();
        acked.written(&written(&[("in", 0, 10), ("in", 1, 4)]));
        assert_eq!(acked.take(true), vec![("in", 0, 10), ("in", 1, 4)]);
        // Nothing new: nothing to commit without waiting.
        assert_eq!(acked.take(true), vec![]);
        acked.written(&written(&[("in", 1, 7)]));
        assert_eq!(acked.take(true), vec![("in", 1, 7)]);
        // At a stop or revoke every partition's offset is committed again, synchronously.
        assert_eq!(acked.take(false), vec![("in", 0, 10), ("in", 1, 7)]);
    }

    #[test]
    fn a_revoked_partition_is_not_committed_by_this_worker_again() {
        let mut acked = Acked::default();
        acked.written(&written(&[("in", 0, 10), ("in", 1, 4)]));
        acked.forget("in", 0);
        assert_eq!(acked.take(false), vec![("in", 1, 4)]);
        acked.clear();
        assert_eq!(acked.take(false), vec![]);
    }

    #[test]
    fn a_flush_failure_aborts_and_an_unknown_error_stops() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        assert!(matches!(
            classify(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            Failure::Abort(_)
        ));
        assert!(matches!(classify(KafkaError::Canceled), Failure::Fatal(_)));
    }
}
