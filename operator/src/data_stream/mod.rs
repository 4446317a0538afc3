//! The DataStream controller: keeps each DataStream's Kafka topic as its spec says.
//!
//! Reconcile is dereference → validate ([`validated`]) → compare with Kafka → act → status.
//! A topic is managed by Weir once a DataStream's status names it (recorded before the
//! topic is created, so a crash in between loses nothing); a topic Weir did not create is
//! left alone unless the DataStream asks to adopt it.

pub mod status;
pub mod validated;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use weir_crds::DataStream;
use weir_crds::data_stream::DeletionPolicy;

use crate::context::Context;
use crate::topics::{DesiredTopic, TopicError, TopicState, Topics};
use crate::{Error, Result};
use status::{Problem, Reason, Update};
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

async fn apply(ds: &DataStream, api: &Api<DataStream>, ctx: &Context) -> Result<Action> {
    // Each status write lands in this copy, so that later writes build on the claim.
    let ds = &mut ds.clone();
    let validated = match validate(ds, &ctx.defaults) {
        Ok(v) => v,
        Err(e) => {
            let problem = Problem::new(Reason::InvalidSpec, e.to_string());
            status::write(api, ds, ctx, Update::Problem(problem)).await?;
            // A user's mistake: wait for the spec to change.
            ctx.backoff.reset(&ds.object_ref(&()));
            return Ok(Action::await_change());
        }
    };
    let topic = &validated.topic;

    if let Some(owner) = other_owner(ds, &topic.name, ctx) {
        let problem = Problem::new(
            Reason::TopicOwnedByOther,
            format!("topic {} belongs to DataStream {owner}", topic.name),
        );
        status::write(api, ds, ctx, Update::Problem(problem)).await?;
        ctx.backoff.reset(&ds.object_ref(&()));
        return Ok(Action::requeue(ctx.resync));
    }

    let topics = match ctx.topics_for(ds).await {
        Ok(t) => t,
        Err(e) => {
            let problem = Problem::new(Reason::ConnectionInvalid, e.0);
            status::write(api, ds, ctx, Update::Problem(problem)).await?;
            ctx.backoff.reset(&ds.object_ref(&()));
            // The Secret may appear later: look again on the resync.
            return Ok(Action::requeue(ctx.resync));
        }
    };
    let state = match topics.describe(&topic.name).await {
        Ok(s) => s,
        Err(e) => return kafka_failed(api, ds, ctx, e).await,
    };
    let mut claimed = status::claimed_topic(ds) == Some(topic.name.as_str());
    if !claimed && state.is_some() {
        // Before calling an existing topic foreign, make sure the cache is not behind.
        status::refresh(api, ds).await?;
        claimed = status::claimed_topic(ds) == Some(topic.name.as_str());
    }

    let state = match state {
        None => {
            if !claimed {
                // Record the claim first: if we crash after creating the topic, the next
                // reconcile still knows the topic is ours.
                status::write(api, ds, ctx, Update::Claim(topic.name.clone())).await?;
            }
            let created = match topics.create(topic).await {
                Ok(created) => created,
                Err(e) => return kafka_failed(api, ds, ctx, e).await,
            };
            // Another replica (or our previous life) may have created it a moment ago.
            if created {
                ctx.publish(
                    ds,
                    EventType::Normal,
                    "TopicCreated",
                    "Create",
                    format!(
                        "created topic {} with {} partitions, replication factor {}",
                        topic.name, topic.partitions, topic.replication_factor
                    ),
                )
                .await;
                info!(topic = %topic.name, "created topic");
            }
            match describe_new(&topics, &topic.name).await {
                Ok(s) => s,
                Err(e) => return kafka_failed(api, ds, ctx, e).await,
            }
        }
        Some(state) if claimed => state,
        Some(state) if validated.adopt => {
            let diff = config_diff(&topic.configs, &state.dynamic_configs);
            status::write(api, ds, ctx, Update::Claim(topic.name.clone())).await?;
            ctx.publish(
                ds,
                EventType::Normal,
                "TopicAdopted",
                "Adopt",
                format!(
                    "adopted existing topic {} ({} partitions); config differences to converge: {}",
                    topic.name,
                    state.partitions,
                    describe_diff(&diff)
                ),
            )
            .await;
            state
        }
        Some(_) => {
            let problem = Problem::new(
                Reason::TopicNotManaged,
                format!(
                    "topic {} already exists and is not managed by Weir; annotate the DataStream \
                     with {}=true to adopt it",
                    topic.name,
                    weir_crds::data_stream::ADOPT_ANNOTATION
                ),
            );
            status::write(api, ds, ctx, Update::Problem(problem)).await?;
            ctx.backoff.reset(&ds.object_ref(&()));
            return Ok(Action::requeue(ctx.resync));
        }
    };

    let state = match converge(ds, &validated, state, &topics, ctx).await {
        Ok(s) => s,
        Err(e) => return kafka_failed(api, ds, ctx, e).await,
    };

    let problem = limits(topic, &state);
    status::write(api, ds, ctx, Update::Topic(topic.clone(), state, problem)).await?;
    ctx.backoff.reset(&ds.object_ref(&()));
    // Kafka sends no events: look again later to revert changes made behind our back.
    Ok(Action::requeue(ctx.resync))
}

