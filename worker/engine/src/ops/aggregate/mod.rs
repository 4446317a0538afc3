//! GROUP BY with COUNT, COUNT(DISTINCT), SUM, AVG, MIN and MAX, maintained under
//! retractions, optionally per event-time window (tumble, hop, session).
//!
//! Groups are keyed by Arrow's row format of the group columns. MIN and MAX keep an
//! ordered multiset of the row-format bytes of their argument (which sort like the
//! values), so a retraction of the current minimum finds the next one; over an
//! append-only input they keep only the best value.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int64Array, StructArray,
    TimestampNanosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Fields, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::DFSchema;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use weir_sql::datafusion::logical_expr::ExprSchemable;
use weir_sql::plan::{AggFunc, Aggregate};
use weir_sql::{EmitMode, StreamKind};

use super::state::{
    Dirty, Entry as StateEntry, decode, encode, time_key, time_of_key, unknown_key,
};
use super::{Operator, arrow_schema, batch};
use crate::changes::time_nanos;
use crate::exprs::Eval;
use crate::{ChangeBatch, EngineError, Result, Watermark};

mod accumulator;
mod exact_sum;
mod output;
mod session;
mod window;

use accumulator::*;
use output::*;
use window::*;

#[derive(Default, Serialize, Deserialize)]
struct State {
    plain: HashMap<Vec<u8>, Group>,
    /// Tumbling and hopping windows by start.
    windows: BTreeMap<i64, HashMap<Vec<u8>, Group>>,
    /// Sessions per group key: start -> (end, group).
    sessions: HashMap<Vec<u8>, BTreeMap<i64, (i64, Group)>>,
    watermark: Watermark,
    late: u64,
    started: bool,
}

pub(crate) struct AggregateOp {
    group: Vec<Eval>,
    group_conv: RowConverter,
    specs: Vec<Spec>,
    kinds: Vec<Kind>,
    win: Option<Win>,
    /// Emit changes as they happen (plain groups, or windows in updates mode).
    updates: bool,
    /// The input never retracts.
    append_input: bool,
    /// A global aggregate (no GROUP BY): one row even over no input.
    global: bool,
    lateness: i64,
    schema: SchemaRef,
    state: State,
    dirty: Dirty,
}

/// State entry keys: a tag byte, then what identifies the entry.
const PLAIN: u8 = 0;
/// `[WINDOW][start][group key]`.
const WINDOW: u8 = 1;
/// `[SESSIONS][group key]`: every session of one group key.
const SESSIONS: u8 = 2;
/// The watermark and counters.
const SCALARS: u8 = 3;

