//! The aggregate functions: their kinds, running state (accumulators), updates under
//! retraction, merges (sessions) and output values.

use super::exact_sum::ExactSum;
use super::*;
use arrow::array::AsArray;
use arrow::datatypes::{Decimal128Type, Float64Type, Int64Type};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
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

pub(super) struct Spec {
    pub(super) kind: Kind,
    pub(super) arg_type: Option<DataType>,
    pub(super) arg: Option<Eval>,
    /// Row converter for MIN, MAX and COUNT(DISTINCT) arguments.
    pub(super) conv: Option<RowConverter>,
    pub(super) out_type: DataType,
}

/// One aggregate's running state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Acc {
    Count(i64),
    SumI {
        sum: i128,
        n: i64,
    },
    /// A floating-point sum as a running total: state written before sums were exact,
    /// read back and turned into [`Acc::SumX`] at its next update.
    SumF {
        sum: f64,
        n: i64,
    },
    Ordered(BTreeMap<Vec<u8>, i64>),
    Best(Option<Vec<u8>>),
    Distinct(HashMap<Vec<u8>, i64>),
    /// A floating-point sum kept exactly, so retractions leave the sum of what is left.
    /// (Last, so that state written before it still reads.)
    SumX {
        sum: ExactSum,
        n: i64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Group {
    pub(super) rows: i64,
    pub(super) accs: Vec<Acc>,
}

impl Group {
    /// Whether every change to the group has been cancelled out, so dropping it loses
    /// nothing (a count of zero alone is not enough: a retraction may precede its insert).
    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0
            && self.accs.iter().all(|a| match a {
                Acc::Count(n) => *n == 0,
                Acc::SumI { n, .. } | Acc::SumF { n, .. } | Acc::SumX { n, .. } => *n == 0,
                Acc::Ordered(m) => m.is_empty(),
                Acc::Distinct(m) => m.is_empty(),
                Acc::Best(_) => true,
            })
    }
}

/// An aggregate's output value, cheap to keep for retracting later.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Val {
    I(Option<i64>),
    F(Option<f64>),
    D(Option<i128>),
    B(Option<Vec<u8>>),
}

/// The output values of a group, or `None` when it has no rows (a global aggregate
/// always has its one row).
pub(super) fn group_values(kinds: &[Kind], global: bool, g: Option<&Group>) -> Option<Vec<Val>> {
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

pub(super) fn value(acc: &Acc, kind: Kind) -> Val {
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
        (Acc::SumX { n: 0, .. }, _) => Val::F(None),
        (Acc::SumX { sum, n }, Kind::AvgFloat) => Val::F(Some(sum.value() / *n as f64)),
        (Acc::SumX { sum, .. }, _) => Val::F(Some(sum.value())),
        (Acc::Ordered(m), Kind::Min) => Val::B(m.keys().next().cloned()),
        (Acc::Ordered(m), _) => Val::B(m.keys().next_back().cloned()),
        (Acc::Best(b), _) => Val::B(b.clone()),
    }
}

/// One batch's argument values, ready for per-row updates.
pub(super) enum Prepared {
    None,
    Nulls(Option<arrow::buffer::NullBuffer>),
    Int(Int64Array),
    Dec(Decimal128Array),
    Float(Float64Array),
    Rows(Rows, Option<arrow::buffer::NullBuffer>),
}

pub(super) fn prepare(spec: &Spec, data: &arrow::record_batch::RecordBatch) -> Result<Prepared> {
    let Some(arg) = &spec.arg else {
        return Ok(Prepared::None);
    };
    let a = arg.eval(data)?;
    Ok(match spec.kind {
        Kind::CountStar => Prepared::None,
        Kind::Count => Prepared::Nulls(a.logical_nulls()),
        Kind::SumInt | Kind::AvgInt => Prepared::Int(
            cast(&a, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone(),
        ),
        Kind::SumDec { .. } | Kind::AvgDec { .. } => {
            Prepared::Dec(a.as_primitive::<Decimal128Type>().clone())
        }
        Kind::SumFloat | Kind::AvgFloat => Prepared::Float(
            cast(&a, &DataType::Float64)?
                .as_primitive::<Float64Type>()
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

pub(super) fn update(acc: &mut Acc, kind: Kind, p: &Prepared, i: usize, w: i64) -> Result<()> {
    let valid =
        |nulls: &Option<arrow::buffer::NullBuffer>| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    if let Acc::SumF { sum, n } = acc {
        *acc = Acc::SumX {
            sum: ExactSum::of(*sum),
            n: *n,
        };
    }
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
        (Acc::SumX { sum, n }, Prepared::Float(a)) => {
            if a.is_valid(i) {
                sum.add(a.value(i), w);
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

pub(super) fn merge(into: &mut Acc, from: Acc, kind: Kind) {
    match (into, from) {
        (Acc::Count(a), Acc::Count(b)) => *a += b,
        (Acc::SumI { sum, n }, Acc::SumI { sum: s2, n: n2 }) => {
            *sum += s2;
            *n += n2;
        }
        (
            into @ (Acc::SumF { .. } | Acc::SumX { .. }),
            from @ (Acc::SumF { .. } | Acc::SumX { .. }),
        ) => {
            if let (Some((mut sum, n)), Some((s2, n2))) = (exact_of(into), exact_of(&from)) {
                sum.merge(&s2);
                *into = Acc::SumX { sum, n: n + n2 };
            }
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

/// A floating-point sum's exact sum and count.
fn exact_of(a: &Acc) -> Option<(ExactSum, i64)> {
    match a {
        Acc::SumF { sum, n } => Some((ExactSum::of(*sum), *n)),
        Acc::SumX { sum, n } => Some((sum.clone(), *n)),
        _ => None,
    }
}

pub(super) fn new_group_for(specs: &[Spec], append_input: bool) -> Group {
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
                Kind::SumFloat | Kind::AvgFloat => Acc::SumX {
                    sum: ExactSum::default(),
                    n: 0,
                },
                Kind::Min | Kind::Max if append_input => Acc::Best(None),
                Kind::Min | Kind::Max => Acc::Ordered(BTreeMap::new()),
            })
            .collect(),
    }
}
