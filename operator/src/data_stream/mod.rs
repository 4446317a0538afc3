//! The DataStream controller: keeps each DataStream's Kafka topic as its spec says.
//!
//! A reconcile is `converge_topic` — validate the spec ([`validated`]), resolve the
//! connection, compare with Kafka, act — which returns the status it reached or why it
//! stopped, then `settle`, the one place that writes the status and picks when to look
//! again (by the problem's [`status::Reason`]). A topic is managed by Weir once a
//! DataStream's status claims it by name, topic id and cluster id (the claim is recorded
//! before the topic is created, so a crash in between loses nothing); a topic Weir did not
//! create is left alone unless the DataStream asks to adopt it, and only a topic whose id
//! matches the claim is ever deleted.

pub mod changes;
mod cleanup;
pub mod ownership;
pub mod status;
pub mod validated;
pub mod watches;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use weir_crds::DataStream;

use crate::context::{Context, Happened};
use crate::kafka_admin::{KafkaAdmin, TopicError, TopicState};
use crate::{Error, Result};
use changes::{config_changes, describe_changes, limits, retention_lowered};
use cleanup::cleanup;
use ownership::{Ownership, other_owner, ownership, ownership_of, racing_claimant};
use status::{Problem, Reason, Retry, Update};
use validated::{ValidatedDataStream, validate};

/// The finalizer that lets the operator act on the topic before a DataStream goes away.
pub const FINALIZER: &str = "weir.dev/topic";