fn tagged(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

impl AggregateOp {
    pub fn new(a: &Aggregate, output: &DFSchema) -> Result<Self> {
        let input_schema = &a.input.schema;
        let group = Eval::many(&a.group, input_schema)?;
        let group_types = a
            .group
            .iter()
            .map(|g| g.get_type(input_schema))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let group_conv = RowConverter::new(group_types.into_iter().map(SortField::new).collect())?;
        let n_out_group = a.group.len() + usize::from(a.window.is_some());
        let schema = arrow_schema(output);
        let append_input = a.input.props.kind == StreamKind::AppendOnly;
        let mut specs = Vec::new();
        for (i, call) in a.aggs.iter().enumerate() {
            let out_type = schema.field(n_out_group + i).data_type().clone();
            let arg_type = match &call.arg {
                Some(e) => Some(e.get_type(input_schema)?),
                None => None,
            };
            let kind = match (call.func, &arg_type, call.distinct) {
                (AggFunc::Count, None, _) => Kind::CountStar,
                (AggFunc::Count, Some(_), true) => Kind::CountDistinct,
                (AggFunc::Count, Some(_), false) => Kind::Count,
                (AggFunc::Sum | AggFunc::Avg, Some(t), _) => {
                    let avg = call.func == AggFunc::Avg;
                    match t {
                        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                            if avg {
                                Kind::AvgFloat
                            } else {
                                Kind::SumFloat
                            }
                        }
                        DataType::Decimal128(_, s) => {
                            if avg {
                                let out_scale = match &out_type {
                                    DataType::Decimal128(_, os) => *os,
                                    _ => *s,
                                };
                                Kind::AvgDec {
                                    scale: *s,
                                    out_scale,
                                }
                            } else {
                                Kind::SumDec { scale: *s }
                            }
                        }
                        t if t.is_integer() || t.is_null() => {
                            if avg {
                                Kind::AvgInt
                            } else {
                                Kind::SumInt
                            }
                        }
                        other => {
                            return Err(EngineError::Input(format!(
                                "cannot {} values of type {other}",
                                if avg { "average" } else { "sum" }
                            )));
                        }
                    }
                }
                (AggFunc::Min, Some(_), _) => Kind::Min,
                (AggFunc::Max, Some(_), _) => Kind::Max,
                (f, None, _) => {
                    return Err(EngineError::Input(format!("{f:?} needs an argument")));
                }
            };
            let conv = match (kind, &arg_type) {
                (Kind::Min | Kind::Max | Kind::CountDistinct, Some(t)) => {
                    Some(RowConverter::new(vec![SortField::new(t.clone())])?)
                }
                _ => None,
            };
            let arg = match &call.arg {
                Some(e) => Some(Eval::new(e, input_schema)?),
                None => None,
            };
            specs.push(Spec {
                kind,
                arg_type: arg_type.clone(),
                arg,
                conv,
                out_type,
            });
        }
        let win = match &a.window {
            None => None,
            Some(w) => {
                let DataType::Struct(fields) = schema.field(w.position).data_type().clone() else {
                    return Err(EngineError::Input(
                        "a window column must be a struct".into(),
                    ));
                };
                Some(Win {
                    kind: match w.kind {
                        weir_sql::WindowFn::Tumble => WinKind::Tumble,
                        weir_sql::WindowFn::Hop => WinKind::Hop,
                        weir_sql::WindowFn::Session => WinKind::Session,
                    },
                    time: Eval::new(&w.time, input_schema)?,
                    size: w.size,
                    slide: w.slide,
                    position: w.position,
                    fields,
                })
            }
        };
        let updates = win.is_none() || a.emit == EmitMode::Updates;
        let global = a.group.is_empty() && win.is_none();
        let kinds = specs.iter().map(|s| s.kind).collect();
        Ok(Self {
            group,
            group_conv,
            specs,
            kinds,
            win,
            updates,
            append_input,
            global,
            lateness: a.lateness,
            schema,
            state: State {
                watermark: Watermark::NONE,
                ..State::default()
            },
            dirty: Dirty::default(),
        })
    }

    fn new_group(&self) -> Group {
        new_group_for(&self.specs, self.append_input)
    }

    /// The output values of a group, or `None` when it has no rows.
    fn values(&self, g: Option<&Group>) -> Option<Vec<Val>> {
        group_values(&self.kinds, self.global, g)
    }

    fn closed(&self, end: i64) -> bool {
        self.state
            .watermark
            .nanos()
            .is_some_and(|w| end.saturating_add(self.lateness) <= w)
    }
}

/// A window group touched in a batch: (window start, key) and its values before.
type Touched = HashMap<(i64, Vec<u8>), (i64, Option<Vec<Val>>)>;

