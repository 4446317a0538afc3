//! The tasks this worker owns, each with the records polled for it since the last cycle.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::anyhow;
use bytes::{Bytes, BytesMut};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use weir_engine::Engine;
use weir_sql::CompiledTransform;

use super::layout::Layout;
use crate::changelog::{self, TaskMeta};
use crate::metrics::{Role, TaskState};
use crate::route::{self, Control};
use crate::watermark::{Mark, Progress};

/// One record polled from a task's topics.
pub(super) struct Polled {
    /// Index into the task's source topics.
    pub source: usize,
    /// The plan input it belongs to; `None` for a record in the repartition topic that
    /// Weir did not write.
    pub input: Option<usize>,
    /// A watermark record from an upstream routing task.
    pub control: Option<Control>,
    pub offset: i64,
    /// Key and value are slices of the task's arena (no allocation per record).
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Polled {
    /// The record's own headers, with room for `more`.
    pub fn headers_and(&self, more: usize) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() + more);
        for (k, v) in &self.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        headers
    }
}

/// A task: a role and a partition number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TaskId {
    pub role: Role,
    pub partition: i32,
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
pub(super) struct Task {
    /// The engine (a routing task uses it only to read watermarks off batches).
    pub engine: Engine,
    /// Event-time progress of what the task hears from.
    pub progress: Progress,
    /// Per input, when the task last had a record of it (idleness by the wall clock).
    pub heard: Vec<Instant>,
    /// A routing task: per input, the mark last sent downstream.
    pub sent: Vec<Option<Mark>>,
    pub buffer: Vec<Polled>,
    /// Where the buffered records' keys and values are copied, in large chunks.
    arena: BytesMut,
    /// Per source, the next offset to read: what the task's state reflects.
    pub offsets: BTreeMap<usize, i64>,
    /// Whether the task processed records since the last commit.
    pub dirty: bool,
    /// Per source, process records up to this offset one at a time: an engine error
    /// happened among them.
    pub careful_until: BTreeMap<usize, i64>,
    pub commits: u64,
    pub running: bool,
    pub late_seen: u64,
}

impl Task {
    /// A paused task of `plan`, restoring; `partitions` is, per input, how many upstream
    /// partitions its progress hears from.
    fn new(plan: &CompiledTransform, partitions: Vec<usize>) -> anyhow::Result<Self> {
        let inputs = plan.inputs.len();
        Ok(Self {
            engine: Engine::new(plan).map_err(|e| anyhow!("{e}"))?,
            progress: Progress::new(partitions),
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
        })
    }

    /// Takes the task's changed state entries and its meta record, as the records to
    /// write to its changelog partition. `sources` are the task's source topics.
    pub fn take_state(
        &mut self,
        partition: i32,
        plan: &CompiledTransform,
        sources: &[String],
    ) -> anyhow::Result<Vec<StateRecord>> {
        let entries = self
            .engine
            .take_state_changes()
            .map_err(|e| anyhow!("task {partition}: reading state changes: {e}"))?;
        let meta = TaskMeta {
            fingerprint: plan.fingerprint.clone(),
            state: plan.state_fingerprint.clone(),
            offsets: (self.offsets.iter())
                .map(|(i, o)| (sources[*i].clone(), *o))
                .collect(),
            commits: self.commits + 1,
            watermarks: self.progress.marks().collect(),
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
        Ok(records)
    }
}

/// A changelog record: a state entry (a tombstone when `value` is `None`) or a task's meta
/// record.
pub(super) struct StateRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl StateRecord {
    /// Its size in bytes, key and value.
    pub fn len(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// The tasks this worker owns, by id.
#[derive(Default)]
pub(super) struct Tasks {
    map: BTreeMap<TaskId, Task>,
    /// Records buffered over all tasks since the last cycle.
    buffered: usize,
}

impl Tasks {
    /// The task reading partition `partition` of `topic`.
    pub fn id_of(layout: &Layout, topic: &str, partition: i32) -> Option<TaskId> {
        layout
            .reader_of(topic)
            .map(|(role, _)| TaskId { role, partition })
    }

    /// Adds a paused, restoring task; `false` if the task exists already.
    pub fn add(
        &mut self,
        id: TaskId,
        plan: &CompiledTransform,
        layout: &Layout,
    ) -> anyhow::Result<bool> {
        if self.map.contains_key(&id) {
            return Ok(false);
        }
        // A routing task or a task of a co-partitioned plan hears from one partition per
        // input; a task behind the repartition topic from all of them.
        let partitions = match (id.role, &layout.route) {
            (Role::Run, Some(_)) => layout.input_partitions.clone(),
            _ => vec![1; plan.inputs.len()],
        };
        self.map.insert(id, Task::new(plan, partitions)?);
        Ok(true)
    }

    /// Removes a task; whether it was there.
    pub fn remove(&mut self, id: TaskId) -> bool {
        self.map.remove(&id).is_some()
    }

    /// Removes every task, returning their ids.
    pub fn clear(&mut self) -> Vec<TaskId> {
        self.buffered = 0;
        std::mem::take(&mut self.map).into_keys().collect()
    }

    pub fn get_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.map.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TaskId, &Task)> {
        self.map.iter().map(|(id, t)| (*id, t))
    }

    /// The running tasks.
    pub fn running_mut(&mut self) -> impl Iterator<Item = (TaskId, &mut Task)> {
        (self.map.iter_mut())
            .filter(|(_, t)| t.running)
            .map(|(id, t)| (*id, t))
    }

    /// The tasks that processed records since the last commit.
    pub fn dirty(&self) -> Vec<TaskId> {
        (self.map.iter())
            .filter(|(_, t)| t.dirty)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether every task runs (and there is one).
    pub fn all_running(&self) -> bool {
        !self.map.is_empty() && self.map.values().all(|t| t.running)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many tasks of `role` are in `state`.
    pub fn count(&self, role: Role, state: TaskState) -> usize {
        let running = state == TaskState::Running;
        (self.map.iter())
            .filter(|(id, t)| id.role == role && t.running == running)
            .count()
    }

    /// Records buffered since the last cycle, over all tasks.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The cycle took what was buffered.
    pub fn taken(&mut self) {
        self.buffered = 0;
    }

    /// Copies a polled record into its task's buffer.
    pub fn buffer(&mut self, layout: &Layout, m: &BorrowedMessage<'_>) {
        let Some((role, source)) = layout.reader_of(m.topic()) else {
            return;
        };
        let id = TaskId {
            role,
            partition: m.partition(),
        };
        let Some(task) = self.map.get_mut(&id) else {
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
        if role == Role::Run && layout.route.is_some() {
            // The repartition topic: the header names the input; a watermark record
            // carries an upstream task's progress.
            let header = |name: &str| {
                headers
                    .iter()
                    .position(|(k, _)| k == name)
                    .map(|i| headers[i].1.clone().unwrap_or_default())
            };
            input = header(route::INPUT_HEADER)
                .and_then(|id| layout.input_ids.get(String::from_utf8_lossy(&id).as_ref()))
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    #[test]
    fn records_copied_into_the_arena_keep_their_bytes_when_it_grows() {
        let mut arena = BytesMut::new();
        let a = super::copy_into(&mut arena, b"first");
        let big = vec![7u8; 100 * 1024];
        let b = super::copy_into(&mut arena, &big);
        let c = super::copy_into(&mut arena, b"third");
        assert_eq!(&a[..], b"first");
        assert_eq!(&b[..], &big[..]);
        assert_eq!(&c[..], b"third");
    }
}
