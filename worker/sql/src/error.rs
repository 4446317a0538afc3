//! Compile errors that point at the SQL.

use std::fmt;

use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;

/// SQL that cannot run as a stream, or does not type-check, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// What is wrong.
    pub message: String,
    /// The 1-based line of the SQL the error points at, when known.
    pub line: Option<u64>,
    /// The 1-based column of the SQL the error points at, when known.
    pub column: Option<u64>,
    /// How to fix it, when there is a known way.
    pub hint: Option<String>,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message)?,
            (Some(l), None) => write!(f, "line {l}: {}", self.message)?,
            _ => f.write_str(&self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl CompileError {
    /// An error without a position.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: None,
            column: None,
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Points the error at a position.
    pub fn at_position(mut self, line: u64, column: u64) -> Self {
        if line > 0 {
            self.line = Some(line);
            self.column = (column > 0).then_some(column);
        }
        self
    }

    /// Points the error at where the parser saw the construct at fault; an empty span
    /// (the parser did not record one) leaves the error as it is.
    pub(crate) fn at_span(self, span: sqlparser::tokenizer::Span) -> Self {
        self.at_position(span.start.line, span.start.column)
    }

    /// Points the error at the first whole-word, case-insensitive occurrence of `needle`
    /// in the SQL (outside string literals), if there is one.
    pub fn near(mut self, sql: &str, needle: &str) -> Self {
        if self.line.is_none()
            && let Some((l, c)) = locate(sql, needle)
        {
            self = self.at_position(l, c);
        }
        self
    }

    /// Translates a DataFusion planning error, keeping its position when it has one.
    pub(crate) fn from_datafusion(sql: &str, err: DataFusionError) -> Self {
        let diagnostic = err.diagnostic().cloned();
        let root = err.find_root();
        let mut message = match root {
            DataFusionError::SQL(e, _) => e.to_string(),
            DataFusionError::Plan(m) | DataFusionError::Execution(m) => m.clone(),
            DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
            DataFusionError::SchemaError(e, _) => e.to_string(),
            other => other.to_string(),
        };
        message = tidy(&message);
        if let Some(out) = no_matching_signature(sql, &message) {
            return out;
        }
        if let Some(out) = not_a_timestamp(sql, &message) {
            return out;
        }
        let reworded = reword(&message);
        if let Some(r) = &reworded {
            message = r.message.clone();
        }
        let mut out = Self::new(message.clone());
        if let Some(d) = &diagnostic
            && let Some(op) = message.strip_suffix(" queries have different number of columns")
            && let [left, right] = d.notes.as_slice()
        {
            // DataFusion notes each side's count at that side: point at the second.
            let count = |n: &datafusion::common::diagnostic::DiagnosticNote| {
                n.message
                    .trim_start_matches("this side has ")
                    .trim_end_matches(" fields")
                    .to_owned()
            };
            out = Self::new(format!(
                "the two sides of the {op} have different numbers of columns ({} and {})",
                count(left),
                count(right)
            ))
            .hint(format!(
                "give each SELECT of the {op} the same columns, in the same order"
            ));
            if let Some(span) = right.span {
                out = out.at_position(span.start.line, span.start.column);
            }
            return out;
        }
        if let Some(d) = diagnostic {
            if let Some(span) = d.span {
                out = out.at_position(span.start.line, span.start.column);
            }
            if let Some(help) = d.helps.first()
                && reworded.as_ref().is_none_or(|r| r.hint.is_none())
            {
                out = out.hint(help.message.clone());
            }
        }
        if out.line.is_none()
            && let Some((l, c)) = parser_position(&message)
        {
            out.message = strip_parser_position(&message);
            out = out.at_position(l, c);
        }
        if out.line.is_none() && message.contains("found: EOF") {
            // The SQL ended too early: point just past its last character.
            let line = sql.lines().count().max(1) as u64;
            let col = sql.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
            out = out.at_position(line, col);
        }
        if let Some(r) = reworded {
            if out.hint.is_none() {
                out.hint = r.hint;
            }
            for needle in r.near {
                out = out.near(sql, &needle);
            }
        }
        if out.line.is_none() {
            // Point at the first quoted name the message mentions.
            for quoted in quoted_names(&message) {
                let bare = quoted.rsplit('.').next().unwrap_or(&quoted).to_owned();
                out = out.near(sql, &bare);
                if out.line.is_some() {
                    break;
                }
            }
        }
        out
    }
}

/// A type in the words of a DataStream schema (`string`, `bigint`, `timestamp`), never
/// Arrow's or DataFusion's names.
pub fn user_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            "unsigned integer".into()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p}, {s})"),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytes".into(),
        DataType::Struct(_) => "struct".into(),
        DataType::List(_) | DataType::LargeList(_) => "list".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::Null => "null".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// An Arrow type as DataFusion prints it (`Utf8`, `Int64`, `Timestamp(ms, "UTC")`), in the
