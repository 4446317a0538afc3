//! Lowering DataFusion's optimized logical plan into streaming [`Node`]s, with the
//! properties each operator gives its output: kind, key, event-time columns, window.

use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::Result;
use super::spans::SqlSpans;
use super::time::{column_index, time_term, unalias};
use crate::catalog::Catalog;
use crate::plan::{Node, Op, Props, TimeCol, WindowCol};
use crate::{CompileError, CompileOptions, StreamKind};

/// Lowers the plan of one Transform.
pub(super) struct Lowerer<'a> {
    pub(super) sql: &'a str,
    pub(super) catalog: &'a Catalog<'a>,
    pub(super) used: &'a [usize],
    pub(super) options: &'a CompileOptions,
    pub(super) spans: &'a SqlSpans,
}

impl Lowerer<'_> {
    /// Lowers a DataFusion plan that passed [`super::refusals`] into streaming nodes.
    pub(super) fn lower(&self, plan: &LogicalPlan) -> Result<Node> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let stream = self.catalog.resolve(&scan.table_name).ok_or_else(|| {
                    CompileError::new(format!("unknown DataStream '{}'", scan.table_name))
                })?;
                let input = self
                    .used
                    .iter()
                    .position(|u| *u == stream)
                    .expect("a scanned stream was resolved through the catalog");
                let def = &self.catalog.streams[stream];
                let projection: Vec<usize> = scan
                    .projection
                    .clone()
                    .unwrap_or_else(|| (0..def.schema.fields().len()).collect());
                let event_time = def
                    .event_time
                    .as_ref()
                    .and_then(|et| def.schema.index_of(&et.field).ok());
                let mut props = Props::append();
                props.kind = def.kind;
                let keys: Option<Vec<usize>> = (!def.key.is_empty())
                    .then(|| {
                        def.key
                            .iter()
                            .map(|k| {
                                let i = def.schema.index_of(k).ok()?;
                                projection.iter().position(|p| *p == i)
                            })
                            .collect()
                    })
                    .flatten();
                props.key = keys;
                if def.kind == StreamKind::AppendOnly
                    && let Some(et) = event_time
                    && let Some(pos) = projection.iter().position(|p| *p == et)
                {
                    props.time_cols.push(TimeCol { index: pos, lag: 0 });
                }
                let node = Node {
                    op: Op::Source {
                        input,
                        projection,
                        event_time,
                    },
                    schema: scan.projected_schema.clone(),
                    props: props.clone(),
                };
                match scan.filters.iter().cloned().reduce(Expr::and) {
                    None => Ok(node),
                    Some(predicate) => Ok(Node {
                        schema: node.schema.clone(),
                        op: Op::Filter {
                            input: Box::new(node),
                            predicate,
                        },
                        props,
                    }),
                }
            }
            LogicalPlan::Projection(p) => {
                let input = self.lower(&p.input)?;
                let mut props = Props {
                    kind: input.props.kind,
                    key: None,
                    time_cols: Vec::new(),
                    window_col: None,
                };
                let positions: Vec<Option<usize>> = p
                    .expr
                    .iter()
                    .map(|e| column_index(&input.schema, e))
                    .collect();
                // A window column in the key is identified by either of its fields.
                let window_field_of = |e: &Expr| match unalias(e) {
                    Expr::ScalarFunction(ScalarFunction { func, args })
                        if func.name() == "get_field" =>
                    {
                        column_index(&input.schema, &args[0])
                    }
                    _ => None,
                };
                props.key = input.props.key.as_ref().and_then(|k| {
                    k.iter()
                        .map(|ki| {
                            positions.iter().position(|p| *p == Some(*ki)).or_else(|| {
                                input
                                    .props
                                    .window_col
                                    .filter(|w| w.index == *ki)
                                    .and_then(|_| {
                                        p.expr.iter().position(|e| window_field_of(e) == Some(*ki))
                                    })
                            })
                        })
                        .collect()
                });
                for (i, e) in p.expr.iter().enumerate() {
                    if let Some(w) = input.props.window_col
                        && positions[i] == Some(w.index)
                    {
                        props.window_col = Some(WindowCol { index: i, ..w });
                    } else if let Some((t, off)) = time_term(&input, e) {
                        props.time_cols.push(TimeCol {
                            index: i,
                            lag: t.lag - off,
                        });
                    }
                }
                Ok(Node {
                    op: Op::Project {
                        input: Box::new(input),
                        exprs: p.expr.clone(),
                    },
                    schema: p.schema.clone(),
                    props,
                })
            }
            LogicalPlan::Filter(f) => {
                let input = self.lower(&f.input)?;
                let props = input.props.clone();
                Ok(Node {
                    schema: input.schema.clone(),
                    op: Op::Filter {
                        input: Box::new(input),
                        predicate: f.predicate.clone(),
                    },
                    props,
                })
            }
            LogicalPlan::SubqueryAlias(a) => {
                let mut node = self.lower(&a.input)?;
                node.schema = a.schema.clone();
                Ok(node)
            }
            LogicalPlan::Aggregate(a) => self.lower_aggregate(a),
            LogicalPlan::Join(j) => self.lower_join(j),
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.lower(i))
                    .collect::<Result<Vec<_>>>()?;
                let all_append = inputs
                    .iter()
                    .all(|i| i.props.kind == StreamKind::AppendOnly);
                let mut props = Props::append();
                if !all_append {
                    props.kind = StreamKind::Changelog;
                }
                if let Some(first) = inputs.first() {
                    for t in &first.props.time_cols {
                        let lags: Option<Vec<i64>> = inputs
                            .iter()
                            .map(|i| i.props.time_col(t.index).map(|x| x.lag))
                            .collect();
                        if let Some(lags) = lags {
                            props.time_cols.push(TimeCol {
                                index: t.index,
                                lag: lags.into_iter().max().unwrap_or(0),
                            });
                        }
                    }
                }
                Ok(Node {
                    op: Op::Union { inputs },
                    schema: u.schema.clone(),
                    props,
                })
            }
            LogicalPlan::EmptyRelation(_) => Err(CompileError::new(
                "the query can never output a row: its conditions are never true",
            )
            .hint("check the WHERE and ON conditions")),
            other => Err(CompileError::new(format!(
                "{} is not supported on streams",
                other.display()
            ))),
        }
    }
}
