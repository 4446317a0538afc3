//! SQL text → DataFusion logical plan → streaming plan, in stages:
//!
//! 1. parse with sqlparser, and refuse what cannot run on a stream ([`refusals`]), each
//!    refusal pointing at the SQL through the parser's spans;
//! 2. rewrite event-time window calls so DataFusion can plan them ([`crate::windows`]);
//! 3. plan, type-check and optimize with DataFusion, against the DataStreams the
//!    [`Catalog`] resolves;
//! 4. lower the optimized plan into streaming nodes ([`lower`], [`aggregate`], [`join`]),
//!    tracking which columns carry event time ([`time`]);
//! 5. describe the output: kind, key, event time, column [`lineage`], fingerprints.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use datafusion::common::alias::AliasGenerator;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::catalog::Catalog;
use strum::VariantArray as _;

use crate::windows::{self, WindowFn};
use crate::{
    ColumnLineage, CompileError, CompileOptions, CompiledTransform, StreamInput, StreamKind,
};

mod aggregate;
mod aggregate_names;
mod comparison;
mod join;
mod like_escape;
mod lineage;
mod lower;
mod refusals;
mod spans;
mod time;

use lower::Lowerer;
use spans::SqlSpans;

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
            .filter(|r| {
                ![
                    "single_distinct_aggregation_to_group_by",
                    // It rewrites a JOIN none of whose right columns is selected into a semi
                    // join (Nexmark q5 as published): what the user wrote is what is planned.
                    "eliminate_join",
                ]
                .contains(&r.name())
            })
            .cloned()
            .collect();
        let mut state = SessionStateBuilder::new_from_existing(base)
            .with_optimizer_rules(rules)
            .build();
        for w in WindowFn::VARIANTS {
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
    refusals::check(sql, state, &statement)?;
    let spans = SqlSpans::of(&statement);
    windows::rewrite_statement(&mut statement)?;
    like_escape::rewrite_statement(&mut statement)?;
    aggregate_names::rewrite_statement(&mut statement);

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
            let err = CompileError::new(format!("unknown DataStream '{name}'")).hint(hint);
            return match spans.relation(name) {
                Some(span) => err.at_span(span),
                None => err.near(sql, name.rsplit('.').next().unwrap_or(name)),
            };
        }
        let err = CompileError::from_datafusion(sql, e);
        // Errors raised by the window functions name them.
        let window = WindowFn::VARIANTS
            .iter()
            .find(|w| err.message.starts_with(&w.name().to_uppercase()))
            .and_then(|w| spans.first_window(*w));
        match window {
            Some(call) => err.at_span(call.call),
            None => err,
        }
    })?;
    // The optimizer's generated names (`__common_expr_1`) count from 1 in every compile:
    // the shared session's generator would count across compiles, and the names reach
    // the plan's rendering, which the state fingerprint hashes.
    let mut optimizer_state = state.clone();
    optimizer_state.execution_props_mut().alias_generator = Arc::new(AliasGenerator::new());
    let optimized = optimizer_state
        .optimize(&plan)
        .map_err(|e| comparison::locate(&plan, CompileError::from_datafusion(sql, e)))?;

    let used = catalog.used.borrow().clone();
    let inputs: Vec<StreamInput> = used.iter().map(|i| streams[*i].clone()).collect();
    let lowerer = Lowerer {
        sql,
        catalog: &catalog,
        used: &used,
        options,
        spans: &spans,
    };
    let root = lowerer.lower(&optimized)?;
    refusals::check_output_names(sql, &root.schema, &spans)?;

    let output_schema = Arc::new(root.schema.as_arrow().clone());
    let names: Vec<String> = output_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let output_kind = root.props.kind;
    let output_key = match output_kind {
        StreamKind::AppendOnly => Vec::new(),
        // A changelog without a key of its own (a global aggregate's one row has the empty
        // key) is keyed by the whole row: an update retracts the old row (a tombstone on
        // its key) and writes the new one, and the output is a table Kafka can compact.
        StreamKind::Changelog => match &root.props.key {
            Some(k) if !k.is_empty() => k.iter().map(|i| names[*i].clone()).collect(),
            _ => names.clone(),
        },
    };
    let output_event_time = root
        .props
        .time_cols
        .iter()
        .min_by_key(|t| t.lag)
        .map(|t| names[t.index].clone());
    let lineage = lineage::lineage(&root, &inputs)
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
