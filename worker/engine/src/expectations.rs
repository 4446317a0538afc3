//! Expectations: SQL boolean checks over every output row, run by the same compiler and
//! engine as the Transform itself.
//!
//! Each check compiles to `SELECT row FROM output WHERE NOT (check)` over the output's
//! schema plus a row number, so what the engine returns are the rows that break it. As
//! in a SQL `CHECK` constraint, a check that is NULL (unknown) passes. Only inserted rows
//! are checked: a retraction withdraws a row that was checked when it was inserted.

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_sql::{CompileError, CompileOptions, CompiledTransform, StreamInput, compile};

use crate::{ChangeBatch, Engine, EngineError, Result};

/// The column carrying each row's index into the checked batch.
const ROW: &str = "__weir_row";

/// One compiled check.
struct Check {
    engine: Engine,
}

/// The compiled checks of one Transform.
pub struct Expectations {
    checks: Vec<Check>,
    /// The output's schema and the row number.
    schema: SchemaRef,
}

impl std::fmt::Debug for Expectations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expectations({})", self.checks.len())
    }
}

impl Expectations {
    /// Compiles each check (a SQL boolean expression over the output's columns) of
    /// `compiled`. An error names the check by its index, with the line and column in
    /// the check's own text.
    pub fn compile(
        compiled: &CompiledTransform,
        checks: &[&str],
    ) -> std::result::Result<Self, (usize, CompileError)> {
        let mut fields: Vec<Field> = compiled
            .output_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW, DataType::Int64, false));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let input = StreamInput::new("weir", "output", schema.clone());
        let checks = checks
            .iter()
            .enumerate()
            .map(|(i, check)| {
                // The check on its own lines, so the compiler's positions are the check's.
                let sql = format!("SELECT {ROW} FROM output WHERE NOT (\n{check}\n)");
                let plan = compile(
                    &sql,
                    std::slice::from_ref(&input),
                    &CompileOptions::new("weir"),
                )
                .map_err(|mut e| {
                    e.line = e.line.map(|l| l.saturating_sub(1).max(1));
                    let internal = format!(", output.{ROW}");
                    e.message = e.message.replace(&internal, "");
                    e.hint = e.hint.map(|h| h.replace(&internal, ""));
                    (i, e)
                })?;
                let engine = Engine::new(&plan).map_err(|e| {
                    (
                        i,
                        CompileError {
                            message: e.to_string(),
                            line: None,
                            column: None,
                            hint: None,
                        },
                    )
                })?;
                Ok(Check { engine })
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { checks, schema })
    }

    /// Whether there are no checks.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The inserted rows of `batch` that break a check, as (row, check index), in row
    /// order; a row breaking several checks is listed once per check.
    pub fn failures(&mut self, batch: &ChangeBatch) -> Result<Vec<(usize, usize)>> {
        if self.checks.is_empty() || batch.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Int64Array = (0..batch.len() as i64).collect();
        let mut columns: Vec<ArrayRef> = batch.data.columns().to_vec();
        columns.push(Arc::new(rows));
        let inserted: BooleanArray = (0..batch.len())
            .map(|i| Some(batch.weight(i) > 0))
            .collect();
        let with_rows = ChangeBatch::inserts(RecordBatch::try_new(self.schema.clone(), columns)?)
            .filter(&inserted)?;
        let mut out = Vec::new();
        for (c, check) in self.checks.iter_mut().enumerate() {
            for broken in check.engine.push(0, with_rows.clone())? {
                let col = broken
                    .data
                    .column(0)
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| EngineError::Input("a check returned no row numbers".into()))?
                    .clone();
                out.extend(col.values().iter().map(|r| (*r as usize, c)));
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use weir_sql::{CompileOptions, StreamInput, compile};

    use super::Expectations;
    use crate::ChangeBatch;

    fn compiled() -> weir_sql::CompiledTransform {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        compile(
            "SELECT user_id, n FROM clicks",
            &[StreamInput::new("ns", "clicks", schema)],
            &CompileOptions::new("ns"),
        )
        .unwrap()
    }

    fn batch(
        c: &weir_sql::CompiledTransform,
        n: Vec<Option<i64>>,
        weights: Vec<i64>,
    ) -> ChangeBatch {
        let users: StringArray = (0..n.len()).map(|i| Some(format!("u{i}"))).collect();
        ChangeBatch::new(
            RecordBatch::try_new(
                c.output_schema.clone(),
                vec![Arc::new(users), Arc::new(Int64Array::from(n))],
            )
            .unwrap(),
            weights,
        )
    }

    #[test]
    fn rows_breaking_a_check_are_named_and_null_passes() {
        let c = compiled();
        let mut e = Expectations::compile(&c, &["n >= 0", "user_id <> 'u3'"]).unwrap();
        let b = batch(
            &c,
            vec![Some(1), Some(-2), None, Some(4), Some(-5)],
            vec![1, 1, 1, 1, -1],
        );
        // Row 4 is a retraction: not checked.
        assert_eq!(e.failures(&b).unwrap(), vec![(1, 0), (3, 1)]);
    }

    #[test]
    fn a_bad_check_names_itself_and_its_own_line_and_column() {
        let c = compiled();
        let (i, err) = Expectations::compile(&c, &["n >= 0", "nope > 1"]).unwrap_err();
        assert_eq!(i, 1);
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(!err.to_string().contains("__weir_row"), "{err}");
        let (_, err) = Expectations::compile(&c, &["n >=\n  AND 1"]).unwrap_err();
        assert!(err.line.is_none_or(|l| l <= 2), "{err}");
    }
}
