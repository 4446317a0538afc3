//! SQL text → DataFusion logical plan → streaming plan.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType, NullEquality, ScalarValue};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, LogicalPlan, Operator, Volatility};
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::catalog::Catalog;
use crate::plan::{
    AggCall, AggFunc, Aggregate, Join, JoinMode, Node, Op, Props, TimeCol, Window, WindowCol,
};
use crate::windows::{self, WindowFn, interval_nanos};
use crate::{
    ColumnLineage, CompileError, CompileOptions, CompiledTransform, EmitMode, StreamInput,
    StreamKind,
};

type Result<T> = std::result::Result<T, CompileError>;

/// The DataFusion session used for planning: default functions, the window functions,
/// and the optimizer without rules that would hide a window inside a subquery.
fn session_state() -> &'static SessionState {
    static STATE: OnceLock<SessionState> = OnceLock::new();
    STATE.get_or_init(|| {
        let base = SessionStateBuilder::new().with_default_features().build();
        let rules = base
            .optimizers()
            .iter()
            .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
            .cloned()
            .collect();
        let mut state = SessionStateBuilder::new_from_existing(base)
            .with_optimizer_rules(rules)
            .build();
        for w in [WindowFn::Tumble, WindowFn::Hop, WindowFn::Session] {
            state
                .register_udf(Arc::new(w.udf()))
                .expect("registering a window function");
        }
        state
    })
}

/// Compiles a Transform's SQL against the DataStreams it may read.
///
/// Errors name the SQL's line and column where they can, and carry a hint where there
/// is a known fix. No input makes this panic.
pub fn compile(
    sql: &str,
    streams: &[StreamInput],
    options: &CompileOptions,
) -> Result<CompiledTransform> {
    let state = session_state();
    let mut statements = Parser::new(&GenericDialect)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| CompileError::from_datafusion(sql, e.into()))?;
    let mut statement = match statements.len() {
        1 => statements.remove(0),
        0 => return Err(CompileError::new("the SQL is empty").hint("write one SELECT query")),
        _ => {
            return Err(
                CompileError::new("a Transform's SQL must be exactly one statement")
                    .hint("remove the extra statements after the first ';'"),
            );
        }
    };
    windows::rewrite_statement(&mut statement).map_err(|e| match e.hint.clone() {
        Some(h) if h.starts_with("group by one of") => {
            let second = e.message.rsplit(' ').next().unwrap_or("").to_owned();
            e.near(sql, &second)
        }
        _ => e,
    })?;

    let catalog = Catalog {
        state,
        streams,
        namespace: options.namespace.clone(),
        used: RefCell::new(Vec::new()),
        unknown: RefCell::new(Vec::new()),
    };
    let parser_options = ParserOptions {
        collect_spans: true,
        ..ParserOptions::new()
    };
    let planner = SqlToRel::new_with_options(&catalog, parser_options);
    let plan = planner.sql_statement_to_plan(statement).map_err(|e| {
        if let Some(name) = catalog.unknown.borrow().first() {
            let known: Vec<String> = streams.iter().map(StreamInput::sql_name).collect();
            let hint = if known.is_empty() {
                "no DataStreams are known; declare the DataStream first".to_owned()
            } else {
                format!("known DataStreams: {}", known.join(", "))
            };
            let last = name.rsplit('.').next().unwrap_or(name).to_owned();
            return CompileError::new(format!("unknown DataStream '{name}'"))
                .hint(hint)
                .near(sql, &last);
        }
        let err = CompileError::from_datafusion(sql, e);
        // Errors raised by the window functions name them.
        match ["TUMBLE", "HOP", "SESSION"]
            .into_iter()
            .find(|w| err.message.starts_with(w))
        {
            Some(w) => err.near(sql, w),
            None => err,
        }
    })?;
    check_streamable(sql, &plan)?;
    let optimized = state
        .optimize(&plan)
        .map_err(|e| CompileError::from_datafusion(sql, e))?;

    let used = catalog.used.borrow().clone();
    let inputs: Vec<StreamInput> = used.iter().map(|i| streams[*i].clone()).collect();
    let lowerer = Lowerer {
        sql,
        catalog: &catalog,
        used: &used,
        options,
    };
    let root = lowerer.lower(&optimized)?;
    check_output_names(sql, &root.schema)?;

    let output_schema = Arc::new(root.schema.as_arrow().clone());
    let names: Vec<String> = output_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let output_kind = root.props.kind;
    let output_key = match output_kind {
        StreamKind::AppendOnly => Vec::new(),
        StreamKind::Changelog => match &root.props.key {
            Some(k) => k.iter().map(|i| names[*i].clone()).collect(),
            None => names.clone(),
        },
    };
    let output_event_time = root
        .props
        .time_cols
        .iter()
        .min_by_key(|t| t.lag)
        .map(|t| names[t.index].clone());
    let lineage = lineage(&root, &inputs)
        .into_iter()
        .zip(&names)
        .map(|(sources, column)| ColumnLineage {
            column: column.clone(),
            sources: sources.into_iter().collect(),
        })
        .collect();
    let sql_names: Vec<String> = inputs.iter().map(StreamInput::sql_name).collect();
    let explain = root.explain(&sql_names);
    let fingerprint = crate::fingerprint::fingerprint(sql, &inputs, options);
    let mut compiled = CompiledTransform {
        sql: sql.to_owned(),
        output_schema,
        output_kind,
        output_key,
        output_event_time,
        inputs,
        lineage,
        plan: root,
        options: options.clone(),
        explain,
        fingerprint,
        state_fingerprint: String::new(),
    };
    compiled.state_fingerprint = crate::fingerprint::state_fingerprint(&compiled);
    Ok(compiled)
}

