//! The streaming plan: a tree of incremental operators over DataFusion expressions.
//!
//! Every node has an output schema (a DataFusion schema, so expressions of the parent
//! resolve against it) and [`Props`] that say whether its output is append-only, what
//! its key is, and which columns carry event time.

use std::fmt::{self, Write as _};
use std::ops::ControlFlow;

use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{DefaultDialect, Dialect};
use sqlparser::ast::{self, VisitMut, VisitorMut};

use crate::StreamKind;
use crate::windows::WindowFn;

/// A node of the streaming plan.
#[derive(Clone, Debug)]
pub struct Node {
    /// The operator.
    pub op: Op,
    /// The output schema.
    pub schema: DFSchemaRef,
    /// Properties of the output.
    pub props: Props,
}

/// What a node's output looks like as a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Props {
    /// Append-only or changelog.
    pub kind: StreamKind,
    /// Output columns that form a key: at most one live row per key value.
    pub key: Option<Vec<usize>>,
    /// Output columns that carry event time, and how far behind the node's watermark a
    /// value may still arrive (in nanoseconds).
    pub time_cols: Vec<TimeCol>,
    /// A window struct column (from a windowed aggregate), its fields usable as times.
    pub window_col: Option<WindowCol>,
}

/// A column holding event time: rows arriving when the node's watermark is `W` carry a
/// value of at least `W - lag` (earlier ones are late).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeCol {
    /// The column.
    pub index: usize,
    /// How far behind the watermark values may be, in nanoseconds.
    pub lag: i64,
}

/// A window struct column and the lags of its start and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCol {
    /// The column.
    pub index: usize,
    /// The lag of `window_start` (none for sessions, whose start is unbounded).
    pub start_lag: Option<i64>,
    /// The lag of `window_end`.
    pub end_lag: i64,
}

impl Props {
    /// An append-only stream with nothing else known.
    pub fn append() -> Self {
        Self {
            kind: StreamKind::AppendOnly,
            key: None,
            time_cols: Vec::new(),
            window_col: None,
        }
    }

    /// The time column at `index`, if it is one.
    pub fn time_col(&self, index: usize) -> Option<TimeCol> {
        self.time_cols.iter().copied().find(|t| t.index == index)
    }
}

/// A streaming operator.
#[derive(Clone, Debug)]
pub enum Op {
    /// Reads one input DataStream; `projection` picks its columns.
    Source {
        /// Index into the compiled Transform's inputs.
        input: usize,
        /// The input columns read, in output order.
        projection: Vec<usize>,
        /// The event-time column (an index into the input's columns), if declared.
        event_time: Option<usize>,
    },
    /// Computes expressions of each change.
    Project {
        /// The input.
        input: Box<Node>,
        /// One expression per output column.
        exprs: Vec<Expr>,
    },
    /// Keeps the changes whose row passes a predicate.
    Filter {
        /// The input.
        input: Box<Node>,
        /// A boolean expression.
        predicate: Expr,
    },
    /// GROUP BY with aggregates, maintained under retractions, optionally per window.
    Aggregate(Box<Aggregate>),
    /// An equi-join maintaining the state each side needs.
    Join(Box<Join>),
    /// UNION ALL.
    Union {
        /// The inputs, with the same schema.
        inputs: Vec<Node>,
    },
}

/// A grouped aggregation.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// The input.
    pub input: Node,
    /// The grouping expressions, without the window.
    pub group: Vec<Expr>,
    /// The aggregates, in output order after the group columns.
    pub aggs: Vec<AggCall>,
    /// The event-time window, if grouped by one.
    pub window: Option<Window>,
    /// When windowed results are emitted.
    pub emit: crate::EmitMode,
    /// Allowed lateness in nanoseconds.
    pub lateness: i64,
}

