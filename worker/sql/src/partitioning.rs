//! How a plan's inputs must be partitioned to run one task per partition.
//!
//! A worker runs one engine per input partition (Kafka Streams' model), so a stateful
//! operator is only correct when every record that meets in its state — one group of a
//! GROUP BY, one join key, one row of a table — lives in one partition. A DataStream's
//! records are partitioned by its key, so that holds when the operator's key contains the
//! input's key columns unchanged ([`Partitioning::AsIs`]). Otherwise every input is first
//! routed through an internal repartition topic, by the columns the operators need
//! ([`Partitioning::Repartition`]); one such stage is built, so a plan whose operators
//! need two different partitionings of one input is refused.

use datafusion::logical_expr::Expr;

use crate::plan::{Node, Op};
use crate::{CompiledTransform, StreamKind};

/// How the inputs reach the stateful stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// Each input as it is, one task per partition number.
    AsIs,
    /// Every input is routed through a repartition topic first. Per input (in the order of
    /// the compiled inputs), the input columns whose values pick the partition: equal
    /// values meet in one task. `Some(vec![])` sends every record to one partition;
    /// `None` (an input no stateful operator reads) any partition.
    Repartition(Vec<Option<Vec<String>>>),
}

/// Why the plan cannot run one task per partition as its inputs are, or `None` when it
/// can.
pub fn needs_repartition(compiled: &CompiledTransform) -> Option<String> {
    partitioning(&compiled.plan, compiled, &natural(compiled)).err()
}

/// How the plan's inputs must be partitioned, or why no single repartition stage can
/// make the plan correct at more than one partition.
pub fn plan(compiled: &CompiledTransform) -> Result<Partitioning, String> {
    if needs_repartition(compiled).is_none() {
        return Ok(Partitioning::AsIs);
    }
    let mut want = vec![None; compiled.inputs.len()];
    demand(&compiled.plan, compiled, &mut want)?;
    partitioning(&compiled.plan, compiled, &want)
        .map_err(|why| format!("{why}, even after repartitioning"))?;
    Ok(Partitioning::Repartition(want))
}

/// Each input's partitioning as it is: by its key.
fn natural(c: &CompiledTransform) -> Vec<Option<Vec<String>>> {
    c.inputs
        .iter()
        .map(|i| (!i.key.is_empty()).then(|| i.key.clone()))
        .collect()
}

