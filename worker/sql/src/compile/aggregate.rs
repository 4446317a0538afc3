//! Lowering GROUP BY: group keys, the event-time window, and the aggregate calls.

use datafusion::logical_expr::Expr;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};

use super::Result;
use super::lower::Lowerer;
use super::time::{column_index, time_term, unalias};
use crate::plan::{AggCall, AggFunc, Aggregate, Dur, Node, Op, Props, Window, WindowCol, sql_text};
use crate::windows::{WindowFn, interval_nanos};
use crate::{CompileError, EmitMode, StreamKind};

impl Lowerer<'_> {
    pub(super) fn lower_aggregate(&self, a: &datafusion::logical_expr::Aggregate) -> Result<Node> {
        let input = self.lower(&a.input)?;
        let mut group = Vec::new();
        let mut window: Option<Window> = None;
        for (i, g) in a.group_expr.iter().enumerate() {
            match unalias(g) {
                Expr::GroupingSet(_) => {
                    return Err(CompileError::new(
                        "GROUPING SETS, ROLLUP and CUBE are not supported on streams",
                    ));
                }
                Expr::ScalarFunction(ScalarFunction { func, args })
                    if WindowFn::from_name(func.name()).is_some() =>
                {
                    let kind = WindowFn::from_name(func.name()).expect("checked above");
                    if input.props.kind != StreamKind::AppendOnly {
                        return Err(self.at_window(
                            kind,
                            &args[0],
                            None,
                            CompileError::new(
                                "event-time windows need an append-only input, and this input \
                                 is a changelog",
                            )
                            .hint("window the events before joining them with a table"),
                        ));
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
        // A window closes when the watermark passes its end plus the allowed lateness plus
        // how far its time column may lag the watermark: an interval join emits a pair
        // when its later side arrives, with the earlier side's time, up to the join's
        // bound behind the watermark. Holding the window back by that lag (as Flink holds
        // back a join's output watermark) keeps those pairs from being dropped as late.
        let time_lag = window
            .as_ref()
            .and_then(|w| time_term(&input, &w.time))
            .map_or(0, |(t, _)| t.lag.max(0));
        let lateness = self
            .options
            .allowed_lateness_ms
            .saturating_mul(1_000_000)
            .saturating_add(time_lag);
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

    /// Points `err` at argument `arg` of the window call whose time argument is `time`
    /// (the whole call when `arg` is `None`).
    fn at_window(
        &self,
        kind: WindowFn,
        time: &Expr,
        arg: Option<usize>,
        err: CompileError,
    ) -> CompileError {
        let call = self.spans.window(kind, unalias(time));
        match call.map(|c| arg.and_then(|i| c.args.get(i).copied()).unwrap_or(c.call)) {
            Some(span) => err.at_span(span),
            None => err.near(self.sql, kind.name()),
        }
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
            return Err(self.at_window(
                kind,
                &time,
                Some(0),
                CompileError::new(format!(
                    "{name} needs the event-time column of its input, not {}",
                    sql_text(&time)
                ))
                .hint("declare spec.eventTime on the DataStream and window by that field"),
            ));
        }
        let sizes = args[1..]
            .iter()
            .enumerate()
            .map(|(i, e)| match unalias(e) {
                Expr::Literal(v, _) => interval_nanos(v).map_err(|err| {
                    self.at_window(
                        kind,
                        &time,
                        Some(i + 1),
                        CompileError::from_datafusion(self.sql, err),
                    )
                }),
                _ => Err(self.at_window(
                    kind,
                    &time,
                    Some(i + 1),
                    CompileError::new(format!(
                        "{name}'s sizes must be constant intervals such as INTERVAL '1' MINUTE"
                    )),
                )),
            })
            .collect::<Result<Vec<i64>>>()?;
        let (size, slide) = match kind {
            WindowFn::Hop => (sizes[1], sizes[0]),
            _ => (sizes[0], sizes[0]),
        };
        if kind == WindowFn::Hop && (size < slide || size / slide > 1000) {
            return Err(self.at_window(
                kind,
                &time,
                Some(2),
                CompileError::new(format!(
                    "HOP's size must be at least its slide and at most 1000 slides (slide {}, \
                     size {})",
                    Dur(slide),
                    Dur(size)
                ))
                .hint(
                    "HOP(time, slide, size), for example HOP(ts, INTERVAL '1' MINUTE, \
                     INTERVAL '5' MINUTE)",
                ),
            ));
        }
        Ok(Window {
            kind,
            time,
            size,
            slide,
            position,
        })
    }

    /// One aggregate call. [`super::refusals`] has refused every aggregate, clause and
    /// argument list the engine cannot maintain, by its SQL name and position.
    fn agg_call(&self, e: &Expr) -> Result<AggCall> {
        let not_supported = || {
            CompileError::new(format!(
                "the aggregate {} is not supported on streams",
                sql_text(e)
            ))
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return Err(not_supported());
        };
        let f = match func.name().to_ascii_lowercase().as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" | "mean" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            _ => return Err(not_supported()),
        };
        if params.filter.is_some()
            || !params.order_by.is_empty()
            || (params.distinct && f != AggFunc::Count)
        {
            return Err(not_supported());
        }
        let arg = match params.args.as_slice() {
            [] => None,
            [Expr::Literal(v, _)] if f == AggFunc::Count && !v.is_null() && !params.distinct => {
                None
            }
            [a] => Some(a.clone()),
            _ => return Err(not_supported()),
        };
        Ok(AggCall {
            func: f,
            arg,
            distinct: params.distinct,
        })
    }
}
