//! Event-time windows in GROUP BY: `TUMBLE(ts, size)`, `HOP(ts, slide, size)` and
//! `SESSION(ts, gap)`.
//!
//! Each is a scalar function returning a struct `{window_start, window_end}`. In a SELECT
//! whose GROUP BY calls one, the bare names `window_start` and `window_end` in the
//! select list and HAVING are rewritten to fields of that call before DataFusion plans
//! the query, so they resolve against the grouped window. The streaming planner then
//! recognizes the call among the group expressions and assigns rows to windows itself
//! (a hop puts a row in several windows, a session merges windows); only TUMBLE can
//! also be evaluated row by row.

use arrow::array::AsArray;
use arrow::datatypes::TimestampNanosecondType;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StructArray, TimestampNanosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, IntervalMonthDayNano, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, Ident, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, TableWithJoins, visit_expressions_mut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::CompileError;

/// The window struct's start field and the column name the SQL uses.
pub const WINDOW_START: &str = "window_start";
/// The window struct's end field and the column name the SQL uses.
pub const WINDOW_END: &str = "window_end";

/// The kinds of group window.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
pub enum WindowFn {
    /// `TUMBLE(ts, size)`
    Tumble,
    /// `HOP(ts, slide, size)`
    Hop,
    /// `SESSION(ts, gap)`
    Session,
}

impl WindowFn {
    /// The function's SQL name, lower case.
    pub fn name(self) -> &'static str {
        self.into()
    }

    fn arity(self) -> usize {
        match self {
            Self::Hop => 3,
            _ => 2,
        }
    }

    /// The window function a name refers to.
    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// The UDF DataFusion plans with.
    pub fn udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(WindowUdf {
            kind: self,
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

/// The struct type a window function returns for a time column of type `ts`.
pub fn window_type(ts: &DataType) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new(WINDOW_START, ts.clone(), false),
        Field::new(WINDOW_END, ts.clone(), false),
    ]))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowUdf {
    kind: WindowFn,
    signature: Signature,
}

impl ScalarUDFImpl for WindowUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs<'_>,
    ) -> Result<arrow::datatypes::FieldRef> {
        // The argument's field names the column at fault, which `return_type` cannot.
        if let Some(time) = args.arg_fields.first()
            && args.arg_fields.len() == self.kind.arity()
            && !matches!(time.data_type(), DataType::Timestamp(_, _))
        {
            return plan_err!(
                "{}'s first argument must be a timestamp (the event time), but {} is {}",
                self.kind.name().to_uppercase(),
                time.name(),
                crate::error::user_type(time.data_type())
            );
        }
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let out = self.return_type(&types)?;
        Ok(Arc::new(Field::new(self.name(), out, true)))
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let name = self.kind.name().to_uppercase();
        if arg_types.len() != self.kind.arity() {
            let usage = match self.kind {
                WindowFn::Tumble => "TUMBLE(time, size)",
                WindowFn::Hop => "HOP(time, slide, size)",
                WindowFn::Session => "SESSION(time, gap)",
            };
            return plan_err!("{name} takes {} arguments: {usage}", self.kind.arity());
        }
        let ts = &arg_types[0];
        if !matches!(ts, DataType::Timestamp(_, _)) {
            return plan_err!(
                "{name}'s first argument must be a timestamp (the event time), not {}",
                crate::error::user_type(ts)
            );
        }
        for t in &arg_types[1..] {
            if !matches!(t, DataType::Interval(_) | DataType::Duration(_)) {
                return plan_err!(
                    "{name}'s sizes must be intervals such as INTERVAL '1' MINUTE, not {}",
                    crate::error::user_type(t)
                );
            }
        }
        Ok(window_type(ts))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.kind != WindowFn::Tumble {
            return exec_err!(
                "{} assigns rows to windows only in GROUP BY",
                self.kind.name().to_uppercase()
            );
        }
        let n = args.number_rows;
        let ts_type = args.arg_fields[0].data_type().clone();
        let size = match &args.args[1] {
            ColumnarValue::Scalar(s) => interval_nanos(s)?,
            ColumnarValue::Array(_) => return exec_err!("TUMBLE's size must be a constant"),
        };
        let ts = args.args[0].clone().into_array(n)?;
        let nanos = cast(&ts, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let nanos = nanos.as_primitive::<TimestampNanosecondType>();
        let starts: TimestampNanosecondArray = nanos
            .iter()
            .map(|t| t.map(|t| t.div_euclid(size) * size))
            .collect();
        let ends: TimestampNanosecondArray = starts.iter().map(|t| t.map(|t| t + size)).collect();
        let back = |a: TimestampNanosecondArray| -> Result<ArrayRef> { Ok(cast(&a, &ts_type)?) };
        let DataType::Struct(fields) = window_type(&ts_type) else {
            unreachable!("window_type returns a struct")
        };
        let array =
            StructArray::try_new(fields, vec![back(starts)?, back(ends)?], ts.logical_nulls())?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// A constant interval's length in nanoseconds; months are refused (their length varies),
/// and so is an interval too long for 64-bit nanoseconds (about 292 years).
pub fn interval_nanos(value: &ScalarValue) -> Result<i64> {
    const DAY: i64 = 86_400_000_000_000;
    let too_long = || {
        datafusion::error::DataFusionError::Plan(format!(
            "the interval is too long: at most {} days (about 292 years)",
            i64::MAX / DAY
        ))
    };
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        })) => {
            if *months != 0 {
                return plan_err!(
                    "a window measured in months or years varies in length; use days"
                );
            }
            i64::from(*days)
                .checked_mul(DAY)
                .and_then(|d| d.checked_add(*nanoseconds))
                .ok_or_else(too_long)?
        }
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days)
            .checked_mul(DAY)
            .and_then(|d| d.checked_add(i64::from(v.milliseconds) * 1_000_000))
            .ok_or_else(too_long)?,
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return plan_err!("a window measured in months or years varies in length; use days");
        }
        ScalarValue::DurationSecond(Some(v)) => {
            v.checked_mul(1_000_000_000).ok_or_else(too_long)?
        }
        ScalarValue::DurationMillisecond(Some(v)) => {
            v.checked_mul(1_000_000).ok_or_else(too_long)?
        }
        ScalarValue::DurationMicrosecond(Some(v)) => v.checked_mul(1_000).ok_or_else(too_long)?,
        ScalarValue::DurationNanosecond(Some(v)) => *v,
        other => return plan_err!("expected a constant interval, found {other}"),
    };
    if nanos <= 0 {
        return plan_err!("a window size must be positive");
    }
    Ok(nanos)
}

