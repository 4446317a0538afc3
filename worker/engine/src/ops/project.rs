//! Projection.

use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;

use super::{Operator, arrow_schema, batch};
use crate::exprs::Eval;
use crate::{ChangeBatch, Result};

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
