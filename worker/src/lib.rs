//! weir-worker is Weir's data plane.
//!
//! `weir-worker run` consumes a Transform's input topics, decodes JSON records into Arrow
//! batches of changes ([`codec`]), runs them through the compiled plan on `weir-engine`
//! with one engine per input partition (or per repartition partition), and produces the results. With exactly-once
//! delivery (the default) the output records, the dead letters ([`dead_letter`]), each
//! task's changed state entries ([`changelog`]) and the consumed offsets commit in one
//! Kafka transaction ([`pipeline`]). `/metrics`, `/healthz` and `/readyz` are served by
//! [`http`]. A plan whose operators need another partitioning than the inputs' keys
//! first routes every input through an internal repartition topic ([`pipeline`]); event
//! time crosses it as watermark records ([`watermark`]). Once ready, a worker gives back
//! the pages of code only start-up used, such as the SQL compiler's ([`startup`]).
//!
//! The crate also holds the `weir` developer CLI ([`cli`]), which runs the same compiler
//! (`weir-sql`) and engine on a laptop. Both read Weir's resources from YAML with
//! [`resources`].

pub mod changelog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dead_letter;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod resources;
pub mod route;
pub mod startup;
pub mod transform;
pub mod watermark;
