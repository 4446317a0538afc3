//! Resolve: the DataStreams a Transform may read, its SQL compiled against them with the
//! compiler the worker and the `weir` CLI use ([`weir_crds::compile`]), and its fixture
//! tests run with the engine. Nothing is deployed from here.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::Api;
use weir_crds::compile::{
    TestOutcome, TransformError, compile_expectations, compile_transform, id_of, run_tests,
    stream_input,
};
use weir_crds::{DataStream, Transform};
use weir_sql::{CompiledTransform, StreamInput, sql_ident};

use super::status::{Reason, Report, State};
use super::{Ctx, Stop, apply, build};
use crate::Error;

/// What a Transform is, once resolved: its plan, the DataStreams it reads (in the plan's
/// order) and the workers' Deployment as it stands.
pub(super) struct Resolved {
    /// The compiled plan.
    pub compiled: CompiledTransform,
    /// The DataStreams the plan reads.
    pub inputs: Vec<DataStream>,
    /// The workers' Deployment, if there is one.
    pub live: Option<Deployment>,
}

impl Resolved {
    /// The inputs, borrowed.
    pub fn inputs(&self) -> Vec<&DataStream> {
        self.inputs.iter().collect()
    }
}

/// Compiles and tests `tf` against what it may read; fills `Compiled`, `TestsPassed` and
/// the workers' state in `report`. A revoked grant stops the workers reading at once.
pub(super) async fn resolve(
    tf: &Transform,
    ctx: &Ctx,
    report: &mut Report,
) -> Result<Resolved, Stop> {
    let ns = tf.namespace().unwrap_or_default();
    let all = ctx.data_streams.state();
    let (allowed, denied) = readable(tf, &all);
    let streams: Vec<StreamInput> = allowed
        .iter()
        .filter_map(|ds| stream_input(ds).ok())
        .collect();
    // Compiling and running the fixture tests is CPU work: off the async runtime.
    let checked = {
        let tf = tf.clone();
        tokio::task::spawn_blocking(move || check(&tf, &streams))
            .await
            .map_err(|e| Error::Internal(format!("the compile task failed: {e}")))?
    };
    let (compiled, outcomes) = match checked {
        Ok(c) => c,
        Err(e) => {
            if let (TransformError::Sql(_), Some((why, ds))) =
                (&e, denied_input(&tf.spec.sql, &ns, &denied))
            {
                // A revoked grant stops the reader at once: no workers, no READ ACL.
                // Its offsets and state stay; a restored grant resumes from them.
                report.facts.inputs.retain(|i| *i != ds);
                apply::stop_reading(tf, ctx).await?;
                return Err(Stop::NotCompiled(State::no(Reason::InputNotGranted, why)));
            }
            return Err(Stop::NotCompiled(State::no(
                Reason::CompileFailed,
                e.to_string(),
            )));
        }
    };
    report.facts.plan_fingerprint = Some(compiled.fingerprint.clone());
    report.facts.state_fingerprint = compiled
        .is_stateful()
        .then(|| compiled.state_fingerprint.clone());
    report.facts.inputs = compiled.inputs.iter().map(StreamInput::id).collect();
    report.facts.output = Some(format!("{ns}/{}", tf.spec.output.name));
    report.compiled = State::yes(
        Reason::Compiled,
        format!(
            "reads {}; plan {}",
            report.facts.inputs.join(", "),
            &compiled.fingerprint[..12.min(compiled.fingerprint.len())]
        ),
    );
    report.tests = tests_state(&outcomes);

    // Whatever happens next, the workers' state is reported.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let live = deployments.get_opt(&build::worker_name(tf)).await?;
    report.workers(tf, live.as_ref());
    if report.tests.status != "True" {
        return Err(Stop::TestsFailed);
    }
    let inputs = compiled
        .inputs
        .iter()
        .filter_map(|i| {
            allowed
                .iter()
                .find(|d| id_of(&d.metadata) == i.id())
                .map(|d| (*d).clone())
        })
        .collect();
    Ok(Resolved {
        compiled,
        inputs,
        live,
    })
}

/// `TestsPassed` from the fixture tests' outcomes.
fn tests_state(outcomes: &[(String, TestOutcome)]) -> State {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Ok(r) if r.passed() => None,
            Ok(r) => Some(r.to_string().trim_end().to_owned()),
            Err(e) => Some(format!("FAIL  {e}")),
        })
        .collect();
    if failed.is_empty() {
        State::yes(
            Reason::TestsPassed,
            match outcomes.len() {
                0 => "no fixture tests".to_owned(),
                n => format!("{n} of {n} fixture tests passed"),
            },
        )
    } else {
        State::no(
            Reason::TestsFailed,
            format!(
                "{} of {} fixture tests failed; the running version keeps running:\n{}",
                failed.len(),
                outcomes.len(),
                failed.join("\n")
            ),
        )
    }
}

/// The DataStreams a Transform may read, and those of other namespaces it may not.
pub(super) fn readable<'a>(
    tf: &Transform,
    all: &'a [Arc<DataStream>],
) -> (Vec<&'a DataStream>, Vec<&'a DataStream>) {
    let ns = tf.namespace().unwrap_or_default();
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for ds in all {
        // A DataStream being deleted stays readable: its deletion waits for its readers.
        let own = ds.namespace().as_deref() == Some(ns.as_str());
        // A Transform cannot read its own output.
        if own && ds.name_any() == tf.spec.output.name {
            continue;
        }
        let granted = ds
            .spec
            .access
            .as_ref()
            .is_some_and(|a| a.readers.iter().any(|r| r == &ns));
        if own || granted {
            allowed.push(ds.as_ref());
        } else {
            denied.push(ds.as_ref());
        }
    }
    (allowed, denied)
}

/// When a compile error is about a table the SQL names and a DataStream of that name exists
/// but does not grant the Transform's namespace, says so (and names the DataStream).
pub(super) fn denied_input(
    sql: &str,
    tf_namespace: &str,
    denied: &[&DataStream],
) -> Option<(String, String)> {
    let text = sql.to_ascii_lowercase();
    denied.iter().find_map(|ds| {
        let name = format!(
            "{}.{}",
            sql_ident(&ds.namespace().unwrap_or_default()),
            sql_ident(&ds.name_any())
        );
        text.contains(&name.to_ascii_lowercase()).then(|| {
            let id = id_of(&ds.metadata);
            (
                format!(
                    "the SQL reads DataStream {id}, which does not grant namespace \
                     {tf_namespace}: add {tf_namespace:?} to its spec.access.readers"
                ),
                id,
            )
        })
    })
}

/// Compiles a Transform against the streams it may read, compiles its expectations and
/// runs its fixture tests: the same checks as `weir test`.
fn check(
    tf: &Transform,
    streams: &[StreamInput],
) -> Result<(CompiledTransform, Vec<(String, TestOutcome)>), TransformError> {
    let compiled = compile_transform(tf, streams)?;
    compile_expectations(&tf.spec.expectations, &compiled)?;
    let outcomes = run_tests(tf, &compiled);
    Ok((compiled, outcomes))
}
