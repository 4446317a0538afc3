//! The operator graph of one compiled Transform.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use weir_sql::CompiledTransform;
use weir_sql::plan::{self, Op};

use crate::changes::time_nanos;
use crate::ops::aggregate::AggregateOp;
use crate::ops::join::JoinOp;
use crate::ops::{Filter, Operator, Project, Source, Union, Upsert, arrow_schema};
use crate::{ChangeBatch, EngineError, Result, Watermark};

struct GraphNode {
    op: Box<dyn Operator>,
    /// For an operator that keeps state, its number among them in plan pre-order
    /// ([`CompiledTransform::stateful_nodes`]): the prefix of its state keys. Operators
    /// above the stateful ones can change without renumbering them.
    slot: Option<u16>,
    parent: Option<(usize, usize)>,
    children: Vec<usize>,
    watermark: Watermark,
    port_watermarks: Vec<Watermark>,
}

/// Runs a compiled Transform incrementally: input changes in, output changes out.
///
/// Watermarks are per input, in nanoseconds since the epoch; an operator sees the
/// minimum over the inputs beneath it. [`Engine::finish`] advances every watermark to
/// the end of time, closing every window.
pub struct Engine {
    nodes: Vec<GraphNode>,
    sources: Vec<Vec<usize>>,
    input_watermarks: Vec<Watermark>,
    event_time: Vec<Option<(usize, i64)>>,
    input_schemas: Vec<SchemaRef>,
    output_schema: SchemaRef,
    /// What the state means ([`CompiledTransform::state_fingerprint`]): state written by
    /// an engine with the same one can be restored here, even if the plan differs above
    /// its stateful operators.
    state_fingerprint: String,
    /// The node of each state slot.
    slots: Vec<usize>,
    /// Whether an operator can drop a record as late (a window or an interval join).
    drops_late: bool,
    /// Whether operators have emitted what they hold before any input (a global
    /// aggregate's first row). Part of the snapshot, so that row is emitted exactly once
    /// across a restore.
    primed: bool,
    /// The encoded [`Meta`] last handed out by [`Engine::take_state_changes`].
    meta_sent: Option<Vec<u8>>,
    /// While entries are applied: whether the meta entry was among them.
    meta_applied: bool,
    /// While entries are applied: how many operator entries were.
    entries_applied: usize,
}

/// A state entry: a key, and its value or `None` when the entry is gone (a tombstone).
/// Keys are unique within one engine; the changelog keeps the last value per key.
pub type StateEntry = (Vec<u8>, Option<Vec<u8>>);

/// The key of the engine's own entry (state fingerprint, watermarks); operator entries
/// start with their state slot, which is always smaller.
const META_KEY: [u8; 2] = [0xFF, 0xFF];

/// The engine's own state entry: what is not any one operator's. Each operator's
/// watermark follows from the inputs' (the minimum of its inputs'), so only those are kept.
#[derive(Serialize, Deserialize, PartialEq)]
struct Meta {
    state_fingerprint: String,
    primed: bool,
    input_watermarks: Vec<Watermark>,
}

/// What an engine holds and has dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Approximate bytes of operator state.
    pub state_bytes: usize,
    /// Records dropped because they arrived after the watermark had closed their window
    /// or expired the join state they needed.
    pub late_records: u64,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    fingerprint: String,
    primed: bool,
    input_watermarks: Vec<Watermark>,
    nodes: Vec<(Vec<u8>, Watermark, Vec<Watermark>)>,
}

