//! A comparison of two types that do not compare (`ts > 5`, a timestamp with an
//! integer), which DataFusion's type coercion reports without a position or a column:
//! found in the planned query, named in the user's types and pointed at its column.

use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};

use crate::CompileError;
use crate::error::user_type;

const MARK: &str = "Cannot infer common argument type for comparison operation ";

/// `err` reworded and positioned when it is DataFusion's comparison-coercion error and
/// the comparison is found in `plan`; otherwise `err` as it is.
pub(super) fn locate(plan: &LogicalPlan, err: CompileError) -> CompileError {
    if err.line.is_some() || !err.message.contains(MARK) {
        return err;
    }
    match find(plan) {
        Some(found) => found,
        None => err,
    }
}

fn find(plan: &LogicalPlan) -> Option<CompileError> {
    let mut found = None;
    let _ = plan.apply(|node| {
        let mut schema = DFSchema::empty();
        for input in node.inputs() {
            schema.merge(input.schema());
        }
        let _ = node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::BinaryExpr(b) = e
                    && matches!(
                        b.op,
                        Operator::Eq
                            | Operator::NotEq
                            | Operator::Lt
                            | Operator::LtEq
                            | Operator::Gt
                            | Operator::GtEq
                            | Operator::IsDistinctFrom
                            | Operator::IsNotDistinctFrom
                    )
                    && let Some(err) = incomparable(b, &schema)
                {
                    found = Some(err);
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The error for comparison `b` if its two sides' types do not compare.
fn incomparable(b: &BinaryExpr, schema: &DFSchema) -> Option<CompileError> {
    let left = b.left.get_type(schema).ok()?;
    let right = b.right.get_type(schema).ok()?;
    if datafusion::logical_expr::type_coercion::binary::comparison_coercion(&left, &right).is_some()
    {
        return None;
    }
    let side = |e: &Expr, t| match e {
        Expr::Column(c) => format!("{} (a {})", c.name, user_type(t)),
        _ => format!("a {}", user_type(t)),
    };
    let column = [&*b.left, &*b.right].into_iter().find_map(|e| match e {
        Expr::Column(c) => c.spans().first(),
        _ => None,
    });
    let err = CompileError::new(format!(
        "{} cannot be compared ({}) with {}",
        side(&b.left, &left),
        b.op,
        side(&b.right, &right)
    ))
    .hint("compare values of one type: CAST one side, or write a timestamp as TIMESTAMP '2026-01-01 00:00:00'");
    Some(match column {
        Some(span) => err.at_position(span.start.line, span.start.column),
        None => err,
    })
}