/// Rewrites `window_start` / `window_end` in every SELECT that groups by a window.
pub(crate) fn rewrite_statement(stmt: &mut Statement) -> Result<(), CompileError> {
    match stmt {
        Statement::Query(q) => rewrite_query(q),
        _ => Err(
            CompileError::new("a Transform's SQL must be one SELECT query")
                .hint("write SELECT ... FROM namespace.stream ..."),
        ),
    }
}

fn rewrite_query(q: &mut Query) -> Result<(), CompileError> {
    if let Some(with) = &mut q.with {
        for cte in &mut with.cte_tables {
            rewrite_query(&mut cte.query)?;
        }
    }
    rewrite_set_expr(&mut q.body)
}

fn rewrite_set_expr(s: &mut SetExpr) -> Result<(), CompileError> {
    match s {
        SetExpr::Select(select) => rewrite_select(select),
        SetExpr::Query(q) => rewrite_query(q),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left)?;
            rewrite_set_expr(right)
        }
        _ => Ok(()),
    }
}

fn rewrite_from(t: &mut TableWithJoins) -> Result<(), CompileError> {
    rewrite_factor(&mut t.relation)?;
    for j in &mut t.joins {
        rewrite_factor(&mut j.relation)?;
    }
    Ok(())
}

fn rewrite_factor(f: &mut TableFactor) -> Result<(), CompileError> {
    match f {
        TableFactor::Derived { subquery, .. } => rewrite_query(subquery),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => rewrite_from(table_with_joins),
        _ => Ok(()),
    }
}

fn window_call(e: &SqlExpr) -> Option<WindowFn> {
    match e {
        SqlExpr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .and_then(|i| WindowFn::from_name(&i.value)),
        SqlExpr::Nested(inner) => window_call(inner),
        _ => None,
    }
}

fn rewrite_select(select: &mut Select) -> Result<(), CompileError> {
    for t in &mut select.from {
        rewrite_from(t)?;
    }
    let GroupByExpr::Expressions(exprs, _) = &select.group_by else {
        return Ok(());
    };
    let calls: Vec<&SqlExpr> = exprs.iter().filter(|e| window_call(e).is_some()).collect();
    let call = match calls.as_slice() {
        [] => return Ok(()),
        [one] => (*one).clone(),
        [_, second, ..] => {
            // Point at the second window call, where the parser saw it.
            let at = sqlparser::ast::Spanned::span(*second).start;
            return Err(CompileError::new("a GROUP BY can have only one window")
                .hint("group by one of TUMBLE, HOP or SESSION")
                .at_position(at.line, at.column));
        }
    };
    let field = |name: &str| -> Result<SqlExpr, CompileError> {
        Parser::new(&GenericDialect)
            .try_with_sql(&format!("get_field({call}, '{name}')"))
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| CompileError::new(format!("cannot rewrite the window call {call}: {e}")))
    };
    let start = field(WINDOW_START)?;
    let end = field(WINDOW_END)?;
    let replace = |e: &mut SqlExpr| {
        if let SqlExpr::Identifier(id) = e {
            if id.value.eq_ignore_ascii_case(WINDOW_START) {
                *e = start.clone();
            } else if id.value.eq_ignore_ascii_case(WINDOW_END) {
                *e = end.clone();
            }
        }
        ControlFlow::<()>::Continue(())
    };
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(SqlExpr::Identifier(id)) = item {
            let name = id.value.to_ascii_lowercase();
            if name == WINDOW_START || name == WINDOW_END {
                *item = SelectItem::ExprWithAlias {
                    expr: if name == WINDOW_START {
                        start.clone()
                    } else {
                        end.clone()
                    },
                    alias: Ident::new(name),
                };
                continue;
            }
        }
        let _ = visit_expressions_mut(item, replace);
    }
    if let Some(having) = &mut select.having {
        let _ = visit_expressions_mut(having, replace);
    }
    Ok(())
}
