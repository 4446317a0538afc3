//! Runs a Transform's fixture tests through the engine and reports a readable diff.
//!
//! Test input is a bounded stream. Records arrive one at a time in the order written:
//! across streams by event time (records of a stream without event time, such as a
//! table, come first), ties in the order written, and never reordered within a stream.
//! After each record every input's watermark advances to the newest event time seen so
//! far minus that input's allowed out-of-orderness; at the end every window closes.
//! The expected rows are compared with the output as a multiset (the final state, for
//! a changelog output), on the columns the expected rows name.
//!
//! A record of a table (a keyed changelog) upserts its key; a record with
//! `"_delete": true` deletes the key its key fields name (its other fields may be left
//! out).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Value};
use weir_sql::{CompiledTransform, StreamInput, sql_ident};

use crate::{ChangeBatch, Engine, EngineError};

/// A JSON record.
pub type Record = Map<String, Value>;

/// The field that marks a table record as a delete of its key.
pub const DELETE_FIELD: &str = "_delete";

/// Why a test could not run (as opposed to ran and failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A record names a stream the SQL does not read.
    #[error(
        "given.{stream}: the SQL does not read a DataStream named {stream:?} (it reads {reads})"
    )]
    UnknownStream {
        /// The name as written.
        stream: String,
        /// The streams the SQL reads.
        reads: String,
    },
    /// A record does not fit its stream's schema.
    #[error("{path}: {message}")]
    BadRecord {
        /// Where, such as `given.web.page_views[2]`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The engine failed.
    #[error("the engine failed: {0}")]
    Engine(#[from] EngineError),
}

/// The outcome of one fixture test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    /// The test's name.
    pub name: String,
    /// Expected rows the output lacks, with how many copies are missing.
    pub missing: Vec<(String, i64)>,
    /// Output rows nobody expected, with how many extra copies.
    pub unexpected: Vec<(String, i64)>,
    /// Records dropped as late.
    pub late_records: u64,
}

impl TestReport {
    /// Whether the output matched.
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            return write!(f, "ok    {}", self.name);
        }
        writeln!(f, "FAIL  {}", self.name)?;
        let times = |n: i64| {
            if n == 1 {
                String::new()
            } else {
                format!(" (×{n})")
            }
        };
        if !self.missing.is_empty() {
            writeln!(f, "      expected but not produced:")?;
            for (row, n) in &self.missing {
                writeln!(f, "        - {row}{}", times(*n))?;
            }
        }
        if !self.unexpected.is_empty() {
            writeln!(f, "      produced but not expected:")?;
            for (row, n) in &self.unexpected {
                writeln!(f, "        + {row}{}", times(*n))?;
            }
        }
        if self.late_records > 0 {
            writeln!(f, "      ({} late records dropped)", self.late_records)?;
        }
        Ok(())
    }
}

/// Finds which compiled input a name in `given` refers to: `namespace.name`,
/// `namespace/name`, or a bare name in the Transform's namespace.
pub fn resolve_input(compiled: &CompiledTransform, name: &str) -> Option<usize> {
    let (ns, table) = match name.split_once(['.', '/']) {
        Some((ns, t)) => (sql_ident(ns), sql_ident(t)),
        None => (sql_ident(&compiled.options.namespace), sql_ident(name)),
    };
    compiled
        .inputs
        .iter()
        .position(|i| sql_ident(&i.namespace) == ns && sql_ident(&i.name) == table)
}

