//! UNION ALL.

use arrow::datatypes::SchemaRef;

use super::{Operator, batch};
use crate::{ChangeBatch, Result};

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
