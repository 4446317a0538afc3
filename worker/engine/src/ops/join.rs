//! Equi-joins, inner and left outer, in three modes:
//!
//! - regular: both sides kept in full (table to table); every change on one side joins
//!   the other side's current rows: Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR;
//! - lookup: an event stream joined with a table's current row per key; events are not
//!   kept, and table changes do not revisit past events;
//! - interval: two event streams within a time bound; rows are dropped once the other
//!   side's watermark makes further matches impossible, and a left outer join emits an
//!   unmatched left row at that point.

use arrow::array::{ArrayRef, UInt32Array, new_null_array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use weir_sql::plan::{Join, JoinMode};

use super::state::{Dirty, Entry as StateEntry, decode, encode, unknown_key};
use super::{Operator, arrow_schema, batch};
use crate::changes::time_nanos;
use crate::exprs::Eval;
use crate::{ChangeBatch, Result, Watermark};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    row: Vec<u8>,
    weight: i64,
    time: i64,
    /// Σ weights of matching rows on the other side (left side of an outer join).
    matches: i64,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    sides: [HashMap<Vec<u8>, Vec<Entry>>; 2],
    /// Interval joins: per side, the keys holding a row at each event time, so a
    /// watermark visits only the keys whose oldest rows it may expire.
    by_time: [std::collections::BTreeMap<i64, Vec<Vec<u8>>>; 2],
    watermarks: [Watermark; 2],
    late: u64,
}

struct Side {
    keys: Vec<Eval>,
    conv: RowConverter,
    schema: SchemaRef,
    time: Option<usize>,
    lag: i64,
}

pub(crate) struct JoinOp {
    sides: [Side; 2],
    key_types: Vec<DataType>,
    key_conv: RowConverter,
    filter: Option<Eval>,
    left_outer: bool,
    mode: JoinMode,
    schema: SchemaRef,
    state: State,
    dirty: Dirty,
}

/// The state entry key of the watermarks and counters; a side's entries are keyed
/// `[port][join key]`.
const SCALARS: u8 = 9;

fn side(
    node: &weir_sql::plan::Node,
    keys: Vec<&datafusion::logical_expr::Expr>,
    time: Option<usize>,
    lag: i64,
) -> Result<Side> {
    let schema = arrow_schema(&node.schema);
    let conv = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    Ok(Side {
        keys: keys
            .into_iter()
            .map(|k| Eval::new(k, &node.schema))
            .collect::<Result<_>>()?,
        conv,
        schema,
        time,
        lag,
    })
}

impl JoinOp {
    pub fn new(j: &Join, output: &DFSchema) -> Result<Self> {
        let (lt, rt, ll, rl) = match j.mode {
            JoinMode::Interval {
                left_time,
                right_time,
                left_lag,
                right_lag,
                ..
            } => (Some(left_time), Some(right_time), left_lag, right_lag),
            _ => (None, None, 0, 0),
        };
        let left = side(&j.left, j.on.iter().map(|(l, _)| l).collect(), lt, ll)?;
        let right = side(&j.right, j.on.iter().map(|(_, r)| r).collect(), rt, rl)?;
        let key_types =
            j.on.iter()
                .map(|(l, _)| l.get_type(&j.left.schema))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
        let key_conv = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let filter = match &j.filter {
            Some(f) => Some(Eval::new(f, output)?),
            None => None,
        };
        Ok(Self {
            sides: [left, right],
            key_types,
            key_conv,
            filter,
            left_outer: j.left_outer,
            mode: j.mode,
            schema: arrow_schema(output),
            state: State {
                watermarks: [Watermark::NONE; 2],
                ..State::default()
            },
            dirty: Dirty::default(),
        })
    }

    /// The join keys of a batch, and which rows have a NULL key (those never match).
    fn keys(&self, port: usize, data: &RecordBatch) -> Result<(Keys, Vec<bool>)> {
        let mut cols = Vec::new();
        let mut null = vec![false; data.num_rows()];
        for (e, t) in self.sides[port].keys.iter().zip(&self.key_types) {
            let a = e.eval(data)?;
            let a = if a.data_type() == t { a } else { cast(&a, t)? };
            if let Some(n) = a.logical_nulls() {
                for (i, v) in null.iter_mut().enumerate() {
                    *v |= n.is_null(i);
                }
            }
            cols.push(a);
        }
        if cols.is_empty() {
            // A cross join: every row has the same (empty) key.
            return Ok((Keys(None), null));
        }
        Ok((Keys(Some(self.key_conv.convert_columns(&cols)?)), null))
    }

