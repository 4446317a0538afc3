//! SQL golden files: every case in `tests/golden/*.golden` compiles its SQL, runs its
//! input through the engine with the fixture-test semantics, and compares the output
//! (or the compile error) with the expected block. Each case also runs with its state
//! snapshotted and restored into a fresh engine before every record, and must give the
//! same output.
//!
//! File format, line by line:
//!
//! ```text
//! stream ns.name (col type [not null], ...) [event_time col [ooo 5s]]   an append-only input
//! table ns.name (col type [not null], ...) key col[,col]                a keyed changelog input
//! options emit=updates lateness=2s                                      for the cases below
//! case <name>
//! sql
//! <SQL lines>
//! given
//! <stream> <JSON record>          (records in order; {"_delete": true, ...} deletes a key)
//! expect <append-only | changelog key=[...]>
//! {col: value, ...} [×n]          (the final output multiset, sorted)
//! ----
//! ```
//!
//! The format is Weir's own (it is not sqllogictest). An `error` block instead of `expect`
//! holds the compile error. Each case is a test of its own, named `<file>::<case>`.
//! `WEIR_BLESS=1 cargo test -p weir-engine --test golden` rewrites the expected blocks
//! from what the engine does now; review the diff before committing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use weir_engine::runner::{
    Record, describe_rows, run_records, run_records_from_changelog, run_records_restoring,
};
use weir_engine::sql::{CompileOptions, EmitMode, StreamInput, compile};

struct Case {
    name: String,
    line: usize,
    sql: String,
    given: Vec<(String, Record)>,
    options: CompileOptions,
    streams: Vec<StreamInput>,
    /// Index of the first line of the expected block (the `expect`/`error` line).
    expected_at: usize,
    expected_end: usize,
    expected: Vec<String>,
}

fn parse_type(t: &str) -> Result<DataType, String> {
    let t = t.to_ascii_lowercase();
    Ok(match t.as_str() {
        "string" => DataType::Utf8,
        "int" => DataType::Int32,
        "bigint" => DataType::Int64,
        "double" => DataType::Float64,
        "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        d if d.starts_with("decimal(") => {
            let inner = d.trim_start_matches("decimal(").trim_end_matches(')');
            let (p, s) = inner.split_once(',').ok_or("decimal(p,s)")?;
            DataType::Decimal128(
                p.trim().parse().map_err(|_| "precision")?,
                s.trim().parse().map_err(|_| "scale")?,
            )
        }
        other => return Err(format!("unknown type {other}")),
    })
}

/// A duration as Weir's resources write it, read by the same parser
/// (`weir_crds::units`); a bare number is seconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        weir_crds::units::duration_ms(&format!("{s}s"))
    } else {
        weir_crds::units::duration_ms(s)
    }
}

