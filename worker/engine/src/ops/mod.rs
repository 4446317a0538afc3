//! The incremental operators.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;

use crate::exprs::Eval;
use crate::{ChangeBatch, EngineError, Result};

pub(crate) mod aggregate;
pub(crate) mod join;
pub(crate) mod state;

/// One incremental operator. `port` numbers its inputs (a join has two, a union many).
pub(crate) trait Operator: Send {
    /// Applies input changes, returning output changes.
    fn process(&mut self, port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>>;

    /// The watermarks of the inputs moved; emit what they complete and drop what they
    /// make unreachable.
    fn on_watermark(&mut self, _watermarks: &[i64]) -> Result<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// The operator's state, serialized.
    fn snapshot(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    /// Replaces the operator's state with a snapshot.
    fn restore(&mut self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }

    /// Appends the state entries changed since the last call: keyed records, `None` for
    /// an entry that is gone. Applying them in order to a fresh operator with
    /// [`Operator::apply_state_entry`] rebuilds the state.
    fn take_state_changes(&mut self, _out: &mut Vec<state::Entry>) -> Result<()> {
        Ok(())
    }

    /// Applies one entry written by [`Operator::take_state_changes`]; a later entry with
    /// the same key replaces an earlier one.
    fn apply_state_entry(&mut self, key: &[u8], _value: Option<&[u8]>) -> Result<()> {
        Err(state::unknown_key("stateless operator", key))
    }

    /// Every entry is applied: rebuild indexes derived from the state.
    fn finish_restore(&mut self) -> Result<()> {
        Ok(())
    }

    /// Approximate bytes of state held.
    fn state_size(&self) -> usize {
        0
    }

    /// Records dropped for arriving after the watermark made them unusable.
    fn late_records(&self) -> u64 {
        0
    }
}

/// The Arrow schema of a plan node.
pub(crate) fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

/// Builds a batch, tolerating columns whose nullability is wider than declared.
pub(crate) fn batch(
    schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                arrow::compute::cast(&c, f.data_type()).map_err(EngineError::from)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

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

/// Computes expressions of each change.
pub(crate) struct Project {
    pub exprs: Vec<Eval>,
    pub schema: SchemaRef,
}

impl Project {
    pub fn new(exprs: &[Expr], input: &DFSchema, output: &DFSchema) -> Result<Self> {
        Ok(Self {
            exprs: Eval::many(exprs, input)?,
            schema: arrow_schema(output),
        })
    }
}

impl Operator for Project {
    fn process(&mut self, _port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let columns = self
            .exprs
            .iter()
            .map(|e| e.eval(&input.data))
            .collect::<Result<Vec<_>>>()?;
        let data = batch(&self.schema, columns, input.len())?;
        Ok(vec![ChangeBatch {
            data,
            weights: input.weights,
        }])
    }
}

/// Keeps the changes whose row passes a predicate.
pub(crate) struct Filter {
    pub predicate: Eval,
}

impl Operator for Filter {
    fn process(&mut self, _port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let mask = self.predicate.mask(&input.data)?;
        if mask.true_count() == input.len() {
            return Ok(vec![input]);
        }
        Ok(vec![input.filter(&mask)?])
    }
}

/// UNION ALL: every input's changes, under the output's column names.
pub(crate) struct Union {
    pub schema: SchemaRef,
}

impl Operator for Union {
    fn process(&mut self, _port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let rows = input.len();
        let data = batch(&self.schema, input.data.columns().to_vec(), rows)?;
        Ok(vec![ChangeBatch {
            data,
            weights: input.weights,
        }])
    }
}