    /// Builds joined rows from left and right parts and applies the residual filter.
    /// Returns the joined batch and, per row, whether it passed.
    fn joined(
        &self,
        left: Vec<ArrayRef>,
        right: Vec<ArrayRef>,
        n: usize,
    ) -> Result<(RecordBatch, Vec<bool>)> {
        let mut cols = left;
        cols.extend(right);
        let data = batch(&self.schema, cols, n)?;
        let pass = match &self.filter {
            None => vec![true; n],
            Some(f) => {
                let m = f.mask(&data)?;
                (0..n).map(|i| m.value(i)).collect()
            }
        };
        Ok((data, pass))
    }

    /// Left rows padded with NULLs for the right side.
    fn padded(&self, left: Vec<ArrayRef>, weights: Vec<i64>) -> Result<Option<ChangeBatch>> {
        let n = weights.len();
        if n == 0 {
            return Ok(None);
        }
        let right = self.sides[1]
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        let mut cols = left;
        cols.extend::<Vec<ArrayRef>>(right);
        Ok(Some(ChangeBatch::new(
            batch(&self.schema, cols, n)?,
            weights,
        )))
    }

    fn is_late(&self, port: usize, t: i64) -> bool {
        self.state.watermarks[port].passed(t, self.sides[port].lag)
    }

    fn interval(&self) -> Option<(i64, i64)> {
        match self.mode {
            JoinMode::Interval { lo, hi, .. } => Some((lo, hi)),
            _ => None,
        }
    }
}

/// A batch's join keys in Arrow's row format (none for a cross join: one empty key).
struct Keys(Option<arrow::row::Rows>);

impl Keys {
    fn get(&self, i: usize) -> &[u8] {
        self.0.as_ref().map_or(&[], |r| r.row(i).data())
    }
}

fn filtered(data: &RecordBatch, pass: &[bool], weights: Vec<i64>) -> Result<Option<ChangeBatch>> {
    let idx: Vec<u32> = pass
        .iter()
        .enumerate()
        .filter(|(_, p)| **p)
        .map(|(i, _)| i as u32)
        .collect();
    if idx.is_empty() {
        return Ok(None);
    }
    let w = idx.iter().map(|i| weights[*i as usize]).collect();
    let data = arrow::compute::take_record_batch(data, &UInt32Array::from(idx))?;
    Ok(Some(ChangeBatch::new(data, w)))
}

fn take_all(data: &RecordBatch, idx: &UInt32Array) -> Result<Vec<ArrayRef>> {
    data.columns()
        .iter()
        .map(|c| take(c, idx, None).map_err(Into::into))
        .collect()
}

/// Drops side `port`'s rows whose time `expired` says can match nothing more, visiting
/// only the keys that hold such rows; `dropped` sees each row dropped.
fn expire(
    state: &mut State,
    dirty: &mut Dirty,
    port: usize,
    expired: impl Fn(i64) -> bool,
    mut dropped: impl FnMut(&Entry),
) {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    while let Some(entry) = state.by_time[port].first_entry() {
        if !expired(*entry.key()) {
            break;
        }
        keys.extend(entry.remove());
    }
    let keys: hashbrown::HashSet<Vec<u8>> = keys.into_iter().collect();
    for key in keys {
        let Some(entries) = state.sides[port].get_mut(&key) else {
            continue;
        };
        dirty.mark(side_key(port, &key));
        entries.retain(|e| {
            let gone = expired(e.time);
            if gone {
                dropped(e);
            }
            !gone
        });
        if entries.is_empty() {
            state.sides[port].remove(&key);
        }
    }
}

/// The state entry key of one side's entries for a join key.
fn side_key(port: usize, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(port as u8);
    k.extend_from_slice(key);
    k
}

/// Adds a change to one key's entries. An insert is appended (identical rows may sit in
/// separate entries); a retraction cancels an entry of the same row and time, so
/// inserts stay constant time however many rows share a key.
fn add_entry(entries: &mut Vec<Entry>, e: Entry) {
    if e.weight < 0
        && let Some(i) = entries
            .iter()
            .position(|x| x.weight > 0 && x.row == e.row && x.time == e.time)
    {
        let x = &mut entries[i];
        x.weight += e.weight;
        if x.weight == 0 {
            entries.swap_remove(i);
        }
        return;
    }
    entries.push(e);
}