/// `stream ns.name (a string not null, b bigint) event_time b ooo 5s`
fn parse_stream(line: &str) -> Result<StreamInput, String> {
    let (head, rest) = line.split_once('(').ok_or("expected (")?;
    let (cols, tail) = rest.rsplit_once(')').ok_or("expected )")?;
    let mut head = head.split_whitespace();
    let kind = head.next().ok_or("kind")?;
    let full = head.next().ok_or("name")?;
    let (ns, name) = full.split_once('.').ok_or("name must be ns.name")?;
    let mut fields = Vec::new();
    // Split on commas not inside parentheses (decimal(p,s)).
    let mut depth = 0;
    let mut cur = String::new();
    let mut parts = Vec::new();
    for c in cols.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts {
        let words: Vec<&str> = p.split_whitespace().collect();
        let [n, t, rest @ ..] = words.as_slice() else {
            return Err(format!("bad column {p:?}"));
        };
        let not_null = rest.join(" ").eq_ignore_ascii_case("not null");
        fields.push(Field::new(*n, parse_type(t)?, !not_null));
    }
    let mut input = StreamInput::new(ns, name, Arc::new(Schema::new(fields)));
    let words: Vec<&str> = tail.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "event_time" => {
                let ooo = if words.get(i + 2) == Some(&"ooo") {
                    parse_duration_ms(words.get(i + 3).ok_or("ooo value")?)?
                } else {
                    0
                };
                input = input.with_event_time(words.get(i + 1).ok_or("event_time field")?, ooo);
                i += if words.get(i + 2) == Some(&"ooo") {
                    4
                } else {
                    2
                };
            }
            "key" => {
                input = input.with_key(words.get(i + 1).ok_or("key fields")?.split(','));
                i += 2;
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    if kind == "table" {
        input = input.as_table();
    }
    Ok(input)
}

fn parse_file(text: &str) -> Result<Vec<Case>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut streams = Vec::new();
    let mut options = CompileOptions::new("ns");
    let mut cases = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        let here = i;
        let at = |m: String| format!("line {}: {m}", here + 1);
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        if line.starts_with("stream ") || line.starts_with("table ") {
            let s = parse_stream(line).map_err(at)?;
            streams.retain(|x: &StreamInput| x.id() != s.id());
            streams.push(s);
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("options") {
            options = CompileOptions::new("ns");
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("emit", "updates")) => options.emit = EmitMode::Updates,
                    Some(("emit", "close")) => options.emit = EmitMode::OnWindowClose,
                    Some(("lateness", v)) => {
                        options.allowed_lateness_ms = parse_duration_ms(v).map_err(at)?
                    }
                    _ => return Err(at(format!("bad option {kv}"))),
                }
            }
            i += 1;
            continue;
        }
        let Some(name) = line.strip_prefix("case ") else {
            return Err(at(format!("expected a case, found {line:?}")));
        };
        let start = i;
        i += 1;
        if lines.get(i).map(|l| l.trim()) != Some("sql") {
            return Err(at("expected `sql`".into()));
        }
        i += 1;
        let mut sql = Vec::new();
        while i < lines.len()
            && !["given", "expect", "error"]
                .iter()
                .any(|k| lines[i].starts_with(k))
        {
            sql.push(lines[i]);
            i += 1;
        }
        let mut given = Vec::new();
        if lines.get(i).map(|l| l.trim()) == Some("given") {
            i += 1;
            while i < lines.len()
                && !lines[i].starts_with("expect")
                && !lines[i].starts_with("error")
            {
                let l = lines[i].trim();
                if !l.is_empty() && !l.starts_with('#') {
                    let (stream, json) = l
                        .split_once(' ')
                        .ok_or_else(|| at("expected `stream {json}`".into()))?;
                    let record: Record =
                        serde_json::from_str(json).map_err(|e| at(format!("bad JSON: {e}")))?;
                    given.push((stream.to_owned(), record));
                }
                i += 1;
            }
        }
        let expected_at = i;
        let mut expected = Vec::new();
        while i < lines.len() && lines[i].trim_end() != "----" {
            expected.push(lines[i].trim_end().to_owned());
            i += 1;
        }
        if i >= lines.len() {
            return Err(format!(
                "line {}: case {name:?} has no closing ----",
                start + 1
            ));
        }
        cases.push(Case {
            name: name.to_owned(),
            line: start + 1,
            sql: sql.join("\n"),
            given,
            options: options.clone(),
            streams: streams.clone(),
            expected_at,
            expected_end: i,
            expected,
        });
        i += 1;
    }
    Ok(cases)
}