/// Decodes JSON records into a batch of `schema`, with a weight per record (−1 for a
/// `_delete` record). `path` names the records in errors.
pub fn decode_records(
    schema: &SchemaRef,
    records: &[Record],
    path: &str,
) -> Result<(RecordBatch, Vec<i64>), RunError> {
    let mut weights = Vec::with_capacity(records.len());
    let mut rows = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let mut r = r.clone();
        let delete = match r.remove(DELETE_FIELD) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(other) => {
                return Err(RunError::BadRecord {
                    path: format!("{path}[{i}].{DELETE_FIELD}"),
                    message: format!("must be true or false, not {other}"),
                });
            }
        };
        if let Some(unknown) = r.keys().find(|k| schema.index_of(k).is_err()) {
            return Err(RunError::BadRecord {
                path: format!("{path}[{i}]"),
                message: format!(
                    "no field named {unknown:?} (fields: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Some((name, value)) = r.iter().find(|(k, v)| {
            schema
                .field_with_name(k)
                .is_ok_and(|f| crate::lossless::lossy_value(v, f.data_type()))
        }) {
            return Err(RunError::BadRecord {
                path: format!("{path}[{i}].{name}"),
                message: format!(
                    "{value} is not a whole number, and the field is an integer: Weir does not \
                     round or truncate it"
                ),
            });
        }
        weights.push(if delete { -1 } else { 1 });
        rows.push(r);
    }
    // A delete names only its key, so when there are deletes the batch has every column
    // nullable; the engine reads a delete's key alone.
    let deletes = weights.iter().any(|w| *w < 0);
    let out_schema = if deletes {
        Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<Field>>(),
        ))
    } else {
        schema.clone()
    };
    // Decode one record at a time so an error names its record.
    let mut batches = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let err = |message: String| RunError::BadRecord {
            path: format!("{path}[{i}]"),
            message,
        };
        let record_schema = if weights[i] < 0 { &out_schema } else { schema };
        let mut decoder = arrow::json::ReaderBuilder::new(record_schema.clone())
            .build_decoder()
            .map_err(|e| err(e.to_string()))?;
        decoder
            .serialize(std::slice::from_ref(r))
            .map_err(|e| err(e.to_string()))?;
        let batch = decoder
            .flush()
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("the record is empty".into()))?;
        let batch = RecordBatch::try_new(out_schema.clone(), batch.columns().to_vec())
            .map_err(|e| RunError::Engine(e.into()))?;
        batches.push(batch);
    }
    let batch = arrow::compute::concat_batches(&out_schema, &batches)
        .map_err(|e| RunError::Engine(e.into()))?;
    Ok((batch, weights))
}

/// A multiset of rendered rows: each row's values as strings, and its multiplicity.
pub type Rows = Vec<(Vec<String>, i64)>;

/// Runs `given` through a fresh engine, one record at a time as the module describes,
/// and returns the output's final multiset of rows (all columns) with the late count.
pub fn run_records(
    compiled: &CompiledTransform,
    given: &[(String, Vec<Record>)],
) -> Result<(Rows, u64), RunError> {
    run(compiled, given, Restore::Never)
}

/// Like [`run_records`], but after every record the engine's state is snapshotted and
/// restored into a fresh engine, as a worker does across a restart. The result must be
/// the same as [`run_records`] gives.
pub fn run_records_restoring(
    compiled: &CompiledTransform,
    given: &[(String, Vec<Record>)],
) -> Result<(Rows, u64), RunError> {
    run(compiled, given, Restore::Snapshot)
}