impl Operator for JoinOp {
    fn process(&mut self, port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let data = &input.data;
        let n = data.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let (keys, null_key) = self.keys(port, data)?;
        let rows = self.sides[port].conv.convert_columns(data.columns())?;
        let times = match self.sides[port].time {
            Some(c) => Some(time_nanos(data.column(c))?),
            None => None,
        };
        let time_of = |i: usize| times.as_ref().map_or(0, |t| t.value(i));
        let lookup = self.mode == JoinMode::Lookup;
        let interval = self.interval().is_some();
        let mut out = Vec::new();
        let other = 1 - port;

        // Pairs: (index into this batch, the other side's key, index into its entries).
        let mut this_idx: Vec<u32> = Vec::new();
        let mut other_ref: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut live = vec![true; n];
        for i in 0..n {
            let w = input.weight(i);
            if w == 0 || (interval && self.is_late(port, time_of(i))) {
                if w != 0 {
                    self.state.late += 1;
                }
                live[i] = false;
                continue;
            }
            if null_key[i] {
                continue;
            }
            // A lookup join's table side only updates the table.
            if lookup && port == 1 {
                continue;
            }
            let key = keys.get(i);
            if let Some(entries) = self.state.sides[other].get(key) {
                for (k, _) in entries.iter().enumerate() {
                    this_idx.push(i as u32);
                    other_ref.push((key.to_vec(), k));
                }
            }
        }

        // Per row of this batch (left port) or per other-side entry (right port): Σ w of
        // passing matches, for outer-join bookkeeping.
        let mut left_matches = vec![0i64; if port == 0 { n } else { 0 }];
        let mut entry_deltas: HashMap<(Vec<u8>, usize), i64> = HashMap::new();
        if !this_idx.is_empty() {
            let idx = UInt32Array::from(this_idx.clone());
            let here = take_all(data, &idx)?;
            let other_side = &self.sides[other];
            let parser = other_side.conv.parser();
            let other_rows: Vec<_> = other_ref
                .iter()
                .map(|(k, e)| parser.parse(&self.state.sides[other][k][*e].row))
                .collect();
            let there = other_side.conv.convert_rows(other_rows)?;
            let (l, r) = if port == 0 {
                (here, there)
            } else {
                (there, here)
            };
            let (joined, pass) = self.joined(l, r, this_idx.len())?;
            let mut weights = Vec::with_capacity(this_idx.len());
            for (p, (i, (k, e))) in this_idx.iter().zip(&other_ref).enumerate() {
                let entry = &self.state.sides[other][k][*e];
                let w = input.weight(*i as usize) * entry.weight;
                weights.push(w);
                if pass[p] {
                    if port == 0 {
                        left_matches[*i as usize] += entry.weight;
                    } else {
                        *entry_deltas.entry((k.clone(), *e)).or_insert(0) +=
                            input.weight(*i as usize);
                    }
                }
            }
            if let Some(b) = filtered(&joined, &pass, weights)? {
                out.push(b);
            }
        }

        if self.left_outer && port == 0 {
            // Unmatched left rows are padded now, except in an interval join, which pads
            // them when they expire unmatched.
            let pad: Vec<u32> = (0..n)
                .filter(|i| live[*i] && left_matches[*i] == 0 && (!interval || null_key[*i]))
                .map(|i| i as u32)
                .collect();
            let w = pad.iter().map(|i| input.weight(*i as usize)).collect();
            if let Some(b) = self.padded(take_all(data, &UInt32Array::from(pad))?, w)? {
                out.push(b);
            }
        }
        if self.left_outer && port == 1 && !interval {
            let mut pad_rows = Vec::new();
            let mut pad_w = Vec::new();
            for ((k, e), d) in &entry_deltas {
                self.dirty.mark(side_key(0, k));
                let entry = &mut self.state.sides[0].get_mut(k).expect("matched")[*e];
                let before = entry.matches;
                entry.matches += d;
                if before == 0 && entry.matches != 0 {
                    pad_rows.push(entry.row.clone());
                    pad_w.push(-entry.weight);
                } else if before != 0 && entry.matches == 0 {
                    pad_rows.push(entry.row.clone());
                    pad_w.push(entry.weight);
                }
            }
            if !pad_rows.is_empty() {
                let parser = self.sides[0].conv.parser();
                let left = self.sides[0]
                    .conv
                    .convert_rows(pad_rows.iter().map(|r| parser.parse(r)))?;
                if let Some(b) = self.padded(left, pad_w)? {
                    out.push(b);
                }
            }
        } else if port == 1 {
            for ((k, e), d) in &entry_deltas {
                self.dirty.mark(side_key(0, k));
                self.state.sides[0].get_mut(k).expect("matched")[*e].matches += d;
            }
        }

        // Keep this side's rows (a lookup join keeps only the table side).
        if !(lookup && port == 0) {
            for i in 0..n {
                if !live[i] || null_key[i] {
                    continue;
                }
                let entry = Entry {
                    row: rows.row(i).as_ref().to_vec(),
                    weight: input.weight(i),
                    time: time_of(i),
                    matches: if port == 0 { left_matches[i] } else { 0 },
                };
                if interval && entry.weight > 0 {
                    self.state.by_time[port]
                        .entry(entry.time)
                        .or_default()
                        .push(keys.get(i).to_vec());
                }
                self.dirty.mark(side_key(port, keys.get(i)));
                let entries = self.state.sides[port].entry_ref(keys.get(i)).or_default();
                add_entry(entries, entry);
                if entries.is_empty() {
                    self.state.sides[port].remove(keys.get(i));
                }
            }
        }
        Ok(out)
    }

