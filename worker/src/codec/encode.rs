//! Change batches to records: each row as JSON, with its key, and tombstones for a
//! changelog's deletes.

use std::ops::Range;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use weir_engine::ChangeBatch;
use weir_sql::StreamKind;

/// One output record: key and value as JSON; a `None` value is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    /// The key: the output key columns as a JSON object, if the output has a key.
    pub key: Option<Vec<u8>>,
    /// The row as a JSON object, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// Encodes the output's changes as records.
#[derive(Debug, Clone)]
pub struct Encoder {
    key_cols: Vec<usize>,
    changelog: bool,
}

impl Encoder {
    /// An encoder for an output of this schema, key and kind.
    pub fn new(schema: &SchemaRef, key: &[String], kind: StreamKind) -> Self {
        Self {
            key_cols: key.iter().filter_map(|k| schema.index_of(k).ok()).collect(),
            changelog: kind == StreamKind::Changelog,
        }
    }

    /// The records for one batch of output changes, in order, each as its own bytes.
    pub fn encode(
        &self,
        changes: &ChangeBatch,
    ) -> Result<Vec<OutputRecord>, arrow::error::ArrowError> {
        Ok(self
            .encode_batch(changes)?
            .iter()
            .map(|(key, value)| OutputRecord {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
            })
            .collect())
    }

    /// The records for one batch of output changes, in order, as slices of one buffer (no
    /// allocation per record). An append-only output writes each inserted row (weight `n`
    /// as `n` records). A changelog writes the latest row per key as an upsert, or a
    /// tombstone when the key's row is gone.
    pub fn encode_batch(&self, changes: &ChangeBatch) -> Result<Encoded, arrow::error::ArrowError> {
        let values = JsonLines::of(&changes.data)?;
        let keys = if self.key_cols.is_empty() {
            None
        } else {
            Some(JsonLines::of(&changes.data.project(&self.key_cols)?)?)
        };
        let key_at = |i: usize| keys.as_ref().map(|k| Slice::Key(k.rows[i].clone()));
        let mut records = Vec::with_capacity(values.rows.len());
        if !self.changelog {
            for (i, value) in values.rows.iter().enumerate() {
                for _ in 0..changes.weight(i).max(0) {
                    records.push((key_at(i), Some(value.clone())));
                }
            }
        } else {
            // Per key, the net weight of each row; keys in the order first seen.
            let key_bytes = |i: usize| match &keys {
                Some(k) => k.row(i),
                None => values.row(i),
            };
            let mut order: Vec<usize> = Vec::new();
            let mut by_key: hashbrown::HashMap<&[u8], Vec<(usize, i64)>> =
                hashbrown::HashMap::new();
            for i in 0..values.rows.len() {
                let rows = by_key.entry(key_bytes(i)).or_insert_with(|| {
                    order.push(i);
                    Vec::new()
                });
                match rows
                    .iter_mut()
                    .find(|(r, _)| values.row(*r) == values.row(i))
                {
                    Some((_, w)) => *w += changes.weight(i),
                    None => rows.push((i, changes.weight(i))),
                }
            }
            for first in order {
                let rows = &by_key[key_bytes(first)];
                let key = Some(key_at(first).unwrap_or(Slice::Value(values.rows[first].clone())));
                if let Some((r, _)) = rows.iter().rev().find(|(_, w)| *w > 0) {
                    records.push((key, Some(values.rows[*r].clone())));
                } else if rows.iter().any(|(_, w)| *w < 0) {
                    records.push((key, None));
                }
            }
        }
        Ok(Encoded {
            values: values.buf,
            keys: keys.map(|k| k.buf).unwrap_or_default(),
            records,
        })
    }
}

/// Where a record's key is: in the keys' buffer, or (an output without key columns) the
/// whole row in the values' buffer.
#[derive(Clone, Debug)]
enum Slice {
    Key(Range<usize>),
    Value(Range<usize>),
}

/// Encoded output records: every value in one buffer, every key in another.
#[derive(Debug, Default)]
pub struct Encoded {
    values: Vec<u8>,
    keys: Vec<u8>,
    records: Vec<(Option<Slice>, Option<Range<usize>>)>,
}

impl Encoded {
    /// Each record's key and value (`None`: a tombstone), in order.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&[u8]>, Option<&[u8]>)> + '_ {
        self.records.iter().map(|(key, value)| {
            let key = key.as_ref().map(|k| match k {
                Slice::Key(r) => &self.keys[r.clone()],
                Slice::Value(r) => &self.values[r.clone()],
            });
            (key, value.clone().map(|r| &self.values[r]))
        })
    }
}

/// Each row of a batch as one JSON object with explicit nulls, in one buffer.
struct JsonLines {
    buf: Vec<u8>,
    rows: Vec<Range<usize>>,
}

impl JsonLines {
    fn of(batch: &RecordBatch) -> Result<Self, arrow::error::ArrowError> {
        let mut buf = Vec::with_capacity(batch.num_rows() * 64);
        {
            let mut writer = arrow::json::writer::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            writer.write(batch)?;
            writer.finish()?;
        }
        // JSON escapes newlines inside strings, so each line is one row.
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', &buf) {
            if i > start {
                rows.push(start..i);
            }
            start = i + 1;
        }
        if start < buf.len() {
            rows.push(start..buf.len());
        }
        Ok(Self { buf, rows })
    }

    fn row(&self, i: usize) -> &[u8] {
        &self.buf[self.rows[i].clone()]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// An output schema with a string key `k` and a count `n`.
    fn key_and_count() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    #[test]
    fn an_event_output_writes_each_row_as_often_as_it_was_inserted_with_its_key() {
        let schema = key_and_count();
        let data = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
            ],
        )
        .unwrap();
        let changes = ChangeBatch::new(data, vec![2, 0, 1]);
        let enc = Encoder::new(&schema, &["k".to_owned()], StreamKind::AppendOnly);
        let text: Vec<(String, String)> = enc
            .encode(&changes)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.unwrap()).unwrap(),
                    String::from_utf8(r.value.unwrap()).unwrap(),
                )
            })
            .collect();
        let a = (r#"{"k":"a"}"#.to_owned(), r#"{"k":"a","n":1}"#.to_owned());
        let c = (
            r#"{"k":"c"}"#.to_owned(),
            r#"{"k":"c","n":null}"#.to_owned(),
        );
        assert_eq!(text, [a.clone(), a, c]);
    }

    #[test]
    fn a_changelog_output_writes_the_latest_row_per_key_and_tombstones() {
        let schema = key_and_count();
        let data = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b", "c", "c"])),
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    Some(7),
                    Some(3),
                    Some(3),
                ])),
            ],
        )
        .unwrap();
        let changes = ChangeBatch::new(data, vec![-1, 1, -1, 1, -1]);
        let enc = Encoder::new(&schema, &["k".to_owned()], StreamKind::Changelog);
        let out = enc.encode(&changes).unwrap();
        let text: Vec<(String, Option<String>)> = out
            .iter()
            .map(|r| {
                (
                    String::from_utf8(r.key.clone().unwrap()).unwrap(),
                    r.value.clone().map(|v| String::from_utf8(v).unwrap()),
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                (
                    r#"{"k":"a"}"#.to_owned(),
                    Some(r#"{"k":"a","n":2}"#.to_owned())
                ),
                (r#"{"k":"b"}"#.to_owned(), None),
            ]
        );
    }
}
