//! weir-worker is Weir's data plane.
//!
//! A worker consumes a Transform's input topics, decodes records into Arrow batches of
//! changes, runs them through the compiled plan on `weir-engine`, and produces the results,
//! committing input offsets, output records and state in one Kafka transaction. The crate
//! also holds the `weir` developer CLI, which runs the same engine on a laptop.

pub mod cli;
