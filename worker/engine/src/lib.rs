//! weir-engine runs a compiled Transform incrementally.
//!
//! Data moves between operators as Arrow record batches of changes: each row carries a
//! signed weight (+1 insert, −1 retract). The engine takes change batches per input
//! DataStream, with event times and watermarks, and produces the output's change
//! batches. Like `weir-sql` it is pure — no I/O, no tokio, no Kafka, no Kubernetes —
//! so the worker, the operator and the `weir` CLI run exactly the same code.
//!
//! ```
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use weir_engine::{Engine, sql::{compile, CompileOptions, StreamInput}};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
//! let input = StreamInput::new("ns", "numbers", schema.clone());
//! let compiled = compile("SELECT SUM(n) AS total FROM numbers", &[input],
//!     &CompileOptions::new("ns")).unwrap();
//! let mut engine = Engine::new(&compiled).unwrap();
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
//! let out = engine.push(0, weir_engine::ChangeBatch::inserts(batch)).unwrap();
//! // A global SUM has its one row from the start (NULL over no input); the push retracts
//! // it and inserts the new total, so the output's rows sum to a single row: 6.
//! let rows = weir_engine::runner::consolidate(&engine.output_schema(), &out).unwrap();
//! assert_eq!(rows, vec![(vec!["6".to_owned()], 1)]);
//! ```

pub use weir_sql as sql;

mod changes;
mod engine;
pub mod expectations;
mod exprs;
pub mod lossless;
mod ops;
pub mod runner;
mod watermark;

pub use changes::{ChangeBatch, concat};
pub use engine::{Engine, EngineStats, StateEntry};
pub use expectations::Expectations;
pub use watermark::Watermark;

/// Something went wrong while running changes through the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Arrow could not compute something (a cast, a kernel).
    #[error("{}", arrow_message(.0))]
    Arrow(#[from] arrow::error::ArrowError),
    /// An expression failed to evaluate.
    #[error("{}", datafusion_message(.0))]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A change batch does not fit the input it was given to.
    #[error("{0}")]
    Input(String),
    /// A snapshot could not be written or read back.
    #[error("state snapshot: {0}")]
    Snapshot(String),
    /// A value overflowed its type (for example SUM beyond 64 bits).
    #[error("{0}")]
    Overflow(String),
}

/// An Arrow error in a person's words, without the library's prefixes.
fn arrow_message(e: &arrow::error::ArrowError) -> String {
    use arrow::error::ArrowError::*;
    match e {
        DivideByZero => "division by zero".into(),
        ComputeError(m) | CastError(m) | ParseError(m) | InvalidArgumentError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// A DataFusion error in a person's words: its root cause, without the library's prefixes.
fn datafusion_message(e: &datafusion::error::DataFusionError) -> String {
    use datafusion::error::DataFusionError::*;
    match e.find_root() {
        ArrowError(a, _) => arrow_message(a),
        Execution(m) | Plan(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
