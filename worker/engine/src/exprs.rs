//! DataFusion expressions made physical, evaluated on batches.

use arrow::array::AsArray;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use crate::{EngineError, Result};

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) struct Eval(Arc<dyn PhysicalExpr>);

impl Eval {
    pub fn new(expr: &Expr, schema: &DFSchema) -> Result<Self> {
        let props = ExecutionProps::new();
        Ok(Self(create_physical_expr(
            expr,
            schema,
            &props,
            &PhysicalPlanningContext::default(),
        )?))
    }

    pub fn many(exprs: &[Expr], schema: &DFSchema) -> Result<Vec<Self>> {
        exprs.iter().map(|e| Self::new(e, schema)).collect()
    }

    pub fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        Ok(self.0.evaluate(batch)?.into_array(batch.num_rows())?)
    }

    /// Evaluates a predicate: NULL counts as false.
    pub fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let a = self.eval(batch)?;
        let b = a
            .as_boolean_opt()
            .ok_or_else(|| EngineError::Input(format!("a predicate gave {}", a.data_type())))?;
        Ok(match b.nulls() {
            None => b.clone(),
            Some(_) => arrow::compute::prep_null_mask_filter(b),
        })
    }
}