/// What the engine does with a case now, as the lines of an expected block.
fn actual(case: &Case) -> Vec<String> {
    let compiled = match compile(&case.sql, &case.streams, &case.options) {
        Ok(c) => c,
        Err(e) => {
            // DataFusion's "Did you mean" picks among equally close names in hash order.
            let mut m = e.to_string();
            if let Some(i) = m.find(" Did you mean") {
                m.truncate(i);
            }
            return vec!["error".into(), m];
        }
    };
    // Every fingerprint is a pure function of the plan: a second compile in this process
    // (fresh hash seeds, the shared session's counters moved on) gets the same ones, or
    // a running Transform's workers would be rolled, and its upgrades judged, at random.
    let again = compile(&case.sql, &case.streams, &case.options).expect("compiles again");
    assert_eq!(
        again.fingerprint, compiled.fingerprint,
        "{}: plan fingerprint",
        case.name
    );
    assert_eq!(
        again.state_fingerprint, compiled.state_fingerprint,
        "{}: state fingerprint",
        case.name
    );
    // Group records per stream, keeping their order.
    let mut given: Vec<(String, Vec<Record>)> = Vec::new();
    for (s, r) in &case.given {
        match given.iter_mut().find(|(n, _)| n == s) {
            Some((_, v)) => v.push(r.clone()),
            None => given.push((s.clone(), vec![r.clone()])),
        }
    }
    let kind = match compiled.output_kind {
        weir_engine::sql::StreamKind::AppendOnly => "append-only".to_owned(),
        weir_engine::sql::StreamKind::Changelog => {
            format!("changelog key=[{}]", compiled.output_key.join(", "))
        }
    };
    let straight = run_records(&compiled, &given);
    // The same case across a snapshot and restore into a fresh engine before every
    // record must give the same output, as a worker does across restarts.
    let restored = run_records_restoring(&compiled, &given);
    // And rebuilt from the changelog entries it emitted, as a worker restores a task.
    let rebuilt = run_records_from_changelog(&compiled, &given);
    for (how, other) in [
        ("a snapshot and restore", &restored),
        ("a rebuild from the changelog", &rebuilt),
    ] {
        match (&straight, other) {
            (Ok(a), Ok(b)) if a != b => {
                return vec![
                    "error".into(),
                    format!("{how} changed the output: {a:?} became {b:?}"),
                ];
            }
            (Ok(_), Err(e)) => {
                return vec!["error".into(), format!("{how} failed: {e}")];
            }
            _ => {}
        }
    }
    match straight {
        Ok((rows, late)) => {
            let mut out = vec![if late > 0 {
                format!("expect {kind} late={late}")
            } else {
                format!("expect {kind}")
            }];
            let mut rows = describe_rows(&compiled.output_schema, &rows);
            rows.sort();
            out.extend(rows);
            out
        }
        Err(e) => vec!["error".into(), e.to_string()],
    }
}

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "golden"))
        .collect();
    files.sort();
    files
}

/// What the engine does with `case`, with a panic reported as its result.
fn outcome(case: &Case) -> Vec<String> {
    std::panic::catch_unwind(|| actual(case))
        .unwrap_or_else(|_| vec![format!("PANIC in case {:?}", case.name)])
}

fn expected_lines(case: &Case) -> Vec<String> {
    case.expected
        .iter()
        .filter(|l| !l.trim().is_empty())
        .cloned()
        .collect()
}

/// Rewrites every expected block of `file` from what the engine does now.
fn bless(file: &Path, text: &str, cases: &[Case]) {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // From the bottom, so earlier line numbers stay valid.
    for case in cases.iter().rev() {
        let got = outcome(case);
        if got != expected_lines(case) {
            lines.splice(case.expected_at..case.expected_end, got);
        }
    }
    std::fs::write(file, lines.join("\n") + "\n").expect("writable golden file");
}

/// One test per case, named `<file>::<case>` so that one can be run or filtered by name
/// (`cargo test -p weir-engine --test golden -- 03_aggregates::`), and one that keeps the
/// corpus from shrinking. With `WEIR_BLESS=1` the files are rewritten first.
fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let blessing = std::env::var_os("WEIR_BLESS").is_some();
    let mut trials = Vec::new();
    let mut total = 0;
    for file in golden_files() {
        let mut text = std::fs::read_to_string(&file).expect("readable golden file");
        let mut cases = parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if blessing {
            bless(&file, &text, &cases);
            text = std::fs::read_to_string(&file).expect("readable golden file");
            cases = parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        total += cases.len();
        for case in cases {
            let name = format!("{stem}::{}", case.name);
            let place = format!("{}:{}", file.display(), case.line);
            trials.push(libtest_mimic::Trial::test(name, move || {
                let got = outcome(&case);
                let expected = expected_lines(&case);
                if got == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{place}: case {:?}\n  expected:\n    {}\n  got:\n    {}\n(WEIR_BLESS=1 \
                         rewrites the expected blocks)",
                        case.name,
                        expected.join("\n    "),
                        got.join("\n    ")
                    )
                    .into())
                }
            }));
        }
    }
    trials.push(libtest_mimic::Trial::test(
        "the_corpus_keeps_at_least_150_cases",
        move || {
            if total >= 150 {
                Ok(())
            } else {
                Err(format!("the golden corpus has {total} cases; keep at least 150").into())
            }
        },
    ));
    libtest_mimic::run(&args, trials).exit();
}
