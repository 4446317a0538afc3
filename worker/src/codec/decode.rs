//! Records to change batches: the fast path (one decoder per poll batch) and the slow
//! path (one per record, naming each bad one).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use weir_engine::ChangeBatch;
use weir_sql::{StreamInput, StreamKind};

use super::Rejection;

/// One Kafka record's key and value, as the decoder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Payload<'a> {
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
}

/// What a run of records decoded to: change batches in record order, and the records
/// set aside, by their index in the run.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The changes, in the order of the records they came from.
    pub batches: Vec<ChangeBatch>,
    /// For each batch, the index of the payload each row came from.
    pub rows: Vec<Vec<usize>>,
    /// The rejected records: (index into the payloads, why).
    pub rejected: Vec<(usize, Rejection)>,
}

/// Decodes one input DataStream's records.
#[derive(Debug, Clone)]
pub struct Decoder {
    name: String,
    schema: SchemaRef,
    /// Every field nullable: the shape of a delete, which names only its key.
    delete_schema: SchemaRef,
    key_schema: Option<SchemaRef>,
    table: bool,
    event_time: Option<usize>,
    max_bytes: usize,
    /// The top-level integer fields, checked for numbers arrow-json would truncate.
    integers: Vec<String>,
    /// How far ahead of this process's clock an event time may be, in milliseconds.
    max_future_skew_ms: Option<i64>,
}

/// Whether `bytes` is one JSON value, strictly: arrow-json's decoder reads structure
/// leniently (it skips a missing comma between fields), so Weir checks the syntax itself,
/// and a record that is not JSON is a dead letter of class `json_syntax`.
fn syntax(bytes: &[u8]) -> Result<(), Rejection> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(drop)
        .map_err(|e| Rejection::new("json_syntax", format!("the value is not valid JSON: {e}")))
}

impl Decoder {
    /// A decoder for `input`, rejecting payloads over `max_bytes`.
    pub fn new(input: &StreamInput, max_bytes: usize) -> Self {
        let nullable = |f: &Arc<Field>| Arc::new(f.as_ref().clone().with_nullable(true));
        let delete_schema = Arc::new(Schema::new(
            input
                .schema
                .fields()
                .iter()
                .map(nullable)
                .collect::<Vec<_>>(),
        ));
        let key_schema = (!input.key.is_empty()).then(|| {
            Arc::new(Schema::new(
                input
                    .key
                    .iter()
                    .filter_map(|k| input.schema.field_with_name(k).ok())
                    .cloned()
                    .collect::<Vec<_>>(),
            ))
        });
        Self {
            name: input.sql_name(),
            schema: input.schema.clone(),
            delete_schema,
            key_schema,
            table: input.kind == StreamKind::Changelog && !input.key.is_empty(),
            event_time: input
                .event_time
                .as_ref()
                .and_then(|et| input.schema.index_of(&et.field).ok()),
            max_bytes,
            integers: weir_engine::lossless::integer_fields(&input.schema),
            max_future_skew_ms: None,
        }
    }

    /// Rejects event times more than `skew_ms` ahead of the clock (`None`: no limit).
    pub fn with_max_future_skew(mut self, skew_ms: Option<i64>) -> Self {
        self.max_future_skew_ms = skew_ms;
        self
    }

