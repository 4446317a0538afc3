//! The Transform controller: turns a Transform into checked, tested, running workers.
//!
//! A reconcile reads top to bottom, each step a function that returns what the next needs
//! or why it stopped (`Stop`), and ends in `settle`, the one place that writes the status and
//! picks when to look again (by the stopping condition's [`Reason::retry`]):
//! - **resolve** ([`resolve`]): the DataStreams the Transform may read (those of its
//!   namespace, and those of other namespaces whose `spec.access.readers` names it; a SQL
//!   naming any other gets a condition saying which DataStream must grant which
//!   namespace), the SQL compiled with the same compiler as the worker and the `weir` CLI,
//!   and `spec.tests` run with the engine. A failure deploys nothing: the running version
//!   keeps running.
//! - **validate**: what the change does to the running state (`spec.upgradePolicy`,
//!   [`upgrade`]), the one Kafka cluster it runs on ([`cluster`]), the output nobody else
//!   writes, the partitioning the plan needs, and inputs whose topics are Ready.
//! - **build** with pure functions ([`build`]: the output DataStream, the internal topics,
//!   the workload) and **apply** ([`apply`]) each by server-side apply only when its hash
//!   differs from what is stored, so a steady state writes nothing; internal topics are
//!   created (or given more partitions) only when Kafka lacks them, and the workers' Kafka
//!   principal gets exactly the plan's ACLs ([`principal`]).
//! - **status** ([`status`]): the workers' Deployment, pods and sampled health
//!   ([`health`]) as conditions.
//!
//! [`watches`] says which changes of other objects wake which Transforms.

pub mod apply;
pub mod build;
mod cleanup;
pub mod cluster;
pub mod health;
pub mod principal;
pub mod resolve;
pub mod status;
pub mod streams;
pub mod upgrade;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use weir_crds::compile::id_of;
use weir_crds::{DataStream, Transform};
use weir_sql::partitioning::{self, Partitioning};

use crate::context::{Context, Happened};
use crate::kafka_admin::KafkaAdmin;
use crate::{Error, Result};
use apply::{ensure, ensure_named, ensure_topic, other_writer, owned_by};
use build::InternalTopics;
use cleanup::cleanup;
use resolve::Resolved;
use status::{Reason, Report, Retry, State};

/// The finalizer that lets the operator remove a Transform's internal topics.
pub const FINALIZER: &str = "weir.dev/internal-topics";

/// The longest Transform name: the names derived from it (`<name>-worker-<hash>-<id>`
/// pods, label values) must stay within Kubernetes' limits.
pub const MAX_NAME: usize = 45;

/// How soon to look again while something outside the Transform is not ready yet.
const SOON: Duration = Duration::from_secs(5);

/// How soon to look again at credentials that cannot be used.
const LATER: Duration = Duration::from_secs(30);

/// What the Transform controller's reconciles share: the operator's [`Context`] (through
/// `Deref`), the settings of the workers it deploys and what their metrics showed.
pub struct Ctx {
    /// What both controllers share.
    pub shared: Arc<Context>,
    /// What the workers the operator deploys run and connect to.
    pub workers: build::WorkerSettings,
    /// What the workers' metrics showed recently, per Transform.
    pub worker_health: health::Histories,
}

impl Ctx {
    /// The Transform controller's context over `shared`.
    pub fn new(shared: Arc<Context>, workers: build::WorkerSettings) -> Self {
        Self {
            shared,
            workers,
            worker_health: Default::default(),
        }
    }
}

impl std::ops::Deref for Ctx {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.shared
    }
}

