//! The plan fingerprint: a canonical hash of what a compiled Transform computes.
//!
//! It hashes what the user wrote, not what DataFusion made of it, so it is the same in
//! every process and across patch upgrades of DataFusion and Arrow:
//!
//! - the SQL as tokens (whitespace and comments dropped, unquoted words lowercased, as
//!   SQL treats them), so reformatting a query keeps its fingerprint;
//! - each input DataStream the SQL reads: its id, kind, key, event time and every field's
//!   name, nullability and type, spelled by [`type_name`] (never Arrow's `Debug`);
//! - the compile options (emit mode, allowed lateness).
//!
//! Every part is written with its length first, so no two different inputs hash the
//! same bytes. [`VERSION`] names the encoding; changing the encoding means a new version.
//!
//! The *state fingerprint* ([`state_fingerprint`]) is narrower: it hashes only what the
//! state means — the inputs, how they are partitioned, and each operator that keeps state
//! with everything beneath it. Two plans with the same state fingerprint read each other's
//! state the same way, so a change above the stateful operators (a projection or filter
//! of their results) keeps the state; a change to an aggregate, a join, a window or what
//! feeds them does not. It hashes the plan's rendering, which names DataFusion's
//! expressions: an upgrade of DataFusion that renders an expression differently makes a
//! plan look changed, which refuses an upgrade rather than misreading state.

use std::fmt::Write as _;

use arrow::datatypes::{DataType, Field, FieldRef, IntervalUnit, TimeUnit};
use sha2::{Digest, Sha256};
use sqlparser::dialect::GenericDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::{CompileOptions, CompiledTransform, EmitMode, StreamInput, StreamKind};

/// The encoding's version, hashed first.
pub const VERSION: &str = "weir-plan-fingerprint/1";

/// The state fingerprint encoding's version, hashed first.
pub const STATE_VERSION: &str = "weir-state-fingerprint/1";

/// The fingerprint of SQL compiled against `inputs` (the streams it reads, in plan order)
/// with `options`, as 64 hex digits.
pub fn fingerprint(sql: &str, inputs: &[StreamInput], options: &CompileOptions) -> String {
    let mut h = Hasher(Sha256::new());
    h.part(VERSION);
    h.part(&canonical_sql(sql));
    h.inputs(inputs);
    h.part(match options.emit {
        EmitMode::OnWindowClose => "on-close",
        EmitMode::Updates => "updates",
    });
    h.part(&options.allowed_lateness_ms.to_string());
    h.hex()
}

/// The fingerprint of what `compiled`'s state means (see the module docs), as 64 hex
/// digits. The operators that keep state are taken in [`CompiledTransform::stateful_nodes`]
/// order, the order in which the engine numbers their state.
pub fn state_fingerprint(compiled: &CompiledTransform) -> String {
    let mut h = Hasher(Sha256::new());
    h.part(STATE_VERSION);
    // Each input's identity and partitioning; its fields only where the state holds whole
    // input rows (a table). Other inputs' columns count where an operator reads them, in
    // the plan below.
    h.part(&compiled.inputs.len().to_string());
    for i in &compiled.inputs {
        h.input_identity(i);
        let table = i.kind == StreamKind::Changelog && !i.key.is_empty();
        h.fields(if table {
            i.schema.fields().iter().collect()
        } else {
            vec![]
        });
    }
    h.part(&format!("{:?}", crate::partitioning::plan(compiled)));
    let names: Vec<String> = compiled.inputs.iter().map(StreamInput::sql_name).collect();
    let stateful = compiled.stateful_nodes();
    h.part(&stateful.len().to_string());
    for node in stateful {
        h.part(&node.explain(&names));
        h.subtree_fields(node);
    }
    h.hex()
}

struct Hasher(Sha256);

impl Hasher {
    fn part(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_be_bytes());
        self.0.update(s.as_bytes());
    }

    /// Each input DataStream: its id, kind, key, event time and fields.
    fn inputs(&mut self, inputs: &[StreamInput]) {
        self.part(&inputs.len().to_string());
        for i in inputs {
            self.input_identity(i);
            self.fields(i.schema.fields().iter().collect());
        }
    }

    /// An input's id, kind, key and event time.
    fn input_identity(&mut self, i: &StreamInput) {
        self.part(&i.namespace);
        self.part(&i.name);
        self.part(match i.kind {
            StreamKind::AppendOnly => "append-only",
            StreamKind::Changelog => "changelog",
        });
        self.part(&i.key.join(","));
        match &i.event_time {
            Some(et) => self.part(&format!("{}@{}", et.field, et.max_out_of_orderness_ms)),
            None => self.part(""),
        }
    }

    fn fields(&mut self, fields: Vec<&FieldRef>) {
        self.part(&fields.len().to_string());
        for f in fields {
            self.part(&field_name(f));
        }
    }

    /// The fields (with nullability, which the plan's rendering leaves out) of every node
    /// from `node` down.
    fn subtree_fields(&mut self, node: &crate::plan::Node) {
        self.fields(node.schema.fields().iter().collect());
        for child in node.children() {
            self.subtree_fields(child);
        }
    }

    fn hex(self) -> String {
        self.0.finalize().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// The SQL's tokens, one space apart: whitespace and comments dropped, unquoted words
/// lowercased. SQL that does not tokenize is kept as written (it will not compile).
fn canonical_sql(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect, sql).tokenize() else {
        return sql.to_owned();
    };
    let mut out = String::with_capacity(sql.len());
    for t in tokens {
        let text = match t {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style.is_none() => w.value.to_lowercase(),
            other => other.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&text);
    }
    // A trailing semicolon does not change the query.
    out.strip_suffix(" ;").map(str::to_owned).unwrap_or(out)
}