/// Reads a topic just created: the broker's metadata may take a moment to show it.
async fn describe_new(topics: &Topics, name: &str) -> Result<TopicState, TopicError> {
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
    topics: &Topics,
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
            "PartitionsRaised",
            "Update",
            format!(
                "raised topic {} from {} to {} partitions",
                topic.name, state.partitions, topic.partitions
            ),
        )
        .await;
        changed = true;
    }
    let diff = config_diff(&topic.configs, &state.dynamic_configs);
    if !diff.is_empty() {
        topics.set_configs(&topic.name, &topic.configs).await?;
        // What we applied last time equals the spec: the topic was changed behind our back.
        let applied_before = ds
            .status
            .as_ref()
            .map(|s| s.effective_config.clone())
            .unwrap_or_default();
        let (reason, verb) = if applied_before == topic.configs {
            ("ConfigDriftReverted", "reverted out-of-band changes to")
        } else {
            ("ConfigUpdated", "updated")
        };
        ctx.publish(
            ds,
            EventType::Normal,
            reason,
            "Update",
            format!(
                "{verb} topic {} configs: {}",
                topic.name,
                describe_diff(&diff)
            ),
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

async fn kafka_failed(
    api: &Api<DataStream>,
    ds: &mut DataStream,
    ctx: &Context,
    error: TopicError,
) -> Result<Action> {
    match error {
        TopicError::Unavailable(m) => {
            let problem = Problem::new(Reason::KafkaUnavailable, m.clone());
            // Best effort: the apiserver may be fine while Kafka is not.
            if let Err(e) = status::write(api, ds, ctx, Update::Problem(problem)).await {
                warn!(error = %e, "could not report that Kafka is unavailable");
            }
            Err(Error::KafkaUnavailable(m))
        }
        TopicError::Rejected(m) => {
            let problem = Problem::new(Reason::KafkaRejected, m);
            status::write(api, ds, ctx, Update::Problem(problem)).await?;
            ctx.backoff.reset(&ds.object_ref(&()));
            Ok(Action::await_change())
        }
    }
}

async fn cleanup(ds: &DataStream, ctx: &Context) -> Result<Action> {
    let Some(topic) = status::claimed_topic(ds).map(str::to_owned) else {
        // We never created or adopted a topic: nothing to do.
        return Ok(Action::await_change());
    };
    match ds.spec.deletion_policy {
        DeletionPolicy::Retain => {
            ctx.publish(
                ds,
                EventType::Normal,
                "TopicRetained",
                "Delete",
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
            if let Some(owner) = other_owner(ds, &topic, ctx) {
                ctx.publish(
                    ds,
                    EventType::Warning,
                    "TopicRetained",
                    "Delete",
                    format!("kept topic {topic}: it belongs to DataStream {owner}"),
                )
                .await;
            } else {
                // A connection whose Secret is gone blocks deletion until it is back:
                // deleting the resource must not silently leave a topic it promised to delete.
                let topics = ctx
                    .topics_for(ds)
                    .await
                    .map_err(|e| Error::KafkaUnavailable(e.0))?;
                topics
                    .delete(&topic)
                    .await
                    .map_err(|e| Error::KafkaUnavailable(e.to_string()))?;
                info!(%topic, "deleted topic");
                ctx.publish(
                    ds,
                    EventType::Normal,
                    "TopicDeleted",
                    "Delete",
                    format!("deleted topic {topic} (deletionPolicy: Delete)"),
                )
                .await;
            }
        }
    }
    Ok(Action::await_change())
}

/// Keys whose value differs between what we want and what the topic has:
/// `key -> (actual, desired)`; a key we do not manage but the topic sets shows `desired` None.
fn config_diff(
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut diff = BTreeMap::new();
    for (k, v) in desired {
        if actual.get(k) != Some(v) {
            diff.insert(k.clone(), (actual.get(k).cloned(), Some(v.clone())));
        }
    }
    for (k, v) in actual {
        if !desired.contains_key(k) {
            diff.insert(k.clone(), (Some(v.clone()), None));
        }
    }
    diff
}

fn describe_diff(diff: &BTreeMap<String, (Option<String>, Option<String>)>) -> String {
    if diff.is_empty() {
        return "none".into();
    }
    diff.iter()
        .map(|(k, (from, to))| {
            format!(
                "{k}: {} -> {}",
                from.as_deref().unwrap_or("(default)"),
                to.as_deref().unwrap_or("(default)")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long to wait before retrying an object after consecutive failures.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    fn key(obj: &k8s_openapi::api::core::v1::ObjectReference) -> String {
        format!(
            "{}/{}",
            obj.namespace.as_deref().unwrap_or_default(),
            obj.name.as_deref().unwrap_or_default()
        )
    }

    /// Records a failure and returns the delay before the next try: 1s, 2s, 4s … 5 min.
    pub fn next(&self, obj: &k8s_openapi::api::core::v1::ObjectReference) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(Self::key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets an object's failures after a success.
    pub fn reset(&self, obj: &k8s_openapi::api::core::v1::ObjectReference) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&Self::key(obj));
    }
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

    #[test]
    fn config_diff_finds_changed_missing_and_extra_keys() {
        let desired = map(&[("cleanup.policy", "delete"), ("retention.ms", "1000")]);
        let actual = map(&[("retention.ms", "5"), ("segment.ms", "10")]);
        let diff = config_diff(&desired, &actual);
        assert_eq!(diff.len(), 3);
        assert_eq!(diff["cleanup.policy"], (None, Some("delete".into())));
        assert_eq!(
            diff["retention.ms"],
            (Some("5".into()), Some("1000".into()))
        );
        assert_eq!(diff["segment.ms"], (Some("10".into()), None));
        assert_eq!(
            describe_diff(&diff),
            "cleanup.policy: (default) -> delete, retention.ms: 5 -> 1000, segment.ms: 10 -> (default)"
        );
        assert!(config_diff(&desired, &desired).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes_and_resets() {
        let b = Backoff::default();
        let obj = k8s_openapi::api::core::v1::ObjectReference {
            name: Some("a".into()),
            ..Default::default()
        };
        let delays: Vec<u64> = (0..12).map(|_| b.next(&obj).as_secs()).collect();
        assert_eq!(&delays[..4], &[1, 2, 4, 8]);
        assert_eq!(*delays.last().unwrap_or(&0), 256);
        b.reset(&obj);
        assert_eq!(b.next(&obj).as_secs(), 1);
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
            partitions: 3,
            replication_factor: 1,
            dynamic_configs: BTreeMap::new(),
            configs: BTreeMap::new(),
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
