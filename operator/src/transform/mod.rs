//! The Transform controller: turns a Transform into checked, tested, running workers.
//!
//! Reconcile is resolve → compile → test → build → apply → status:
//! - **resolve** the DataStreams the Transform may read: those of its namespace, and those
//!   of other namespaces whose `spec.access.readers` names it. The compiler never sees
//!   any other; a SQL naming one gets a condition saying which DataStream must grant
//!   which namespace.
//! - **compile** with the same mapping and compiler as the worker and the `weir` CLI
//!   ([`weir_crds::compile`]), and run `spec.tests` with the engine. A failure is written
//!   to status and deploys nothing: the running version keeps running.
//! - **build** the output DataStream, the worker ConfigMap, ServiceAccount, Deployment,
//!   Service and PodDisruptionBudget with pure functions ([`build`]), and **apply** each
//!   by server-side apply only when its hash differs from what is stored, so a steady
//!   state writes nothing. Internal topics are created (or given more partitions) only
//!   when Kafka lacks them.

pub mod build;
pub mod cluster;
pub mod health;
pub mod principal;
pub mod status;
pub mod streams;
pub mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};
use weir_crds::compile::{
    TestOutcome, TransformError, compile_expectations, compile_transform, id_of, run_tests,
    stream_input,
};
use weir_crds::data_stream::DeletionPolicy;
use weir_crds::{DataStream, Transform};
use weir_engine::sql::partitioning::{self, Partitioning};
use weir_engine::sql::{CompiledTransform, StreamInput, sql_ident};

use crate::context::{Context, Happened};
use crate::{Error, FIELD_MANAGER, Result};
use build::InternalTopics;
use status::{Reason, Report, State};

/// The finalizer that lets the operator remove a Transform's internal topics.
pub const FINALIZER: &str = "weir.dev/internal-topics";

/// The longest Transform name: the names derived from it (`<name>-worker-<hash>-<id>`
/// pods, label values) must stay within Kubernetes' limits.
pub const MAX_NAME: usize = 45;

/// How soon to look again while something outside the Transform is not ready yet.
const SOON: Duration = Duration::from_secs(5);