impl Operator for AggregateOp {
    fn process(&mut self, _port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let data = &input.data;
        let n = data.num_rows();
        let mut out = Vec::new();
        if !self.state.started && self.global {
            self.state.started = true;
            let g = self.new_group();
            self.state.plain.insert(Vec::new(), g);
            self.dirty.mark(vec![PLAIN]);
            if let Some(v) = self.values(self.state.plain.get(&Vec::new())) {
                out.push(OutRow {
                    key: Vec::new(),
                    window: (0, 0),
                    values: v,
                    weight: 1,
                });
            }
        }
        self.state.started = true;
        if n == 0 {
            return self.build(out);
        }
        let group_cols = self
            .group
            .iter()
            .map(|g| g.eval(data))
            .collect::<Result<Vec<_>>>()?;
        let keys = if self.group.is_empty() {
            None
        } else {
            Some(self.group_conv.convert_columns(&group_cols)?)
        };
        let prepared = self
            .specs
            .iter()
            .map(|s| prepare(s, data))
            .collect::<Result<Vec<_>>>()?;
        let kinds: Vec<Kind> = self.specs.iter().map(|s| s.kind).collect();
        let key_of = |i: usize| -> &[u8] { keys.as_ref().map_or(&[], |k| k.row(i).data()) };
        let win = self
            .win
            .as_ref()
            .map(|w| (w.kind, w.time.clone(), w.size, w.slide));
        // (row, window start) pairs to apply; plain groups use start 0.
        let mut pairs: Vec<(u32, i64)> = Vec::with_capacity(n);
        let mut touched: Touched = HashMap::new();
        match win {
            None => {
                pairs.extend(
                    (0..n)
                        .filter(|i| input.weight(*i) != 0)
                        .map(|i| (i as u32, 0)),
                );
            }
            Some((kind, time, size, slide)) => {
                let times = time_nanos(&time.eval(data)?)?;
                let mut starts = Vec::new();
                for i in 0..n {
                    let w = input.weight(i);
                    if w == 0 {
                        continue;
                    }
                    if times.is_null(i) {
                        self.state.late += 1;
                        continue;
                    }
                    let t = times.value(i);
                    if kind == WinKind::Session {
                        assign(kind, size, slide, t, &mut starts)?;
                        let end = t + size;
                        if self.closed(end) {
                            self.state.late += 1;
                            continue;
                        }
                        let key = key_of(i);
                        let row = session::SessionRow { key, t, end, i, w };
                        self.session_add(row, &kinds, &prepared, &mut touched)?;
                        continue;
                    }
                    assign(kind, size, slide, t, &mut starts)?;
                    let before = pairs.len();
                    for &s in &starts {
                        if !self.closed(s.saturating_add(size)) {
                            pairs.push((i as u32, s));
                        }
                    }
                    if pairs.len() == before {
                        self.state.late += 1;
                    }
                }
            }
        }

        // Group the pairs by (window start, key) so each group's state is looked up once
        // per batch, and its rows are applied in input order.
        let mut local: HashMap<(i64, &[u8]), u32> = HashMap::new();
        let mut heads: Vec<(i64, u32)> = Vec::new();
        let mut ids: Vec<u32> = Vec::with_capacity(pairs.len());
        for &(row, s) in &pairs {
            let id = *local.entry((s, key_of(row as usize))).or_insert_with(|| {
                heads.push((s, row));
                (heads.len() - 1) as u32
            });
            ids.push(id);
        }
        drop(local);
        let mut offsets = vec![0u32; heads.len() + 1];
        for id in &ids {
            offsets[*id as usize + 1] += 1;
        }
        for g in 0..heads.len() {
            offsets[g + 1] += offsets[g];
        }
        let mut order = vec![0u32; ids.len()];
        let mut fill = offsets.clone();
        for (p, id) in ids.iter().enumerate() {
            order[fill[*id as usize] as usize] = pairs[p].0;
            fill[*id as usize] += 1;
        }

        let size = self.win.as_ref().map_or(0, |w| w.size);
        let windowed = self.win.is_some();
        let (updates, global, append_input) = (self.updates, self.global, self.append_input);
        for (g, &(s, head)) in heads.iter().enumerate() {
            let key = key_of(head as usize);
            let groups = if windowed {
                self.dirty.mark(tagged(WINDOW, &[&time_key(s), key]));
                self.state.windows.entry(s).or_default()
            } else {
                self.dirty.mark(tagged(PLAIN, &[key]));
                &mut self.state.plain
            };
            let old = if updates {
                group_values(&kinds, global, groups.get(key))
            } else {
                None
            };
            let group = groups
                .entry_ref(key)
                .or_insert_with(|| new_group_for(&self.specs, append_input));
            for &i in &order[offsets[g] as usize..offsets[g + 1] as usize] {
                let i = i as usize;
                let w = input.weight(i);
                group.rows += w;
                for ((acc, p), k) in group.accs.iter_mut().zip(&prepared).zip(&kinds) {
                    update(acc, *k, p, i, w)?;
                }
            }
            let new = if updates {
                group_values(&kinds, global, Some(group))
            } else {
                None
            };
            if group.is_empty() && !global {
                groups.remove(key);
            }
            if updates {
                let window = if windowed {
                    (s, s.saturating_add(size))
                } else {
                    (0, 0)
                };
                push_change(&mut out, key, window, old, new);
            }
        }

        // Sessions touched in this batch: retract what they were, insert what they are.
        for ((s, key), (end, old)) in touched {
            if !updates {
                break;
            }
            let new = self
                .state
                .sessions
                .get(&key)
                .and_then(|m| m.get(&s))
                .and_then(|(e, g)| Some((*e, group_values(&kinds, false, Some(g))?)));
            if let Some(v) = old {
                out.push(OutRow {
                    key: key.clone(),
                    window: (s, end),
                    values: v,
                    weight: -1,
                });
            }
            if let Some((e, v)) = new {
                out.push(OutRow {
                    key,
                    window: (s, e),
                    values: v,
                    weight: 1,
                });
            }
        }
        if updates && windowed {
            cancel_pairs(&mut out);
        }
        self.build(out)
    }

