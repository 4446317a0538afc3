//! On deletion: the topic a DataStream claims, deleted or kept by its deletion policy, and
//! only when Kafka's topic id matches the claim.

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};
use weir_crds::DataStream;
use weir_crds::data_stream::DeletionPolicy;

use super::ownership::other_owner;
use super::status::{self, Problem, Reason, Update};
use super::validated;
use crate::context::{Context, Happened};
use crate::{Error, Result};

pub(super) async fn cleanup(ds: &DataStream, ctx: &Context) -> Result<Action> {
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