/// Like [`run_records`], but after every record the engine is rebuilt in a fresh engine
/// from the state entries it handed out so far, compacted as a Kafka changelog is (the
/// last value per key, deleted entries gone), as a worker restores a task. The result
/// must be the same as [`run_records`] gives.
pub fn run_records_from_changelog(
    compiled: &CompiledTransform,
    given: &[(String, Vec<Record>)],
) -> Result<(Rows, u64), RunError> {
    run(compiled, given, Restore::Changelog)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Restore {
    Never,
    Snapshot,
    Changelog,
}

fn run(
    compiled: &CompiledTransform,
    given: &[(String, Vec<Record>)],
    restore: Restore,
) -> Result<(Rows, u64), RunError> {
    let mut engine = Engine::new(compiled)?;
    let mut outputs = Vec::new();
    let mut newest: Option<i64> = None;
    let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (input, (batch, weights)) in arrival_order(compiled, given)? {
        match restore {
            Restore::Never => {}
            Restore::Snapshot => {
                let snapshot = engine.snapshot()?;
                engine = Engine::new(compiled)?;
                engine.restore(&snapshot)?;
            }
            Restore::Changelog => {
                for (k, v) in engine.take_state_changes()? {
                    match v {
                        Some(v) => changelog.insert(k, v),
                        None => changelog.remove(&k),
                    };
                }
                engine = Engine::new(compiled)?;
                for (k, v) in &changelog {
                    engine.apply_state_entry(k, Some(v))?;
                }
                engine.finish_restore()?;
            }
        }
        outputs.extend(engine.push(input, ChangeBatch::new(batch.clone(), weights))?);
        if let Some(t) = engine.watermark_of(input, &batch)? {
            // watermark_of subtracts this input's out-of-orderness; add it back to get the
            // event time, then each input subtracts its own.
            let t = t.saturating_add(ooo_nanos(&compiled.inputs[input]));
            newest = Some(newest.map_or(t, |m| m.max(t)));
        }
        if let Some(t) = newest {
            for (i, def) in compiled.inputs.iter().enumerate() {
                if def.event_time.is_some() {
                    outputs.extend(engine.advance_watermark(i, t.saturating_sub(ooo_nanos(def)))?);
                }
            }
        }
    }
    outputs.extend(engine.finish()?);
    let late = engine.stats().late_records;
    Ok((consolidate(&engine.output_schema(), &outputs)?, late))
}

fn ooo_nanos(def: &StreamInput) -> i64 {
    def.event_time
        .as_ref()
        .map_or(0, |e| e.max_out_of_orderness_ms.saturating_mul(1_000_000))
}

type Arrival = (usize, (RecordBatch, Vec<i64>));

/// Single-record batches in arrival order.
fn arrival_order(
    compiled: &CompiledTransform,
    given: &[(String, Vec<Record>)],
) -> Result<Vec<Arrival>, RunError> {
    let reads = || {
        compiled
            .inputs
            .iter()
            .map(StreamInput::sql_name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Per stream: (input, batch, weights, event times).
    let mut queues = Vec::new();
    for (name, records) in given {
        let input = resolve_input(compiled, name).ok_or_else(|| RunError::UnknownStream {
            stream: name.clone(),
            reads: reads(),
        })?;
        let def = &compiled.inputs[input];
        let (batch, weights) = decode_records(&def.schema, records, &format!("given.{name}"))?;
        if def.kind == weir_sql::StreamKind::AppendOnly
            && let Some(i) = weights.iter().position(|w| *w < 0)
        {
            return Err(RunError::BadRecord {
                path: format!("given.{name}[{i}].{DELETE_FIELD}"),
                message: format!(
                    "{} is an append-only DataStream: only a table's records can delete \
                     their key",
                    def.sql_name()
                ),
            });
        }
        let times: Vec<Option<i64>> = match &def.event_time {
            Some(et) => {
                let col = def.schema.index_of(&et.field).map_err(EngineError::from)?;
                let t = crate::changes::time_nanos(batch.column(col))?;
                (0..t.len())
                    .map(|i| t.is_valid(i).then(|| t.value(i)))
                    .collect()
            }
            None => vec![None; batch.num_rows()],
        };
        queues.push((input, batch, weights, times, 0usize));
    }
    let mut out = Vec::new();
    loop {
        let mut best: Option<(usize, i64)> = None;
        for (q, (_, batch, _, times, pos)) in queues.iter().enumerate() {
            if *pos >= batch.num_rows() {
                continue;
            }
            let t = times[*pos].unwrap_or(i64::MIN);
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((q, t));
            }
        }
        let Some((q, _)) = best else { break };
        let (input, batch, weights, _, pos) = &mut queues[q];
        out.push((*input, (batch.slice(*pos, 1), vec![weights[*pos]])));
        *pos += 1;
    }
    Ok(out)
}

/// Sums change batches into a multiset of rows, each row rendered as display strings.
pub fn consolidate(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<Rows, RunError> {
    let mut sums: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for b in batches {
        let rows = render(schema, &b.data)?;
        for (i, r) in rows.into_iter().enumerate() {
            *sums.entry(r).or_insert(0) += b.weight(i);
        }
    }
    Ok(sums.into_iter().filter(|(_, w)| *w != 0).collect())
}

/// Each row of a batch as display strings, floats rounded to 9 significant digits so
/// arithmetic noise does not fail a test.
pub fn render(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<Vec<String>>, RunError> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Engine(e.into()))?;
    let floats: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_floating())
        .collect();
    Ok((0..batch.num_rows())
        .map(|i| {
            formatters
                .iter()
                .zip(&floats)
                .map(|(f, float)| {
                    let s = f.value(i).to_string();
                    if *float && let Ok(v) = s.parse::<f64>() {
                        return format_value(v);
                    }
                    s
                })
                .collect()
        })
        .collect())
}

/// A float as the runner renders it: rounded to 9 significant digits.
pub fn format_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", if v == 0.0 { 0.0 } else { v });
    }
    let digits = 9 - (v.abs().log10().floor() as i32) - 1;
    let factor = 10f64.powi(digits.clamp(-300, 300));
    let r = (v * factor).round() / factor;
    format!("{r}")
}

