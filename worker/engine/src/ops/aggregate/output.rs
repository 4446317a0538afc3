//! Output: changed groups become change batches, with a retraction and an insertion of
//! the same row cancelled in one batch.

use super::*;

pub(super) struct OutRow {
    pub(super) key: Vec<u8>,
    pub(super) window: (i64, i64),
    pub(super) values: Vec<Val>,
    pub(super) weight: i64,
}

impl AggregateOp {
    /// Builds output rows: (group key, window, values, weight).
    pub(super) fn build(&self, rows: Vec<OutRow>) -> Result<Vec<ChangeBatch>> {
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
                Kind::CountDistinct => Arc::new(Int64Array::from(
                    rows.iter()
                        .map(|r| match &r.values[i] {
                            Val::I(v) => *v,
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )),
                Kind::Min | Kind::Max if spec.conv.is_some() => {
                    let conv = spec.conv.as_ref().expect("checked");
                    let p = conv.parser();
                    let t = spec.arg_type.as_ref().unwrap_or(&DataType::Null);
                    let null_row = conv.convert_columns(&[arrow::array::new_null_array(t, 1)])?;
                    let parsed: Vec<_> = rows
                        .iter()
                        .map(|r| match &r.values[i] {
                            Val::B(Some(b)) => p.parse(b),
                            _ => null_row.row(0),
                        })
                        .collect();
                    conv.convert_rows(parsed)?.remove(0)
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
}

pub(super) fn push_change(
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

/// A group key and its window, borrowed from an output row.
pub(super) type GroupWindow<'a> = (&'a [u8], (i64, i64));

/// Drops a retraction and an insertion of the same row from one batch of output.
///
/// Rows are matched by (key, window) through a hash map, so a batch that touches many
/// groups stays linear.
pub(super) fn cancel_pairs(out: &mut Vec<OutRow>) {
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
