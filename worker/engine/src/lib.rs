//! weir-engine runs a compiled Transform incrementally.
//!
//! Data moves between operators as Arrow record batches of changes: each row carries a
//! signed weight (+1 insert, −1 retract). The engine takes change batches per input
//! DataStream, with event times and watermarks, and produces the output's change
//! batches. Like `weir-sql` it is pure — no I/O, no tokio, no Kafka, no Kubernetes —
//! so the worker, the operator and the `weir` CLI run exactly the same code.

pub use weir_sql as sql;
