//! Where things are in the SQL: the parser's spans of the names and window calls that
//! later stages report errors about, collected once before DataFusion plans the query
//! (DataFusion's plan keeps spans only on column references).

use std::ops::ControlFlow;

use datafusion::logical_expr::Expr as PlanExpr;
use sqlparser::ast::{
    Expr, FunctionArguments, ObjectName, SelectItem, SetExpr, Spanned, Statement, Visit, Visitor,
};
use sqlparser::tokenizer::Span;

use crate::windows::WindowFn;

/// The spans of a statement's relations, window calls and output columns.
#[derive(Default)]
pub(super) struct SqlSpans {
    relations: Vec<(String, Span)>,
    windows: Vec<WindowCall>,
    /// Each output column's select item (its alias when it has one), when the outermost
    /// select list has no wildcard.
    outputs: Vec<Span>,
}

/// One `TUMBLE`, `HOP` or `SESSION` call as written.
pub(super) struct WindowCall {
    kind: WindowFn,
    /// The whole call.
    pub call: Span,
    /// Each argument.
    pub args: Vec<Span>,
}

impl SqlSpans {
    /// Collects the spans of `statement`, before any rewrite copies its window calls.
    pub fn of(statement: &Statement) -> Self {
        let mut spans = Self::default();
        let _ = statement.visit(&mut spans);
        spans.outputs = output_items(statement).unwrap_or_default();
        spans
    }

    /// Where output column `index` is written in the select list, if it can be told.
    pub fn output(&self, index: usize) -> Option<Span> {
        self.outputs.get(index).copied()
    }

    /// Where the relation whose last name part is `name`'s (case-insensitive) appears first.
    pub fn relation(&self, name: &str) -> Option<Span> {
        let last = name.rsplit('.').next().unwrap_or(name);
        self.relations
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(last))
            .map(|(_, s)| *s)
    }

    /// The first call of `kind` as written.
    pub fn first_window(&self, kind: WindowFn) -> Option<&WindowCall> {
        self.windows.iter().find(|w| w.kind == kind)
    }

    /// The call of `kind` whose time argument is `time` (matched through the column's
    /// span), or the first call of `kind`.
    pub fn window(&self, kind: WindowFn, time: &PlanExpr) -> Option<&WindowCall> {
        let column = match time {
            PlanExpr::Column(c) => c.spans().first(),
            _ => None,
        };
        column
            .and_then(|at| {
                self.windows.iter().find(|w| {
                    w.kind == kind
                        && w.args.first().is_some_and(|a| {
                            (a.start.line, a.start.column) == (at.start.line, at.start.column)
                        })
                })
            })
            .or_else(|| self.first_window(kind))
    }
}

/// The spans of the outermost select list's items (the first SELECT of a UNION names the
/// output), or `None` if a wildcard makes the columns unknowable from the text.
fn output_items(statement: &Statement) -> Option<Vec<Span>> {
    let Statement::Query(q) = statement else {
        return None;
    };
    let mut body = q.body.as_ref();
    let select = loop {
        match body {
            SetExpr::Select(s) => break s,
            SetExpr::SetOperation { left, .. } => body = left,
            SetExpr::Query(q) => body = q.body.as_ref(),
            _ => return None,
        }
    };
    select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Some(e.span()),
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.span),
            _ => None,
        })
        .collect()
}

impl Visitor for SqlSpans {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if let Some(ident) = relation.0.last().and_then(|p| p.as_ident()) {
            self.relations.push((ident.value.clone(), relation.span()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e
            && let Some(kind) = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .and_then(|i| WindowFn::from_name(&i.value))
        {
            let args = match &f.args {
                FunctionArguments::List(list) => list.args.iter().map(Spanned::span).collect(),
                _ => Vec::new(),
            };
            self.windows.push(WindowCall {
                kind,
                call: f.span(),
                args,
            });
        }
        ControlFlow::Continue(())
    }
}