/// Runs one fixture test.
pub fn run_test(
    compiled: &CompiledTransform,
    name: &str,
    given: &[(String, Vec<Record>)],
    expect: &[Record],
) -> Result<TestReport, RunError> {
    let schema = compiled.output_schema.clone();
    let (actual, late) = run_records(compiled, given)?;
    // Compare on the columns the expected rows name (all, when nothing is expected).
    let mut named: Vec<usize> = Vec::new();
    for r in expect {
        for k in r.keys() {
            let i = schema.index_of(k).map_err(|_| RunError::BadRecord {
                path: format!("expect: field {k:?}"),
                message: format!(
                    "the output has no column {k:?} (columns: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            if !named.contains(&i) {
                named.push(i);
            }
        }
    }
    named.sort_unstable();
    if expect.is_empty() {
        named = (0..schema.fields().len()).collect();
    }
    // Expected rows are decoded against a nullable copy of the output schema, so a
    // column left out of one row reads as NULL rather than failing.
    let loose = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let (expected_batch, _) = decode_records(&loose, expect, "expect")?;
    let expected_rows = render(&loose, &expected_batch)?;
    let pick = |r: &[String]| -> String { describe_row(&schema, &named, r) };
    let mut diff: BTreeMap<String, i64> = BTreeMap::new();
    for r in &expected_rows {
        *diff.entry(pick(r)).or_insert(0) += 1;
    }
    for (r, w) in &actual {
        *diff.entry(pick(r)).or_insert(0) -= w;
    }
    let missing = diff
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| (r.clone(), *n))
        .collect();
    let unexpected = diff
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(r, n)| (r.clone(), -n))
        .collect();
    Ok(TestReport {
        name: name.to_owned(),
        missing,
        unexpected,
        late_records: late,
    })
}

fn describe_row(schema: &Schema, cols: &[usize], row: &[String]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|i| format!("{}: {}", schema.field(*i).name(), row[*i]))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The output rows of a run as JSON-like strings `{col: value, ...}` with multiplicity,
/// for golden files.
pub fn describe_rows(schema: &SchemaRef, rows: &[(Vec<String>, i64)]) -> Vec<String> {
    let all: Vec<usize> = (0..schema.fields().len()).collect();
    let mut out = Vec::new();
    for (r, w) in rows {
        let s = describe_row(schema, &all, r);
        if *w == 1 {
            out.push(s);
        } else {
            out.push(format!("{s} ×{w}"));
        }
    }
    out
}