    fn on_watermark(&mut self, watermarks: &[Watermark]) -> Result<Vec<ChangeBatch>> {
        self.state.watermarks = [watermarks[0], watermarks[1]];
        let Some((lo, hi)) = self.interval() else {
            return Ok(Vec::new());
        };
        let [wl, wr] = self.state.watermarks;
        let mut out = Vec::new();
        // A left row at l can still match right rows at r >= wr - lag_r; it is done once
        // l + hi < wr - lag_r.
        if let Some(wr) = wr.nanos() {
            let bound = wr.saturating_sub(self.sides[1].lag);
            let expired = |t: i64| t.saturating_add(hi) < bound;
            let mut pad_rows = Vec::new();
            let mut pad_w = Vec::new();
            let outer = self.left_outer;
            expire(&mut self.state, &mut self.dirty, 0, expired, |e| {
                if outer && e.matches == 0 {
                    pad_rows.push(e.row.clone());
                    pad_w.push(e.weight);
                }
            });
            if !pad_rows.is_empty() {
                let parser = self.sides[0].conv.parser();
                let left = self.sides[0]
                    .conv
                    .convert_rows(pad_rows.iter().map(|r| parser.parse(r)))?;
                if let Some(b) = self.padded(left, pad_w)? {
                    out.push(b);
                }
            }
        }
        // A right row at r can still match left rows at l >= wl - lag_l; it is done once
        // r - lo < wl - lag_l.
        if let Some(wl) = wl.nanos() {
            let bound = wl.saturating_sub(self.sides[0].lag);
            expire(
                &mut self.state,
                &mut self.dirty,
                1,
                |t| t.saturating_sub(lo) < bound,
                |_| {},
            );
        }
        Ok(out)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        encode(&self.state)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        self.state = decode(bytes)?;
        self.dirty.clear(None);
        Ok(())
    }

    fn take_state_changes(&mut self, out: &mut Vec<StateEntry>) -> Result<()> {
        let sides = &self.state.sides;
        self.dirty.take(
            |k| match k.split_first() {
                Some((&p, key)) if p < 2 => sides[p as usize]
                    .get(key)
                    .filter(|e| !e.is_empty())
                    .map(encode)
                    .transpose(),
                _ => Err(unknown_key("join", k)),
            },
            out,
        )?;
        let scalars = encode(&(self.state.watermarks, self.state.late))?;
        self.dirty.take_scalars(&[SCALARS], scalars, out);
        Ok(())
    }

    fn apply_state_entry(&mut self, k: &[u8], value: Option<&[u8]>) -> Result<()> {
        match (k.split_first(), value) {
            (Some((&p, key)), Some(v)) if p < 2 => {
                self.state.sides[p as usize].insert(key.to_vec(), decode(v)?);
            }
            (Some((&p, key)), None) if p < 2 => {
                self.state.sides[p as usize].remove(key);
            }
            (Some((&SCALARS, [])), Some(v)) => {
                (self.state.watermarks, self.state.late) = decode(v)?;
            }
            _ => return Err(unknown_key("join", k)),
        }
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<()> {
        // The time index is derived: every kept insert, by event time.
        if self.interval().is_some() {
            for port in 0..2 {
                let mut by_time = std::collections::BTreeMap::<i64, Vec<Vec<u8>>>::new();
                for (key, entries) in &self.state.sides[port] {
                    for e in entries.iter().filter(|e| e.weight > 0) {
                        by_time.entry(e.time).or_default().push(key.clone());
                    }
                }
                self.state.by_time[port] = by_time;
            }
        }
        let scalars = encode(&(self.state.watermarks, self.state.late))?;
        self.dirty.clear(Some(scalars));
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.state
            .sides
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| k.len() + v.iter().map(|e| e.row.len() + 32).sum::<usize>() + 24)
            .sum()
    }

    fn late_records(&self) -> u64 {
        self.state.late
    }
}