/// words of a DataStream schema.
fn user_type_named(arrow: &str) -> String {
    let word: String = arrow
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match word.as_str() {
        "Utf8" | "LargeUtf8" | "Utf8View" => "string",
        "Int8" | "Int16" | "Int32" => "int",
        "Int64" => "bigint",
        "UInt8" | "UInt16" | "UInt32" | "UInt64" => "unsigned integer",
        "Float16" | "Float32" | "Float64" => "double",
        "Boolean" => "boolean",
        "Decimal" | "Decimal128" | "Decimal256" => "decimal",
        "Date32" | "Date64" => "date",
        "Timestamp" => "timestamp",
        "Binary" | "LargeBinary" | "BinaryView" => "bytes",
        "Struct" => "struct",
        "List" | "LargeList" => "list",
        "Duration" | "Interval" => "interval",
        "Null" => "null",
        _ => return word.to_lowercase(),
    }
    .to_owned()
}

/// DataFusion's answer to a function called with arguments it has no signature for (an
/// "Internal error" with every signature listed), in the user's words: the call as written,
/// the argument types and what the function takes, at the call.
fn no_matching_signature(sql: &str, message: &str) -> Option<CompileError> {
    const MARK: &str = "No function matches the given name and argument types '";
    let at = message.find(MARK)? + MARK.len();
    let signature = &message[at..at + message[at..].find('\'')?];
    let (name, args) = signature.split_once('(')?;
    let args = args.strip_suffix(')').unwrap_or(args);
    let given: Vec<String> = if args.trim().is_empty() {
        Vec::new()
    } else {
        args.split(", ").map(user_type_named).collect()
    };
    let mut takes: Vec<String> = Vec::new();
    for part in message.split("requires ").skip(1) {
        let t = user_type_named(part);
        if t != "unsigned integer" && !t.is_empty() && !takes.contains(&t) {
            takes.push(t);
        }
    }
    let upper = name.to_uppercase();
    let call = call_text(sql, name).unwrap_or_else(|| format!("{upper}(…)"));
    let article = |t: &str| {
        if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
            format!("an {t}")
        } else {
            format!("a {t}")
        }
    };
    let mut text = format!(
        "{call}: {upper} cannot take {}",
        match given.as_slice() {
            [] => "no arguments".to_owned(),
            [one] => article(one),
            many => format!("({})", many.join(", ")),
        }
    );
    if !takes.is_empty() {
        let list: Vec<String> = takes.iter().map(|t| article(t)).collect();
        let (last, rest) = list.split_last()?;
        let options = if rest.is_empty() {
            last.clone()
        } else {
            format!("{} or {last}", rest.join(", "))
        };
        text.push_str(&format!("; it takes {options}"));
    }
    Some(
        CompileError::new(text)
            .hint("cast the argument, for example CAST(x AS bigint), or use another column")
            .near(sql, name),
    )
}

/// A DataFusion message reworded in the user's terms, with a hint and the words to point
/// at when DataFusion gave no position.
struct Reworded {
    message: String,
    hint: Option<String>,
    near: Vec<String>,
}

/// DataFusion's messages about names, in the terms of a Transform: a column or function
/// that does not exist, and two output columns of one name.
fn reword(message: &str) -> Option<Reworded> {
    if let Some(rest) = message.strip_prefix("No field named ") {
        let (name, valid) = rest.split_once(". Valid fields are ")?;
        let valid = valid.trim_end_matches('.');
        let bare = name.trim_matches('"');
        return Some(Reworded {
            message: format!("unknown column {name}"),
            hint: Some(format!("the columns here are {valid}")),
            near: vec![bare.rsplit('.').next().unwrap_or(bare).to_owned()],
        });
    }
    if let Some(rest) = message.strip_prefix("Invalid function '") {
        // DataFusion's "Did you mean" picks among equally close names in hash order: not
        // repeatable, so not repeated.
        let (name, _) = rest.split_once('\'')?;
        let hint = "check its name: Weir runs DataFusion's built-in SQL functions".to_owned();
        return Some(Reworded {
            message: format!("unknown function {name}()"),
            hint: Some(hint),
            near: vec![name.to_owned()],
        });
    }
    if message.starts_with("Column in SELECT must be in GROUP BY")
        && let Some((_, rest)) = message.split_once("column \"")
        && let Some((column, _)) = rest.split_once('"')
    {
        // DataFusion's own hint suggests ANY_VALUE, which streams do not support.
        let bare = column.rsplit('.').next().unwrap_or(column);
        return Some(Reworded {
            message: format!(
                "{column} is selected but neither in the GROUP BY nor inside an aggregate"
            ),
            hint: Some(format!(
                "add {bare} to the GROUP BY, or aggregate it, for example MAX({bare})"
            )),
            near: vec![bare.to_owned()],
        });
    }
    if let Some(rest) = message.strip_prefix("Schema contains qualified field name ")
        && let Some((_, unqualified)) = rest.split_once(" and unqualified field name ")
        && let Some(name) = unqualified.strip_suffix(" which would be ambiguous")
    {
        return Some(Reworded {
            message: format!("the output has two columns named {name:?}"),
            hint: Some("rename one of them with AS".to_owned()),
            near: vec![format!("AS {name}"), name.to_owned()],
        });
    }
    None
}

