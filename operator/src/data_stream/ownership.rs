//! Which topic a DataStream owns: its claim (name, topic id, cluster id) against what
//! Kafka reports, and the other DataStreams naming the same topic.

use kube::{Resource, ResourceExt};
use weir_crds::DataStream;

use super::status;
use crate::context::Context;
use crate::kafka_admin::TopicState;

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

pub(super) fn ownership_of(
    ds: &DataStream,
    name: &str,
    cluster: &str,
    state: Option<&TopicState>,
) -> Ownership {
    ownership(status::claim(ds), name, cluster, state)
}

/// Another DataStream whose status claims this very topic (same name and id): one that
/// created it while racing this one, which owns it.
pub(super) fn racing_claimant(
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

/// The oldest other DataStream naming the same topic, as `namespace/name`, if it is not us.
pub(super) fn other_owner(ds: &DataStream, topic: &str, ctx: &Context) -> Option<String> {
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

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A topic as Kafka reports it, with id `id`.
    pub fn topic_state(id: &str) -> TopicState {
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
}