/// Fills `want` with the columns each input must be partitioned by for the stateful
/// operators above it.
fn demand(
    n: &Node,
    c: &CompiledTransform,
    want: &mut Vec<Option<Vec<String>>>,
) -> Result<(), String> {
    for child in n.children() {
        demand(child, c, want)?;
    }
    match &n.op {
        Op::Source { input, .. } => {
            let def = &c.inputs[*input];
            if def.kind == StreamKind::Changelog && !def.key.is_empty() {
                // A table keeps its rows by key: all versions of a row must meet.
                assign(want, c, *input, def.key.clone(), "its key")?;
            }
        }
        Op::Aggregate(a) => {
            let traces: Vec<_> = a.group.iter().map(|g| trace_expr(g, &a.input, c)).collect();
            let what = format!(
                "GROUP BY {}",
                a.group
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (input, cols) in keys_per_source(&a.input, &traces) {
                assign(want, c, input, cols, &what)?;
            }
        }
        Op::Join(j) => {
            let what = format!(
                "the join on {}",
                j.on.iter()
                    .map(|(a, b)| format!("{a} = {b}"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            let left: Vec<_> =
                j.on.iter()
                    .map(|(l, _)| trace_expr(l, &j.left, c))
                    .collect();
            let right: Vec<_> =
                j.on.iter()
                    .map(|(_, r)| trace_expr(r, &j.right, c))
                    .collect();
            // Only pairs both sides can route by: equal join keys must meet.
            let usable: Vec<bool> = left
                .iter()
                .zip(&right)
                .map(|(l, r)| {
                    covers(l.as_deref(), &sources(&j.left))
                        && covers(r.as_deref(), &sources(&j.right))
                })
                .collect();
            let keep = |t: &[Option<Vec<(usize, String)>>]| -> Vec<Option<Vec<(usize, String)>>> {
                t.iter()
                    .zip(&usable)
                    .map(|(t, u)| if *u { t.clone() } else { None })
                    .collect()
            };
            for (input, cols) in keys_per_source(&j.left, &keep(&left))
                .into_iter()
                .chain(keys_per_source(&j.right, &keep(&right)))
            {
                assign(want, c, input, cols, &what)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn assign(
    want: &mut [Option<Vec<String>>],
    c: &CompiledTransform,
    input: usize,
    cols: Vec<String>,
    what: &str,
) -> Result<(), String> {
    match &want[input] {
        Some(have) if *have != cols => Err(format!(
            "{what} needs {} partitioned by ({}), but another operator needs it by ({}); that \
             takes more than one repartition stage, which Weir does not build yet",
            c.inputs[input].id(),
            cols.join(", "),
            have.join(", ")
        )),
        _ => {
            want[input] = Some(cols);
            Ok(())
        }
    }
}

/// Per source beneath `n`, its columns at the positions every source can be traced at.
fn keys_per_source(n: &Node, traces: &[Option<Vec<(usize, String)>>]) -> Vec<(usize, Vec<String>)> {
    let under = sources(n);
    let usable: Vec<&Vec<(usize, String)>> = traces
        .iter()
        .filter_map(|t| t.as_ref().filter(|t| covers(Some(t), &under)))
        .collect();
    under
        .iter()
        .map(|s| {
            let cols = usable
                .iter()
                .filter_map(|t| t.iter().find(|(i, _)| i == s).map(|(_, col)| col.clone()))
                .collect();
            (*s, cols)
        })
        .collect()
}

fn covers(trace: Option<&[(usize, String)]>, under: &[usize]) -> bool {
    trace.is_some_and(|t| under.iter().all(|s| t.iter().any(|(i, _)| i == s)))
}

/// The inputs read beneath `n`.
fn sources(n: &Node) -> Vec<usize> {
    match &n.op {
        Op::Source { input, .. } => vec![*input],
        _ => {
            let mut all: Vec<usize> = n.children().into_iter().flat_map(sources).collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

fn trace_expr(e: &Expr, n: &Node, c: &CompiledTransform) -> Option<Vec<(usize, String)>> {
    trace(n, column_index(e, n)?, c)
}

/// The input columns output column `col` of `n` is an unchanged copy of: one per source
/// it can come from, or `None` when it is computed.
fn trace(n: &Node, col: usize, c: &CompiledTransform) -> Option<Vec<(usize, String)>> {
    match &n.op {
        Op::Source {
            input, projection, ..
        } => {
            let field = c.inputs[*input].schema.field(*projection.get(col)?);
            Some(vec![(*input, field.name().clone())])
        }
        Op::Filter { input, .. } => trace(input, col, c),
        Op::Project { input, exprs } => trace(input, column_index(exprs.get(col)?, input)?, c),
        Op::Union { inputs } => {
            let mut all = Vec::new();
            for i in inputs {
                all.extend(trace(i, col, c)?);
            }
            Some(all)
        }
        Op::Join(j) => {
            let nl = j.left.schema.fields().len();
            if col < nl {
                trace(&j.left, col, c)
            } else {
                trace(&j.right, col - nl, c)
            }
        }
        Op::Aggregate(_) => None,
    }
}

/// The output columns holding the input's key columns (in key order), when every record
/// with one key value is known to be in one partition; `Ok(None)` when nothing is known
/// but nothing stateful depends on it; `Err` when a stateful operator needs it.
/// `by` gives each input's partitioning columns.
fn partitioning(
    n: &Node,
    c: &CompiledTransform,
    by: &[Option<Vec<String>>],
) -> Result<Option<Vec<usize>>, String> {
    match &n.op {
        Op::Source {
            input, projection, ..
        } => {
            let def = &c.inputs[*input];
            let Some(key) = &by[*input] else {
                return Ok(None);
            };
            let cols: Option<Vec<usize>> = key
                .iter()
                .map(|k| {
                    let i = def.schema.index_of(k).ok()?;
                    projection.iter().position(|p| *p == i)
                })
                .collect();
            if cols.is_none() && def.kind == StreamKind::Changelog {
                // A table keeps its rows by its key, which is its partitioning.
                return Ok(None);
            }
            Ok(cols)
        }
        Op::Filter { input, .. } => partitioning(input, c, by),
        Op::Project { input, exprs } => Ok(partitioning(input, c, by)?.and_then(|cols| {
            cols.iter()
                .map(|k| {
                    exprs
                        .iter()
                        .position(|e| column_index(e, input) == Some(*k))
                })
                .collect()
        })),
        Op::Union { inputs } => {
            let parts = inputs
                .iter()
                .map(|i| partitioning(i, c, by))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match parts.split_first() {
                Some((first, rest)) if rest.iter().all(|p| p == first) => first.clone(),
                _ => None,
            })
        }
        Op::Aggregate(a) => {
            let input = partitioning(&a.input, c, by)?;
            let global = a.group.is_empty();
            let cols = input.and_then(|cols| {
                cols.iter()
                    .map(|k| {
                        a.group
                            .iter()
                            .position(|g| column_index(g, &a.input) == Some(*k))
                    })
                    .collect::<Option<Vec<usize>>>()
            });
            match cols {
                // The output's group columns come first, the window column at its place.
                Some(cols) => Ok(Some(
                    cols.into_iter()
                        .map(|i| match &a.window {
                            Some(w) if i >= w.position => i + 1,
                            _ => i,
                        })
                        .collect(),
                )),
                None if global => {
                    Err("an aggregate without GROUP BY needs every record in one task".to_owned())
                }
                None => Err(format!(
                    "GROUP BY {} does not contain the input's key, so one group's records \
                     are spread over partitions",
                    a.group
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        Op::Join(j) => {
            let (l, r) = (
                partitioning(&j.left, c, by)?,
                partitioning(&j.right, c, by)?,
            );
            let paired = match (&l, &r) {
                (Some(lk), Some(rk)) if lk.len() == rk.len() => lk.iter().zip(rk).all(|(a, b)| {
                    j.on.iter().any(|(le, re)| {
                        column_index(le, &j.left) == Some(*a)
                            && column_index(re, &j.right) == Some(*b)
                    })
                }),
                _ => false,
            };
            if paired {
                Ok(l)
            } else {
                Err(format!(
                    "the join on {} does not pair both inputs' keys, so matching records \
                     are in different partitions",
                    j.on.iter()
                        .map(|(a, b)| format!("{a} = {b}"))
                        .collect::<Vec<_>>()
                        .join(" AND ")
                ))
            }
        }
    }
}

fn column_index(e: &Expr, input: &Node) -> Option<usize> {
    match e {
        Expr::Column(col) => input.schema.index_of_column(col).ok(),
        Expr::Alias(a) => column_index(&a.expr, input),
        Expr::Cast(c) => column_index(&c.expr, input),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::{Partitioning, needs_repartition, plan};
    use crate::{CompileOptions, StreamInput, compile};

    fn inputs() -> Vec<StreamInput> {
        let events = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("url", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
        ]));
        let users = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("country", DataType::Utf8, true),
        ]));
        vec![
            StreamInput::new("ns", "views", events)
                .with_key(["user_id"])
                .with_event_time("ts", 0),
            StreamInput::new("ns", "users", users)
                .with_key(["user_id"])
                .as_table(),
        ]
    }

    fn check(sql: &str) -> Option<String> {
        let c = compile(sql, &inputs(), &CompileOptions::new("ns")).unwrap();
        needs_repartition(&c)
    }

    #[test]
    fn stateless_and_key_grouped_plans_run_per_partition() {
        assert_eq!(check("SELECT url FROM views WHERE n > 1"), None);
        assert_eq!(
            check("SELECT user_id, COUNT(*) AS c FROM views GROUP BY user_id"),
            None
        );
        assert_eq!(
            check(
                "SELECT user_id AS u, url, window_start, COUNT(*) AS c FROM views \
                 GROUP BY url, user_id, TUMBLE(ts, INTERVAL '1' MINUTE)"
            ),
            None
        );
        assert_eq!(
            check("SELECT v.url, u.country FROM views v JOIN users u ON v.user_id = u.user_id"),
            None
        );
    }

    #[test]
    fn grouping_by_another_column_or_nothing_needs_a_repartition() {
        let why = check("SELECT url, COUNT(*) AS c FROM views GROUP BY url").unwrap();
        assert!(why.contains("GROUP BY"), "{why}");
        assert!(check("SELECT COUNT(*) AS c FROM views").is_some());
        assert!(
            check("SELECT v.url, u.country FROM views v JOIN users u ON v.url = u.user_id")
                .is_some()
        );
    }

    fn stage(sql: &str) -> Result<Partitioning, String> {
        plan(&compile(sql, &inputs(), &CompileOptions::new("ns")).unwrap())
    }

    fn by(cols: &[&str]) -> Option<Vec<String>> {
        Some(cols.iter().map(|c| (*c).to_owned()).collect())
    }

    #[test]
    fn a_repartition_routes_each_input_by_the_columns_its_operators_need() {
        assert_eq!(
            stage("SELECT user_id, COUNT(*) AS c FROM views GROUP BY user_id"),
            Ok(Partitioning::AsIs)
        );
        assert_eq!(
            stage("SELECT url, COUNT(*) AS c FROM views GROUP BY url"),
            Ok(Partitioning::Repartition(vec![by(&["url"])]))
        );
        assert_eq!(
            stage(
                "SELECT url, window_start, COUNT(*) AS c FROM views \
                 GROUP BY url, TUMBLE(ts, INTERVAL '1' MINUTE)"
            ),
            Ok(Partitioning::Repartition(vec![by(&["url"])]))
        );
        // Nothing to group by: every record meets in one partition.
        assert_eq!(
            stage("SELECT COUNT(*) AS c FROM views"),
            Ok(Partitioning::Repartition(vec![by(&[])]))
        );
        // The table stays partitioned by its key; the stream follows the join key.
        let Ok(Partitioning::Repartition(keys)) =
            stage("SELECT v.url, u.country FROM views v JOIN users u ON v.url = u.user_id")
        else {
            panic!("expected a repartition");
        };
        assert!(
            keys.contains(&by(&["url"])) && keys.contains(&by(&["user_id"])),
            "{keys:?}"
        );
    }

    #[test]
    fn two_partitionings_of_one_input_are_refused_with_both_named() {
        let why = stage("SELECT country, COUNT(*) AS c FROM users GROUP BY country").unwrap_err();
        assert!(
            why.contains("ns/users") && why.contains("country") && why.contains("user_id"),
            "{why}"
        );
        assert!(why.contains("more than one repartition"), "{why}");
    }
}
