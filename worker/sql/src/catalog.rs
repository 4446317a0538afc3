//! Resolves DataStream names for DataFusion's SQL planner.

use std::cell::RefCell;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::TableReference;
use datafusion::config::ConfigOptions;
use datafusion::datasource::{empty::EmptyTable, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

use crate::{StreamInput, sql_ident};

/// The DataStreams visible to one Transform, as DataFusion tables.
pub(crate) struct Catalog<'a> {
    pub state: &'a SessionState,
    pub streams: &'a [StreamInput],
    pub namespace: String,
    /// Indices into `streams` of the ones the SQL referred to, in first-use order.
    pub used: RefCell<Vec<usize>>,
    /// Names the SQL referred to that matched no DataStream.
    pub unknown: RefCell<Vec<String>>,
}

impl Catalog<'_> {
    /// The index of the DataStream a table reference names.
    pub fn resolve(&self, name: &TableReference) -> Option<usize> {
        let (ns, table) = match name {
            TableReference::Bare { table } => (sql_ident(&self.namespace), table.as_ref()),
            TableReference::Partial { schema, table } => (sql_ident(schema), table.as_ref()),
            TableReference::Full { .. } => return None,
        };
        let table = sql_ident(table);
        self.streams
            .iter()
            .position(|s| sql_ident(&s.namespace) == ns && sql_ident(&s.name) == table)
    }

    pub fn table_schema(&self, index: usize) -> SchemaRef {
        self.streams[index].schema.clone()
    }
}

impl ContextProvider for Catalog<'_> {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        match self.resolve(&name) {
            Some(i) => {
                let mut used = self.used.borrow_mut();
                if !used.contains(&i) {
                    used.push(i);
                }
                Ok(provider_as_source(Arc::new(EmptyTable::new(
                    self.table_schema(i),
                ))))
            }
            None => {
                self.unknown.borrow_mut().push(name.to_string());
                Err(DataFusionError::Plan(format!(
                    "no DataStream named '{name}' is visible to this Transform"
                )))
            }
        }
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}