/// Reconciles one Transform.
#[instrument(skip_all, fields(namespace = tf.namespace().unwrap_or_default(), name = tf.name_any()))]
pub async fn reconcile(tf: Arc<Transform>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("transform");
    let _ = ctx.data_streams.wait_until_ready().await;
    let ns = tf
        .namespace()
        .ok_or_else(|| Error::MissingField("metadata.namespace"))?;
    let api: Api<Transform> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tf, |event| async {
        match event {
            Finalizer::Apply(tf) => apply(&tf, &api, &ctx).await,
            Finalizer::Cleanup(tf) => cleanup(&tf, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Transient errors back off exponentially per object, up to five minutes.
pub fn error_policy(tf: Arc<Transform>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failure("transform", error);
    let delay = ctx.backoff.next(&tf.object_ref(&()));
    warn!(error = %error, category = error.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The DataStreams a Transform may read, and those of other namespaces it may not.
pub fn readable<'a>(
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
pub fn denied_input(
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

async fn apply(tf: &Transform, api: &Api<Transform>, ctx: &Context) -> Result<Action> {
    let mut report = Report::new(tf);
    let action = converge(tf, ctx, &mut report).await;
    status::write(api, tf, ctx, report).await?;
    let action = action?;
    ctx.backoff.reset(&tf.object_ref(&()));
    Ok(action)
}

/// Everything but the status write: fills `report` and says when to look again.
async fn converge(tf: &Transform, ctx: &Context, report: &mut Report) -> Result<Action> {
    let ns = tf.namespace().unwrap_or_default();
    let name = tf.name_any();
    if name.len() > MAX_NAME {
        report.compiled = State::no(
            Reason::InvalidSpec,
            format!(
                "metadata.name: a Transform's name may be at most {MAX_NAME} characters (the \
                 names of its workers derive from it)"
            ),
        );
        return Ok(Action::await_change());
    }

    // Resolve and compile.
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
        Err(e @ TransformError::Expectation { .. }) => {
            report.compiled = State::no(Reason::CompileFailed, e.to_string());
            return Ok(Action::await_change());
        }
        Err(e) => {
            report.compiled = match (&e, denied_input(&tf.spec.sql, &ns, &denied)) {
                (TransformError::Sql(_), Some((why, ds))) => {
                    // A revoked grant stops the reader at once: no workers, no READ ACL.
                    // Its offsets and state stay; a restored grant resumes from them.
                    report.facts.inputs.retain(|i| *i != ds);
                    stop_reading(tf, ctx).await?;
                    State::no(Reason::InputNotGranted, why)
                }
                _ => State::no(Reason::CompileFailed, e.to_string()),
            };
            // A DataStream appearing or granting access triggers a reconcile by watch.
            return Ok(Action::requeue(ctx.resync));
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

    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Ok(r) if r.passed() => None,
            Ok(r) => Some(r.to_string().trim_end().to_owned()),
            Err(e) => Some(format!("FAIL  {e}")),
        })
        .collect();
    report.tests = if failed.is_empty() {
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
    };

    // Whatever happens next, the workers' state is reported.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let live = deployments.get_opt(&build::worker_name(tf)).await?;
    report.workers(tf, live.as_ref());
    if !failed.is_empty() {
        return Ok(Action::await_change());
    }

    // What the change does to the running state, by spec.upgradePolicy.
    let deployed = live.as_ref().and_then(build::deployed);
    let running_epoch = deployed
        .as_ref()
        .map_or(report.facts.state_epoch, |d| d.epoch);
    let changelog = build::names(tf, running_epoch).changelog();
    let epoch = match upgrade::decide(
        deployed.as_ref(),
        upgrade::Plan {
            fingerprint: &compiled.fingerprint,
            state: &compiled.state_fingerprint,
            stateful: compiled.is_stateful(),
        },
        tf.spec.upgrade_policy,
        &changelog,
    ) {
        upgrade::Decision::Keep(e) => e.max(report.facts.state_epoch),
        upgrade::Decision::Reprocess(e) => {
            ctx.publish(
                tf,
                EventType::Normal,
                Happened::Reprocessing,
                format!(
                    "the plan changed and spec.upgradePolicy is reprocess: dropping the state \
                     of epoch {running_epoch} and reprocessing from {} in epoch {e}",
                    tf.spec.start_from
                ),
            )
            .await;
            e
        }
        upgrade::Decision::Refuse(why) => {
            report.problem = Some(State::no(Reason::UpgradeBlocked, why));
            return Ok(Action::await_change());
        }
    };
    report.facts.state_epoch = epoch;

    let inputs: Vec<&DataStream> = compiled
        .inputs
        .iter()
        .filter_map(|i| {
            allowed
                .iter()
                .copied()
                .find(|d| id_of(&d.metadata) == i.id())
        })
        .collect();
    // The one cluster the Transform reads and writes: its spec.kafka, or the operator's.
    if let Some(conn) = &tf.spec.kafka {
        let refused = if tf.spec.kafka_credentials.is_some() {
            Some(
                "spec.kafkaCredentials: a Transform on a named connection (spec.kafka) runs as \
                 that connection's principal; give its credentials in spec.kafka"
                    .to_owned(),
            )
        } else {
            crate::data_stream::validated::check_connection(conn, &ctx.policy)
                .err()
                .map(|e| format!("{}: {}", e.field, e.message))
        };
        if let Some(why) = refused {
            report.problem = Some(State::no(Reason::InvalidSpec, why));
            return Ok(Action::await_change());
        }
    }
    if let Err(why) = cluster::one_cluster(tf, &inputs) {
        report.problem = Some(State::no(Reason::InvalidSpec, why));
        return Ok(Action::await_change());
    }
    let kafka = match ctx
        .kafka_for_connection(&tf.metadata, tf.spec.kafka.as_ref())
        .await
    {
        Ok(k) => k,
        Err(problem) => {
            report.problem = Some(State::no(Reason::CredentialsInvalid, problem.0));
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };

    // The output DataStream.
    if let Some(other) = other_writer(tf, ctx) {
        report.problem = Some(State::no(
            Reason::OutputConflict,
            format!(
                "DataStream {ns}/{} is already written by Transform {other}; two Transforms \
                 may not write one DataStream",
                tf.spec.output.name
            ),
        ));
        return Ok(Action::requeue(ctx.resync));
    }
    let built = match build::output_data_stream(tf, &compiled, &inputs) {
        Ok(mut b) => {
            b.spec.kafka = tf.spec.kafka.clone();
            b
        }
        Err(e) => {
            report.compiled = State::no(Reason::CompileFailed, format!("spec.sql: {}", e.0));
            return Ok(Action::await_change());
        }
    };
    let data_streams: Api<DataStream> = Api::namespaced(ctx.client.clone(), &ns);
    let output = match data_streams.get_opt(&tf.spec.output.name).await? {
        Some(declared) if !owned_by(&declared, tf) => {
            if let Err(why) = build::check_declared_output(&declared, &built, &compiled) {
                report.problem = Some(State::no(
                    Reason::OutputConflict,
                    format!(
                        "DataStream {ns}/{} was declared by someone else and cannot hold this \
                         Transform's output: {why}",
                        tf.spec.output.name
                    ),
                ));
                return Ok(Action::await_change());
            }
            declared
        }
        live => ensure(&data_streams, built, live).await?,
    };
    if let Err(why) = cluster::one_cluster(tf, &[&output]) {
        report.problem = Some(State::no(Reason::OutputConflict, why));
        return Ok(Action::await_change());
    }

    // Internal topics, once the inputs' topics exist.
    let partitioning = match partitioning::plan(&compiled) {
        Ok(p) => p,
        Err(why) => {
            if inputs.iter().any(|d| d.spec.partitions > 1) {
                report.problem = Some(State::no(
                    Reason::InvalidSpec,
                    format!(
                        "{why}: over inputs with more than one partition this plan cannot give \
                         correct results; group and join each input by one set of columns, or \
                         give the inputs one partition"
                    ),
                ));
                return Ok(Action::await_change());
            }
            Partitioning::AsIs
        }
    };
    let mut tasks = 1;
    for d in &inputs {
        match d.status.as_ref().and_then(|s| s.partitions) {
            Some(p) => tasks = tasks.max(p),
            None => {
                report.problem = Some(State::no(
                    Reason::InputsNotReady,
                    format!("waiting for the topic of DataStream {}", id_of(&d.metadata)),
                ));
                return Ok(Action::requeue(SOON));
            }
        }
    }
    // Isolation on the data path: only Ready DataStreams of their namespace's topics, on
    // this cluster, and the workers get the topics their status records.
    let cluster = kafka.cluster_id().await.ok();
    let grants = &ctx.policy.topic_grants;
    let mut input_topics = Vec::new();
    for d in &inputs {
        match streams::usable_topic(d, grants, cluster.as_deref()) {
            Ok(t) => input_topics.push(t),
            Err(why) => {
                report.problem = Some(State::no(Reason::InputsNotReady, why));
                return Ok(Action::requeue(SOON));
            }
        }
    }
    let output_topic = match streams::usable_topic(&output, grants, cluster.as_deref()) {
        Ok(t) => t,
        Err(why) if owned_by(&output, tf) => {
            report.problem = Some(State::no(Reason::InputsNotReady, format!("output: {why}")));
            return Ok(Action::requeue(SOON));
        }
        Err(why) => {
            report.problem = Some(State::no(Reason::OutputConflict, why));
            return Ok(Action::requeue(ctx.resync));
        }
    };
    let pin = |d: &DataStream, topic: &str| {
        let mut d = d.clone();
        d.spec.topic = Some(topic.to_owned());
        d
    };
    let pinned_inputs: Vec<DataStream> = inputs
        .iter()
        .zip(&input_topics)
        .map(|(d, t)| pin(d, t))
        .collect();
    let pinned_output = pin(&output, &output_topic);

    let internal = InternalTopics::of(tf, &compiled, &partitioning, epoch);
    let desired = internal.desired(tasks, ctx.policy.replication_factor);
    report.facts.internal_topics = desired.iter().map(|t| t.name.clone()).collect();
    for topic in &desired {
        if let Err(e) = ensure_topic(ctx, &kafka, tf, topic).await {
            report.problem = Some(State::no(Reason::KafkaUnavailable, e.to_string()));
            return Err(Error::KafkaUnavailable(e.to_string()));
        }
    }

    // The workers' own Kafka principal and exactly the ACLs this plan needs.
    let plan_topics = principal::PlanTopics {
        inputs: input_topics,
        output: output_topic,
        internal: desired.iter().map(|t| t.name.clone()).collect(),
    };
    let credentials = match &tf.spec.kafka {
        Some(conn) => match cluster::pod_credentials(&ctx.client, &ns, conn).await? {
            Ok(c) => c,
            Err(why) => {
                report.problem = Some(State::no(Reason::CredentialsInvalid, why));
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        },
        None => match principal::ensure(tf, ctx, epoch, &plan_topics).await? {
            Ok(c) => c,
            Err(problem) => {
                report.problem = Some(problem);
                return Ok(Action::requeue(ctx.resync));
            }
        },
    };

    // The workload.
    let pinned_refs: Vec<&DataStream> = pinned_inputs.iter().collect();
    let config_map = build::config_map(tf, &pinned_refs, &pinned_output)
        .map_err(|e| Error::Internal(format!("rendering the worker config: {e}")))?;
    let config_hash = build::hash_of(&config_map.data);
    let client = ctx.client.clone();
    ensure_named(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        config_map,
    )
    .await?;
    ensure_named(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        build::service_account(tf),
    )
    .await?;
    ensure_named(
        &Api::<Service>::namespaced(client.clone(), &ns),
        build::service(tf),
    )
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    if tf.spec.parallelism > 1 {
        ensure_named(&pdbs, build::pod_disruption_budget(tf)).await?;
    } else if pdbs.get_opt(&build::worker_name(tf)).await?.is_some() {
        pdbs.delete(&build::worker_name(tf), &DeleteParams::default())
            .await?;
    }
    let deployment = build::deployment(
        tf,
        &compiled,
        &ctx.workers,
        &config_hash,
        epoch,
        &credentials,
    );
    let live = ensure(&deployments, deployment, live).await?;
    report.workers(tf, Some(&live));
    if epoch > 0 && report.available.status == "True" {
        // The new epoch runs: the state of the old ones is of no use any more.
        for topic in InternalTopics::retired(tf, epoch) {
            if let Ok(Some(_)) = kafka.describe(&topic).await
                && kafka.delete(&topic).await.is_ok()
            {
                info!(topic, "deleted the state topic of a retired epoch");
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let selector = build::selector_string(tf);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    report.pods(&pods);
    let id = id_of(&tf.metadata);
    if tf.spec.parallelism == 0 {
        ctx.worker_health.forget(&id);
    } else if report.degraded.status != "True" {
        let every = ctx.workers.sample_interval;
        let sample = if ctx.worker_health.due(&id, every) {
            health::sample(&pods, build::WORKER_HTTP_PORT).await
        } else {
            None
        };
        match ctx.worker_health.record(&id, sample, every) {
            health::Verdict::Healthy => {}
            health::Verdict::DeadLettersRising(n) => {
                report.degraded = State::yes(
                    Reason::DeadLettersRising,
                    format!(
                        "the workers are writing dead letters ({n} since the previous look); \
                         read {} to see why",
                        InternalTopics::of(tf, &compiled, &partitioning, epoch).dead_letters
                    ),
                );
            }
            health::Verdict::LagGrowing(lag) => {
                report.degraded = State::yes(
                    Reason::LagGrowing,
                    format!(
                        "the workers fall behind: consumer lag grew over the last {} looks to \
                         {lag} records; add workers (kubectl scale) or resources",
                        health::TREND
                    ),
                );
            }
        }
    }
    Ok(if report.available.status == "True" {
        // Look again to sample the workers' health; status is written only on change.
        Action::requeue(ctx.workers.sample_interval.min(ctx.resync))
    } else {
        // The Deployment's status changes wake us through the watch; this is a backstop.
        Action::requeue(Duration::from_secs(30))
    })
}

/// Stops a Transform's workers reading (a grant was revoked): its Deployment scaled to zero
/// (the next apply restores it) and, with managed credentials, the READ ACLs on every topic
/// outside its own gone. Its offsets and state stay.
async fn stop_reading(tf: &Transform, ctx: &Context) -> Result<()> {
    let ns = tf.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::worker_name(tf);
    if let Some(d) = deployments.get_opt(&name).await?
        && (d.spec.replicas != Some(0) || build::stamped_hash(&d).is_some())
    {
        let patch = serde_json::json!({
            "metadata": { "annotations": { build::APPLIED_HASH: null } },
            "spec": { "replicas": 0 },
        });
        deployments
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(
            deployment = name,
            "stopped the workers: an input is no longer granted"
        );
    }
    if ctx.workers.identity.mode == principal::PrincipalMode::Managed && tf.spec.kafka.is_none() {
        let names = build::names(tf, 0);
        let principal_name = principal::managed_principal(&names);
        let live = ctx.kafka.acls(&principal_name).await?;
        principal::apply_acls(
            ctx,
            &principal_name,
            &principal::without_inputs(&live, &names),
        )
        .await?;
    }
    Ok(())
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

/// Whether `tf` is the controller of `obj`.
fn owned_by<K: Resource>(obj: &K, tf: &Transform) -> bool {
    let uid = tf.metadata.uid.as_deref();
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// The oldest other Transform of the namespace writing the same output, as `ns/name`.
fn other_writer(tf: &Transform, ctx: &Context) -> Option<String> {
    let key = |t: &Transform| {
        (
            t.metadata.creation_timestamp.clone().map(|t| t.0),
            t.name_any(),
        )
    };
    ctx.transforms
        .state()
        .into_iter()
        .filter(|t| {
            t.metadata.deletion_timestamp.is_none()
                && t.namespace() == tf.namespace()
                && t.spec.output.name == tf.spec.output.name
        })
        .min_by_key(|t| key(t))
        .filter(|t| t.metadata.uid != tf.metadata.uid)
        .map(|t| id_of(&t.metadata))
}

/// Applies `obj` by server-side apply unless `live` already carries its hash.
pub(crate) async fn ensure<K>(api: &Api<K>, obj: K, live: Option<K>) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let obj = build::stamp(obj);
    if let Some(live) = live
        && build::stamped_hash(&live) == build::stamped_hash(&obj)
    {
        return Ok(live);
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    info!(kind = %std::any::type_name::<K>().rsplit("::").next().unwrap_or_default(), name, "applying");
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?)
}

/// [`ensure`] for an object looked up by its name.
pub(crate) async fn ensure_named<K>(api: &Api<K>, obj: K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let live = api
        .get_opt(obj.meta().name.as_deref().unwrap_or_default())
        .await?;
    ensure(api, obj, live).await
}

/// Creates an internal topic Kafka lacks, or raises its partitions to the task count.
async fn ensure_topic(
    ctx: &Context,
    kafka: &crate::kafka_admin::KafkaAdmin,
    tf: &Transform,
    topic: &crate::kafka_admin::DesiredTopic,
) -> Result<(), crate::kafka_admin::TopicError> {
    match kafka.describe(&topic.name).await? {
        None => {
            if kafka.create(topic).await? {
                ctx.publish(
                    tf,
                    EventType::Normal,
                    Happened::TopicCreated,
                    format!(
                        "created internal topic {} with {} partitions",
                        topic.name, topic.partitions
                    ),
                )
                .await;
            }
        }
        Some(state) if state.partitions < topic.partitions => {
            kafka
                .raise_partitions(&topic.name, topic.partitions)
                .await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// On deletion: the owned objects go with the Transform (owner references); the internal
/// topics are deleted when `spec.output.deletionPolicy` is `Delete`, and kept otherwise.
async fn cleanup(tf: &Transform, ctx: &Context) -> Result<Action> {
    ctx.worker_health.forget(&id_of(&tf.metadata));
    if ctx.workers.identity.mode == principal::PrincipalMode::Managed && tf.spec.kafka.is_none() {
        // The workers' principal goes with the Transform: its ACLs, then its credential.
        let names = build::names(tf, 0);
        let principal_name = principal::managed_principal(&names);
        principal::apply_acls(ctx, &principal_name, &Default::default()).await?;
        if let Some(mechanism) = principal::scram(ctx.workers.identity.mechanism) {
            ctx.kafka
                .delete_scram(&names.principal_user(), mechanism)
                .await?;
        }
        info!(
            principal = principal_name,
            "deleted the Transform's Kafka principal"
        );
    }
    if tf.spec.output.deletion_policy != DeletionPolicy::Delete {
        ctx.forget_connection(&tf.metadata);
        return Ok(Action::await_change());
    }
    // A named connection whose Secrets are gone (its namespace being deleted) is served
    // from the client the Transform used; without one its internal topics are left.
    let kafka = match ctx
        .kafka_for_connection(&tf.metadata, tf.spec.kafka.as_ref())
        .await
    {
        Ok(k) => Some(k),
        Err(problem) => ctx.cached_connection(&tf.metadata).or_else(|| {
            warn!(
                problem = problem.0,
                "the Transform's Kafka connection cannot be used: its internal topics stay"
            );
            None
        }),
    };
    let epoch = tf.status.as_ref().map_or(0, |s| s.state_epoch);
    if let Some(kafka) = &kafka {
        for topic in InternalTopics::all(tf, epoch) {
            match kafka.describe(&topic).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    kafka.delete(&topic).await?;
                    info!(topic, "deleted internal topic");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    ctx.forget_connection(&tf.metadata);
    Ok(Action::await_change())
}

/// The Transforms a DataStream change concerns: those reading it, the one writing it, and
/// those not Ready whose SQL names it (its appearing, changing or granting access may
/// unblock them). Others are left alone: waking every waiting Transform on every
/// DataStream change would compile each of them hundreds of times when many are applied
/// at once.
pub fn transforms_for(ds: &DataStream, transforms: &[Arc<Transform>]) -> Vec<Arc<Transform>> {
    let id = id_of(&ds.metadata);
    let ns = ds.namespace();
    let name = sql_ident(&ds.name_any()).to_ascii_lowercase();
    transforms
        .iter()
        .filter(|t| {
            let status = t.status.as_ref();
            let reads = status.is_some_and(|s| s.inputs.contains(&id));
            let writes = t.namespace() == ns && t.spec.output.name == ds.name_any();
            let waiting = !status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            reads || writes || (waiting && t.spec.sql.to_ascii_lowercase().contains(&name))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(ns: &str, name: &str, readers: &[&str]) -> Arc<DataStream> {
        let mut d: DataStream = serde_yaml::from_str(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  description: d
  owner: o
  schema: {{ fields: [ {{ name: a, type: string }} ] }}
"#
        ))
        .expect("valid");
        if !readers.is_empty() {
            d.spec.access = Some(weir_crds::data_stream::Access {
                readers: readers.iter().map(|r| (*r).to_owned()).collect(),
            });
        }
        Arc::new(d)
    }

    fn tf(sql: &str) -> Transform {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: t, namespace: b }}
spec: {{ description: d, owner: o, sql: "{sql}", output: {{ name: out }} }}
"#
        ))
        .expect("valid")
    }

    #[test]
    fn a_data_stream_change_wakes_only_the_transforms_it_concerns() {
        let mk = |name: &str, sql: &str| {
            let mut t = tf(sql);
            t.metadata.name = Some(name.into());
            t
        };
        let all: Vec<Arc<Transform>> = vec![
            Arc::new(mk("reads-own", "SELECT a FROM own")),
            Arc::new(mk("reads-other", "SELECT a FROM elsewhere")),
        ];
        let woken: Vec<String> = transforms_for(&ds("b", "own", &[]), &all)
            .iter()
            .map(|t| t.name_any())
            .collect();
        assert_eq!(woken, vec!["reads-own"]);
        // The DataStream a Transform writes wakes it whatever its SQL.
        let woken = transforms_for(&ds("b", "out", &[]), &all);
        assert_eq!(woken.len(), 2);
    }

    #[test]
    fn only_granted_streams_are_readable_and_a_denial_is_named() {
        let all = vec![
            ds("b", "own", &[]),
            ds("b", "out", &[]),
            ds("a", "open", &["b"]),
            ds("a", "closed-stream", &["c"]),
        ];
        let t = tf("SELECT a FROM a.closed_stream");
        let (allowed, denied) = readable(&t, &all);
        let names: Vec<String> = allowed.iter().map(|d| id_of(&d.metadata)).collect();
        assert_eq!(names, vec!["b/own", "a/open"], "never its own output");
        assert_eq!(denied.len(), 1);
        let (why, id) = denied_input(&t.spec.sql, "b", &denied).expect("named");
        assert_eq!(id, "a/closed-stream");
        assert!(
            why.contains("DataStream a/closed-stream, which does not grant namespace b"),
            "{why}"
        );
        assert!(denied_input("SELECT a FROM own", "b", &denied).is_none());
        // The compiler only sees what is allowed: the closed stream is unknown to it.
        let streams: Vec<_> = allowed.iter().map(|d| stream_input(d).unwrap()).collect();
        assert!(compile_transform(&t, &streams).is_err());
        let open = tf("SELECT a FROM a.open");
        assert!(compile_transform(&open, &streams).is_ok());
    }
}