    fn on_watermark(&mut self, watermarks: &[Watermark]) -> Result<Vec<ChangeBatch>> {
        let wm = Watermark::min_of(watermarks.iter().copied());
        if wm <= self.state.watermark {
            return Ok(Vec::new());
        }
        self.state.watermark = wm;
        let (Some(win), Some(wm)) = (&self.win, wm.nanos()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match win.kind {
            WinKind::Tumble | WinKind::Hop => {
                while let Some((&s, _)) = self.state.windows.first_key_value() {
                    let end = s.saturating_add(win.size);
                    if !self.closed(end) {
                        break;
                    }
                    let groups = self.state.windows.remove(&s).expect("first key exists");
                    for key in groups.keys() {
                        self.dirty.mark(tagged(WINDOW, &[&time_key(s), key]));
                    }
                    if !self.updates {
                        for (key, g) in groups {
                            if let Some(v) = self.values(Some(&g)) {
                                out.push(OutRow {
                                    key,
                                    window: (s, end),
                                    values: v,
                                    weight: 1,
                                });
                            }
                        }
                    }
                }
            }
            WinKind::Session => {
                let mut emptied = Vec::new();
                let lateness = self.lateness;
                let updates = self.updates;
                let mut closing = Vec::new();
                let dirty = &mut self.dirty;
                for (key, sessions) in self.state.sessions.iter_mut() {
                    let before = sessions.len();
                    sessions.retain(|s, (e, g)| {
                        if e.saturating_add(lateness) <= wm {
                            if !updates {
                                closing.push((key.clone(), (*s, *e), g.clone()));
                            }
                            false
                        } else {
                            true
                        }
                    });
                    if sessions.len() != before {
                        dirty.mark(tagged(SESSIONS, &[key]));
                    }
                    if sessions.is_empty() {
                        emptied.push(key.clone());
                    }
                }
                for k in emptied {
                    self.state.sessions.remove(&k);
                }
                for (key, window, g) in closing {
                    if let Some(v) = self.values(Some(&g)) {
                        out.push(OutRow {
                            key,
                            window,
                            values: v,
                            weight: 1,
                        });
                    }
                }
            }
        }
        self.build(out)
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
        let state = &self.state;
        self.dirty.take(
            |k| match k.split_first() {
                Some((&PLAIN, key)) => state.plain.get(key).map(encode).transpose(),
                Some((&WINDOW, rest)) => {
                    let start = time_of_key(rest)?;
                    state
                        .windows
                        .get(&start)
                        .and_then(|m| m.get(&rest[8..]))
                        .map(encode)
                        .transpose()
                }
                Some((&SESSIONS, key)) => state
                    .sessions
                    .get(key)
                    .filter(|m| !m.is_empty())
                    .map(encode)
                    .transpose(),
                _ => Err(unknown_key("aggregate", k)),
            },
            out,
        )?;
        let scalars = encode(&(state.watermark, state.late, state.started))?;
        self.dirty.take_scalars(&[SCALARS], scalars, out);
        Ok(())
    }

    fn apply_state_entry(&mut self, k: &[u8], value: Option<&[u8]>) -> Result<()> {
        let state = &mut self.state;
        match (k.split_first(), value) {
            (Some((&PLAIN, key)), Some(v)) => {
                state.plain.insert(key.to_vec(), decode(v)?);
            }
            (Some((&PLAIN, key)), None) => {
                state.plain.remove(key);
            }
            (Some((&WINDOW, rest)), v) => {
                let start = time_of_key(rest)?;
                let key = &rest[8..];
                match v {
                    Some(v) => {
                        state
                            .windows
                            .entry(start)
                            .or_default()
                            .insert(key.to_vec(), decode(v)?);
                    }
                    None => {
                        if let Some(m) = state.windows.get_mut(&start) {
                            m.remove(key);
                            if m.is_empty() {
                                state.windows.remove(&start);
                            }
                        }
                    }
                }
            }
            (Some((&SESSIONS, key)), Some(v)) => {
                state.sessions.insert(key.to_vec(), decode(v)?);
            }
            (Some((&SESSIONS, key)), None) => {
                state.sessions.remove(key);
            }
            (Some((&SCALARS, [])), Some(v)) => {
                (state.watermark, state.late, state.started) = decode(v)?;
            }
            _ => return Err(unknown_key("aggregate", k)),
        }
        Ok(())
    }

    fn finish_restore(&mut self) -> Result<()> {
        let scalars = encode(&(self.state.watermark, self.state.late, self.state.started))?;
        self.dirty.clear(Some(scalars));
        Ok(())
    }

    fn state_size(&self) -> usize {
        let group = |k: &Vec<u8>, g: &Group| {
            k.len()
                + 16
                + g.accs
                    .iter()
                    .map(|a| match a {
                        Acc::Ordered(m) => m.keys().map(|k| k.len() + 40).sum::<usize>() + 24,
                        Acc::Distinct(m) => m.keys().map(|k| k.len() + 32).sum::<usize>() + 24,
                        Acc::Best(b) => b.as_ref().map_or(0, Vec::len) + 24,
                        _ => 24,
                    })
                    .sum::<usize>()
        };
        let s = &self.state;
        s.plain.iter().map(|(k, g)| group(k, g)).sum::<usize>()
            + s.windows
                .values()
                .flat_map(|m| m.iter().map(|(k, g)| group(k, g) + 8))
                .sum::<usize>()
            + s.sessions
                .iter()
                .flat_map(|(k, m)| m.values().map(move |(_, g)| group(k, g) + 16))
                .sum::<usize>()
    }

    fn late_records(&self) -> u64 {
        self.state.late
    }
}