/// An event-time window in a GROUP BY.
#[derive(Clone, Debug)]
pub struct Window {
    /// Tumble, hop or session.
    pub kind: WindowFn,
    /// The time expression over the input (an event-time column).
    pub time: Expr,
    /// Tumble and hop: the size; session: the gap (nanoseconds).
    pub size: i64,
    /// Hop: the slide (nanoseconds); otherwise equal to `size`.
    pub slide: i64,
    /// The window column's position among the output's group columns.
    pub position: usize,
}

/// An aggregate function call.
#[derive(Clone, Debug)]
pub struct AggCall {
    /// The function.
    pub func: AggFunc,
    /// Its argument (`None` for `COUNT(*)`).
    pub arg: Option<Expr>,
    /// `COUNT(DISTINCT x)`.
    pub distinct: bool,
}

/// The aggregate functions maintained incrementally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggFunc {
    /// COUNT
    Count,
    /// SUM
    Sum,
    /// AVG
    Avg,
    /// MIN
    Min,
    /// MAX
    Max,
}

/// An equi-join (inner or left outer).
#[derive(Clone, Debug)]
pub struct Join {
    /// The left input.
    pub left: Node,
    /// The right input.
    pub right: Node,
    /// Equality pairs (left expression, right expression).
    pub on: Vec<(Expr, Expr)>,
    /// A residual predicate over the joined row.
    pub filter: Option<Expr>,
    /// Left outer (true) or inner.
    pub left_outer: bool,
    /// How state is kept.
    pub mode: JoinMode,
}

/// How a join keeps state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinMode {
    /// Both sides kept in full; every change on either side joins the other.
    Regular,
    /// Stream to table: each event is joined with the table's current row and not
    /// kept; table changes do not revisit past events. The output is append-only.
    Lookup,
    /// Stream to stream within a time bound: a right row at time `r` matches a left row
    /// at time `l` only when `lo <= r - l <= hi`; rows are dropped once the watermark
    /// makes further matches impossible.
    Interval {
        /// The left time column.
        left_time: usize,
        /// The right time column.
        right_time: usize,
        /// The lower bound of `r - l` (nanoseconds).
        lo: i64,
        /// The upper bound of `r - l` (nanoseconds).
        hi: i64,
        /// How far behind the left watermark left times may arrive (nanoseconds).
        left_lag: i64,
        /// How far behind the right watermark right times may arrive (nanoseconds).
        right_lag: i64,
    },
}

impl Node {
    /// The node's children.
    pub fn children(&self) -> Vec<&Node> {
        match &self.op {
            Op::Source { .. } => vec![],
            Op::Project { input, .. } | Op::Filter { input, .. } => vec![input],
            Op::Aggregate(a) => vec![&a.input],
            Op::Join(j) => vec![&j.left, &j.right],
            Op::Union { inputs } => inputs.iter().collect(),
        }
    }

    /// Whether this operator itself keeps state between records: an aggregate, a join, or
    /// the source of a keyed changelog (a table, kept as its current rows). `inputs` are
    /// the compiled Transform's inputs.
    pub fn keeps_state(&self, inputs: &[crate::StreamInput]) -> bool {
        match &self.op {
            Op::Aggregate(_) | Op::Join(_) => true,
            Op::Source { input, .. } => inputs
                .get(*input)
                .is_some_and(|i| i.kind == StreamKind::Changelog && !i.key.is_empty()),
            Op::Project { .. } | Op::Filter { .. } | Op::Union { .. } => false,
        }
    }

    /// An indented, readable rendering of the plan, one operator per line.
    pub fn explain(&self, input_names: &[String]) -> String {
        let mut out = String::new();
        self.explain_into(input_names, 0, &mut out);
        out
    }

