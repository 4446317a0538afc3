//! Reading an input DataStream: its columns, and a table's current row per key.

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;

use super::{Operator, batch, state};
use crate::{ChangeBatch, EngineError, Result};

/// Reads one input DataStream's batches and picks the columns the plan uses.
///
/// A keyed changelog input (a table) arrives as upserts and deletes: weight +1 sets the
/// row for its key, −1 deletes its key. The source keeps the current row per key and
/// turns them into changes (retract the old row, insert the new one).
pub(crate) struct Source {
    pub projection: Vec<usize>,
    pub schema: SchemaRef,
    pub input_schema: SchemaRef,
    pub name: String,
    pub upsert: Option<Upsert>,
    /// Events only: a retraction is refused (aggregates over events keep only what
    /// inserts need, such as the best value for MIN and MAX).
    pub append_only: bool,
}

/// The current row per key of a table input.
pub(crate) struct Upsert {
    key_cols: Vec<usize>,
    key_conv: arrow::row::RowConverter,
    row_conv: arrow::row::RowConverter,
    rows: hashbrown::HashMap<Vec<u8>, Vec<u8>>,
    dirty: state::Dirty,
}

impl Upsert {
    pub fn new(schema: &SchemaRef, key_cols: Vec<usize>) -> Result<Self> {
        use arrow::row::{RowConverter, SortField};
        let field = |i: usize| SortField::new(schema.field(i).data_type().clone());
        Ok(Self {
            key_conv: RowConverter::new(key_cols.iter().map(|i| field(*i)).collect())?,
            row_conv: RowConverter::new((0..schema.fields().len()).map(field).collect())?,
            key_cols,
            rows: hashbrown::HashMap::new(),
            dirty: state::Dirty::default(),
        })
    }

    fn apply(&mut self, input: &ChangeBatch) -> Result<ChangeBatch> {
        let data = &input.data;
        let keys: Vec<ArrayRef> = self
            .key_cols
            .iter()
            .map(|i| data.column(*i).clone())
            .collect();
        let keys = self.key_conv.convert_columns(&keys)?;
        let rows = self.row_conv.convert_columns(data.columns())?;
        let mut out_rows: Vec<Vec<u8>> = Vec::new();
        let mut weights = Vec::new();
        for i in 0..data.num_rows() {
            let key = keys.row(i).as_ref().to_vec();
            let w = input.weight(i);
            if w != 0 {
                self.dirty.mark(key.clone());
            }
            if w > 0 {
                let new = rows.row(i).as_ref().to_vec();
                match self.rows.insert(key, new.clone()) {
                    Some(old) if old == new => continue,
                    Some(old) => {
                        out_rows.push(old);
                        weights.push(-1);
                    }
                    None => {}
                }
                out_rows.push(new);
                weights.push(1);
            } else if w < 0
                && let Some(old) = self.rows.remove(&key)
            {
                out_rows.push(old);
                weights.push(-1);
            }
        }
        let parser = self.row_conv.parser();
        let columns = self
            .row_conv
            .convert_rows(out_rows.iter().map(|r| parser.parse(r)))?;
        let data = batch(&data.schema(), columns, out_rows.len())?;
        Ok(ChangeBatch::new(data, weights))
    }
}

impl Operator for Source {
    fn process(&mut self, _port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let got = input.data.schema();
        if got.fields().len() != self.input_schema.fields().len()
            || got
                .fields()
                .iter()
                .zip(self.input_schema.fields())
                .any(|(a, b)| a.data_type() != b.data_type())
        {
            return Err(EngineError::Input(format!(
                "a batch for {} has columns ({}) but the DataStream's schema is ({})",
                self.name,
                describe(&got),
                describe(&self.input_schema)
            )));
        }
        if self.append_only
            && let Some(w) = &input.weights
            && w.values().iter().any(|w| *w < 0)
        {
            return Err(EngineError::Input(format!(
                "a retraction on {}, an append-only DataStream: only a changelog (table) \
                 input can retract rows",
                self.name
            )));
        }
        let input = match &mut self.upsert {
            Some(u) => u.apply(&input)?,
            None => input,
        };
        let columns = self
            .projection
            .iter()
            .map(|i| input.data.column(*i).clone())
            .collect();
        let data = batch(&self.schema, columns, input.len())?;
        Ok(vec![ChangeBatch {
            data,
            weights: input.weights,
        }])
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        match &self.upsert {
            Some(u) => state::encode(&u.rows),
            None => Ok(Vec::new()),
        }
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(u) = &mut self.upsert {
            u.rows = state::decode(bytes)?;
            u.dirty.clear(None);
        }
        Ok(())
    }

    fn take_state_changes(&mut self, out: &mut Vec<state::Entry>) -> Result<()> {
        let Some(u) = &mut self.upsert else {
            return Ok(());
        };
        // A table's rows are its only state; the key is the table's key in row format.
        let rows = &u.rows;
        u.dirty.take(|k| Ok(rows.get(k).cloned()), out)
    }

    fn apply_state_entry(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let Some(u) = &mut self.upsert else {
            return Err(state::unknown_key("source of an event stream", key));
        };
        match value {
            Some(v) => u.rows.insert(key.to_vec(), v.to_vec()),
            None => u.rows.remove(key),
        };
        Ok(())
    }

    fn state_size(&self) -> usize {
        self.upsert.as_ref().map_or(0, |u| {
            u.rows.iter().map(|(k, v)| k.len() + v.len() + 48).sum()
        })
    }
}

fn describe(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
