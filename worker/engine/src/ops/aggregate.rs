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
use crate::{ChangeBatch, EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    CountStar,
    Count,
    CountDistinct,
    SumInt,
    SumFloat,
    SumDec { scale: i8 },
    AvgInt,
    AvgFloat,
    AvgDec { scale: i8, out_scale: i8 },
    Min,
    Max,
}

struct Spec {
    kind: Kind,
    arg_type: Option<DataType>,
    arg: Option<Eval>,
    /// Row converter for MIN, MAX and COUNT(DISTINCT) arguments.
    conv: Option<RowConverter>,
    out_type: DataType,
}

/// One aggregate's running state.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Acc {
    Count(i64),
    SumI { sum: i128, n: i64 },
    SumF { sum: f64, n: i64 },
    Ordered(BTreeMap<Vec<u8>, i64>),
    Best(Option<Vec<u8>>),
    Distinct(HashMap<Vec<u8>, i64>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Group {
    rows: i64,
    accs: Vec<Acc>,
}

impl Group {
    /// Whether every change to the group has been cancelled out, so dropping it loses
    /// nothing (a count of zero alone is not enough: a retraction may precede its insert).
    fn is_empty(&self) -> bool {
        self.rows == 0
            && self.accs.iter().all(|a| match a {
                Acc::Count(n) => *n == 0,
                Acc::SumI { n, .. } | Acc::SumF { n, .. } => *n == 0,
                Acc::Ordered(m) => m.is_empty(),
                Acc::Distinct(m) => m.is_empty(),
                Acc::Best(_) => true,
            })
    }
}

/// An aggregate's output value, cheap to keep for retracting later.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    I(Option<i64>),
    F(Option<f64>),
    D(Option<i128>),
    B(Option<Vec<u8>>),
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    plain: HashMap<Vec<u8>, Group>,
    /// Tumbling and hopping windows by start.
    windows: BTreeMap<i64, HashMap<Vec<u8>, Group>>,
    /// Sessions per group key: start -> (end, group).
    sessions: HashMap<Vec<u8>, BTreeMap<i64, (i64, Group)>>,
    watermark: i64,
    late: u64,
    started: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum WinKind {
    Tumble,
    Hop,
    Session,
}

struct Win {
    kind: WinKind,
    time: Eval,
    size: i64,
    slide: i64,
    position: usize,
    fields: Fields,
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
                watermark: i64::MIN,
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

    /// Builds output rows: (group key, window, values, weight).
    fn build(&self, rows: Vec<OutRow>) -> Result<Vec<ChangeBatch>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let parser = self.group_conv.parser();
        let mut columns: Vec<ArrayRef> = if self.group.is_empty() {
            Vec::new()
        } else {
            self.group_conv
                .convert_rows(rows.iter().map(|r| parser.parse(&r.key)))?
        };
        if let Some(w) = &self.win {
            let starts: TimestampNanosecondArray = rows.iter().map(|r| Some(r.window.0)).collect();
            let ends: TimestampNanosecondArray = rows.iter().map(|r| Some(r.window.1)).collect();
            let t = w.fields[0].data_type();
            let s = StructArray::try_new(
                w.fields.clone(),
                vec![cast(&starts, t)?, cast(&ends, t)?],
                None,
            )?;
            columns.insert(w.position, Arc::new(s));
        }
        for (i, spec) in self.specs.iter().enumerate() {
            let col: ArrayRef = match spec.kind {
                Kind::Min | Kind::Max | Kind::CountDistinct if spec.conv.is_some() => {
                    let conv = spec.conv.as_ref().expect("checked");
                    let p = conv.parser();
                    let mut nulls = Vec::with_capacity(n);
                    let t = spec.arg_type.as_ref().unwrap_or(&DataType::Null);
                    let null_row = conv.convert_columns(&[arrow::array::new_null_array(t, 1)])?;
                    let parsed: Vec<_> = rows
                        .iter()
                        .map(|r| match &r.values[i] {
                            Val::B(Some(b)) => {
                                nulls.push(true);
                                p.parse(b)
                            }
                            _ => {
                                nulls.push(false);
                                null_row.row(0)
                            }
                        })
                        .collect();
                    if spec.kind == Kind::CountDistinct {
                        Arc::new(Int64Array::from(
                            rows.iter()
                                .map(|r| match &r.values[i] {
                                    Val::I(v) => *v,
                                    _ => None,
                                })
                                .collect::<Vec<_>>(),
                        ))
                    } else {
                        conv.convert_rows(parsed)?.remove(0)
                    }
                }
                _ => match &rows[0].values[i] {
                    Val::I(_) => Arc::new(Int64Array::from(
                        rows.iter()
                            .map(|r| match &r.values[i] {
                                Val::I(v) => *v,
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    )),
                    Val::F(_) => Arc::new(Float64Array::from(
                        rows.iter()
                            .map(|r| match &r.values[i] {
                                Val::F(v) => *v,
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    )),
                    Val::D(_) => {
                        let scale = match spec.kind {
                            Kind::SumDec { scale } => scale,
                            Kind::AvgDec { out_scale, .. } => out_scale,
                            _ => 0,
                        };
                        Arc::new(
                            rows.iter()
                                .map(|r| match &r.values[i] {
                                    Val::D(v) => *v,
                                    _ => None,
                                })
                                .collect::<Decimal128Array>()
                                .with_precision_and_scale(38, scale)?,
                        )
                    }
                    Val::B(_) => unreachable!("bytes only for MIN, MAX and COUNT(DISTINCT)"),
                },
            };
            let col = if col.data_type() == &spec.out_type {
                col
            } else {
                cast(&col, &spec.out_type)?
            };
            columns.push(col);
        }
        let data = batch(&self.schema, columns, n)?;
        let weights = rows.iter().map(|r| r.weight).collect();
        Ok(vec![ChangeBatch::new(data, weights)])
    }

    fn closed(&self, end: i64) -> bool {
        self.state.watermark != i64::MIN
            && end.saturating_add(self.lateness) <= self.state.watermark
    }
}

/// The output values of a group, or `None` when it has no rows (a global aggregate
/// always has its one row).
fn group_values(kinds: &[Kind], global: bool, g: Option<&Group>) -> Option<Vec<Val>> {
    let g = g?;
    if g.rows <= 0 && !global {
        return None;
    }
    Some(
        g.accs
            .iter()
            .zip(kinds)
            .map(|(acc, k)| value(acc, *k))
            .collect(),
    )
}

/// The windows a row at time `t` falls in, as starts. Every window's start and end are
/// representable (64-bit nanoseconds, the years 1677 to 2262): a time so close to the limits
/// that its window is not is an error for that row, never a wrapped or clamped window.
fn assign(kind: WinKind, size: i64, slide: i64, t: i64, out: &mut Vec<i64>) -> Result<()> {
    out.clear();
    let beyond = || {
        EngineError::Overflow(format!(
            "the event time {t} (nanoseconds since 1970) is too close to the limits of time \
             (the years 1677 and 2262) for its window: the window's start or end cannot be \
             represented"
        ))
    };
    let window = |start: Option<i64>| -> Result<i64> {
        let start = start.ok_or_else(beyond)?;
        start.checked_add(size).ok_or_else(beyond)?;
        Ok(start)
    };
    match kind {
        WinKind::Tumble => out.push(window(t.div_euclid(size).checked_mul(size))?),
        WinKind::Hop => {
            let mut s = window(t.div_euclid(slide).checked_mul(slide))?;
            let first_end = t.checked_sub(size).ok_or_else(beyond)?;
            while s > first_end {
                out.push(window(Some(s))?);
                s = s.checked_sub(slide).ok_or_else(beyond)?;
            }
        }
        WinKind::Session => out.push(window(Some(t))?),
    }
    Ok(())
}

struct OutRow {
    key: Vec<u8>,
    window: (i64, i64),
    values: Vec<Val>,
    weight: i64,
}

fn value(acc: &Acc, kind: Kind) -> Val {
    match (acc, kind) {
        (Acc::Count(n), _) => Val::I(Some(*n)),
        (Acc::Distinct(m), _) => Val::I(Some(m.len() as i64)),
        (Acc::SumI { n: 0, .. }, Kind::SumDec { .. } | Kind::AvgDec { .. }) => Val::D(None),
        (Acc::SumI { n: 0, .. }, Kind::AvgInt) => Val::F(None),
        (Acc::SumI { n: 0, .. }, _) => Val::I(None),
        (Acc::SumI { sum, .. }, Kind::SumDec { .. }) => Val::D(Some(*sum)),
        (Acc::SumI { sum, n }, Kind::AvgDec { scale, out_scale }) => {
            let factor = 10i128.pow(u32::try_from(out_scale - scale).unwrap_or(0));
            Val::D(Some(sum.saturating_mul(factor) / i128::from(*n)))
        }
        (Acc::SumI { sum, n }, Kind::AvgInt) => Val::F(Some(*sum as f64 / *n as f64)),
        (Acc::SumI { sum, .. }, _) => Val::I(Some(i64::try_from(*sum).unwrap_or(i64::MAX))),
        (Acc::SumF { n: 0, .. }, _) => Val::F(None),
        (Acc::SumF { sum, n }, Kind::AvgFloat) => Val::F(Some(sum / *n as f64)),
        (Acc::SumF { sum, .. }, _) => Val::F(Some(*sum)),
        (Acc::Ordered(m), Kind::Min) => Val::B(m.keys().next().cloned()),
        (Acc::Ordered(m), _) => Val::B(m.keys().next_back().cloned()),
        (Acc::Best(b), _) => Val::B(b.clone()),
    }
}

/// One batch's argument values, ready for per-row updates.
enum Prepared {
    None,
    Nulls(Option<arrow::buffer::NullBuffer>),
    Int(Int64Array),
    Dec(Decimal128Array),
    Float(Float64Array),
    Rows(Rows, Option<arrow::buffer::NullBuffer>),
}

fn prepare(spec: &Spec, data: &arrow::record_batch::RecordBatch) -> Result<Prepared> {
    let Some(arg) = &spec.arg else {
        return Ok(Prepared::None);
    };
    let a = arg.eval(data)?;
    Ok(match spec.kind {
        Kind::CountStar => Prepared::None,
        Kind::Count => Prepared::Nulls(a.logical_nulls()),
        Kind::SumInt | Kind::AvgInt => Prepared::Int(
            cast(&a, &DataType::Int64)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64")
                .clone(),
        ),
        Kind::SumDec { .. } | Kind::AvgDec { .. } => Prepared::Dec(
            a.as_any()
                .downcast_ref::<Decimal128Array>()
                .expect("a decimal argument")
                .clone(),
        ),
        Kind::SumFloat | Kind::AvgFloat => Prepared::Float(
            cast(&a, &DataType::Float64)?
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
                .clone(),
        ),
        Kind::Min | Kind::Max | Kind::CountDistinct => {
            let conv = spec.conv.as_ref().expect("a converter for ordered values");
            Prepared::Rows(
                conv.convert_columns(std::slice::from_ref(&a))?,
                a.logical_nulls(),
            )
        }
    })
}

fn update(acc: &mut Acc, kind: Kind, p: &Prepared, i: usize, w: i64) -> Result<()> {
    let valid =
        |nulls: &Option<arrow::buffer::NullBuffer>| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    match (acc, p) {
        (Acc::Count(n), Prepared::None) => *n += w,
        (Acc::Count(n), Prepared::Nulls(nulls)) => {
            if valid(nulls) {
                *n += w;
            }
        }
        (Acc::SumI { sum, n }, Prepared::Int(a)) => {
            if a.is_valid(i) {
                *sum += i128::from(a.value(i)) * i128::from(w);
                *n += w;
                // An AVG's sum may grow past 64 bits (its result is a double); a SUM's
                // may not: it would be emitted as a BIGINT.
                if matches!(kind, Kind::SumInt) && i64::try_from(*sum).is_err() {
                    return Err(EngineError::Overflow(format!(
                        "an integer SUM overflowed the 64-bit range (it reached {sum})"
                    )));
                }
            }
        }
        (Acc::SumI { sum, n }, Prepared::Dec(a)) => {
            if a.is_valid(i) {
                *sum = sum
                    .checked_add(a.value(i).saturating_mul(i128::from(w)))
                    .ok_or_else(|| EngineError::Overflow("a decimal SUM overflowed".into()))?;
                *n += w;
            }
        }
        (Acc::SumF { sum, n }, Prepared::Float(a)) => {
            if a.is_valid(i) {
                *sum += a.value(i) * w as f64;
                *n += w;
            }
        }
        (Acc::Ordered(m), Prepared::Rows(rows, nulls)) => {
            if valid(nulls) {
                let key = rows.row(i);
                match m.get_mut(key.as_ref()) {
                    Some(c) => {
                        *c += w;
                        if *c == 0 {
                            m.remove(key.as_ref());
                        }
                    }
                    None => {
                        m.insert(key.as_ref().to_vec(), w);
                    }
                }
            }
        }
        (Acc::Distinct(m), Prepared::Rows(rows, nulls)) => {
            if valid(nulls) {
                let key = rows.row(i);
                match m.get_mut(key.as_ref()) {
                    Some(c) => {
                        *c += w;
                        if *c == 0 {
                            m.remove(key.as_ref());
                        }
                    }
                    None => {
                        m.insert(key.as_ref().to_vec(), w);
                    }
                }
            }
        }
        (Acc::Best(best), Prepared::Rows(rows, nulls)) => {
            if valid(nulls) {
                let v = rows.row(i);
                let better = match best {
                    None => true,
                    Some(b) => {
                        if kind == Kind::Min {
                            v.as_ref() < b.as_slice()
                        } else {
                            v.as_ref() > b.as_slice()
                        }
                    }
                };
                if better {
                    *best = Some(v.as_ref().to_vec());
                }
            }
        }
        _ => {
            return Err(EngineError::Input(
                "aggregate state does not match its input".into(),
            ));
        }
    }
    Ok(())
}

fn merge(into: &mut Acc, from: Acc, kind: Kind) {
    match (into, from) {
        (Acc::Count(a), Acc::Count(b)) => *a += b,
        (Acc::SumI { sum, n }, Acc::SumI { sum: s2, n: n2 }) => {
            *sum += s2;
            *n += n2;
        }
        (Acc::SumF { sum, n }, Acc::SumF { sum: s2, n: n2 }) => {
            *sum += s2;
            *n += n2;
        }
        (Acc::Ordered(a), Acc::Ordered(b)) => {
            for (k, c) in b {
                *a.entry(k).or_insert(0) += c;
            }
            a.retain(|_, c| *c != 0);
        }
        (Acc::Distinct(a), Acc::Distinct(b)) => {
            for (k, c) in b {
                *a.entry(k).or_insert(0) += c;
            }
            a.retain(|_, c| *c != 0);
        }
        (Acc::Best(a), Acc::Best(Some(b))) => {
            let better = match a {
                None => true,
                Some(x) => {
                    if kind == Kind::Min {
                        b < *x
                    } else {
                        b > *x
                    }
                }
            };
            if better {
                *a = Some(b);
            }
        }
        _ => {}
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
                        self.session_add(key, t, end, &kinds, &prepared, i, w, &mut touched)?;
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

    fn on_watermark(&mut self, watermarks: &[i64]) -> Result<Vec<ChangeBatch>> {
        let wm = watermarks.iter().copied().min().unwrap_or(i64::MIN);
        if wm <= self.state.watermark {
            return Ok(Vec::new());
        }
        self.state.watermark = wm;
        let Some(win) = &self.win else {
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

fn new_group_for(specs: &[Spec], append_input: bool) -> Group {
    Group {
        rows: 0,
        accs: specs
            .iter()
            .map(|s| match s.kind {
                Kind::CountStar | Kind::Count => Acc::Count(0),
                Kind::CountDistinct => Acc::Distinct(HashMap::new()),
                Kind::SumInt | Kind::AvgInt | Kind::SumDec { .. } | Kind::AvgDec { .. } => {
                    Acc::SumI { sum: 0, n: 0 }
                }
                Kind::SumFloat | Kind::AvgFloat => Acc::SumF { sum: 0.0, n: 0 },
                Kind::Min | Kind::Max if append_input => Acc::Best(None),
                Kind::Min | Kind::Max => Acc::Ordered(BTreeMap::new()),
            })
            .collect(),
    }
}

fn push_change(
    out: &mut Vec<OutRow>,
    key: &[u8],
    window: (i64, i64),
    old: Option<Vec<Val>>,
    new: Option<Vec<Val>>,
) {
    if old == new {
        return;
    }
    if let Some(v) = old {
        out.push(OutRow {
            key: key.to_vec(),
            window,
            values: v,
            weight: -1,
        });
    }
    if let Some(v) = new {
        out.push(OutRow {
            key: key.to_vec(),
            window,
            values: v,
            weight: 1,
        });
    }
}

impl AggregateOp {
    /// Adds a row at `t` to its group's sessions, merging every session it overlaps.
    #[allow(clippy::too_many_arguments)]
    fn session_add(
        &mut self,
        key: &[u8],
        t: i64,
        end: i64,
        kinds: &[Kind],
        prepared: &[Prepared],
        i: usize,
        w: i64,
        touched: &mut Touched,
    ) -> Result<()> {
        let updates = self.updates;
        let fresh = new_group_for(&self.specs, self.append_input);
        self.dirty.mark(tagged(SESSIONS, &[key]));
        let sessions = self.state.sessions.entry(key.to_vec()).or_default();
        // Sessions [s, e) that overlap [t, end).
        let overlapping: Vec<i64> = sessions
            .range(..end)
            .filter(|(_, (e, _))| *e > t)
            .map(|(s, _)| *s)
            .collect();
        // An integer SUM must stay within 64 bits when sessions merge, even when the row
        // that bridges them adds nothing (a NULL): checked before any state changes.
        for (k, kind) in kinds.iter().enumerate() {
            if *kind != Kind::SumInt {
                continue;
            }
            let mut total: i128 = overlapping
                .iter()
                .filter_map(|s| match sessions.get(s).and_then(|(_, g)| g.accs.get(k)) {
                    Some(Acc::SumI { sum, .. }) => Some(*sum),
                    _ => None,
                })
                .sum();
            if let Some(Prepared::Int(a)) = prepared.get(k)
                && a.is_valid(i)
            {
                total += i128::from(a.value(i)) * i128::from(w);
            }
            if i64::try_from(total).is_err() {
                return Err(EngineError::Overflow(format!(
                    "an integer SUM overflowed the 64-bit range when sessions merged (it \
                     reached {total})"
                )));
            }
        }
        let mut start = t;
        let mut stop = end;
        let mut merged = fresh;
        for s in overlapping {
            let (e, g) = sessions.remove(&s).expect("listed above");
            if updates && !touched.contains_key(&(s, key.to_vec())) {
                touched.insert((s, key.to_vec()), (e, group_values(kinds, false, Some(&g))));
            }
            start = start.min(s);
            stop = stop.max(e);
            merged.rows += g.rows;
            for ((a, b), k) in merged.accs.iter_mut().zip(g.accs).zip(kinds) {
                merge(a, b, *k);
            }
        }
        merged.rows += w;
        for ((acc, p), k) in merged.accs.iter_mut().zip(prepared).zip(kinds) {
            update(acc, *k, p, i, w)?;
        }
        if updates && !touched.contains_key(&(start, key.to_vec())) {
            touched.insert((start, key.to_vec()), (stop, None));
        }
        if !merged.is_empty() {
            sessions.insert(start, (stop, merged));
        }
        Ok(())
    }
}

/// A group key and its window, borrowed from an output row.
type GroupWindow<'a> = (&'a [u8], (i64, i64));

/// Drops a retraction and an insertion of the same row from one batch of output.
///
/// Rows are matched by (key, window) through a hash map, so a batch that touches many
/// groups stays linear.
fn cancel_pairs(out: &mut Vec<OutRow>) {
    let drop = {
        let mut by_group: HashMap<GroupWindow<'_>, Vec<usize>> = HashMap::new();
        for (i, r) in out.iter().enumerate() {
            by_group.entry((&r.key, r.window)).or_default().push(i);
        }
        let mut drop = vec![false; out.len()];
        for rows in by_group.values().filter(|v| v.len() > 1) {
            for &i in rows {
                if drop[i] || out[i].weight >= 0 {
                    continue;
                }
                let twin = rows.iter().copied().find(|&j| {
                    !drop[j] && out[j].weight == -out[i].weight && out[j].values == out[i].values
                });
                if let Some(j) = twin {
                    drop[i] = true;
                    drop[j] = true;
                }
            }
        }
        drop
    };
    if drop.contains(&true) {
        let mut keep = drop.iter().map(|d| !d);
        out.retain(|_| keep.next().unwrap_or(true));
    }
}