    fn explain_into(&self, names: &[String], depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        let cols = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", column_name(f.name()), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ");
        let kind = match (&self.props.kind, &self.props.key) {
            (StreamKind::Changelog, Some(k)) => {
                let names: Vec<_> = k
                    .iter()
                    .map(|i| self.schema.field(*i).name().clone())
                    .collect();
                format!("changelog key=[{}]", names.join(", "))
            }
            (k, _) => k.to_string(),
        };
        let line = match &self.op {
            Op::Source { input, .. } => format!("Source: {}", names[*input]),
            Op::Project { exprs, .. } => format!("Project: {}", join_exprs(exprs)),
            Op::Filter { predicate, .. } => format!("Filter: {}", sql_text(predicate)),
            Op::Aggregate(a) => {
                let mut s = String::from("Aggregate");
                if let Some(w) = &a.window {
                    let _ = write!(s, " {}", DisplayWindow(w));
                    let _ = write!(
                        s,
                        " emit={}",
                        match a.emit {
                            crate::EmitMode::OnWindowClose => "on-close",
                            crate::EmitMode::Updates => "updates",
                        }
                    );
                    if a.lateness > 0 {
                        let _ = write!(s, " lateness={}", Dur(a.lateness));
                    }
                }
                let _ = write!(
                    s,
                    ": group=[{}] aggs=[{}]",
                    join_exprs(&a.group),
                    a.aggs
                        .iter()
                        .map(|c| {
                            let f = format!("{:?}", c.func).to_uppercase();
                            match (&c.arg, c.distinct) {
                                (None, _) => format!("{f}(*)"),
                                (Some(a), true) => format!("{f}(DISTINCT {})", sql_text(a)),
                                (Some(a), false) => format!("{f}({})", sql_text(a)),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                s
            }
            Op::Join(j) => {
                let mode = match j.mode {
                    JoinMode::Regular => "Join".to_owned(),
                    JoinMode::Lookup => "LookupJoin".to_owned(),
                    JoinMode::Interval { lo, hi, .. } => {
                        format!("IntervalJoin[{}..{}]", Dur(lo), Dur(hi))
                    }
                };
                let on =
                    j.on.iter()
                        .map(|(l, r)| format!("{} = {}", sql_text(l), sql_text(r)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                let filter = j
                    .filter
                    .as_ref()
                    .map(|f| format!(" filter={}", sql_text(f)))
                    .unwrap_or_default();
                let ty = if j.left_outer { "left" } else { "inner" };
                format!("{mode} ({ty}): on=[{on}]{filter}")
            }
            Op::Union { .. } => "UnionAll".to_owned(),
        };
        let _ = writeln!(out, "{pad}{line}  -> {kind} ({cols})");
        for c in self.children() {
            c.explain_into(names, depth + 1, out);
        }
    }
}

fn join_exprs(exprs: &[Expr]) -> String {
    exprs.iter().map(sql_text).collect::<Vec<_>>().join(", ")
}

struct DisplayWindow<'a>(&'a Window);

impl fmt::Display for DisplayWindow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0;
        let time = sql_text(&w.time);
        match w.kind {
            WindowFn::Tumble => write!(f, "TUMBLE({time}, {})", Dur(w.size)),
            WindowFn::Hop => write!(f, "HOP({time}, {}, {})", Dur(w.slide), Dur(w.size)),
            WindowFn::Session => write!(f, "SESSION({time}, {})", Dur(w.size)),
        }
    }
}

/// A duration in nanoseconds, printed readably.
/// A duration in nanoseconds, written in the largest unit that divides it (`90s`, `2m`).
pub(crate) struct Dur(pub i64);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        let units = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
        ];
        for (size, unit) in units {
            if n != 0 && n % size == 0 {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}ns")
    }
}

/// An expression as SQL, rendered by DataFusion's unparser with fully qualified column
/// names (`web.page_views.ts`) and intervals in whole units (`INTERVAL '1 MINS'`), not as
/// Arrow's debug form; DataFusion's own rendering when the unparser cannot express it.
pub fn sql_text(e: &Expr) -> String {
    if let Expr::Alias(a) = e {
        return format!("{} AS {}", sql_text(&a.expr), a.name);
    }
    match Unparser::new(&SqlTextDialect).expr_to_sql(e) {
        Ok(mut sql) => {
            let _ = sql.visit(&mut WholeSeconds);
            sql.to_string()
        }
        Err(_) => e.to_string(),
    }
}