/// Reconciles one Transform.
#[instrument(skip_all, fields(namespace = tf.namespace().unwrap_or_default(), name = tf.name_any()))]
pub async fn reconcile(tf: Arc<Transform>, ctx: Arc<Ctx>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("transform");
    let _ = ctx.data_streams.wait_until_ready().await;
    let ns = tf
        .namespace()
        .ok_or_else(|| Error::MissingField("metadata.namespace"))?;
    let api: Api<Transform> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tf, |event| async {
        match event {
            Finalizer::Apply(tf) => {
                let mut report = Report::new(&tf);
                let reached = converge(&tf, &ctx, &mut report).await;
                settle(&tf, &api, &ctx, report, reached).await
            }
            Finalizer::Cleanup(tf) => cleanup(&tf, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Transient errors back off exponentially per object, up to five minutes.
pub fn error_policy(tf: Arc<Transform>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconcile_failure("transform", error);
    let delay = ctx.backoff.next(&tf.object_ref(&()));
    warn!(error = %error, category = error.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Why a reconcile stopped before the workers run as the spec says: a condition to report
/// (its reason says when to look again), or an error the controller retries with backoff.
pub(crate) enum Stop {
    /// The Transform does not compile (or its name cannot be deployed): `Compiled=False`.
    NotCompiled(State),
    /// A fixture test failed: `TestsPassed` already says which.
    TestsFailed,
    /// Something else is in the way of Ready.
    Problem(State),
    /// The apiserver failed.
    Error(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}

impl From<kube::Error> for Stop {
    fn from(e: kube::Error) -> Self {
        Self::Error(e.into())
    }
}

/// A problem in the way of Ready.
fn problem(reason: Reason, message: impl Into<String>) -> Stop {
    Stop::Problem(State::no(reason, message))
}

/// Writes how the reconcile ended and decides when to look again.
async fn settle(
    tf: &Transform,
    api: &Api<Transform>,
    ctx: &Ctx,
    mut report: Report,
    reached: Result<Action, Stop>,
) -> Result<Action> {
    let key = tf.object_ref(&());
    let retry = match reached {
        Ok(action) => {
            status::write(api, tf, ctx, report).await?;
            ctx.backoff.reset(&key);
            return Ok(action);
        }
        Err(Stop::Error(e)) => {
            status::write(api, tf, ctx, report).await?;
            return Err(e);
        }
        Err(Stop::TestsFailed) => Retry::OnChange,
        Err(Stop::NotCompiled(state)) => {
            let retry = state.reason.retry();
            report.compiled = state;
            retry
        }
        Err(Stop::Problem(state)) => {
            let retry = state.reason.retry();
            report.problem = Some(state);
            retry
        }
    };
    if retry == Retry::AsError {
        let message = report
            .problem
            .as_ref()
            .map(|p| p.message.clone())
            .unwrap_or_default();
        // Best effort: the apiserver may be fine while Kafka is not.
        if let Err(e) = status::write(api, tf, ctx, report).await {
            warn!(error = %e, "could not report that Kafka is unavailable");
        }
        return Err(Error::KafkaUnavailable(message));
    }
    status::write(api, tf, ctx, report).await?;
    ctx.backoff.reset(&key);
    Ok(match retry {
        Retry::OnChange => Action::await_change(),
        // A DataStream appearing or granting access also wakes the Transform by watch.
        Retry::OnResync | Retry::AsError => Action::requeue(ctx.resync),
        Retry::Soon => Action::requeue(SOON),
        Retry::Later => Action::requeue(LATER),
    })
}

/// Everything but the status write: fills `report` and says when to look again.
async fn converge(tf: &Transform, ctx: &Ctx, report: &mut Report) -> Result<Action, Stop> {
    if tf.name_any().len() > MAX_NAME {
        return Err(Stop::NotCompiled(State::no(
            Reason::InvalidSpec,
            format!(
                "metadata.name: a Transform's name may be at most {MAX_NAME} characters (the \
                 names of its workers derive from it)"
            ),
        )));
    }
    let resolved = resolve::resolve(tf, ctx, report).await?;
    let epoch = state_epoch(tf, ctx, report, &resolved).await?;
    report.facts.state_epoch = epoch;
    let kafka = connect(tf, ctx, &resolved).await?;
    let output = output(tf, ctx, &resolved).await?;
    let topics = topics(tf, ctx, report, &resolved, &kafka, &output, epoch).await?;
    let credentials = credentials(tf, ctx, epoch, &topics.plan).await?;
    workload(tf, ctx, report, &resolved, &topics, epoch, &credentials).await?;
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
    observe(tf, ctx, report, &topics.internal).await?;
    Ok(if report.available.status == "True" {
        // Look again to sample the workers' health; status is written only on change.
        Action::requeue(ctx.workers.sample_interval.min(ctx.resync))
    } else {
        // The Deployment's status changes wake us through the watch; this is a backstop.
        Action::requeue(LATER)
    })
}

/// The state epoch the workers run in: what the change does to the running state, by
/// `spec.upgradePolicy`.
async fn state_epoch(
    tf: &Transform,
    ctx: &Ctx,
    report: &Report,
    resolved: &Resolved,
) -> Result<i64, Stop> {
    let compiled = &resolved.compiled;
    let deployed = resolved.live.as_ref().and_then(build::deployed);
    let running_epoch = deployed
        .as_ref()
        .map_or(report.facts.state_epoch, |d| d.epoch);
    let changelog = build::names(tf, running_epoch).changelog();
    match upgrade::decide(
        deployed.as_ref(),
        upgrade::Plan {
            fingerprint: &compiled.fingerprint,
            state: &compiled.state_fingerprint,
            stateful: compiled.is_stateful(),
            tasks: resolved
                .inputs
                .iter()
                .map(|d| d.status.as_ref().and_then(|s| s.partitions))
                .collect::<Option<Vec<i32>>>()
                .and_then(|p| p.into_iter().max()),
        },
        tf.spec.upgrade_policy,
        &changelog,
    ) {
        upgrade::Decision::Keep(e) => Ok(e.max(report.facts.state_epoch)),
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
            Ok(e)
        }
        upgrade::Decision::Refuse(why) => Err(problem(Reason::UpgradeBlocked, why)),
    }
}

/// The one Kafka cluster the Transform reads and writes (its `spec.kafka`, or the
/// operator's), checked against the operator's policy and the inputs' clusters.
async fn connect(tf: &Transform, ctx: &Ctx, resolved: &Resolved) -> Result<KafkaAdmin, Stop> {
    if let Some(conn) = &tf.spec.kafka {
        if tf.spec.kafka_credentials.is_some() {
            return Err(problem(
                Reason::InvalidSpec,
                "spec.kafkaCredentials: a Transform on a named connection (spec.kafka) runs as \
                 that connection's principal; give its credentials in spec.kafka",
            ));
        }
        crate::data_stream::validated::check_connection(conn, &ctx.policy)
            .map_err(|e| problem(Reason::InvalidSpec, format!("{}: {}", e.field, e.message)))?;
    }
    cluster::one_cluster(tf, &resolved.inputs())
        .map_err(|why| problem(Reason::InvalidSpec, why))?;
    ctx.kafka_for_connection(&tf.metadata, tf.spec.kafka.as_ref())
        .await
        .map_err(|e| problem(Reason::CredentialsInvalid, e.0))
}

/// The output DataStream: built from the plan and applied, or one declared by someone else
/// that can hold the output.
async fn output(tf: &Transform, ctx: &Ctx, resolved: &Resolved) -> Result<DataStream, Stop> {
    let ns = tf.namespace().unwrap_or_default();
    if let Some(other) = other_writer(tf, ctx) {
        return Err(problem(
            Reason::OutputConflict,
            format!(
                "DataStream {ns}/{} is already written by Transform {other}; two Transforms \
                 may not write one DataStream",
                tf.spec.output.name
            ),
        ));
    }
    let compiled = &resolved.compiled;
    let mut built = build::output_data_stream(tf, compiled, &resolved.inputs()).map_err(|e| {
        Stop::NotCompiled(State::no(
            Reason::CompileFailed,
            format!("spec.sql: {}", e.0),
        ))
    })?;
    built.spec.kafka = tf.spec.kafka.clone();
    let data_streams: Api<DataStream> = Api::namespaced(ctx.client.clone(), &ns);
    let output = match data_streams.get_opt(&tf.spec.output.name).await? {
        Some(declared) if !owned_by(&declared, tf) => {
            build::check_declared_output(&declared, &built, compiled).map_err(|why| {
                problem(
                    Reason::OutputConflict,
                    format!(
                        "DataStream {ns}/{} was declared by someone else and cannot hold this \
                         Transform's output: {why}",
                        tf.spec.output.name
                    ),
                )
            })?;
            declared
        }
        live => ensure(&data_streams, built, live).await?,
    };
    cluster::one_cluster(tf, &[&output]).map_err(|why| problem(Reason::OutputConflict, why))?;
    Ok(output)
}

/// The topics a Transform's workers use, once checked and created.
struct Topics {
    /// The inputs, each with the topic its status records.
    inputs: Vec<DataStream>,
    /// The output, with the topic its status records.
    output: DataStream,
    /// The internal topics' names.
    internal: InternalTopics,
    /// What the workers' principal may read and write.
    plan: principal::PlanTopics,
    /// How many tasks the workers run as: the most partitions of an input.
    tasks: i32,
}

/// Checks the plan's partitioning and the inputs' and output's topics, and creates the
/// internal topics Kafka lacks. Isolation on the data path: only Ready DataStreams of
/// their namespace's topics, on this cluster, and the workers get the topics their status
/// records.
async fn topics(
    tf: &Transform,
    ctx: &Ctx,
    report: &mut Report,
    resolved: &Resolved,
    kafka: &KafkaAdmin,
    output: &DataStream,
    epoch: i64,
) -> Result<Topics, Stop> {
    let compiled = &resolved.compiled;
    let partitioning = match partitioning::plan(compiled) {
        Ok(p) => p,
        Err(why) if resolved.inputs.iter().any(|d| d.spec.partitions > 1) => {
            return Err(problem(
                Reason::InvalidSpec,
                format!(
                    "{why}: over inputs with more than one partition this plan cannot give \
                     correct results; group and join each input by one set of columns, or \
                     give the inputs one partition"
                ),
            ));
        }
        Err(_) => Partitioning::AsIs,
    };
    let mut tasks = 1;
    for d in &resolved.inputs {
        let partitions = d
            .status
            .as_ref()
            .and_then(|s| s.partitions)
            .ok_or_else(|| {
                problem(
                    Reason::InputsNotReady,
                    format!("waiting for the topic of DataStream {}", id_of(&d.metadata)),
                )
            })?;
        tasks = tasks.max(partitions);
    }
    let cluster = kafka.cluster_id().await.ok();
    let grants = &ctx.policy.topic_grants;
    let input_topics = resolved
        .inputs
        .iter()
        .map(|d| streams::usable_topic(d, grants, cluster.as_deref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| problem(Reason::InputsNotReady, why))?;
    let output_topic =
        streams::usable_topic(output, grants, cluster.as_deref()).map_err(|why| {
            if owned_by(output, tf) {
                problem(Reason::InputsNotReady, format!("output: {why}"))
            } else {
                problem(Reason::OutputConflict, why)
            }
        })?;
    let pin = |d: &DataStream, topic: &str| {
        let mut d = d.clone();
        d.spec.topic = Some(topic.to_owned());
        d
    };
    let inputs = resolved
        .inputs
        .iter()
        .zip(&input_topics)
        .map(|(d, t)| pin(d, t))
        .collect();
    let pinned_output = pin(output, &output_topic);

    let internal = InternalTopics::of(tf, compiled, &partitioning, epoch);
    let desired = internal.desired(tasks, ctx.policy.replication_factor);
    report.facts.internal_topics = desired.iter().map(|t| t.name.clone()).collect();
    for topic in &desired {
        ensure_topic(ctx, kafka, tf, topic)
            .await
            .map_err(|e| problem(Reason::KafkaUnavailable, e.to_string()))?;
    }
    Ok(Topics {
        inputs,
        output: pinned_output,
        internal,
        plan: principal::PlanTopics {
            inputs: input_topics,
            output: output_topic,
            internal: desired.into_iter().map(|t| t.name).collect(),
        },
        tasks,
    })
}

/// The workers' credentials: their connection's (`spec.kafka`), or their own Kafka
/// principal with exactly the ACLs this plan needs.
async fn credentials(
    tf: &Transform,
    ctx: &Ctx,
    epoch: i64,
    plan: &principal::PlanTopics,
) -> Result<principal::PodCredentials, Stop> {
    let ns = tf.namespace().unwrap_or_default();
    let found = match &tf.spec.kafka {
        Some(conn) => cluster::pod_credentials(&ctx.client, &ns, conn)
            .await?
            .map_err(|why| State::no(Reason::CredentialsInvalid, why)),
        None => principal::ensure(tf, ctx, epoch, plan).await?,
    };
    found.map_err(Stop::Problem)
}

/// Builds and applies the workload: ConfigMap, ServiceAccount, Service, PodDisruptionBudget
/// and Deployment; reports the Deployment's state.
async fn workload(
    tf: &Transform,
    ctx: &Ctx,
    report: &mut Report,
    resolved: &Resolved,
    topics: &Topics,
    epoch: i64,
    credentials: &principal::PodCredentials,
) -> Result<(), Stop> {
    let ns = tf.namespace().unwrap_or_default();
    let client = &ctx.client;
    let inputs: Vec<&DataStream> = topics.inputs.iter().collect();
    let config_map = build::config_map(tf, &inputs, &topics.output)
        .map_err(|e| Error::Internal(format!("rendering the worker config: {e}")))?;
    let config_hash = build::hash_of(&config_map.data);
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
        &resolved.compiled,
        &ctx.workers,
        &config_hash,
        epoch,
        topics.tasks,
        credentials,
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let live = ensure(&deployments, deployment, resolved.live.clone()).await?;
    report.workers(tf, Some(&live));
    Ok(())
}

/// Reads the workers' pods and, while they are available, samples their health: dead
/// letters and lag become `Degraded`.
async fn observe(
    tf: &Transform,
    ctx: &Ctx,
    report: &mut Report,
    internal: &InternalTopics,
) -> Result<(), Stop> {
    let ns = tf.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = build::selector_string(tf);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    report.pods(&pods);
    let id = id_of(&tf.metadata);
    if tf.spec.parallelism == 0 {
        ctx.worker_health.forget(&id);
        return Ok(());
    }
    if report.degraded.status == "True" {
        return Ok(());
    }
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
                    internal.dead_letters
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use resolve::{denied_input, readable};
    use watches::transforms_for;
    use weir_crds::compile::{compile_transform, stream_input};

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
