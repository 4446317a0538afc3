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

pub mod status;
pub mod validated;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use weir_crds::DataStream;
use weir_crds::data_stream::{ConfigOwnership, DeletionPolicy};

use crate::context::{Context, Happened};
use crate::kafka_admin::{ConfigChange, DesiredTopic, KafkaAdmin, TopicError, TopicState};
use crate::{Error, Result};
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

/// Whether a DataStream's claim covers the topic Kafka reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The claim names this topic on this cluster, and its id (if recorded and the topic
    /// exists) matches: Weir manages it.
    Ours,
    /// The claim names this topic on this cluster, but the topic there now has another id:
    /// it was deleted and created again outside Weir.
    Replaced,
    /// No claim on this topic on this cluster.
    None,
}

/// Decides whether `claim` covers topic `name` on cluster `cluster` as Kafka reports it
/// (`state`, `None` if it does not exist). A claim without a cluster or topic id (recorded
/// by a Weir that did not record them, or before creation) is matched by name.
pub fn ownership(
    claim: Option<status::Claim<'_>>,
    name: &str,
    cluster: &str,
    state: Option<&TopicState>,
) -> Ownership {
    let Some(claim) = claim else {
        return Ownership::None;
    };
    if claim.topic != name || claim.cluster_id.is_some_and(|c| c != cluster) {
        return Ownership::None;
    }
    match (claim.topic_id, state) {
        (Some(id), Some(state)) if id != state.id => Ownership::Replaced,
        _ => Ownership::Ours,
    }
}

fn ownership_of(
    ds: &DataStream,
    name: &str,
    cluster: &str,
    state: Option<&TopicState>,
) -> Ownership {
    ownership(status::claim(ds), name, cluster, state)
}

