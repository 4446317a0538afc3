//! Aggregates that differ only by a `CAST` in their argument (`AVG(v)` and
//! `AVG(CAST(v AS DOUBLE))`): DataFusion names an aggregate by its argument with every
//! cast left out, so both would be named `avg(v)` and the query refused for a duplicate
//! name, aliases or not. Before planning, each further variant's argument is wrapped in
//! one more single-argument `COALESCE` (the identity, folded away by the optimizer),
//! which gives every variant a name of its own and changes no value.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, Statement, visit_expressions, visit_expressions_mut,
};

use super::refusals::AGGREGATES;

/// Gives aggregates whose names would coincide names of their own.
pub(super) fn rewrite_statement(statement: &mut Statement) {
    // Each aggregate as DataFusion would name it, and its distinct spellings in order.
    let mut variants: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let _ = visit_expressions(statement, |e| {
        if let Some((named, written)) = names(e) {
            let seen = variants.entry(named).or_default();
            if !seen.contains(&written) {
                seen.push(written);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if variants.values().all(|v| v.len() < 2) {
        return;
    }
    let _ = visit_expressions_mut(statement, |e| {
        if let Some((named, written)) = names(e)
            && let Some(i) = variants
                .get(&named)
                .and_then(|v| v.iter().position(|w| *w == written))
            && i > 0
            && let Expr::Function(f) = e
            && let FunctionArguments::List(list) = &mut f.args
        {
            for arg in &mut list.args {
                if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = arg {
                    for _ in 0..i {
                        *x = coalesce(std::mem::replace(
                            x,
                            Expr::value(sqlparser::ast::Value::Null),
                        ));
                    }
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// An aggregate call's name with its casts left out, and as written.
fn names(e: &Expr) -> Option<(String, String)> {
    let Expr::Function(f) = e else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    if !AGGREGATES.contains(&name.as_str()) {
        return None;
    }
    let mut uncast = e.clone();
    let _ = visit_expressions_mut(&mut uncast, |x| {
        if let Expr::Cast { expr, .. } = x {
            *x = (**expr).clone();
        }
        ControlFlow::<()>::Continue(())
    });
    Some((uncast.to_string(), e.to_string()))
}

fn coalesce(x: Expr) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new("coalesce")]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(x))],
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}
