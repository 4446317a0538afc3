//! Apply: objects by server-side apply only when their stamped hash differs from what is
//! stored (a steady state writes nothing), internal topics only when Kafka lacks them, and
//! stopping the workers' reads when a grant is revoked.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;
use weir_crds::Transform;
use weir_crds::compile::id_of;

use super::{Ctx, build, principal};
use crate::context::Happened;
use crate::kafka_admin::{ConfigChange, DesiredTopic, KafkaAdmin, TopicError, TopicState};
use crate::{FIELD_MANAGER, Result};

/// Stops a Transform's workers reading (a grant was revoked): its Deployment scaled to zero
/// (the next apply restores it) and, with managed credentials, the READ ACLs on every topic
/// outside its own gone. Its offsets and state stay.
pub(super) async fn stop_reading(tf: &Transform, ctx: &Ctx) -> Result<()> {
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

/// Whether `tf` is the controller of `obj`.
pub(super) fn owned_by<K: Resource>(obj: &K, tf: &Transform) -> bool {
    let uid = tf.metadata.uid.as_deref();
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// The oldest other Transform of the namespace writing the same output, as `ns/name`.
pub(super) fn other_writer(tf: &Transform, ctx: &Ctx) -> Option<String> {
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
pub(super) async fn ensure_topic(
    ctx: &Ctx,
    kafka: &KafkaAdmin,
    tf: &Transform,
    topic: &DesiredTopic,
) -> Result<(), TopicError> {
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
        Some(state) => {
            // The configs the Transform's state depends on (a changelog compacted, never
            // deleted by time) are put back when someone changed them.
            let drift = config_drift(topic, &state);
            if !drift.is_empty() {
                let what: Vec<String> = drift
                    .iter()
                    .map(|c| match c {
                        ConfigChange::Set(k, v) => format!("{k}={v}"),
                        ConfigChange::Delete(k) => format!("{k} (removed)"),
                    })
                    .collect();
                kafka.change_configs(&topic.name, drift).await?;
                ctx.publish(
                    tf,
                    EventType::Warning,
                    Happened::ConfigDriftReverted,
                    format!(
                        "internal topic {} had its configs changed; set back: {}",
                        topic.name,
                        what.join(", ")
                    ),
                )
                .await;
            }
            if state.partitions < topic.partitions {
                kafka
                    .raise_partitions(&topic.name, topic.partitions)
                    .await?;
            }
        }
    }
    Ok(())
}

/// The configs of internal topic `topic` that the live topic does not have as Weir sets
/// them.
fn config_drift(topic: &DesiredTopic, live: &TopicState) -> Vec<ConfigChange> {
    topic
        .configs
        .iter()
        .filter(|(k, v)| live.configs.get(*k) != Some(*v))
        .map(|(k, v)| ConfigChange::Set(k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_internal_topic_set_to_delete_is_put_back_to_compact() {
        let desired = DesiredTopic {
            name: "web.t.changelog".into(),
            partitions: 3,
            replication_factor: 1,
            configs: BTreeMap::from([("cleanup.policy".into(), "compact".into())]),
        };
        let mut live = TopicState {
            id: "id".into(),
            partitions: 3,
            replication_factor: 1,
            dynamic_configs: BTreeMap::new(),
            configs: BTreeMap::from([
                ("cleanup.policy".into(), "delete".into()),
                ("retention.ms".into(), "604800000".into()),
            ]),
        };
        assert_eq!(
            config_drift(&desired, &live),
            vec![ConfigChange::Set("cleanup.policy".into(), "compact".into())]
        );
        live.configs
            .insert("cleanup.policy".into(), "compact".into());
        assert!(config_drift(&desired, &live).is_empty());
    }
}
