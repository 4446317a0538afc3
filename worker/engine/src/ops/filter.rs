//! Filtering.

use super::Operator;
use crate::exprs::Eval;
use crate::{ChangeBatch, Result};

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
