//! Batches of changes: Arrow rows with a signed weight each.

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampNanosecondType};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::Result;

/// Rows and their weights: +1 inserts a row, −1 retracts one, `n` inserts `n` copies.
///
/// Append-only paths carry no weights at all (every row +1), so they skip the
/// bookkeeping.
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    /// The rows.
    pub data: RecordBatch,
    /// One weight per row; `None` means every row has weight +1.
    pub weights: Option<Int64Array>,
}

impl ChangeBatch {
    /// Inserts of every row.
    pub fn inserts(data: RecordBatch) -> Self {
        Self {
            data,
            weights: None,
        }
    }

    /// Rows with explicit weights.
    pub fn new(data: RecordBatch, weights: Vec<i64>) -> Self {
        debug_assert_eq!(data.num_rows(), weights.len());
        let weights = if weights.iter().all(|w| *w == 1) {
            None
        } else {
            Some(Int64Array::from(weights))
        };
        Self { data, weights }
    }

    /// An empty batch of this schema.
    pub fn empty(schema: SchemaRef) -> Self {
        Self::inserts(RecordBatch::new_empty(schema))
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.data.num_rows()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.num_rows() == 0
    }

    /// The weight of row `i`.
    #[inline]
    pub fn weight(&self, i: usize) -> i64 {
        self.weights.as_ref().map_or(1, |w| w.value(i))
    }

    /// Whether every row is an insert of weight 1.
    pub fn is_insert_only(&self) -> bool {
        self.weights.is_none()
    }

    /// All weights as a vector.
    pub fn weight_vec(&self) -> Vec<i64> {
        match &self.weights {
            None => vec![1; self.len()],
            Some(w) => w.values().to_vec(),
        }
    }

    /// `len` rows from `offset`, with their weights.
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        Self {
            data: self.data.slice(offset, len),
            weights: self.weights.as_ref().map(|w| w.slice(offset, len)),
        }
    }

    /// The rows where `mask` is true, with their weights.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let data = filter_record_batch(&self.data, mask)?;
        let weights = match &self.weights {
            None => None,
            Some(w) => {
                let f = arrow::compute::filter(w, mask)?;
                Some(f.as_primitive::<Int64Type>().clone())
            }
        };
        Ok(Self { data, weights })
    }

    /// The rows at `indices`, with their weights.
    pub fn take(&self, indices: &UInt32Array) -> Result<Self> {
        let data = take_record_batch(&self.data, indices)?;
        let weights = match &self.weights {
            None => None,
            Some(w) => Some(
                arrow::compute::take(w, indices, None)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
        };
        Ok(Self { data, weights })
    }

    /// The same rows under another schema with the same types (names may differ).
    pub fn with_schema(self, schema: SchemaRef) -> Result<Self> {
        if self.data.schema() == schema {
            return Ok(self);
        }
        let columns: Vec<ArrayRef> = self.data.columns().to_vec();
        let data = RecordBatch::try_new_with_options(
            schema,
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(self.len())),
        )?;
        Ok(Self {
            data,
            weights: self.weights,
        })
    }
}

/// Concatenates change batches of one schema.
pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<ChangeBatch> {
    let data = arrow::compute::concat_batches(schema, batches.iter().map(|b| &b.data))?;
    if batches.iter().all(ChangeBatch::is_insert_only) {
        return Ok(ChangeBatch::inserts(data));
    }
    let weights: Vec<i64> = batches.iter().flat_map(|b| b.weight_vec()).collect();
    Ok(ChangeBatch {
        data,
        weights: Some(Int64Array::from(weights)),
    })
}

/// A column's values as nanoseconds since the epoch (timestamps of any unit, dates).
pub fn time_nanos(array: &ArrayRef) -> Result<Arc<arrow::array::TimestampNanosecondArray>> {
    use arrow::datatypes::{DataType, TimeUnit};
    let cast = arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    Ok(Arc::new(
        cast.as_primitive::<TimestampNanosecondType>().clone(),
    ))
}