/// Another DataStream whose status claims this very topic (same name and id): one that
/// created it while racing this one, which owns it.
fn racing_claimant(
    ds: &DataStream,
    topic: &str,
    id: &str,
    cluster: &str,
    ctx: &Context,
) -> Option<String> {
    let me = ds.meta().uid.clone();
    ctx.data_streams
        .state()
        .into_iter()
        .filter(|d| d.meta().uid != me)
        .find(|d| {
            status::claim(d).is_some_and(|c| {
                c.topic == topic
                    && c.topic_id.is_none_or(|i| i == id)
                    && c.cluster_id.is_none_or(|c| c == cluster)
            })
        })
        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
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

/// What the spec asks for that Kafka cannot do in place.
fn limits(topic: &DesiredTopic, state: &TopicState) -> Option<Problem> {
    if state.replication_factor != topic.replication_factor {
        return Some(Problem::new(
            Reason::ReplicationFactorChangeUnsupported,
            format!(
                "the spec asks for replication factor {} but topic {} has {}; Kafka cannot change \
                 it in place (reassign partitions with Kafka's tools, or restore the spec)",
                topic.replication_factor, topic.name, state.replication_factor
            ),
        ));
    }
    if state.partitions > topic.partitions {
        return Some(Problem::new(
            Reason::PartitionsDecreaseUnsupported,
            format!(
                "the spec asks for {} partitions but topic {} has {}; Kafka cannot remove partitions",
                topic.partitions, topic.name, state.partitions
            ),
        ));
    }
    None
}

/// The oldest other DataStream naming the same topic, as `namespace/name`, if it is not us.
fn other_owner(ds: &DataStream, topic: &str, ctx: &Context) -> Option<String> {
    let me = ds.meta().uid.clone();
    let key = |d: &DataStream| {
        (
            d.meta().creation_timestamp.clone().map(|t| t.0),
            d.namespace().unwrap_or_default(),
            d.name_any(),
        )
    };
    let owner = ctx
        .data_streams
        .state()
        .into_iter()
        .filter(|d| d.meta().deletion_timestamp.is_none() && d.topic_name() == topic)
        .min_by_key(|d| key(d))?;
    (owner.meta().uid != me).then(|| {
        format!(
            "{}/{}",
            owner.namespace().unwrap_or_default(),
            owner.name_any()
        )
    })
}

async fn cleanup(ds: &DataStream, ctx: &Context) -> Result<Action> {
    let Some(claim) = status::claim(ds) else {
        // We never created or adopted a topic: nothing to do.
        ctx.forget_connection(&ds.metadata);
        return Ok(Action::await_change());
    };
    let topic = claim.topic.to_owned();
    match ds.spec.deletion_policy {
        DeletionPolicy::Retain => {
            ctx.publish(
                ds,
                EventType::Normal,
                Happened::TopicRetained,
                format!("kept topic {topic} (deletionPolicy: Retain)"),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            let readers = crate::lineage::of(ds, &ctx.transforms.state()).readers;
            if !readers.is_empty() {
                // Deleting the topic would pull it out from under running Transforms: wait
                // until they are deleted or read something else (their change wakes us).
                let ns = ds.metadata.namespace.clone().unwrap_or_default();
                let api: Api<DataStream> = Api::namespaced(ctx.client.clone(), &ns);
                let problem = Problem::new(
                    Reason::StillRead,
                    format!(
                        "deleting topic {topic} waits until no Transform reads it; still read \
                         by {}",
                        readers.join(", ")
                    ),
                );
                status::write(&api, &mut ds.clone(), ctx, Update::Problem(problem)).await?;
                return Err(Error::Waiting(format!(
                    "topic {topic} is still read by {}",
                    readers.join(", ")
                )));
            }
            match delete_claimed(ds, claim, ctx).await? {
                Ok(()) => {
                    info!(%topic, "deleted topic");
                    ctx.publish(
                        ds,
                        EventType::Normal,
                        Happened::TopicDeleted,
                        format!("deleted topic {topic} (deletionPolicy: Delete)"),
                    )
                    .await;
                }
                Err(why) => {
                    warn!(%topic, %why, "left the topic in place");
                    ctx.publish(
                        ds,
                        EventType::Warning,
                        Happened::TopicRetained,
                        format!("kept topic {topic} although deletionPolicy is Delete: {why}"),
                    )
                    .await;
                }
            }
        }
    }
    ctx.forget_connection(&ds.metadata);
    Ok(Action::await_change())
}

/// Deletes the claimed topic if, and only if, it is provably the one Weir created or
/// adopted for this DataStream: named by the spec within the namespace's topics, not owned
/// by another DataStream, on the same cluster, with the recorded id. `Ok(Err(why))` when it
/// is left in place (and why); `Err` when Kafka could not be asked (retried).
async fn delete_claimed(
    ds: &DataStream,
    claim: status::Claim<'_>,
    ctx: &Context,
) -> Result<Result<(), String>> {
    let topic = claim.topic;
    let namespace = ds.metadata.namespace.as_deref().unwrap_or_default();
    if ds.topic_name() != topic {
        return Ok(Err(format!(
            "the status names topic {topic} but the spec names {}",
            ds.topic_name()
        )));
    }
    if let Err(why) = validated::check_topic_owner(namespace, topic, &ctx.policy.topic_grants) {
        return Ok(Err(why));
    }
    if let Some(owner) = other_owner(ds, topic, ctx) {
        return Ok(Err(format!("it belongs to DataStream {owner}")));
    }
    let Some(id) = claim.topic_id else {
        return Ok(Err(
            "no topic id was recorded for it, so Weir cannot tell it is the topic it created"
                .into(),
        ));
    };
    // A connection whose Secret is gone (as when its namespace is deleted, Secrets first)
    // is served from the client this DataStream used; without one the topic is left, and
    // the Event says so, rather than holding the namespace in Terminating.
    let topics = match ctx.kafka_for(ds).await {
        Ok(t) => t,
        Err(problem) => match ctx.cached_connection(&ds.metadata) {
            Some(t) => t,
            None => {
                return Ok(Err(format!(
                    "its Kafka connection cannot be used: {}",
                    problem.0
                )));
            }
        },
    };
    let cluster = topics.cluster_id().await?;
    if claim.cluster_id.is_some_and(|c| c != cluster) {
        return Ok(Err(format!(
            "it is on Kafka cluster {}, and spec.kafka now reaches cluster {cluster}",
            claim.cluster_id.unwrap_or_default()
        )));
    }
    match topics.describe(topic).await? {
        None => Ok(Ok(())),
        Some(state) if state.id != id => Ok(Err(format!(
            "it has id {}, not the {id} Weir created (it was deleted and created again \
             outside Weir)",
            state.id
        ))),
        Some(_) => {
            topics.delete(topic).await?;
            Ok(Ok(()))
        }
    }
}

/// The per-key changes that bring the topic's own configs (`actual`) to the spec's
/// (`desired`): set what differs; remove keys Weir managed before (`managed_before`) that the
/// spec no longer names; under [`ConfigOwnership::All`], remove every other key too. Keys
/// Weir never managed are otherwise left alone.
pub fn config_changes(
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    managed_before: &BTreeSet<String>,
    ownership: ConfigOwnership,
) -> Vec<ConfigChange> {
    let set = desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| ConfigChange::Set(k.clone(), v.clone()));
    let delete = actual
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .filter(|k| ownership == ConfigOwnership::All || managed_before.contains(*k))
        .map(|k| ConfigChange::Delete(k.clone()));
    set.chain(delete).collect()
}

/// The changes as `key: from -> to`, for Events.
fn describe_changes(changes: &[ConfigChange], actual: &BTreeMap<String, String>) -> String {
    if changes.is_empty() {
        return "none".into();
    }
    changes
        .iter()
        .map(|c| {
            let (key, to) = match c {
                ConfigChange::Set(k, v) => (k, v.as_str()),
                ConfigChange::Delete(k) => (k, "(default)"),
            };
            let from = actual.get(key).map_or("(default)", String::as_str);
            format!("{key}: {from} -> {to}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The retention limits an adoption would lower, as `key from -> to`: a smaller
/// `retention.ms`/`retention.bytes` than the topic has (`-1`, unlimited, is larger than any),
/// or removing one the topic sets (the broker's default may be smaller).
pub fn retention_lowered(
    desired: &BTreeMap<String, String>,
    effective: &BTreeMap<String, String>,
    changes: &[ConfigChange],
) -> Vec<String> {
    let limit = |v: Option<&String>| -> Option<i64> {
        v.and_then(|v| v.parse::<i64>().ok())
            .map(|n| if n < 0 { i64::MAX } else { n })
    };
    let mut lowered = Vec::new();
    for key in ["retention.ms", "retention.bytes"] {
        let have = effective.get(key);
        match (limit(desired.get(key)), limit(have)) {
            (Some(want), Some(now)) if want < now => lowered.push(format!(
                "{key} {} -> {}",
                have.map_or("(default)", String::as_str),
                desired.get(key).map_or("", String::as_str)
            )),
            _ => {}
        }
        if changes
            .iter()
            .any(|c| matches!(c, ConfigChange::Delete(k) if k == key))
        {
            lowered.push(format!(
                "{key} {} -> the broker's default",
                have.map_or("(default)", String::as_str)
            ));
        }
    }
    lowered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(k: &str, v: &str) -> ConfigChange {
        ConfigChange::Set(k.into(), v.into())
    }

    #[test]
    fn config_changes_touch_only_the_keys_weir_manages() {
        let desired = map(&[("cleanup.policy", "delete"), ("retention.ms", "1000")]);
        // The topic: one managed key drifted, one Weir set before and the spec dropped, one
        // an admin set (a replication throttle).
        let actual = map(&[
            ("retention.ms", "5"),
            ("max.message.bytes", "10"),
            ("leader.replication.throttled.replicas", "*"),
        ]);
        let before: BTreeSet<String> = ["max.message.bytes".to_owned()].into();
        let changes = config_changes(&desired, &actual, &before, ConfigOwnership::Named);
        assert_eq!(
            changes,
            vec![
                set("cleanup.policy", "delete"),
                set("retention.ms", "1000"),
                ConfigChange::Delete("max.message.bytes".into()),
            ]
        );
        assert_eq!(
            describe_changes(&changes, &actual),
            "cleanup.policy: (default) -> delete, retention.ms: 5 -> 1000, max.message.bytes: 10 -> (default)"
        );
        // Owning every key removes the admin's too.
        let all = config_changes(&desired, &actual, &before, ConfigOwnership::All);
        assert!(all.contains(&ConfigChange::Delete(
            "leader.replication.throttled.replicas".into()
        )));
        assert!(config_changes(&desired, &desired, &before, ConfigOwnership::All).is_empty());
    }

    #[test]
    fn an_adoption_that_lowers_retention_is_named() {
        let desired = map(&[("retention.ms", "604800000")]);
        let forever = map(&[("retention.ms", "-1"), ("retention.bytes", "-1")]);
        assert_eq!(
            retention_lowered(&desired, &forever, &[]),
            vec!["retention.ms -1 -> 604800000"]
        );
        let short = map(&[("retention.ms", "1000")]);
        assert!(retention_lowered(&desired, &short, &[]).is_empty());
        // Removing a retention the topic sets may fall back to a smaller default.
        let removed = [ConfigChange::Delete("retention.bytes".into())];
        assert_eq!(
            retention_lowered(&desired, &forever, &removed),
            vec![
                "retention.ms -1 -> 604800000",
                "retention.bytes -1 -> the broker's default"
            ]
        );
    }

    fn topic_state(id: &str) -> TopicState {
        TopicState {
            id: id.into(),
            partitions: 3,
            replication_factor: 1,
            dynamic_configs: BTreeMap::new(),
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn a_claim_covers_a_topic_only_by_name_cluster_and_id() {
        let claim = |topic_id, cluster_id| {
            Some(status::Claim {
                topic: "n.t",
                topic_id,
                cluster_id,
            })
        };
        let t = topic_state("id1");
        let ours = claim(Some("id1"), Some("c1"));
        assert_eq!(ownership(ours, "n.t", "c1", Some(&t)), Ownership::Ours);
        assert_eq!(ownership(ours, "n.t", "c1", None), Ownership::Ours);
        assert_eq!(ownership(ours, "n.other", "c1", Some(&t)), Ownership::None);
        // Another cluster (spec.kafka changed): a topic there is not ours.
        assert_eq!(ownership(ours, "n.t", "c2", Some(&t)), Ownership::None);
        // Same name, another id: deleted and created again outside Weir.
        assert_eq!(
            ownership(ours, "n.t", "c1", Some(&topic_state("id2"))),
            Ownership::Replaced
        );
        // Claimed, not yet created (or recorded by an older Weir): matched by name.
        assert_eq!(
            ownership(claim(None, Some("c1")), "n.t", "c1", Some(&t)),
            Ownership::Ours
        );
        assert_eq!(
            ownership(claim(None, None), "n.t", "c9", Some(&t)),
            Ownership::Ours
        );
        assert_eq!(ownership(None, "n.t", "c1", Some(&t)), Ownership::None);
    }

    #[test]
    fn limits_report_what_kafka_cannot_do() {
        let topic = DesiredTopic {
            name: "t".into(),
            partitions: 3,
            replication_factor: 3,
            configs: BTreeMap::new(),
        };
        let state = TopicState {
            replication_factor: 1,
            ..topic_state("id")
        };
        let p = limits(&topic, &state).expect("rf change");
        assert_eq!(p.reason, Reason::ReplicationFactorChangeUnsupported);
        let state = TopicState {
            partitions: 6,
            replication_factor: 3,
            ..state
        };
        assert_eq!(
            limits(&topic, &state).map(|p| p.reason),
            Some(Reason::PartitionsDecreaseUnsupported)
        );
    }
}
