//! Time terms: which expressions of a plan node are event time, and at what offset.

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::plan::{Node, TimeCol};
use crate::windows::{self, interval_nanos};

pub(super) fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

pub(super) fn column_index(schema: &DFSchema, e: &Expr) -> Option<usize> {
    match unalias(e) {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        _ => None,
    }
}

pub(super) fn literal_interval(e: &Expr) -> Option<i64> {
    match unalias(e) {
        Expr::Literal(v, _) => interval_nanos(v).ok(),
        Expr::Cast(c) => literal_interval(&c.expr),
        _ => None,
    }
}

/// `expr` as (time column of `node`, offset): `col`, `col + interval`, `col - interval`,
/// or a window field `get_field(window, 'window_end')`.
pub(super) fn time_term(node: &Node, e: &Expr) -> Option<(TimeCol, i64)> {
    match unalias(e) {
        Expr::Column(c) => {
            let i = node.schema.index_of_column(c).ok()?;
            node.props.time_col(i).map(|t| (t, 0))
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (t, off) = time_term(node, left)?;
            let d = literal_interval(right)?;
            match op {
                Operator::Plus => Some((t, off + d)),
                Operator::Minus => Some((t, off - d)),
                _ => None,
            }
        }
        Expr::ScalarFunction(ScalarFunction { func, args }) if func.name() == "get_field" => {
            let w = node.props.window_col?;
            if column_index(&node.schema, &args[0]) != Some(w.index) {
                return None;
            }
            let Expr::Literal(ScalarValue::Utf8(Some(field)), _) = unalias(&args[1]) else {
                return None;
            };
            let lag = match field.as_str() {
                windows::WINDOW_START => w.start_lag?,
                windows::WINDOW_END => w.end_lag,
                _ => return None,
            };
            Some((
                TimeCol {
                    index: w.index,
                    lag,
                },
                0,
            ))
        }
        _ => None,
    }
}
