//! Whether a plan can run one task per input partition.
//!
//! A worker runs one engine per input partition (Kafka Streams' model), so a stateful
//! operator is only correct when every record that meets in its state — one group of a
//! GROUP BY, one join key — lives in one partition. A DataStream's records are
//! partitioned by its key, so that holds when the operator's key contains the input's
//! key columns unchanged. Otherwise the records must first be repartitioned by the
//! operator's key.

use datafusion::logical_expr::Expr;

use crate::plan::{Node, Op};
use crate::{CompiledTransform, StreamKind};

/// Why the plan cannot run one task per partition, or `None` when it can.
pub fn needs_repartition(compiled: &CompiledTransform) -> Option<String> {
    partitioning(&compiled.plan, compiled).err()
}

/// The output columns holding the input's key columns (in key order), when every record
/// with one key value is known to be in one partition; `Ok(None)` when nothing is known
/// but nothing stateful depends on it; `Err` when a stateful operator needs it.
fn partitioning(n: &Node, c: &CompiledTransform) -> Result<Option<Vec<usize>>, String> {
    match &n.op {
        Op::Source {
            input, projection, ..
        } => {
            let def = &c.inputs[*input];
            if def.key.is_empty() {
                return Ok(None);
            }
            let cols: Option<Vec<usize>> = def
                .key
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
        Op::Filter { input, .. } => partitioning(input, c),
        Op::Project { input, exprs } => Ok(partitioning(input, c)?.and_then(|cols| {
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
                .map(|i| partitioning(i, c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(match parts.split_first() {
                Some((first, rest)) if rest.iter().all(|p| p == first) => first.clone(),
                _ => None,
            })
        }
        Op::Aggregate(a) => {
            let input = partitioning(&a.input, c)?;
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
            let (l, r) = (partitioning(&j.left, c)?, partitioning(&j.right, c)?);
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

    use super::needs_repartition;
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
}
