//! Lowering joins: which of the engine's join modes a join can run in (a time-bounded
//! interval join, a lookup into a table, or a regular join), and what its output keeps.

use datafusion::common::{JoinType, NullEquality};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use super::Result;
use super::lower::Lowerer;
use super::time::{column_index, time_term};
use crate::plan::{Join, JoinMode, Node, Op, Props, TimeCol};
use crate::{CompileError, StreamKind};

impl Lowerer<'_> {
    pub(super) fn lower_join(&self, j: &datafusion::logical_expr::Join) -> Result<Node> {
        // RIGHT and FULL joins, INTERSECT/EXCEPT and IN/EXISTS subqueries were refused
        // with their position by `refusals`; what remains here was made by DataFusion.
        let left_outer = match (j.join_type, j.null_equality) {
            (JoinType::Inner, NullEquality::NullEqualsNothing) => false,
            (JoinType::Left, NullEquality::NullEqualsNothing) => true,
            (other, _) => {
                return Err(CompileError::new(format!(
                    "this query needs a {other} join, which is not supported on streams"
                ))
                .hint("use JOIN or LEFT JOIN ... ON between DataStreams"));
            }
        };
        let left = self.lower(&j.left)?;
        let right = self.lower(&j.right)?;
        let nl = left.schema.fields().len();
        let both_append =
            left.props.kind == StreamKind::AppendOnly && right.props.kind == StreamKind::AppendOnly;

        let mut mode = JoinMode::Regular;
        if both_append && let Some(m) = interval_bounds(&left, &right, &j.on, j.filter.as_ref()) {
            mode = m;
        } else if left.props.kind == StreamKind::AppendOnly
            && right.props.kind == StreamKind::Changelog
            && reads_a_table(&right)
            && let Some(key) = &right.props.key
        {
            let on_right: Vec<Option<usize>> =
                j.on.iter()
                    .map(|(_, r)| column_index(&right.schema, r))
                    .collect();
            if key.iter().all(|k| on_right.contains(&Some(*k))) {
                mode = JoinMode::Lookup;
            }
        }

        let mut props = Props::append();
        match mode {
            JoinMode::Regular => {
                if !both_append || left_outer {
                    props.kind = StreamKind::Changelog;
                }
                if let (Some(lk), Some(rk)) = (&left.props.key, &right.props.key) {
                    props.key = Some(
                        lk.iter()
                            .copied()
                            .chain(rk.iter().map(|i| i + nl))
                            .collect(),
                    );
                }
            }
            JoinMode::Lookup => {
                props.time_cols = left.props.time_cols.clone();
                props.window_col = left.props.window_col;
            }
            JoinMode::Interval {
                left_time,
                right_time,
                lo,
                hi,
                left_lag,
                right_lag,
            } => {
                let l_lag = left_lag.max(right_lag.saturating_add(hi));
                let r_lag = right_lag.max(left_lag.saturating_sub(lo));
                props.time_cols.push(TimeCol {
                    index: left_time,
                    lag: l_lag,
                });
                props.time_cols.push(TimeCol {
                    index: right_time + nl,
                    lag: r_lag,
                });
            }
        }
        Ok(Node {
            op: Op::Join(Box::new(Join {
                left,
                right,
                on: j.on.clone(),
                filter: j.filter.clone(),
                left_outer,
                mode,
            })),
            schema: j.schema.clone(),
            props,
        })
    }
}

/// Whether `node` is a table read as it is (its rows filtered or projected, nothing
/// computed over them): the side a lookup may read as of each event. A changelog the
/// query computes itself (an aggregate, a join) changes as the same input flows, and an
/// event looked up against it would keep a stale answer; it is joined as a regular join,
/// which emits corrections.
fn reads_a_table(node: &Node) -> bool {
    match &node.op {
        Op::Source { .. } => true,
        Op::Project { input, .. } | Op::Filter { input, .. } => reads_a_table(input),
        Op::Aggregate(_) | Op::Join(_) | Op::Union { .. } => false,
    }
}

/// The time bound `lo <= r - l <= hi` a join's conditions put between its sides, if any.
fn interval_bounds(
    left: &Node,
    right: &Node,
    on: &[(Expr, Expr)],
    filter: Option<&Expr>,
) -> Option<JoinMode> {
    let mut lo = i64::MIN;
    let mut hi = i64::MAX;
    let mut cols: Option<(TimeCol, TimeCol)> = None;
    let mut consider = |l: &Expr, op: Operator, r: &Expr| {
        // Orient as (left term) op (right term).
        let (lt, rt, op) = match (time_term(left, l), time_term(right, r)) {
            (Some(a), Some(b)) => (a, b, op),
            _ => match (time_term(left, r), time_term(right, l)) {
                (Some(a), Some(b)) => match op.swap() {
                    Some(op) => (a, b, op),
                    None => return,
                },
                _ => return,
            },
        };
        if let Some((cl, cr)) = cols
            && (cl.index != lt.0.index || cr.index != rt.0.index)
        {
            return;
        }
        cols = Some((lt.0, rt.0));
        // l + a  op  r + b   <=>   r - l  op'  a - b
        let c = lt.1 - rt.1;
        match op {
            Operator::Eq => {
                lo = lo.max(c);
                hi = hi.min(c);
            }
            // l + a < r + b  <=>  r - l > c
            Operator::Lt | Operator::LtEq => lo = lo.max(c),
            Operator::Gt | Operator::GtEq => hi = hi.min(c),
            _ => {}
        }
    };
    for (l, r) in on {
        consider(l, Operator::Eq, r);
    }
    for c in filter.map(split_conjunction).unwrap_or_default() {
        match c {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if matches!(
                op,
                Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            ) =>
            {
                consider(a, *op, b);
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                consider(expr, Operator::GtEq, low);
                consider(expr, Operator::LtEq, high);
            }
            _ => {}
        }
    }
    let (l, r) = cols?;
    (lo != i64::MIN && hi != i64::MAX && lo <= hi).then_some(JoinMode::Interval {
        left_time: l.index,
        right_time: r.index,
        lo,
        hi,
        left_lag: l.lag,
        right_lag: r.lag,
    })
}
