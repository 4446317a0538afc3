//! Column lineage: for each output column, the input columns it derives from.

use std::collections::BTreeSet;

use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;

use crate::StreamInput;
use crate::plan::{Node, Op};

type Sources = BTreeSet<(String, String)>;

/// For each output column of `node`, the input columns it derives from.
pub(super) fn lineage(node: &Node, inputs: &[StreamInput]) -> Vec<Sources> {
    let refs = |schema: &DFSchema, cols: &[Sources], e: &Expr| -> Sources {
        let mut out = Sources::new();
        for c in e.column_refs() {
            if let Ok(i) = schema.index_of_column(c) {
                out.extend(cols[i].iter().cloned());
            }
        }
        out
    };
    match &node.op {
        Op::Source {
            input, projection, ..
        } => {
            let s = &inputs[*input];
            projection
                .iter()
                .map(|i| Sources::from([(s.id(), s.schema.field(*i).name().clone())]))
                .collect()
        }
        Op::Project { input, exprs } => {
            let cols = lineage(input, inputs);
            exprs
                .iter()
                .map(|e| refs(&input.schema, &cols, e))
                .collect()
        }
        Op::Filter { input, .. } => lineage(input, inputs),
        Op::Aggregate(a) => {
            let cols = lineage(&a.input, inputs);
            let mut out: Vec<Sources> = a
                .group
                .iter()
                .map(|g| refs(&a.input.schema, &cols, g))
                .collect();
            if let Some(w) = &a.window {
                out.insert(w.position, refs(&a.input.schema, &cols, &w.time));
            }
            out.extend(a.aggs.iter().map(|c| {
                c.arg
                    .as_ref()
                    .map(|e| refs(&a.input.schema, &cols, e))
                    .unwrap_or_default()
            }));
            out
        }
        Op::Join(j) => {
            let mut out = lineage(&j.left, inputs);
            out.extend(lineage(&j.right, inputs));
            out
        }
        Op::Union { inputs: branches } => {
            let mut out: Vec<Sources> = Vec::new();
            for b in branches {
                for (i, s) in lineage(b, inputs).into_iter().enumerate() {
                    if out.len() <= i {
                        out.push(s);
                    } else {
                        out[i].extend(s);
                    }
                }
            }
            out
        }
    }
}