fn field_name(f: &Field) -> String {
    format!(
        "{}:{}{}",
        f.name(),
        type_name(f.data_type()),
        if f.is_nullable() { "" } else { " not null" }
    )
}

/// A type's canonical spelling, independent of Arrow's `Debug` and `Display`.
pub fn type_name(t: &DataType) -> String {
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    };
    match t {
        DataType::Null => "null".into(),
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "i8".into(),
        DataType::Int16 => "i16".into(),
        DataType::Int32 => "i32".into(),
        DataType::Int64 => "i64".into(),
        DataType::UInt8 => "u8".into(),
        DataType::UInt16 => "u16".into(),
        DataType::UInt32 => "u32".into(),
        DataType::UInt64 => "u64".into(),
        DataType::Float16 => "f16".into(),
        DataType::Float32 => "f32".into(),
        DataType::Float64 => "f64".into(),
        DataType::Utf8 => "string".into(),
        DataType::LargeUtf8 => "large-string".into(),
        DataType::Utf8View => "string-view".into(),
        DataType::Binary => "bytes".into(),
        DataType::LargeBinary => "large-bytes".into(),
        DataType::BinaryView => "bytes-view".into(),
        DataType::FixedSizeBinary(n) => format!("bytes[{n}]"),
        DataType::Date32 => "date32".into(),
        DataType::Date64 => "date64".into(),
        DataType::Time32(u) | DataType::Time64(u) => format!("time({})", unit(u)),
        DataType::Timestamp(u, tz) => match tz {
            Some(tz) => format!("timestamp({},{tz})", unit(u)),
            None => format!("timestamp({})", unit(u)),
        },
        DataType::Duration(u) => format!("duration({})", unit(u)),
        DataType::Interval(u) => match u {
            IntervalUnit::YearMonth => "interval(ym)".into(),
            IntervalUnit::DayTime => "interval(dt)".into(),
            IntervalUnit::MonthDayNano => "interval(mdn)".into(),
        },
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => {
            format!("list<{}>", field_name(f))
        }
        DataType::FixedSizeList(f, n) => format!("list[{n}]<{}>", field_name(f)),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| field_name(f))
                .collect::<Vec<_>>()
                .join(",")
        ),
        DataType::Map(f, sorted) => {
            format!("map{}<{}>", if *sorted { "+" } else { "" }, field_name(f))
        }
        DataType::Dictionary(k, v) => format!("dict<{},{}>", type_name(k), type_name(v)),
        // Types a DataStream schema cannot declare: Arrow's rendering is good enough.
        other => format!("other:{other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Schema;

    use super::*;

    fn input() -> StreamInput {
        StreamInput::new(
            "web",
            "page-views",
            Arc::new(Schema::new(vec![
                Field::new("url", DataType::Utf8, true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
            ])),
        )
        .with_event_time("ts", 5000)
        .with_key(["url"])
    }

    const SQL: &str = "SELECT url, COUNT(*) AS n FROM web.page_views GROUP BY url";

    #[test]
    fn the_fingerprint_is_pinned_so_upgrades_cannot_change_it_silently() {
        // If this changes, every running Transform's state is refused: bump VERSION and
        // say so in the release notes instead of editing this value.
        assert_eq!(
            fingerprint(SQL, &[input()], &CompileOptions::new("analytics")),
            "937d2ac78621904bc912d9cc241650f48d6a65bf8b392ff1e05863bb4bf84e56"
        );
    }

    #[test]
    fn reformatting_the_sql_keeps_the_fingerprint() {
        let o = CompileOptions::new("analytics");
        let a = fingerprint(SQL, &[input()], &o);
        let b = fingerprint(
            "select url,\n  count(*) as N -- per page\nFROM web.page_views\n/* all */ GROUP BY url;",
            &[input()],
            &o,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn any_change_to_what_is_computed_changes_the_fingerprint() {
        let o = CompileOptions::new("analytics");
        let base = fingerprint(SQL, &[input()], &o);
        let changed_sql = fingerprint(&SQL.replace("COUNT(*)", "COUNT(url)"), &[input()], &o);
        let quoted = fingerprint(&SQL.replace("AS n", "AS \"N\""), &[input()], &o);
        let nullable = {
            let mut i = input();
            i.schema = Arc::new(Schema::new(vec![
                Field::new("url", DataType::Utf8, false),
                i.schema.field(1).clone(),
            ]));
            fingerprint(SQL, &[i], &o)
        };
        let ooo = fingerprint(SQL, &[input().with_event_time("ts", 1)], &o);
        let table = fingerprint(SQL, &[input().as_table()], &o);
        let mut late = o.clone();
        late.allowed_lateness_ms = 1;
        let lateness = fingerprint(SQL, &[input()], &late);
        let all = [base, changed_sql, quoted, nullable, ooo, table, lateness];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn state_of(sql: &str, inputs: &[StreamInput]) -> String {
        crate::compile(sql, inputs, &CompileOptions::new("analytics"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .state_fingerprint
    }

    #[test]
    fn a_change_above_the_stateful_operators_keeps_the_state_fingerprint() {
        let base = state_of(SQL, &[input()]);
        for kept in [
            "SELECT url, COUNT(*) * 10 AS n FROM web.page_views GROUP BY url",
            "SELECT url, COUNT(*) AS n, upper(url) AS u FROM web.page_views GROUP BY url",
            "SELECT url, COUNT(*) AS n FROM web.page_views GROUP BY url HAVING COUNT(*) > 1",
        ] {
            assert_eq!(state_of(kept, &[input()]), base, "{kept}");
            assert_ne!(
                fingerprint(kept, &[input()], &CompileOptions::new("analytics")),
                fingerprint(SQL, &[input()], &CompileOptions::new("analytics")),
            );
        }
    }

    #[test]
    fn a_change_to_what_the_state_holds_changes_the_state_fingerprint() {
        let base = state_of(SQL, &[input()]);
        for changed in [
            "SELECT url, COUNT(url) AS n FROM web.page_views GROUP BY url",
            "SELECT url, COUNT(*) AS n FROM web.page_views WHERE url <> '' GROUP BY url",
            "SELECT url, MAX(ts) AS n FROM web.page_views GROUP BY url",
            "SELECT url, COUNT(*) AS n FROM web.page_views \
             GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), url",
        ] {
            assert_ne!(state_of(changed, &[input()]), base, "{changed}");
        }
        // A table's rows are state: any change to its fields changes what the state holds.
        let table = input().as_table();
        let table_base = state_of(SQL, std::slice::from_ref(&table));
        assert_ne!(table_base, base);
        assert_ne!(
            state_of(SQL, &[wider(table)]),
            table_base,
            "a table's schema"
        );
    }

    /// `i` with one more column.
    fn wider(mut i: StreamInput) -> StreamInput {
        let mut fields: Vec<Field> = i.schema.fields().iter().map(|f| (**f).clone()).collect();
        fields.push(Field::new("referrer", DataType::Utf8, true));
        i.schema = Arc::new(Schema::new(fields));
        i
    }

    #[test]
    fn a_column_added_to_an_event_stream_keeps_the_state_fingerprint() {
        assert_eq!(state_of(SQL, &[wider(input())]), state_of(SQL, &[input()]));
    }

    fn events() -> StreamInput {
        StreamInput::new(
            "q",
            "events",
            Arc::new(Schema::new(vec![
                Field::new("k1", DataType::Utf8, true),
                Field::new("k2", DataType::Int64, true),
                Field::new("v", DataType::Int64, true),
                Field::new("d", DataType::Decimal128(10, 2), true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
            ])),
        )
        .with_event_time("ts", 0)
    }

    #[test]
    fn every_compile_of_a_plan_gets_the_same_state_fingerprint() {
        // Plans whose optimized form names expressions DataFusion builds from hash maps
        // (common subexpressions, several aggregates of one column, decimal products).
        for sql in [
            "SELECT k1, AVG(v) AS avg_v, AVG(k2) AS avg_k2, SUM(v) AS sum_v, COUNT(v) AS n_v, \
             AVG(v * 1.0) AS avg_d FROM q.events GROUP BY k1",
            "SELECT k1, SUM(d * d) AS s, AVG(d * 2) AS a, MAX(d * d) AS m FROM q.events GROUP BY k1",
            "SELECT k1, COUNT(DISTINCT v) AS n, SUM(v) AS s FROM q.events GROUP BY k1",
        ] {
            let first = state_of(sql, &[events()]);

            for _ in 0..20 {
                assert_eq!(state_of(sql, &[events()]), first, "{sql}");
            }
        }
    }
}
