//! From Weir's resources to the compiler and the engine: the one mapping the operator, the
//! worker and the `weir` CLI share (feature `compile`), so that a Transform checked by the
//! operator compiles to exactly the plan its workers run and its author tested.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir_engine::runner::{Record, TestReport, run_test};
use weir_sql::{CompileError, CompileOptions, CompiledTransform, EmitMode, StreamInput, compile};

use crate::data_stream::CleanupPolicy;
use crate::transform::{Expectation, WindowEmit};
use crate::{DataStream, Transform};

/// How long an input partition may stay silent before it stops holding time back, when
/// `spec.windows.idleTimeout` does not say.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a Transform does not compile, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// A field of `spec.windows` cannot be read.
    #[error("spec.windows.{field}: {message}")]
    Windows {
        /// The field under `spec.windows`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The SQL does not compile; the error points at its line and column.
    #[error("spec.sql: {0}")]
    Sql(#[from] CompileError),
    /// An expectation does not compile.
    #[error("spec.expectations[{index}] ({name}): {message}")]
    Expectation {
        /// Its index in `spec.expectations`.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// The namespace of an object, `default` when it has none (as kubectl assumes).
pub fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

/// `namespace/name` of an object.
pub fn id_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A DataStream as the compiler sees it: its Arrow schema, key, event time and kind (a
/// compacted, keyed DataStream is a table).
pub fn stream_input(ds: &DataStream) -> Result<StreamInput, String> {
    let id = id_of(&ds.metadata);
    let schema = ds
        .spec
        .schema
        .to_arrow()
        .map_err(|e| format!("DataStream {id}: spec.schema: {e}"))?;
    let mut input = StreamInput::new(
        namespace_of(&ds.metadata),
        ds.metadata.name.clone().unwrap_or_default(),
        Arc::new(schema),
    )
    .with_key(ds.spec.key.clone());
    if let Some(et) = &ds.spec.event_time {
        let ooo = match &et.max_out_of_orderness {
            Some(d) => d
                .millis()
                .map_err(|e| format!("DataStream {id}: spec.eventTime.maxOutOfOrderness: {e}"))?,
            None => 0,
        };
        input = input.with_event_time(&et.field, ooo);
    }
    if ds.spec.cleanup_policy == CleanupPolicy::Compact && !ds.spec.key.is_empty() {
        input = input.as_table();
    }
    Ok(input)
}

/// The compile options a Transform's spec asks for.
pub fn compile_options(tf: &Transform) -> Result<CompileOptions, TransformError> {
    let mut options = CompileOptions::new(namespace_of(&tf.metadata));
    if let Some(w) = &tf.spec.windows {
        options.emit = match w.emit {
            WindowEmit::OnClose => EmitMode::OnWindowClose,
            WindowEmit::Updates => EmitMode::Updates,
        };
        if let Some(l) = &w.allowed_lateness {
            options.allowed_lateness_ms =
                l.millis().map_err(|message| TransformError::Windows {
                    field: "allowedLateness",
                    message,
                })?;
        }
    }
    Ok(options)
}

/// `spec.windows.idleTimeout`, or its default.
pub fn idle_timeout(tf: &Transform) -> Result<Duration, TransformError> {
    match tf
        .spec
        .windows
        .as_ref()
        .and_then(|w| w.idle_timeout.as_ref())
    {
        Some(d) => d.get().map_err(|message| TransformError::Windows {
            field: "idleTimeout",
            message,
        }),
        None => Ok(DEFAULT_IDLE_TIMEOUT),
    }
}

/// Compiles a Transform's SQL against `streams` (the only DataStreams it may read).
pub fn compile_transform(
    tf: &Transform,
    streams: &[StreamInput],
) -> Result<CompiledTransform, TransformError> {
    let options = compile_options(tf)?;
    Ok(compile(&tf.spec.sql, streams, &options)?)
}

/// Compiles `spec.expectations` against the plan they check.
pub fn compile_expectations(
    expectations: &[Expectation],
    compiled: &CompiledTransform,
) -> Result<weir_engine::Expectations, TransformError> {
    let checks: Vec<&str> = expectations.iter().map(|e| e.check.as_str()).collect();
    weir_engine::Expectations::compile(compiled, &checks).map_err(|(index, e)| {
        TransformError::Expectation {
            index,
            name: expectations[index].name.clone(),
            message: e.to_string(),
        }
    })
}

/// One fixture test's outcome: a report, or why it could not run (naming `spec.tests[i]`).
pub type TestOutcome = Result<TestReport, String>;

/// Runs every fixture test of `spec.tests` through the engine, in order.
pub fn run_tests(tf: &Transform, compiled: &CompiledTransform) -> Vec<(String, TestOutcome)> {
    tf.spec
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let given: Vec<(String, Vec<Record>)> = t
                .given
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let outcome = run_test(compiled, &t.name, &given, &t.expect)
                .map_err(|e| format!("spec.tests[{i}] ({}): {e}", t.name));
            (t.name.clone(), outcome)
        })
        .collect()
}
