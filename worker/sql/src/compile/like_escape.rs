//! `LIKE … ESCAPE 'c'`: the engine's LIKE knows one escape, the backslash, so a pattern
//! written with another escape character is rewritten into the backslash form before
//! planning: `'100!%' ESCAPE '!'` becomes `'100\%'`, and a backslash the pattern means
//! literally becomes `\\`. `ESCAPE ''` (no escape character, as in PostgreSQL) escapes
//! every backslash. A pattern that is not a string literal cannot be rewritten and is
//! refused where it has an ESCAPE other than the backslash, with its position; so is an
//! escape string longer than one character or a pattern that ends in its escape.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Spanned, Statement, Value, ValueWithSpan, visit_expressions_mut};

use crate::CompileError;

/// Rewrites every `LIKE`/`ILIKE` with an escape character other than the backslash.
pub(super) fn rewrite_statement(statement: &mut Statement) -> Result<(), CompileError> {
    let flow = visit_expressions_mut(statement, |e| {
        let (pattern, escape_char, what) = match e {
            Expr::Like {
                pattern,
                escape_char,
                ..
            } => (pattern, escape_char, "LIKE"),
            Expr::ILike {
                pattern,
                escape_char,
                ..
            } => (pattern, escape_char, "ILIKE"),
            Expr::SimilarTo { escape_char, .. } if escape_char.is_some() => {
                let span = escape_char.as_ref().map(|v| v.span).unwrap_or(e.span());
                return ControlFlow::Break(
                    CompileError::new("SIMILAR TO … ESCAPE is not supported")
                        .hint("use LIKE … ESCAPE, or regexp_like with a regular expression")
                        .at_span(span),
                );
            }
            _ => return ControlFlow::Continue(()),
        };
        match rewrite(pattern, escape_char, what) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => ControlFlow::Break(err),
        }
    });
    match flow {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn rewrite(
    pattern: &mut Expr,
    escape_char: &mut Option<ValueWithSpan>,
    what: &str,
) -> Result<(), CompileError> {
    let Some(escape) = escape_char.as_ref() else {
        return Ok(());
    };
    let escape_span = escape.span;
    let escape = match &escape.value {
        Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => s.clone(),
        other => {
            return Err(CompileError::new(format!(
                "{what} … ESCAPE needs a string of one character, not {other}"
            ))
            .at_span(escape_span));
        }
    };
    let mut chars = escape.chars();
    let escape = match (chars.next(), chars.next()) {
        (Some('\\'), None) => {
            // The engine's own escape: nothing to rewrite.
            *escape_char = None;
            return Ok(());
        }
        (first, None) => first,
        _ => {
            return Err(CompileError::new(format!(
                "{what} … ESCAPE needs one character; {escape:?} has {}",
                escape.chars().count()
            ))
            .at_span(escape_span));
        }
    };
    let Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(text),
        span,
    }) = pattern
    else {
        return Err(CompileError::new(format!(
            "{what} … ESCAPE with an escape other than the backslash needs a string \
             literal pattern"
        ))
        .hint("write the pattern as a literal, or escape it with the backslash")
        .at_span(escape_span));
    };
    let rewritten = backslash_form(text, escape).map_err(|why| {
        CompileError::new(format!("{what} pattern {text:?}: {why}")).at_span(*span)
    })?;
    *text = rewritten;
    *escape_char = None;
    Ok(())
}

/// `pattern` (escaped by `escape`, or by nothing) in the backslash-escaped form.
fn backslash_form(pattern: &str, escape: Option<char>) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            let Some(next) = chars.next() else {
                return Err(format!("ends in its escape character {c:?}"));
            };
            out.push('\\');
            out.push(next);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::backslash_form;

    #[test]
    fn patterns_are_rewritten_into_the_backslash_form() {
        assert_eq!(backslash_form("100!%", Some('!')).unwrap(), "100\\%");
        assert_eq!(backslash_form("a!_b%", Some('!')).unwrap(), "a\\_b%");
        assert_eq!(backslash_form("a!!b", Some('!')).unwrap(), "a\\!b");
        assert_eq!(backslash_form("c:\\x%", Some('!')).unwrap(), "c:\\\\x%");
        assert_eq!(backslash_form("c:\\x%", None).unwrap(), "c:\\\\x%");
        assert!(backslash_form("50!", Some('!')).is_err());
    }
}
