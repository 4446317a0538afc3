//! The incremental operators.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;

use crate::{ChangeBatch, EngineError, Result, Watermark};

pub(crate) mod aggregate;
mod filter;
pub(crate) mod join;
mod project;
mod source;
pub(crate) mod state;
mod union;

pub(crate) use filter::Filter;
pub(crate) use project::Project;
pub(crate) use source::{Source, Upsert};
pub(crate) use union::Union;

/// One incremental operator. `port` numbers its inputs (a join has two, a union many).
pub(crate) trait Operator: Send {
    /// Applies input changes, returning output changes.
    fn process(&mut self, port: usize, input: ChangeBatch) -> Result<Vec<ChangeBatch>>;

    /// The watermarks of the inputs moved; emit what they complete and drop what they
    /// make unreachable.
    fn on_watermark(&mut self, _watermarks: &[Watermark]) -> Result<Vec<ChangeBatch>> {
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