impl Engine {
    /// Builds the operators of a compiled Transform.
    pub fn new(compiled: &CompiledTransform) -> Result<Self> {
        let mut engine = Self {
            nodes: Vec::new(),
            sources: vec![Vec::new(); compiled.inputs.len()],
            input_watermarks: vec![Watermark::NONE; compiled.inputs.len()],
            event_time: compiled
                .inputs
                .iter()
                .map(|i| {
                    let et = i.event_time.as_ref()?;
                    let col = i.schema.index_of(&et.field).ok()?;
                    Some((col, et.max_out_of_orderness_ms.saturating_mul(1_000_000)))
                })
                .collect(),
            input_schemas: compiled.inputs.iter().map(|i| i.schema.clone()).collect(),
            output_schema: compiled.output_schema.clone(),
            state_fingerprint: compiled.state_fingerprint.clone(),
            slots: Vec::new(),
            drops_late: false,
            primed: false,
            meta_sent: None,
            meta_applied: false,
            entries_applied: 0,
        };
        engine.add(&compiled.plan, None, compiled)?;
        Ok(engine)
    }

    /// On the first call, lets operators emit what they hold before any input (a global
    /// COUNT is 0 over no rows).
    fn prime(&mut self, out: &mut Vec<ChangeBatch>) -> Result<()> {
        if self.primed {
            return Ok(());
        }
        self.primed = true;
        for input in 0..self.sources.len() {
            let empty = ChangeBatch::empty(self.input_schemas[input].clone());
            for s in self.sources[input].clone() {
                self.deliver(s, 0, empty.clone(), out)?;
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        n: &plan::Node,
        parent: Option<(usize, usize)>,
        compiled: &CompiledTransform,
    ) -> Result<usize> {
        self.drops_late |= match &n.op {
            Op::Aggregate(a) => a.window.is_some(),
            Op::Join(j) => matches!(j.mode, plan::JoinMode::Interval { .. }),
            _ => false,
        };
        let op: Box<dyn Operator> = match &n.op {
            Op::Source {
                input, projection, ..
            } => {
                let def = &compiled.inputs[*input];
                let upsert = if def.kind == weir_sql::StreamKind::Changelog && !def.key.is_empty() {
                    let cols = def
                        .key
                        .iter()
                        .map(|k| def.schema.index_of(k))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Some(Upsert::new(&def.schema, cols)?)
                } else {
                    None
                };
                Box::new(Source {
                    projection: projection.clone(),
                    schema: arrow_schema(&n.schema),
                    input_schema: def.schema.clone(),
                    name: def.sql_name(),
                    upsert,
                    append_only: def.kind == weir_sql::StreamKind::AppendOnly,
                })
            }
            Op::Project { input, exprs } => {
                Box::new(Project::new(exprs, &input.schema, &n.schema)?)
            }
            Op::Filter { input, predicate } => Box::new(Filter {
                predicate: crate::exprs::Eval::new(predicate, &input.schema)?,
            }),
            Op::Aggregate(a) => Box::new(AggregateOp::new(a, &n.schema)?),
            Op::Join(j) => Box::new(JoinOp::new(j, &n.schema)?),
            Op::Union { .. } => Box::new(Union {
                schema: arrow_schema(&n.schema),
            }),
        };
        let id = self.nodes.len();
        let slot = if n.keeps_state(&compiled.inputs) {
            let slot = u16::try_from(self.slots.len())
                .ok()
                .filter(|s| *s < u16::from_be_bytes(META_KEY))
                .ok_or_else(|| EngineError::Snapshot("too many stateful operators".into()))?;
            self.slots.push(id);
            Some(slot)
        } else {
            None
        };
        self.nodes.push(GraphNode {
            op,
            slot,
            parent,
            children: Vec::new(),
            watermark: Watermark::NONE,
            port_watermarks: Vec::new(),
        });
        if let Op::Source { input, .. } = &n.op {
            self.sources[*input].push(id);
        }
        let children = n.children();
        for (port, c) in children.iter().enumerate() {
            let cid = self.add(c, Some((id, port)), compiled)?;
            self.nodes[id].children.push(cid);
        }
        self.nodes[id].port_watermarks = vec![Watermark::NONE; children.len()];
        Ok(id)
    }

    /// The output's schema.
    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// Applies changes to input `input` (an index into the compiled inputs) and returns
    /// the output's changes.
    ///
    /// For an append-only input every row is an event: a weight `n` inserts `n` copies,
    /// and a negative weight is an error. For a keyed changelog input (a table), weight +1
    /// upserts the row for its key and −1 deletes the key; for a changelog without a key,
    /// weights insert and retract copies of the row.
    pub fn push(&mut self, input: usize, changes: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let sources = self
            .sources
            .get(input)
            .ok_or_else(|| EngineError::Input(format!("there is no input {input}")))?
            .clone();
        let mut out = Vec::new();
        self.prime(&mut out)?;
        for s in sources {
            self.deliver(s, 0, changes.clone(), &mut out)?;
        }
        out.retain(|b| !b.is_empty());
        Ok(out)
    }

    /// The watermark an input batch implies: its newest event time minus the input's
    /// allowed out-of-orderness (nanoseconds), if the input has event time.
    pub fn watermark_of(&self, input: usize, batch: &RecordBatch) -> Result<Option<i64>> {
        let Some(Some((col, ooo))) = self.event_time.get(input) else {
            return Ok(None);
        };
        let times = time_nanos(batch.column(*col))?;
        Ok(arrow::compute::max(times.as_ref()).map(|t| t.saturating_sub(*ooo)))
    }

    /// The rows of an input batch whose event time is behind the input's watermark: the
    /// only ones a window or an interval join can find late (a row at or after the
    /// watermark never is). `None` when no row is, the input has no event time, or no
    /// operator can find a record late.
    pub fn behind_watermark(
        &self,
        input: usize,
        batch: &RecordBatch,
    ) -> Result<Option<arrow::array::BooleanArray>> {
        let (Some(Some((col, _))), Some(&wm)) =
            (self.event_time.get(input), self.input_watermarks.get(input))
        else {
            return Ok(None);
        };
        let Some(wm) = wm.nanos().filter(|_| self.drops_late) else {
            return Ok(None);
        };
        let times = time_nanos(batch.column(*col))?;
        let behind: arrow::array::BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t < wm)))
            .collect();
        Ok((behind.true_count() > 0).then_some(behind))
    }

    /// The rows of an input batch behind the watermark that the rows before them in the
    /// same batch imply, each with that watermark (nanoseconds): where a batch must be
    /// cut, the watermark moved and windows closed, so that lateness is judged record by
    /// record, as `weir test` judges it, however the records were batched. Empty when
    /// the batch is in order within the input's out-of-orderness (the usual case), the
    /// input has no event time, or no operator can find a record late.
    pub fn behind_earlier_rows(
        &self,
        input: usize,
        batch: &RecordBatch,
    ) -> Result<Vec<(usize, i64)>> {
        let Some(Some((col, ooo))) = self.event_time.get(input) else {
            return Ok(Vec::new());
        };
        if !self.drops_late {
            return Ok(Vec::new());
        }
        let times = time_nanos(batch.column(*col))?;
        let mut newest: Option<i64> = None;
        let mut cuts = Vec::new();
        for (i, t) in times.iter().enumerate() {
            let Some(t) = t else { continue };
            if let Some(n) = newest {
                let watermark = n.saturating_sub(*ooo);
                if t < watermark {
                    cuts.push((i, watermark));
                }
            }
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
        Ok(cuts)
    }

    /// Moves input `input`'s watermark forward to `watermark` (nanoseconds); it never
    /// moves back. Returns the output's changes this completes.
    pub fn advance_watermark(&mut self, input: usize, watermark: i64) -> Result<Vec<ChangeBatch>> {
        if input >= self.input_watermarks.len() {
            return Err(EngineError::Input(format!("there is no input {input}")));
        }
        let watermark = Watermark::at(watermark);
        let mut out = Vec::new();
        self.prime(&mut out)?;
        if watermark > self.input_watermarks[input] {
            self.input_watermarks[input] = watermark;
            for s in self.sources[input].clone() {
                self.nodes[s].watermark = watermark;
                if let Some((p, _)) = self.nodes[s].parent {
                    self.raise(p, &mut out)?;
                }
            }
        }
        out.retain(|b| !b.is_empty());
        Ok(out)
    }

    /// The end of input: every watermark moves to the end of time and every window closes.
    pub fn finish(&mut self) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        self.prime(&mut out)?;
        for i in 0..self.input_watermarks.len() {
            out.extend(self.advance_watermark(i, i64::MAX)?);
        }
        Ok(out)
    }

    fn deliver(
        &mut self,
        node: usize,
        port: usize,
        batch: ChangeBatch,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let produced = self.nodes[node].op.process(port, batch)?;
        self.forward(node, produced, out)
    }

    fn forward(
        &mut self,
        node: usize,
        produced: Vec<ChangeBatch>,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        match self.nodes[node].parent {
            None => out.extend(produced),
            Some((p, port)) => {
                for b in produced {
                    self.deliver(p, port, b, out)?;
                }
            }
        }
        Ok(())
    }

    fn raise(&mut self, node: usize, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let wms: Vec<Watermark> = self.nodes[node]
            .children
            .iter()
            .map(|c| self.nodes[*c].watermark)
            .collect();
        if wms == self.nodes[node].port_watermarks {
            return Ok(());
        }
        self.nodes[node].port_watermarks = wms.clone();
        self.nodes[node].watermark = Watermark::min_of(wms.iter().copied());
        let produced = self.nodes[node].op.on_watermark(&wms)?;
        self.forward(node, produced, out)?;
        if let Some((p, _)) = self.nodes[node].parent {
            self.raise(p, out)?;
        }
        Ok(())
    }

    /// The whole engine's state: every operator's state and every watermark.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| Ok((n.op.snapshot()?, n.watermark, n.port_watermarks.clone())))
            .collect::<Result<Vec<_>>>()?;
        postcard::to_stdvec(&Snapshot {
            fingerprint: self.state_fingerprint.clone(),
            primed: self.primed,
            input_watermarks: self.input_watermarks.clone(),
            nodes,
        })
        .map_err(|e| EngineError::Snapshot(e.to_string()))
    }

    /// Replaces the engine's state with a snapshot of an engine built from the same plan.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let snap: Snapshot =
            postcard::from_bytes(bytes).map_err(|e| EngineError::Snapshot(e.to_string()))?;
        if snap.fingerprint != self.state_fingerprint || snap.nodes.len() != self.nodes.len() {
            return Err(EngineError::Snapshot(format!(
                "the snapshot holds state {} and cannot restore state {}",
                short(&snap.fingerprint),
                short(&self.state_fingerprint)
            )));
        }
        for (n, (state, wm, ports)) in self.nodes.iter_mut().zip(snap.nodes) {
            n.op.restore(&state)?;
            n.watermark = wm;
            n.port_watermarks = ports;
        }
        self.input_watermarks = snap.input_watermarks;
        self.primed = snap.primed;
        self.meta_sent = None;
        Ok(())
    }

    /// The state entries changed since the last call (all of them, on the first call):
    /// what a commit writes to the changelog. Applying every entry ever returned, in
    /// order, to a fresh engine with [`Engine::apply_state_entry`] and then calling
    /// [`Engine::finish_restore`] rebuilds this engine's state. The cost is in proportion
    /// to what changed, not to the whole state.
    pub fn take_state_changes(&mut self) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        let mut op_entries = Vec::new();
        for n in &mut self.nodes {
            let Some(slot) = n.slot else { continue };
            n.op.take_state_changes(&mut op_entries)?;
            let prefix = slot.to_be_bytes();
            out.extend(op_entries.drain(..).map(|(k, v)| {
                let mut key = Vec::with_capacity(2 + k.len());
                key.extend_from_slice(&prefix);
                key.extend_from_slice(&k);
                (key, v)
            }));
        }
        let meta = crate::ops::state::encode(&self.meta())?;
        if self.meta_sent.as_ref() != Some(&meta) {
            out.push((META_KEY.to_vec(), Some(meta.clone())));
            self.meta_sent = Some(meta);
        }
        Ok(out)
    }

    fn meta(&self) -> Meta {
        Meta {
            state_fingerprint: self.state_fingerprint.clone(),
            primed: self.primed,
            input_watermarks: self.input_watermarks.clone(),
        }
    }

    /// Sets every operator's watermark from the inputs' watermarks, as advancing them
    /// would have (without asking the operators to act on them: their state already
    /// reflects them).
    fn derive_watermarks(&mut self) {
        for (input, nodes) in self.sources.iter().enumerate() {
            for &s in nodes {
                self.nodes[s].watermark = self.input_watermarks[input];
            }
        }
        // Pre-order: every child comes after its parent, so walking backwards settles the
        // children first.
        for id in (0..self.nodes.len()).rev() {
            if self.nodes[id].children.is_empty() {
                continue;
            }
            let wms: Vec<Watermark> = self.nodes[id]
                .children
                .iter()
                .map(|c| self.nodes[*c].watermark)
                .collect();
            self.nodes[id].watermark = Watermark::min_of(wms.iter().copied());
            self.nodes[id].port_watermarks = wms;
        }
    }

    /// Applies one entry from [`Engine::take_state_changes`] to an engine being
    /// restored; a later entry with the same key replaces an earlier one. Call
    /// [`Engine::finish_restore`] once every entry is applied.
    pub fn apply_state_entry(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if key == META_KEY {
            let Some(value) = value else {
                return Err(EngineError::Snapshot(
                    "the engine's state entry was deleted".into(),
                ));
            };
            let meta: Meta = crate::ops::state::decode(value)?;
            if meta.state_fingerprint != self.state_fingerprint
                || meta.input_watermarks.len() != self.input_watermarks.len()
            {
                return Err(EngineError::Snapshot(format!(
                    "the state holds what a different plan keeps (state fingerprint {}) and \
                     cannot restore this plan's (state fingerprint {})",
                    short(&meta.state_fingerprint),
                    short(&self.state_fingerprint)
                )));
            }
            self.primed = meta.primed;
            self.input_watermarks = meta.input_watermarks;
            self.derive_watermarks();
            self.meta_applied = true;
            return Ok(());
        }
        let node = key
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .and_then(|slot| self.slots.get(slot))
            .and_then(|&i| self.nodes.get_mut(i))
            .ok_or_else(|| {
                EngineError::Snapshot(format!(
                    "a state entry with key {key:02x?} names no operator of state {}",
                    short(&self.state_fingerprint)
                ))
            })?;
        node.op.apply_state_entry(&key[2..], value)?;
        self.entries_applied += 1;
        Ok(())
    }

    /// Every entry is applied: checks the state is whole and rebuilds derived indexes.
    pub fn finish_restore(&mut self) -> Result<()> {
        if self.entries_applied > 0 && !self.meta_applied {
            return Err(EngineError::Snapshot(format!(
                "{} operator state entries but not the engine's own: the state is incomplete",
                self.entries_applied
            )));
        }
        for n in &mut self.nodes {
            n.op.finish_restore()?;
        }
        self.meta_sent = self
            .meta_applied
            .then(|| crate::ops::state::encode(&self.meta()))
            .transpose()?;
        self.meta_applied = false;
        self.entries_applied = 0;
        Ok(())
    }

    /// Records dropped as late so far (cheap: no walk over the state).
    pub fn late_records(&self) -> u64 {
        self.nodes.iter().map(|n| n.op.late_records()).sum()
    }

    /// State size and late records. Measuring the state walks all of it.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            state_bytes: self.nodes.iter().map(|n| n.op.state_size()).sum(),
            late_records: self.nodes.iter().map(|n| n.op.late_records()).sum(),
        }
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}
