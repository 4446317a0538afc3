//! weir-sql compiles a Transform's SQL into a typed, checked streaming plan.
//!
//! It takes SQL text and the Arrow schemas of the DataStreams the SQL may read, and
//! uses Apache DataFusion to parse, plan, type-check and optimize it. The logical plan
//! is then lowered into [`plan::Node`]s: the streaming operators `weir-engine` runs. The
//! crate is pure: no I/O, no async runtime, no Kafka and no Kubernetes, so the operator,
//! the worker and the `weir` CLI all compile SQL the same way.
//!
//! ```
//! use std::sync::Arc;
//! use weir_sql::{compile, CompileOptions, StreamInput, StreamKind};
//! use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
//!
//! let views = StreamInput::new("web", "page-views", Arc::new(Schema::new(vec![
//!     Field::new("url", DataType::Utf8, true),
//!     Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
//! ])))
//! .with_event_time("ts", 0);
//! let compiled = compile(
//!     "SELECT url, window_start, COUNT(*) AS views FROM web.page_views \
//!      GROUP BY url, TUMBLE(ts, INTERVAL '1' MINUTE)",
//!     &[views],
//!     &CompileOptions::new("analytics"),
//! ).unwrap();
//! assert_eq!(compiled.output_kind, StreamKind::AppendOnly);
//! assert_eq!(compiled.output_schema.field(2).name(), "views");
//! ```

use std::fmt;
use std::sync::Arc;

pub use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
pub use datafusion;

mod catalog;
mod compile;
mod error;
pub mod fingerprint;
pub mod partitioning;
pub mod plan;
mod windows;

pub use compile::compile;
pub use error::CompileError;
pub use windows::{WINDOW_END, WINDOW_START, WindowFn};

/// Whether a stream carries events or a table's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Every record is a new event; nothing is ever retracted.
    AppendOnly,
    /// Records are changes to a table keyed by the stream's key: inserts, updates and
    /// deletes (retractions).
    Changelog,
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AppendOnly => "append-only",
            Self::Changelog => "changelog",
        })
    }
}

/// A DataStream the SQL may read.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamInput {
    /// The DataStream's namespace.
    pub namespace: String,
    /// The DataStream's name (dashes allowed; SQL names it with underscores).
    pub name: String,
    /// The record schema.
    pub schema: SchemaRef,
    /// The key fields, in order (empty when the stream has no key).
    pub key: Vec<String>,
    /// The event-time field and how far out of order events may arrive.
    pub event_time: Option<EventTime>,
    /// Events or a table's changelog.
    pub kind: StreamKind,
}

/// A stream's event-time field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTime {
    /// The timestamp field.
    pub field: String,
    /// How far behind the newest event time a record may arrive, in milliseconds: the
    /// watermark trails the newest event time by this much.
    pub max_out_of_orderness_ms: i64,
}

impl StreamInput {
    /// An append-only stream without key or event time.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, schema: SchemaRef) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            schema,
            key: Vec::new(),
            event_time: None,
            kind: StreamKind::AppendOnly,
        }
    }

    /// Declares the event-time field.
    pub fn with_event_time(mut self, field: &str, max_out_of_orderness_ms: i64) -> Self {
        self.event_time = Some(EventTime {
            field: field.to_owned(),
            max_out_of_orderness_ms,
        });
        self
    }

    /// Declares the key fields.
    pub fn with_key<S: Into<String>>(mut self, key: impl IntoIterator<Item = S>) -> Self {
        self.key = key.into_iter().map(Into::into).collect();
        self
    }

    /// Makes the stream a keyed changelog (a table).
    pub fn as_table(mut self) -> Self {
        self.kind = StreamKind::Changelog;
        self
    }

    /// `namespace/name`, as Kubernetes names it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `namespace.name` with underscores, as SQL names it.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", sql_ident(&self.namespace), sql_ident(&self.name))
    }
}

/// The SQL identifier for a Kubernetes name: dashes become underscores.
pub fn sql_ident(name: &str) -> String {
    name.replace('-', "_")
}

/// When a windowed aggregate emits its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EmitMode {
    /// Once, when the watermark passes the window's end plus the allowed lateness. The
    /// output is append-only.
    #[default]
    OnWindowClose,
    /// As every record arrives, retracting the previous result. The output is a
    /// changelog keyed by the group key and the window.
    Updates,
}

/// Settings that shape how the SQL compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// The Transform's namespace: bare DataStream names resolve here.
    pub namespace: String,
    /// When windowed aggregates emit.
    pub emit: EmitMode,
    /// How long after the watermark passes a window's end it still accepts late records,
    /// in milliseconds. Records later than that are dropped and counted.
    pub allowed_lateness_ms: i64,
}

impl CompileOptions {
    /// Defaults: emit on window close, no allowed lateness.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            emit: EmitMode::OnWindowClose,
            allowed_lateness_ms: 0,
        }
    }
}

/// A compiled Transform: everything the operator records and the worker runs.
#[derive(Clone, Debug)]
pub struct CompiledTransform {
    /// The SQL as given.
    pub sql: String,
    /// The output's record schema.
    pub output_schema: SchemaRef,
    /// Append-only (monotonic SQL) or a keyed changelog.
    pub output_kind: StreamKind,
    /// The output key: the group or primary key of a changelog (all columns when none
    /// can be derived); empty for an append-only output.
    pub output_key: Vec<String>,
    /// The output column that carries event time, when one survives the query.
    pub output_event_time: Option<String>,
    /// The DataStreams the SQL reads, in the order the plan's sources refer to them.
    pub inputs: Vec<StreamInput>,
    /// For each output column, the input columns it derives from.
    pub lineage: Vec<ColumnLineage>,
    /// The streaming plan.
    pub plan: plan::Node,
    /// Settings the plan was compiled with.
    pub options: CompileOptions,
    /// A readable plan, for `weir explain` and the Transform's status.
    pub explain: String,
    /// A canonical fingerprint of the SQL, the input schemas and the options (hex
    /// SHA-256; see [`fingerprint`]).
    pub fingerprint: String,
    /// A fingerprint of what the plan's state means: equal for two plans that differ only
    /// above their stateful operators, which can therefore share state (see
    /// [`fingerprint::state_fingerprint`]).
    pub state_fingerprint: String,
}

/// The input columns one output column derives from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnLineage {
    /// The output column.
    pub column: String,
    /// The input columns, as (`namespace/name`, column), sorted.
    pub sources: Vec<(String, String)>,
}

impl CompiledTransform {
    /// The schema of an input, by index into [`CompiledTransform::inputs`].
    pub fn input_schema(&self, index: usize) -> Arc<Schema> {
        self.inputs[index].schema.clone()
    }

    /// Whether the plan keeps state between records (an aggregate, a join, or a table
    /// input), and so needs a changelog topic.
    pub fn is_stateful(&self) -> bool {
        !self.stateful_nodes().is_empty()
    }

    /// The operators that keep state, in the plan's pre-order (a node before its
    /// children, children in order): the order in which the engine numbers their state.
    pub fn stateful_nodes(&self) -> Vec<&plan::Node> {
        fn walk<'a>(n: &'a plan::Node, c: &CompiledTransform, out: &mut Vec<&'a plan::Node>) {
            if n.keeps_state(&c.inputs) {
                out.push(n);
            }
            for child in n.children() {
                walk(child, c, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.plan, self, &mut out);
        out
    }
}
