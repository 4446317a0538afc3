//! weir-sql compiles a Transform's SQL into a typed, checked streaming plan.
//!
//! It takes SQL text and the Arrow schemas of the DataStreams the SQL may read, and
//! uses Apache DataFusion to parse, plan and type-check it. The result is what
//! `weir-engine` runs. The crate is pure: no I/O, no async runtime, no Kafka and no
//! Kubernetes, so the operator, the worker and the `weir` CLI all compile SQL the same way.

pub use arrow::datatypes::{DataType, Field, Schema};
