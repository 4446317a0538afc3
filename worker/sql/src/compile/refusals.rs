//! What cannot run on an unbounded stream, refused once, on the parsed SQL.
//!
//! Every refusal is found here, before DataFusion plans the query, so each one points at
//! the SQL through the parser's spans and none is folded away by the optimizer. Lowering
//! ([`super::lower`]) only meets what passed these checks; anything else it finds is a
//! generic "not supported" without a second copy of these messages.

use std::ops::ControlFlow;

use datafusion::execution::SessionState;
use datafusion::logical_expr::Volatility;
use sqlparser::ast::{
    Distinct, DuplicateTreatment, Expr, Function, FunctionArgumentClause, FunctionArguments,
    GroupByExpr, JoinOperator, Query, Select, SetExpr, SetOperator, Spanned, Statement,
    TableFactor, TableWithJoins, Visit, Visitor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use crate::CompileError;

/// The aggregates the engine maintains incrementally, by their SQL names.
pub(super) const AGGREGATES: [&str; 6] = ["count", "sum", "avg", "mean", "min", "max"];

/// The first construct of `statement` that cannot run on a stream, as an error pointing
/// at it.
pub(super) fn check(
    sql: &str,
    state: &SessionState,
    statement: &Statement,
) -> Result<(), CompileError> {
    let tokens = Tokenizer::new(&GenericDialect, sql)
        .tokenize_with_location()
        .unwrap_or_default();
    let mut refusals = Refusals { sql, state, tokens };
    match statement.visit(&mut refusals) {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Refusals<'a> {
    sql: &'a str,
    state: &'a SessionState,
    /// The SQL's tokens, to find the keyword that introduces a clause: the parser's
    /// spans cover a clause's expressions, not the keyword before them.
    tokens: Vec<TokenWithSpan>,
}

/// An error pointing at `span`, or at the first `word` of the SQL when the parser did not
/// record a span.
fn at(sql: &str, span: Span, word: &str, err: CompileError) -> CompileError {
    err.at_span(span).near(sql, word)
}

fn unsupported(what: &str, hint: &str) -> CompileError {
    CompileError::new(format!("{what} is not supported on streams")).hint(hint)
}

impl Refusals<'_> {
    /// Where the last of `keywords` before `at` starts: the `ORDER` of an `ORDER BY x`
    /// whose span starts at `x`.
    fn keyword_before(&self, at: Location, keywords: &[Keyword]) -> Option<Location> {
        self.tokens
            .iter()
            .take_while(|t| t.span.start < at)
            .filter(|t| matches!(&t.token, Token::Word(w) if keywords.contains(&w.keyword)))
            .last()
            .map(|t| t.span.start)
    }

    /// Refuses the clause introduced by one of `keywords`, whose content spans `span`.
    fn refuse_clause<T>(
        &self,
        span: Span,
        keywords: &[Keyword],
        word: &str,
        err: CompileError,
    ) -> ControlFlow<CompileError, T> {
        let start = self
            .keyword_before(span.start, keywords)
            .unwrap_or(span.start);
        self.refuse(Span::new(start, span.end), word, err)
    }

    fn refuse<T>(&self, span: Span, word: &str, err: CompileError) -> ControlFlow<CompileError, T> {
        ControlFlow::Break(at(self.sql, span, word, err))
    }

    fn set_expr(&self, body: &SetExpr) -> ControlFlow<CompileError> {
        match body {
            SetExpr::SetOperation {
                op, left, right, ..
            } => {
                let name = match op {
                    SetOperator::Union => None,
                    SetOperator::Except | SetOperator::Minus => Some("EXCEPT"),
                    SetOperator::Intersect => Some("INTERSECT"),
                };
                if let Some(name) = name {
                    return self.refuse_clause(
                        right.span(),
                        &[Keyword::EXCEPT, Keyword::MINUS, Keyword::INTERSECT],
                        name,
                        unsupported(
                            name,
                            "use a JOIN, or a LEFT JOIN keeping the unmatched rows",
                        ),
                    );
                }
                self.set_expr(left)?;
                self.set_expr(right)
            }
            SetExpr::Values(v) => self.refuse(
                v.span(),
                "VALUES",
                CompileError::new("the query must read from a DataStream")
                    .hint("add FROM namespace.stream"),
            ),
            _ => ControlFlow::Continue(()),
        }
    }

    fn joins(&self, from: &TableWithJoins) -> ControlFlow<CompileError> {
        for j in &from.joins {
            let refusal = match &j.join_operator {
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => Some((
                    Keyword::RIGHT,
                    unsupported("RIGHT JOIN", "swap the two sides and write LEFT JOIN"),
                )),
                JoinOperator::FullOuter(_) => Some((
                    Keyword::FULL,
                    unsupported("FULL OUTER JOIN", "use an inner or LEFT JOIN"),
                )),
                JoinOperator::Join(_)
                | JoinOperator::Inner(_)
                | JoinOperator::Left(_)
                | JoinOperator::LeftOuter(_)
                | JoinOperator::CrossJoin(_) => None,
                _ => Some((
                    Keyword::JOIN,
                    unsupported("this kind of join", "use JOIN or LEFT JOIN ... ON"),
                )),
            };
            if let Some((keyword, err)) = refusal {
                let word = format!("{keyword:?}");
                return self.refuse_clause(j.relation.span(), &[keyword], &word, err);
            }
        }
        ControlFlow::Continue(())
    }

    fn function(&self, f: &Function) -> ControlFlow<CompileError> {
        let span = f.span();
        let name = f.name.to_string().to_ascii_lowercase();
        let word = f.name.0.last().map(|p| p.to_string()).unwrap_or_default();
        if f.over.is_some() {
            return self.refuse(
                span,
                &word,
                CompileError::new("window functions with OVER are not supported on streams")
                    .hint("use GROUP BY with TUMBLE, HOP or SESSION"),
            );
        }
        if let Some(udf) = self.state.scalar_functions().get(&name)
            && udf.signature().volatility != Volatility::Immutable
        {
            return self.refuse(
                span,
                &word,
                CompileError::new(format!(
                    "{}() is not deterministic: replaying the stream would give different \
                     results",
                    udf.name()
                ))
                .hint(
                    "use the event-time column instead of the clock, or a hash of the row \
                     instead of a random number",
                ),
            );
        }
        if self.state.aggregate_functions().contains_key(&name) {
            return self.aggregate(f, &name, &word);
        }
        ControlFlow::Continue(())
    }

    fn aggregate(&self, f: &Function, name: &str, word: &str) -> ControlFlow<CompileError> {
        let span = f.span();
        let upper = name.to_uppercase();
        if !AGGREGATES.contains(&name) {
            return self.refuse(
                span,
                word,
                CompileError::new(format!(
                    "the aggregate {upper}() is not supported on streams"
                ))
                .hint("use COUNT, COUNT(DISTINCT), SUM, AVG, MIN or MAX"),
            );
        }
        if let Some(filter) = &f.filter {
            return self.refuse_clause(
                filter.span(),
                &[Keyword::FILTER],
                "FILTER",
                unsupported(
                    "FILTER (WHERE ...) on an aggregate",
                    "use SUM(CASE WHEN ... THEN 1 ELSE 0 END)",
                ),
            );
        }
        let (distinct, args, clauses) = match &f.args {
            FunctionArguments::List(list) => (
                list.duplicate_treatment == Some(DuplicateTreatment::Distinct),
                list.args.len(),
                list.clauses.as_slice(),
            ),
            _ => (false, 0, &[][..]),
        };
        if !f.within_group.is_empty()
            || clauses
                .iter()
                .any(|c| matches!(c, FunctionArgumentClause::OrderBy(_)))
        {
            return self.refuse(
                span,
                "ORDER",
                unsupported("ORDER BY inside an aggregate", "remove the ORDER BY"),
            );
        }
        if distinct && name != "count" {
            return self.refuse(
                span,
                word,
                CompileError::new(format!("{upper}(DISTINCT ...) is not supported on streams"))
                    .hint("only COUNT(DISTINCT ...) is; aggregate a GROUP BY subquery instead"),
            );
        }
        if args > 1 {
            return self.refuse(
                span,
                word,
                CompileError::new(format!("{upper}() takes one argument")),
            );
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Refusals<'_> {
    type Break = CompileError;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<CompileError> {
        if let Some(with) = &q.with
            && with.recursive
        {
            return self.refuse(
                with.span(),
                "RECURSIVE",
                CompileError::new("recursive CTEs are not supported on streams"),
            );
        }
        if let Some(limit) = &q.limit_clause {
            return self.refuse_clause(
                limit.span(),
                &[Keyword::LIMIT, Keyword::OFFSET],
                "LIMIT",
                CompileError::new("LIMIT (top-N) over a stream is not supported yet")
                    .hint("remove the LIMIT, or aggregate with MAX/MIN per group"),
            );
        }
        if let Some(fetch) = &q.fetch {
            return self.refuse_clause(
                fetch.quantity.as_ref().map_or(Span::empty(), Spanned::span),
                &[Keyword::FETCH],
                "FETCH",
                CompileError::new("FETCH FIRST (top-N) over a stream is not supported yet")
                    .hint("remove the FETCH, or aggregate with MAX/MIN per group"),
            );
        }
        if let Some(order_by) = &q.order_by {
            return self.refuse_clause(
                order_by.span(),
                &[Keyword::ORDER],
                "ORDER",
                CompileError::new("ORDER BY over an unbounded stream never produces a result")
                    .hint("remove the ORDER BY; consumers see changes in arrival order"),
            );
        }
        self.set_expr(&q.body)
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<CompileError> {
        if let Some(Distinct::On(on)) = &s.distinct {
            return self.refuse_clause(
                on.first().map_or(Span::empty(), Spanned::span),
                &[Keyword::DISTINCT],
                "DISTINCT",
                unsupported("DISTINCT ON", "use GROUP BY with MIN or MAX"),
            );
        }
        if s.from.is_empty() {
            return self.refuse(
                s.span(),
                "SELECT",
                CompileError::new("the query must read from a DataStream")
                    .hint("add FROM namespace.stream"),
            );
        }
        if let GroupByExpr::Expressions(exprs, modifiers) = &s.group_by {
            let sets = exprs
                .iter()
                .find(|e| matches!(e, Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_)));
            if let Some(e) = sets {
                return self.refuse_clause(
                    e.span(),
                    &[Keyword::GROUPING, Keyword::CUBE, Keyword::ROLLUP],
                    "GROUP",
                    CompileError::new(
                        "GROUPING SETS, ROLLUP and CUBE are not supported on streams",
                    )
                    .hint("write one Transform per grouping"),
                );
            }
            if !modifiers.is_empty() {
                return self.refuse(
                    exprs.first().map_or(Span::empty(), Spanned::span),
                    "GROUP",
                    unsupported("GROUP BY ... WITH", "write one Transform per grouping"),
                );
            }
        }
        for from in &s.from {
            self.joins(from)?;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<CompileError> {
        match t {
            TableFactor::UNNEST { .. } => self.refuse(
                t.span(),
                "UNNEST",
                unsupported("UNNEST", "flatten lists in the producer"),
            ),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.joins(table_with_joins),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<CompileError> {
        match e {
            Expr::Function(f) => self.function(f),
            Expr::InSubquery { subquery, .. } | Expr::Exists { subquery, .. } => self
                .refuse_clause(
                    subquery.span(),
                    &[Keyword::IN, Keyword::EXISTS],
                    "SELECT",
                    unsupported("a subquery in WHERE (IN, EXISTS)", "rewrite it as a JOIN"),
                ),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Every output column needs a name a DataStream field can have, and a distinct one.
pub(super) fn check_output_names(
    sql: &str,
    schema: &datafusion::common::DFSchema,
    spans: &super::spans::SqlSpans,
) -> Result<(), CompileError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let name = f.name();
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let err = if !valid {
            CompileError::new(format!(
                "output column {name:?} needs a name that a DataStream field can have"
            ))
            .hint(format!(
                "give it one with AS, for example `{name} AS total`"
            ))
        } else if !seen.insert(name.to_ascii_lowercase()) {
            CompileError::new(format!("the output has two columns named {name:?}"))
                .hint("rename one of them with AS")
        } else {
            continue;
        };
        return Err(match spans.output(i) {
            Some(span) => err.at_span(span),
            None => err.near(sql, name.split('(').next().unwrap_or(name)),
        });
    }
    Ok(())
}