/// Refuses what cannot run on an unbounded stream, before the optimizer folds it away.
fn check_streamable(sql: &str, plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<CompileError> = None;
    let _ = plan.apply_with_subqueries(|node| {
        let err = match node {
            LogicalPlan::Sort(s) if s.fetch.is_none() => Some(
                CompileError::new("ORDER BY over an unbounded stream never produces a result")
                    .hint("remove the ORDER BY; consumers see changes in arrival order")
                    .near(sql, "ORDER"),
            ),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Some(
                CompileError::new("LIMIT (top-N) over a stream is not supported yet")
                    .hint("remove the LIMIT, or aggregate with MAX/MIN per group")
                    .near(sql, "LIMIT"),
            ),
            LogicalPlan::Window(_) => Some(
                CompileError::new("window functions with OVER are not supported on streams")
                    .hint("use GROUP BY with TUMBLE, HOP or SESSION")
                    .near(sql, "OVER"),
            ),
            LogicalPlan::RecursiveQuery(_) => Some(
                CompileError::new("recursive CTEs are not supported on streams")
                    .near(sql, "RECURSIVE"),
            ),
            _ => None,
        };
        if err.is_some() {
            found = err;
            return Ok(TreeNodeRecursion::Stop);
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    let name = f.func.name().to_owned();
                    found = Some(
                        CompileError::new(format!(
                            "{name}() is not deterministic: replaying the stream would give \
                             different results"
                        ))
                        .hint(
                            "use the event-time column instead of the clock, or a hash of \
                             the row instead of a random number",
                        )
                        .near(sql, &name),
                    );
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found.map_or(Ok(()), Err)
}

fn check_output_names(sql: &str, schema: &DFSchema) -> Result<()> {
    let mut seen = BTreeSet::new();
    for f in schema.fields() {
        let name = f.name();
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(CompileError::new(format!(
                "output column {name:?} needs a name that a DataStream field can have"
            ))
            .hint(format!(
                "give it one with AS, for example `{name} AS total`"
            ))
            .near(sql, name.split('(').next().unwrap_or(name)));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(
                CompileError::new(format!("the output has two columns named {name:?}"))
                    .hint("rename one of them with AS")
                    .near(sql, name),
            );
        }
    }
    Ok(())
}

struct Lowerer<'a> {
    sql: &'a str,
    catalog: &'a Catalog<'a>,
    used: &'a [usize],
    options: &'a CompileOptions,
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

fn column_index(schema: &DFSchema, e: &Expr) -> Option<usize> {
    match unalias(e) {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        _ => None,
    }
}

fn literal_interval(e: &Expr) -> Option<i64> {
    match unalias(e) {
        Expr::Literal(v, _) => interval_nanos(v).ok(),
        Expr::Cast(c) => literal_interval(&c.expr),
        _ => None,
    }
}

/// `expr` as (time column of `node`, offset): `col`, `col + interval`, `col - interval`,
/// or a window field `get_field(window, 'window_end')`.
fn time_term(node: &Node, e: &Expr) -> Option<(TimeCol, i64)> {
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

impl Lowerer<'_> {
    fn unsupported(&self, what: &str, near: &str, hint: &str) -> CompileError {
        CompileError::new(format!("{what} is not supported on streams"))
            .hint(hint)
            .near(self.sql, near)
    }

    fn lower(&self, plan: &LogicalPlan) -> Result<Node> {
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
                if scan.fetch.is_some() {
                    return Err(self.unsupported("LIMIT", "LIMIT", "remove the LIMIT"));
                }
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
            LogicalPlan::Distinct(_) => {
                Err(self.unsupported("DISTINCT ON", "DISTINCT", "use GROUP BY with MIN or MAX"))
            }
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Err(self.unsupported(
                "ORDER BY and LIMIT",
                "ORDER",
                "remove the ORDER BY and LIMIT",
            )),
            LogicalPlan::Window(_) => Err(self.unsupported(
                "a window function with OVER",
                "OVER",
                "use GROUP BY with TUMBLE, HOP or SESSION",
            )),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err(CompileError::new("the query must read from a DataStream")
                    .hint("add FROM namespace.stream"))
            }
            LogicalPlan::Unnest(_) => {
                Err(self.unsupported("UNNEST", "UNNEST", "flatten lists in the producer"))
            }
            other => Err(CompileError::new(format!(
                "{} is not supported on streams",
                other.display()
            ))),
        }
    }

    fn lower_aggregate(&self, a: &datafusion::logical_expr::Aggregate) -> Result<Node> {
        let input = self.lower(&a.input)?;
        let mut group = Vec::new();
        let mut window: Option<Window> = None;
        for (i, g) in a.group_expr.iter().enumerate() {
            match unalias(g) {
                Expr::GroupingSet(_) => {
                    return Err(self.unsupported(
                        "GROUPING SETS, ROLLUP and CUBE",
                        "GROUP",
                        "write one Transform per grouping",
                    ));
                }
                Expr::ScalarFunction(ScalarFunction { func, args })
                    if WindowFn::from_name(func.name()).is_some() =>
                {
                    let kind = WindowFn::from_name(func.name()).expect("checked above");
                    if input.props.kind != StreamKind::AppendOnly {
                        return Err(CompileError::new(
                            "event-time windows need an append-only input, and this input is a \
                             changelog",
                        )
                        .hint("window the events before joining them with a table")
                        .near(self.sql, kind.name()));
                    }
                    window = Some(self.window(kind, args, &input, i)?);
                }
                other => group.push(other.clone()),
            }
        }
        let mut aggs = Vec::new();
        for e in &a.aggr_expr {
            aggs.push(self.agg_call(unalias(e))?);
        }
        let lateness = self.options.allowed_lateness_ms.saturating_mul(1_000_000);
        let n_group = a.group_expr.len();
        let mut props = Props::append();
        props.key = Some((0..n_group).collect());
        let emit = self.options.emit;
        props.kind = match (&window, emit) {
            (Some(_), EmitMode::OnWindowClose) => StreamKind::AppendOnly,
            (None, _) if aggs.is_empty() && input.props.kind == StreamKind::AppendOnly => {
                StreamKind::AppendOnly
            }
            _ => StreamKind::Changelog,
        };
        if let Some(w) = &window {
            props.window_col = Some(WindowCol {
                index: w.position,
                start_lag: (w.kind != WindowFn::Session).then(|| lateness.saturating_add(w.size)),
                end_lag: lateness,
            });
        }
        Ok(Node {
            op: Op::Aggregate(Box::new(Aggregate {
                input,
                group,
                aggs,
                window,
                emit,
                lateness,
            })),
            schema: a.schema.clone(),
            props,
        })
    }

    fn window(
        &self,
        kind: WindowFn,
        args: &[Expr],
        input: &Node,
        position: usize,
    ) -> Result<Window> {
        let name = kind.name().to_uppercase();
        let time = args[0].clone();
        let is_time = time_term(input, &time).is_some_and(|(_, off)| off == 0)
            && column_index(&input.schema, &time).is_some();
        if !is_time {
            return Err(CompileError::new(format!(
                "{name} needs the event-time column of its input, not {time}"
            ))
            .hint("declare spec.eventTime on the DataStream and window by that field")
            .near(self.sql, kind.name()));
        }
        let sizes = args[1..]
            .iter()
            .map(|e| match unalias(e) {
                Expr::Literal(v, _) => interval_nanos(v).map_err(|err| {
                    CompileError::from_datafusion(self.sql, err).near(self.sql, "INTERVAL")
                }),
                _ => Err(CompileError::new(format!(
                    "{name}'s sizes must be constant intervals such as INTERVAL '1' MINUTE"
                ))
                .near(self.sql, kind.name())),
            })
            .collect::<Result<Vec<i64>>>()?;
        let (size, slide) = match kind {
            WindowFn::Hop => (sizes[1], sizes[0]),
            _ => (sizes[0], sizes[0]),
        };
        if kind == WindowFn::Hop && (size < slide || size / slide > 1000) {
            return Err(CompileError::new(format!(
                "HOP's size must be at least its slide and at most 1000 slides (slide {slide}ns, \
                 size {size}ns)"
            ))
            .hint("HOP(time, slide, size), for example HOP(ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)")
            .near(self.sql, "hop"));
        }
        Ok(Window {
            kind,
            time,
            size,
            slide,
            position,
        })
    }

    fn agg_call(&self, e: &Expr) -> Result<AggCall> {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return Err(CompileError::new(format!(
                "unexpected aggregate expression {e}"
            )));
        };
        let name = func.name().to_ascii_lowercase();
        let f = match name.as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" | "mean" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            _ => {
                return Err(CompileError::new(format!(
                    "the aggregate {}() is not supported on streams",
                    name.to_uppercase()
                ))
                .hint("use COUNT, COUNT(DISTINCT), SUM, AVG, MIN or MAX")
                .near(self.sql, &name));
            }
        };
        if params.filter.is_some() {
            return Err(self.unsupported(
                "FILTER (WHERE ...) on an aggregate",
                "FILTER",
                "use SUM(CASE WHEN ... THEN 1 ELSE 0 END)",
            ));
        }
        if !params.order_by.is_empty() {
            return Err(self.unsupported(
                "ORDER BY inside an aggregate",
                "ORDER",
                "remove the ORDER BY",
            ));
        }
        if params.distinct && f != AggFunc::Count {
            return Err(CompileError::new(format!(
                "{}(DISTINCT ...) is not supported on streams",
                name.to_uppercase()
            ))
            .hint("only COUNT(DISTINCT ...) is; aggregate a GROUP BY subquery instead")
            .near(self.sql, &name));
        }
        let arg = match params.args.as_slice() {
            [] => None,
            [Expr::Literal(v, _)] if f == AggFunc::Count && !v.is_null() && !params.distinct => {
                None
            }
            [a] => Some(a.clone()),
            _ => {
                return Err(CompileError::new(format!(
                    "{}() takes one argument",
                    name.to_uppercase()
                ))
                .near(self.sql, &name));
            }
        };
        Ok(AggCall {
            func: f,
            arg,
            distinct: params.distinct,
        })
    }

    fn lower_join(&self, j: &datafusion::logical_expr::Join) -> Result<Node> {
        if j.null_equality == NullEquality::NullEqualsNull {
            return Err(self.unsupported("INTERSECT and EXCEPT", "INTERSECT", "use a JOIN"));
        }
        let left_outer = match j.join_type {
            JoinType::Inner => false,
            JoinType::Left => true,
            JoinType::Right => {
                return Err(self.unsupported(
                    "RIGHT JOIN",
                    "RIGHT",
                    "swap the two sides and write LEFT JOIN",
                ));
            }
            JoinType::Full => {
                return Err(self.unsupported(
                    "FULL OUTER JOIN",
                    "FULL",
                    "use an inner or LEFT JOIN",
                ));
            }
            _ => {
                return Err(self.unsupported(
                    "a subquery in WHERE (IN, EXISTS)",
                    "SELECT",
                    "rewrite it as a JOIN",
                ));
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
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        split_conjunction(f, &mut conjuncts);
    }
    for c in conjuncts {
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

fn split_conjunction<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_conjunction(left, out);
            split_conjunction(right, out);
        }
        Expr::Alias(a) => split_conjunction(&a.expr, out),
        other => out.push(other),
    }
}

type Sources = BTreeSet<(String, String)>;

/// For each output column of `node`, the input columns it derives from.
fn lineage(node: &Node, inputs: &[StreamInput]) -> Vec<Sources> {
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