    /// Decodes `records` into change batches in their order (inserts and upserts as +1,
    /// table deletes as −1), setting bad records aside.
    pub fn decode(&self, records: &[Payload<'_>]) -> Decoded {
        let mut out = Decoded::default();
        // Runs of records of one kind (values or deletes), so order is kept.
        let mut run: Vec<usize> = Vec::new();
        let mut run_deletes = false;
        for (i, r) in records.iter().enumerate() {
            let size = r.value.map_or(0, <[u8]>::len) + r.key.map_or(0, <[u8]>::len);
            if size > self.max_bytes {
                out.rejected.push((
                    i,
                    Rejection::new(
                        "too_large",
                        format!(
                            "the record has {size} bytes, over the limit of {}",
                            self.max_bytes
                        ),
                    ),
                ));
                continue;
            }
            let delete = r.value.is_none();
            if delete && !self.table {
                out.rejected.push((
                    i,
                    Rejection::new(
                        "unexpected_tombstone",
                        format!(
                            "a record without a value on {}, which is not a keyed table",
                            self.name
                        ),
                    ),
                ));
                continue;
            }
            if delete != run_deletes && !run.is_empty() {
                self.flush_run(records, &run, run_deletes, &mut out);
                run.clear();
            }
            run_deletes = delete;
            run.push(i);
        }
        if !run.is_empty() {
            self.flush_run(records, &run, run_deletes, &mut out);
        }
        out.rejected.sort_by_key(|(i, _)| *i);
        out
    }

    fn flush_run(&self, records: &[Payload<'_>], run: &[usize], deletes: bool, out: &mut Decoded) {
        let (batch, rows) = if deletes {
            self.decode_deletes(records, run, &mut out.rejected)
        } else {
            match self.fast(records, run) {
                Some(b) => (Some(b), run.to_vec()),
                None => self.slow(records, run, &mut out.rejected),
            }
        };
        let Some(batch) = batch else { return };
        // A delete names only its key: it has no event time to check.
        let (batch, rows) = if deletes {
            (batch, rows)
        } else {
            self.check_times(batch, rows, &mut out.rejected)
        };
        if batch.num_rows() == 0 {
            return;
        }
        out.rows.push(rows);
        out.batches.push(if deletes {
            let n = batch.num_rows();
            ChangeBatch::new(batch, vec![-1; n])
        } else {
            ChangeBatch::inserts(batch)
        });
    }

    fn builder(&self, schema: &SchemaRef, rows: usize) -> arrow::json::reader::ReaderBuilder {
        arrow::json::ReaderBuilder::new(schema.clone()).with_batch_size(rows.max(1) + 1)
    }

    /// Every value through one decoder; `None` on any problem.
    fn fast(&self, records: &[Payload<'_>], run: &[usize]) -> Option<RecordBatch> {
        let mut decoder = self.builder(&self.schema, run.len()).build_decoder().ok()?;
        for (n, &i) in run.iter().enumerate() {
            let value = records[i].value?;
            syntax(value).ok()?;
            decoder.decode(value).ok()?;
            if decoder.has_partial_record() || decoder.len() != n + 1 {
                return None;
            }
            if weir_engine::lossless::lossy_integer(value, &self.integers).is_some() {
                return None;
            }
        }
        decoder.flush().ok().flatten()
    }

    /// One decoder per value: each bad one is rejected with its reason.
    fn slow(
        &self,
        records: &[Payload<'_>],
        run: &[usize],
        rejected: &mut Vec<(usize, Rejection)>,
    ) -> (Option<RecordBatch>, Vec<usize>) {
        let mut batches = Vec::new();
        let mut rows = Vec::new();
        for &i in run {
            let value = records[i].value.unwrap_or_default();
            match self.one(&self.schema, value) {
                Ok(b) => {
                    batches.push(b);
                    rows.push(i);
                }
                Err(e) => rejected.push((i, e)),
            }
        }
        let batch = arrow::compute::concat_batches(&self.schema, &batches).ok();
        (batch, rows)
    }

    fn one(&self, schema: &SchemaRef, bytes: &[u8]) -> Result<RecordBatch, Rejection> {
        self.decode_one(schema, bytes).map_err(|mut e| {
            if e.class == "missing_field" && e.field.is_none() {
                // Name the required field the record lacks.
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(bytes).unwrap_or_default();
                if let Some(f) = schema.fields().iter().find(|f| {
                    !f.is_nullable() && object.get(f.name()).is_none_or(serde_json::Value::is_null)
                }) {
                    e.message = format!("the required field {:?} is missing or null", f.name());
                    e.field = Some(f.name().clone());
                }
            }
            e
        })
    }

    fn decode_one(&self, schema: &SchemaRef, bytes: &[u8]) -> Result<RecordBatch, Rejection> {
        syntax(bytes)?;
        if let Some((field, number)) = weir_engine::lossless::lossy_integer(bytes, &self.integers) {
            return Err(Rejection {
                class: "type_mismatch",
                message: format!(
                    "{number} is not a whole number, and the field is an integer: Weir does not \
                     round or truncate it"
                ),
                field: Some(field),
            });
        }
        let mut decoder = self
            .builder(schema, 1)
            .build_decoder()
            .map_err(|e| Rejection::from_json(&e))?;
        let not_one = || Rejection::new("json_syntax", "the value is not one JSON object");
        let used = decoder
            .decode(bytes)
            .map_err(|e| Rejection::from_json(&e))?;
        if used != bytes.len() || decoder.has_partial_record() || decoder.len() != 1 {
            return Err(if decoder.has_partial_record() {
                Rejection::new("json_syntax", "the value is truncated JSON")
            } else {
                not_one()
            });
        }
        decoder
            .flush()
            .map_err(|e| Rejection::from_json(&e))?
            .filter(|b| b.num_rows() == 1)
            .ok_or_else(not_one)
    }

    /// Deletes of a table: each key decoded into a row where only the key is set.
    fn decode_deletes(
        &self,
        records: &[Payload<'_>],
        run: &[usize],
        rejected: &mut Vec<(usize, Rejection)>,
    ) -> (Option<RecordBatch>, Vec<usize>) {
        let Some(key_schema) = &self.key_schema else {
            return (None, Vec::new());
        };
        let mut batches = Vec::new();
        let mut rows = Vec::new();
        for &i in run {
            let Some(key) = records[i].key else {
                rejected.push((
                    i,
                    Rejection::new("missing_field", "a delete (no value) without a key"),
                ));
                continue;
            };
            match self.one(key_schema, key).and_then(|k| self.widen(&k)) {
                Ok(b) => {
                    batches.push(b);
                    rows.push(i);
                }
                Err(e) => rejected.push((i, e)),
            }
        }
        let batch = arrow::compute::concat_batches(&self.delete_schema, &batches).ok();
        (batch, rows)
    }

    /// A key row widened to the whole (nullable) schema.
    fn widen(&self, key: &RecordBatch) -> Result<RecordBatch, Rejection> {
        let columns: Vec<ArrayRef> = self
            .delete_schema
            .fields()
            .iter()
            .map(|f| match key.schema().index_of(f.name()) {
                Ok(i) => key.column(i).clone(),
                Err(_) => arrow::array::new_null_array(f.data_type(), key.num_rows()),
            })
            .collect();
        RecordBatch::try_new(self.delete_schema.clone(), columns)
            .map_err(|e| Rejection::new("type_mismatch", e.to_string()))
    }

    /// Rejects rows whose event time is missing or beyond what nanoseconds can hold.
    fn check_times(
        &self,
        batch: RecordBatch,
        rows: Vec<usize>,
        rejected: &mut Vec<(usize, Rejection)>,
    ) -> (RecordBatch, Vec<usize>) {
        let Some(col) = self.event_time else {
            return (batch, rows);
        };
        let field = self.schema.field(col).name().clone();
        let original = batch.column(col);
        // A safe cast turns values nanoseconds cannot hold into NULL.
        let Ok(nanos) = cast(original, &DataType::Timestamp(TimeUnit::Nanosecond, None)) else {
            return (batch, rows);
        };
        // Beyond the clock by more than the skew allowed: as out of range as the year 3000.
        let too_far = self.max_future_skew_ms.and_then(|skew| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            i64::try_from(now)
                .ok()
                .map(|now| now.saturating_add(skew.saturating_mul(1_000_000)))
        });
        let times = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampNanosecondType>(
            &nanos,
        );
        let ahead =
            |r: usize| too_far.is_some_and(|limit| times.is_valid(r) && times.value(r) > limit);
        if nanos.null_count() == 0 && !(0..batch.num_rows()).any(ahead) {
            return (batch, rows);
        }
        let good = |r: usize| nanos.is_valid(r) && !ahead(r);
        let keep: arrow::array::BooleanArray =
            (0..batch.num_rows()).map(|r| Some(good(r))).collect();
        for r in (0..batch.num_rows()).filter(|r| !good(*r)) {
            let rejection = if ahead(r) {
                Rejection {
                    class: "time_out_of_range",
                    message: format!(
                        "the event-time field {field:?} is more than \
                         spec.eventTime.maxFutureSkew ({} ms) ahead of this worker's clock",
                        self.max_future_skew_ms.unwrap_or_default()
                    ),
                    field: Some(field.clone()),
                }
            } else if original.is_null(r) {
                Rejection {
                    class: "missing_field",
                    message: format!("the event-time field {field:?} is missing or null"),
                    field: Some(field.clone()),
                }
            } else {
                Rejection {
                    class: "time_out_of_range",
                    message: format!(
                        "the event-time field {field:?} is outside the years 1677-2262"
                    ),
                    field: Some(field.clone()),
                }
            };
            rejected.push((rows[r], rejection));
        }
        let kept = (0..batch.num_rows())
            .filter(|r| good(*r))
            .map(|r| rows[r])
            .collect();
        match filter_record_batch(&batch, &keep) {
            Ok(b) => (b, kept),
            Err(_) => (batch, rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn input(table: bool) -> StreamInput {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let i = StreamInput::new("ns", "s", schema)
            .with_key(["id"])
            .with_event_time("ts", 0);
        if table { i.as_table() } else { i }
    }

    fn values(payloads: &[&str]) -> Vec<Payload<'static>> {
        payloads
            .iter()
            .map(|p| Payload {
                key: None,
                value: Some(Box::leak(p.to_string().into_boxed_str()).as_bytes()),
            })
            .collect()
    }

    fn ids(d: &Decoded) -> Vec<String> {
        d.batches
            .iter()
            .flat_map(|b| {
                let a = b.data.column(0).as_string::<i32>();
                (0..a.len())
                    .map(|i| a.value(i).to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn good_records_take_the_fast_path_in_one_batch() {
        let d = Decoder::new(&input(false), 1 << 20).decode(&values(&[
            r#"{"id":"a","n":1,"ts":"2026-01-01T00:00:00Z"}"#,
            r#"{"id":"b","n":2,"ts":1767225600000,"extra":true}"#,
        ]));
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(d.batches.len(), 1);
        assert_eq!(ids(&d), ["a", "b"]);
    }

    #[test]
    fn each_bad_record_is_set_aside_with_its_class_and_the_rest_kept() {
        let d = Decoder::new(&input(false), 100).decode(&values(&[
            r#"{"id":"a","n":1,"ts":0}"#,
            r#"{"id":"b","n":"#,
            r#"{"id":"c","n":"three"}"#,
            r#"{"id":"d"}"#,
            r#"{"id":"e","n":5,"ts":"2300-01-01T00:00:00Z"}"#,
            &format!(r#"{{"id":"{}","n":6}}"#, "x".repeat(200)),
            r#"[1,2]"#,
            r#"{"id":"h","n":8}{"id":"i","n":9}"#,
            r#"{"id":"j","n":10,"ts":"2026-01-01T00:00:00Z"}"#,
            // A missing comma, which arrow-json alone would read as good.
            r#"{"id":"k" "n":11,"ts":"2026-01-01T00:00:00Z"}"#,
        ]));
        assert_eq!(ids(&d), ["a", "j"]);
        let classes: Vec<(usize, &str)> = d.rejected.iter().map(|(i, r)| (*i, r.class)).collect();
        assert_eq!(
            classes,
            [
                (1, "json_syntax"),
                (2, "type_mismatch"),
                (3, "missing_field"),
                (4, "time_out_of_range"),
                (5, "too_large"),
                (6, "json_syntax"),
                (7, "json_syntax"),
                (9, "json_syntax"),
            ]
        );
        assert_eq!(d.rejected[1].1.field.as_deref(), Some("n"));
        assert_eq!(
            d.rejected[2].1.field.as_deref(),
            Some("n"),
            "{:?}",
            d.rejected[2]
        );
    }

    #[test]
    fn an_event_time_too_far_ahead_of_the_clock_is_rejected_when_a_skew_is_set() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let soon = format!(r#"{{"id":"a","n":1,"ts":{}}}"#, now + 60_000);
        let far = r#"{"id":"b","n":2,"ts":"2100-01-01T00:00:00Z"}"#;
        let past = r#"{"id":"c","n":3,"ts":"2026-01-01T00:00:00Z"}"#;
        let records = values(&[&soon, far, past]);
        let unlimited = Decoder::new(&input(false), 1 << 20).decode(&records);
        assert!(unlimited.rejected.is_empty(), "no limit unless set");
        let d = Decoder::new(&input(false), 1 << 20)
            .with_max_future_skew(Some(3_600_000))
            .decode(&records);
        assert_eq!(ids(&d), ["a", "c"], "a minute ahead is within an hour");
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].0, 1);
        assert_eq!(d.rejected[0].1.class, "time_out_of_range");
        assert_eq!(d.rejected[0].1.field.as_deref(), Some("ts"));
    }

    #[test]
    fn a_fraction_in_an_integer_field_is_rejected_not_truncated() {
        let d = Decoder::new(&input(false), 1 << 20).decode(&values(&[
            r#"{"id":"a","n":1.0,"ts":0}"#,
            r#"{"id":"b","n":1.9,"ts":0}"#,
            r#"{"id":"c","n":3e1,"ts":0}"#,
        ]));
        assert_eq!(ids(&d), ["a", "c"]);
        let (i, r) = &d.rejected[0];
        assert_eq!(
            (*i, r.class, r.field.as_deref()),
            (1, "type_mismatch", Some("n"))
        );
        assert!(
            r.message.starts_with("1.9 is not a whole number"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_tombstone_deletes_a_table_key_by_the_key_alone_and_keeps_order() {
        let recs = [
            Payload {
                key: Some(br#"{"id":"a"}"#),
                value: Some(br#"{"id":"a","n":1,"ts":0}"#),
            },
            Payload {
                key: Some(br#"{"id":"a"}"#),
                value: None,
            },
            Payload {
                key: Some(br#"{"id":"b"}"#),
                value: Some(br#"{"id":"b","n":2,"ts":0}"#),
            },
        ];
        let d = Decoder::new(&input(true), 1 << 20).decode(&recs);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let weights: Vec<Vec<i64>> = d.batches.iter().map(ChangeBatch::weight_vec).collect();
        assert_eq!(weights, [vec![1], vec![-1], vec![1]]);
        assert_eq!(ids(&d), ["a", "a", "b"]);
        // On an event stream the same tombstone is rejected.
        let d = Decoder::new(&input(false), 1 << 20).decode(&recs);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].1.class, "unexpected_tombstone");
    }
}