/// Reconciles one DataStream.
#[instrument(skip_all, fields(namespace = ds.namespace().unwrap_or_default(), name = ds.name_any()))]
pub async fn reconcile(ds: Arc<DataStream>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("datastream");
    let _ = ctx.data_streams.wait_until_ready().await;
    let ns = ds
        .namespace()
        .ok_or_else(|| Error::MissingField("metadata.namespace"))?;
    let api: Api<DataStream> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, ds, |event| async {
        match event {
            Finalizer::Apply(ds) => apply(&ds, &api, &ctx).await,
            Finalizer::Cleanup(ds) => cleanup(&ds, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Decides when to try again after an error: transient errors back off exponentially per
/// object, up to five minutes.
pub fn error_policy(ds: Arc<DataStream>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failure("datastream", error);
    let delay = ctx.backoff.next(&ds.object_ref(&()));
    warn!(error = %error, category = error.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Why a reconcile stopped short of the topic the spec asks for: a problem to report on the
/// DataStream (its reason says when to look again), or an apiserver error (retried by the
/// controller with backoff).
enum Stop {
    Problem(Problem),
    Error(Error),
}

impl From<Problem> for Stop {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
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

impl From<TopicError> for Stop {
    fn from(e: TopicError) -> Self {
        Self::Problem(match e {
            TopicError::Unavailable(m) => Problem::new(Reason::KafkaUnavailable, m),
            TopicError::Rejected(m) => Problem::new(Reason::KafkaRejected, m),
        })
    }
}

/// Reconciles: resolve and validate the spec, compare with Kafka, act, and end in
/// [`settle`], the one place that writes the outcome and picks the next look.
async fn apply(ds: &DataStream, api: &Api<DataStream>, ctx: &Context) -> Result<Action> {
    // Each status write lands in this copy, so that later writes build on the claim.
    let ds = &mut ds.clone();
    let reached = converge_topic(ds, api, ctx).await;
    settle(ds, api, ctx, reached).await
}

/// Writes how the reconcile ended and decides when to look again: after the resync when
/// the topic converged or waits on something outside Weir, on the next spec change for a
/// user's mistake, with a growing delay when Kafka refused or cannot be reached.
async fn settle(
    ds: &mut DataStream,
    api: &Api<DataStream>,
    ctx: &Context,
    reached: Result<Update, Stop>,
) -> Result<Action> {
    let key = ds.object_ref(&());
    let problem = match reached {
        Ok(update) => {
            status::write(api, ds, ctx, update).await?;
            ctx.backoff.reset(&key);
            // Kafka sends no events: look again later to revert changes made behind our back.
            return Ok(Action::requeue(ctx.resync));
        }
        Err(Stop::Error(e)) => return Err(e),
        Err(Stop::Problem(p)) => p,
    };
    let retry = problem.reason.retry();
    let message = problem.message.clone();
    let update = if problem.reason == Reason::TopicOwnedByOther {
        Update::Yield(problem)
    } else {
        Update::Problem(problem)
    };
    if retry == Retry::AsError {
        // Best effort: the apiserver may be fine while Kafka is not.
        if let Err(e) = status::write(api, ds, ctx, update).await {
            warn!(error = %e, "could not report that Kafka is unavailable");
        }
        return Err(Error::KafkaUnavailable(message));
    }
    status::write(api, ds, ctx, update).await?;
    Ok(match retry {
        Retry::OnChange => {
            ctx.backoff.reset(&key);
            Action::await_change()
        }
        Retry::OnResync => {
            ctx.backoff.reset(&key);
            Action::requeue(ctx.resync)
        }
        Retry::WithBackoff | Retry::AsError => Action::requeue(ctx.backoff.next(&key)),
    })
}

/// Brings the topic to the spec; the status update it reached, or why it stopped.
async fn converge_topic(
    ds: &mut DataStream,
    api: &Api<DataStream>,
    ctx: &Context,
) -> Result<Update, Stop> {
    let validated =
        validate(ds, &ctx.policy).map_err(|e| Problem::new(Reason::InvalidSpec, e.to_string()))?;
    let topic = &validated.topic;

    if let Some(owner) = other_owner(ds, &topic.name, ctx) {
        return Err(Problem::new(
            Reason::TopicOwnedByOther,
            format!(
                "topic {} belongs to DataStream {owner} (when several name one topic, the \
                 oldest owns it)",
                topic.name
            ),
        )
        .into());
    }

    let topics = ctx
        .kafka_for(ds)
        .await
        .map_err(|e| Problem::new(Reason::ConnectionInvalid, e.0))?;
    // A connection that fails here (a refused password, an untrusted certificate) says so
    // with librdkafka's reason, redacted.
    let (cluster, state) = tokio::try_join!(topics.cluster_id(), topics.describe(&topic.name))
        .map_err(|e| topics.explain(e))?;
    let mut ownership = ownership(status::claim(ds), &topic.name, &cluster, state.as_ref());
    if ownership == Ownership::None && state.is_some() {
        // Before calling an existing topic foreign, make sure the cache is not behind.
        status::refresh(api, ds).await?;
        ownership = ownership_of(ds, &topic.name, &cluster, state.as_ref());
    }

    let racing = match (&state, ownership) {
        (Some(state), Ownership::None) => {
            racing_claimant(ds, &topic.name, &state.id, &cluster, ctx)
        }
        _ => None,
    };

    let state = match (state, ownership) {
        (None, _) => {
            if ownership != Ownership::Ours {
                // Record the claim first: if we crash after creating the topic, the next
                // reconcile still knows the topic is ours.
                let claim = Update::Claim {
                    topic: topic.name.clone(),
                    cluster: cluster.clone(),
                };
                status::write(api, ds, ctx, claim).await?;
            }
            let created = topics.create(topic).await?;
            // Another replica (or our previous life) may have created it a moment ago.
            if created {
                ctx.publish(
                    ds,
                    EventType::Normal,
                    Happened::TopicCreated,
                    format!(
                        "created topic {} with {} partitions, replication factor {}",
                        topic.name, topic.partitions, topic.replication_factor
                    ),
                )
                .await;
                info!(topic = %topic.name, "created topic");
            }
            describe_new(&topics, &topic.name).await?
        }
        (Some(state), Ownership::Ours) => state,
        (Some(state), _) if let Some(loser) = racing => {
            // Another DataStream created it racing us; we are the owner, so it is ours
            // (that one gives the claim up on its next reconcile).
            let claim = Update::Claim {
                topic: topic.name.clone(),
                cluster: cluster.clone(),
            };
            status::write(api, ds, ctx, claim).await?;
            ctx.publish(
                ds,
                EventType::Normal,
                Happened::TopicClaimed,
                format!(
                    "took over topic {} from DataStream {loser}, which named it too (the oldest \
                     DataStream owns a topic)",
                    topic.name
                ),
            )
            .await;
            state
        }
        (Some(state), ownership) if validated.adopt => {
            let changes = config_changes(
                &topic.configs,
                &state.dynamic_configs,
                &BTreeSet::new(),
                validated.config_ownership,
            );
            let lowered = retention_lowered(&topic.configs, &state.configs, &changes);
            if !lowered.is_empty() && !validated.accept_retention_decrease {
                return Err(Problem::new(
                    Reason::RetentionDecrease,
                    format!(
                        "adopting topic {} would lower its retention ({}), deleting the records \
                         beyond it; set spec.retention/spec.retentionSize to keep them, or \
                         annotate the DataStream with {}=true to accept",
                        topic.name,
                        lowered.join(", "),
                        weir_crds::data_stream::ACCEPT_RETENTION_DECREASE_ANNOTATION
                    ),
                )
                .into());
            }
            let claim = Update::Claim {
                topic: topic.name.clone(),
                cluster: cluster.clone(),
            };
            status::write(api, ds, ctx, claim).await?;
            let replaced = if ownership == Ownership::Replaced {
                " (it replaces the topic Weir had created under that name)"
            } else {
                ""
            };
            ctx.publish(
                ds,
                EventType::Normal,
                Happened::TopicAdopted,
                format!(
                    "adopted existing topic {} ({} partitions){replaced}; config changes to \
                     converge: {}",
                    topic.name,
                    state.partitions,
                    describe_changes(&changes, &state.dynamic_configs)
                ),
            )
            .await;
            state
        }
        (Some(state), ownership) => {
            let message = if ownership == Ownership::Replaced {
                format!(
                    "topic {} was deleted and created again outside Weir (its id is now {}, \
                     not the {} Weir created); Weir leaves it alone: annotate the DataStream \
                     with {}=true to adopt it",
                    topic.name,
                    state.id,
                    status::claim(ds)
                        .and_then(|c| c.topic_id)
                        .unwrap_or_default(),
                    weir_crds::data_stream::ADOPT_ANNOTATION
                )
            } else {
                format!(
                    "topic {} already exists and is not managed by Weir; annotate the \
                     DataStream with {}=true to adopt it",
                    topic.name,
                    weir_crds::data_stream::ADOPT_ANNOTATION
                )
            };
            return Err(Problem::new(Reason::TopicNotManaged, message).into());
        }
    };

    let state = converge(ds, &validated, state, &topics, ctx).await?;
    let problem = limits(topic, &state);
    Ok(Update::Topic {
        desired: topic.clone(),
        state,
        cluster,
        problem,
    })
}

/// Reads a topic just created: the broker's metadata may take a moment to show it.
async fn describe_new(topics: &KafkaAdmin, name: &str) -> Result<TopicState, TopicError> {
    for _ in 0..20 {
        if let Some(state) = topics.describe(name).await? {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(TopicError::Unavailable(format!(
        "the new topic {name} is not visible yet"
    )))
}

/// Raises partitions and sets configs as the spec says; returns the topic's new state.
async fn converge(
    ds: &DataStream,
    validated: &ValidatedDataStream,
    mut state: TopicState,
    topics: &KafkaAdmin,
    ctx: &Context,
) -> Result<TopicState, TopicError> {
    let topic = &validated.topic;
    let mut changed = false;
    if topic.partitions > state.partitions {
        topics
            .raise_partitions(&topic.name, topic.partitions)
            .await?;
        ctx.publish(
            ds,
            EventType::Normal,
            Happened::PartitionsRaised,
            format!(
                "raised topic {} from {} to {} partitions",
                topic.name, state.partitions, topic.partitions
            ),
        )
        .await;
        changed = true;
    }
    // What Weir applied last time: keys the spec stops naming are removed.
    let managed_before: BTreeSet<String> = ds
        .status
        .as_ref()
        .map(|s| s.effective_config.keys().cloned().collect())
        .unwrap_or_default();
    let changes = config_changes(
        &topic.configs,
        &state.dynamic_configs,
        &managed_before,
        validated.config_ownership,
    );
    if !changes.is_empty() {
        let summary = describe_changes(&changes, &state.dynamic_configs);
        topics.change_configs(&topic.name, changes).await?;
        // What we applied last time equals the spec: the topic was changed behind our back.
        let applied_before = ds
            .status
            .as_ref()
            .map(|s| s.effective_config.clone())
            .unwrap_or_default();
        let (reason, verb) = if applied_before == topic.configs {
            (
                Happened::ConfigDriftReverted,
                "reverted out-of-band changes to",
            )
        } else {
            (Happened::ConfigUpdated, "updated")
        };
        ctx.publish(
            ds,
            EventType::Normal,
            reason,
            format!("{verb} topic {} configs: {summary}", topic.name),
        )
        .await;
        changed = true;
    }
    if changed {
        state = topics
            .describe(&topic.name)
            .await?
            .ok_or_else(|| TopicError::Unavailable("the topic disappeared".into()))?;
    }
    Ok(state)
}