/// DataFusion's default dialect, with columns fully qualified: two namespaces may have
/// streams of the same name.
struct SqlTextDialect;

impl Dialect for SqlTextDialect {
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        DefaultDialect {}.identifier_quote_style(identifier)
    }

    fn full_qualified_col(&self) -> bool {
        true
    }
}

/// Drops the nine zero decimals the unparser gives whole seconds (`1.000000000 SECS`), and
/// writes column names derived from window calls with [`column_name`].
struct WholeSeconds;

impl VisitorMut for WholeSeconds {
    type Break = ();

    fn post_visit_expr(&mut self, e: &mut ast::Expr) -> ControlFlow<()> {
        let idents = match e {
            ast::Expr::Identifier(i) => std::slice::from_mut(i),
            ast::Expr::CompoundIdentifier(parts) => parts.as_mut_slice(),
            _ => &mut [],
        };
        for i in idents {
            i.value = column_name(&i.value);
        }
        if let ast::Expr::Interval(i) = e
            && let ast::Expr::Value(v) = i.value.as_mut()
            && let ast::Value::SingleQuotedString(text) = &mut v.value
        {
            *text = text
                .split(' ')
                .map(|part| match part.split_once('.') {
                    Some((whole, zeros)) if zeros.bytes().all(|b| b == b'0') => whole,
                    _ => part,
                })
                .collect::<Vec<_>>()
                .join(" ");
        }
        ControlFlow::Continue(())
    }
}

/// A column name as DataFusion derived it from an expression, with its interval literals
/// written `INTERVAL '1m'`: DataFusion names the output of `TUMBLE(ts, INTERVAL '1'
/// MINUTE)` with the interval's debug form
/// (`IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }")`).
/// Expressions are rendered by [`sql_text`]; only such derived names go through this.
pub fn column_name(text: &str) -> String {
    const OPEN: &str = "IntervalMonthDayNano(\"IntervalMonthDayNano { ";
    const CLOSE: &str = " }\")";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let body = &rest[at + OPEN.len()..];
        let Some(end) = body.find(CLOSE) else { break };
        let mut parts = [0i64; 3];
        let mut ok = true;
        for (i, field) in body[..end].split(", ").enumerate() {
            match (i, field.split_once(": ")) {
                (0..=2, Some((_, v))) => match v.parse() {
                    Ok(n) => parts[i] = n,
                    Err(_) => ok = false,
                },
                _ => ok = false,
            }
        }
        out.push_str(&rest[..at]);
        if ok {
            let [months, days, nanos] = parts;
            let mut pieces = Vec::new();
            if months != 0 {
                pieces.push(format!("{months} months"));
            }
            if days != 0 {
                pieces.push(format!("{days}d"));
            }
            if nanos != 0 || pieces.is_empty() {
                pieces.push(Dur(nanos).to_string());
            }
            let _ = write!(out, "INTERVAL '{}'", pieces.join(" "));
        } else {
            out.push_str(&rest[at..at + OPEN.len() + end + CLOSE.len()]);
        }
        rest = &body[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};
    use datafusion::scalar::ScalarValue;

    use super::{column_name, sql_text};

    #[test]
    fn interval_literals_read_like_sql() {
        let minute = ScalarValue::new_interval_mdn(0, 0, 60_000_000_000);
        assert_eq!(
            sql_text(&(col("ts") + lit(minute))),
            "(ts + INTERVAL '1 MINS')"
        );
        let named = "tumble(ts,IntervalMonthDayNano(\"IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 60000000000 }\"))";
        assert_eq!(column_name(named), "tumble(ts,INTERVAL '1m')");
        let mixed = ScalarValue::new_interval_mdn(1, 2, 0);
        assert_eq!(sql_text(&lit(mixed)), "INTERVAL '1 MONS 2 DAYS'");
    }
}