/// A string that cannot be read as the timestamp it is compared with, at the literal.
fn not_a_timestamp(sql: &str, message: &str) -> Option<CompileError> {
    const MARK: &str = "Error parsing timestamp from '";
    let at = message.find(MARK)? + MARK.len();
    let literal = &message[at..at + message[at..].find('\'')?];
    let quoted = format!("'{literal}'");
    let mut out = CompileError::new(format!(
        "{quoted} is not a timestamp: write one as '2026-01-01T00:00:00Z' (or \
         '2026-01-01 00:00:00')"
    ));
    if let Some(i) = sql.find(&quoted) {
        let before = &sql[..i];
        let line = before.matches('\n').count() as u64 + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
        out = out.at_position(line, column);
    }
    Some(out)
}

/// The first call of function `name` in `sql` as written, with its arguments.
fn call_text(sql: &str, name: &str) -> Option<String> {
    let lower = sql.to_lowercase();
    let start = lower.find(&format!("{}(", name.to_lowercase()))?;
    let mut depth = 0;
    for (i, c) in sql[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(sql[start..=start + i].to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// Drops DataFusion's internal prefixes so the message reads as ours.
fn tidy(message: &str) -> String {
    let mut m = message.trim().to_owned();
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "Schema error: ",
        "ParserError(\"",
        "Arrow error: ",
        "Parser error: ",
    ] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest.to_owned();
        }
    }
    // One line reads better in a status condition and a terminal.
    m.trim_end_matches("\")").replace('\n', " ")
}

/// sqlparser writes positions as `at Line: 1, Column: 15`.
fn parser_position(message: &str) -> Option<(u64, u64)> {
    let at = message.find("Line: ")?;
    let rest = &message[at + 6..];
    let line: u64 = rest.split(',').next()?.trim().parse().ok()?;
    let col_at = rest.find("Column: ")?;
    let col: u64 = rest[col_at + 8..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    Some((line, col))
}

fn strip_parser_position(message: &str) -> String {
    match message.find(" at Line: ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn quoted_names(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '"', '`'] {
        let mut parts = message.split(quote);
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            if !inside.is_empty() && inside.len() < 128 {
                out.push(inside.to_owned());
            }
        }
    }
    out
}

/// The 1-based (line, column) of the first whole-word, case-insensitive `needle` in
/// `sql` outside single-quoted literals.
pub fn locate(sql: &str, needle: &str) -> Option<(u64, u64)> {
    if needle.is_empty() {
        return None;
    }
    let hay: Vec<char> = sql.chars().collect();
    let pat: Vec<char> = needle.to_lowercase().chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let (mut line, mut col) = (1u64, 1u64);
    let mut in_literal = false;
    for i in 0..hay.len() {
        let c = hay[i];
        if c == '\'' {
            in_literal = !in_literal;
        }
        if !in_literal
            && i + pat.len() <= hay.len()
            && hay[i..i + pat.len()]
                .iter()
                .zip(&pat)
                .all(|(a, b)| a.to_lowercase().eq(std::iter::once(*b)))
            && (i == 0 || !word(hay[i - 1]) || !word(pat[0]))
            && hay
                .get(i + pat.len())
                .is_none_or(|n| !word(*n) || !word(pat[pat.len() - 1]))
        {
            return Some((line, col));
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_whole_words_outside_literals() {
        let sql = "SELECT 'random' AS r,\n  random() FROM s";
        assert_eq!(locate(sql, "random"), Some((2, 3)));
        assert_eq!(locate(sql, "RANDOM"), Some((2, 3)));
        assert_eq!(locate(sql, "rand"), None);
        assert_eq!(locate(sql, "ORDER BY"), None);
    }

    #[test]
    fn parser_positions_are_read() {
        let m = "Expected: end of statement, found: x at Line: 2, Column: 15";
        assert_eq!(parser_position(m), Some((2, 15)));
        assert_eq!(
            strip_parser_position(m),
            "Expected: end of statement, found: x"
        );
    }

    #[test]
    fn display_names_the_position_and_hint() {
        let e = CompileError::new("bad").at_position(3, 4).hint("do this");
        assert_eq!(e.to_string(), "line 3, column 4: bad (hint: do this)");
    }
}
