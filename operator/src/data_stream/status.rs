//! A DataStream's status: built as a value, compared with what is stored, and written by
//! server-side apply only when it changed (a steady-state reconcile writes nothing).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use weir_crds::{DataStream, DataStreamStatus};

use crate::context::{Context, Happened};
use crate::kafka_admin::{DesiredTopic, TopicState};
use crate::lineage::Lineage;
use crate::{FIELD_MANAGER, Result};

/// Why a DataStream is or is not Ready: the condition's `reason`, stable for alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum Reason {
    /// The topic exists as the spec says.
    TopicReady,
    /// The claim is recorded and the topic is being created.
    Creating,
    /// The spec has a mistake; the message names the field.
    InvalidSpec,
    /// Kafka could not be reached; retrying.
    KafkaUnavailable,
    /// Kafka refused what the spec asks (for example an unknown config).
    KafkaRejected,
    /// The named Kafka connection cannot be used (a missing Secret or key).
    ConnectionInvalid,
    /// The topic exists but Weir does not manage it.
    TopicNotManaged,
    /// Another DataStream manages this topic.
    TopicOwnedByOther,
    /// The spec changes the replication factor, which Kafka cannot do in place.
    ReplicationFactorChangeUnsupported,
    /// The topic has more partitions than the spec, which Kafka cannot undo.
    PartitionsDecreaseUnsupported,
    /// Adopting the topic would lower its retention, deleting records; it waits for the
    /// user to say so.
    RetentionDecrease,
    /// Deleting the DataStream (and its topic) waits until no Transform reads it.
    StillRead,
}

/// When to reconcile a DataStream again after a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A user's mistake: when the spec changes.
    OnChange,
    /// Something outside Weir may change (a Secret, another DataStream, a topic): on the
    /// next resync.
    OnResync,
    /// Kafka refused: with a growing delay (and at once when the spec changes).
    WithBackoff,
    /// Kafka could not be reached: an error, retried with a growing delay.
    AsError,
}

impl Reason {
    /// When to look again after a problem with this reason.
    pub fn retry(self) -> Retry {
        match self {
            Self::InvalidSpec | Self::RetentionDecrease => Retry::OnChange,
            Self::KafkaRejected => Retry::WithBackoff,
            Self::KafkaUnavailable => Retry::AsError,
            Self::TopicReady
            | Self::Creating
            | Self::ConnectionInvalid
            | Self::TopicNotManaged
            | Self::TopicOwnedByOther
            | Self::ReplicationFactorChangeUnsupported
            | Self::PartitionsDecreaseUnsupported
            | Self::StillRead => Retry::OnResync,
        }
    }

    /// The reason as written in the condition.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Something that keeps a DataStream from being Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition reason.
    pub reason: Reason,
    /// What a person can do about it.
    pub message: String,
}

impl Problem {
    /// A problem with a reason and a message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What a reconcile learned, to be merged into the stored status.
#[derive(Debug, Clone)]
pub enum Update {
    /// Not Ready because of this problem; the topic facts stay as stored.
    Problem(Problem),
    /// Not Ready because another DataStream owns the topic: any claim this one made (racing
    /// the owner) is given up, so that exactly one DataStream manages the topic.
    Yield(Problem),
    /// The topic on cluster `cluster` is claimed before it is created or adopted.
    Claim {
        /// The topic's name.
        topic: String,
        /// The cluster's id.
        cluster: String,
    },
    /// The topic as Kafka reports it on cluster `cluster`, Ready unless there is a problem.
    Topic {
        /// What the spec asks for.
        desired: DesiredTopic,
        /// What Kafka reports.
        state: TopicState,
        /// The cluster's id.
        cluster: String,
        /// What keeps it from being Ready, if anything.
        problem: Option<Problem>,
    },
}

impl Update {
    fn observe(self, ds: &DataStream) -> Observed {
        match self {
            Self::Problem(p) => Observed::problem(ds, p),
            Self::Yield(p) => Observed::released(ds, p),
            Self::Claim { topic, cluster } => Observed::claim(ds, &topic, &cluster),
            Self::Topic {
                desired,
                state,
                cluster,
                problem,
            } => Observed::topic(ds, &desired, &state, &cluster, problem),
        }
    }

    fn keeps_claim(&self) -> bool {
        matches!(self, Self::Problem(_))
    }
}

/// A DataStream's claim on a topic, as its status records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The topic's name.
    pub topic: &'a str,
    /// Kafka's id of the topic Weir created or adopted (absent between claim and creation,
    /// and on claims recorded before Weir recorded ids).
    pub topic_id: Option<&'a str>,
    /// The cluster the claim is on (absent on claims recorded before Weir recorded it).
    pub cluster_id: Option<&'a str>,
}

/// The status a reconcile observed, before timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    status: DataStreamStatus,
    ready: bool,
    reason: Reason,
    message: String,
}

impl Observed {
    /// The stored topic facts, kept as they were, with a problem as the Ready condition.
    pub fn problem(ds: &DataStream, problem: Problem) -> Self {
        let mut status = ds.status.clone().unwrap_or_default();
        status.observed_generation = ds.metadata.generation;
        Self {
            status,
            ready: false,
            reason: problem.reason,
            message: problem.message,
        }
    }

    /// No claim (given up to the topic's owner), with the problem as the Ready condition.
    pub fn released(ds: &DataStream, problem: Problem) -> Self {
        let status = DataStreamStatus {
            observed_generation: ds.metadata.generation,
            ..Default::default()
        };
        Self {
            status,
            ready: false,
            reason: problem.reason,
            message: problem.message,
        }
    }

    /// A claim on `topic` on cluster `cluster`, recorded before the topic is created or
    /// adopted (its id is recorded once Kafka reports it).
    pub fn claim(ds: &DataStream, topic: &str, cluster: &str) -> Self {
        let mut status = ds.status.clone().unwrap_or_default();
        status.observed_generation = ds.metadata.generation;
        status.topic = Some(topic.to_owned());
        status.topic_id = None;
        status.cluster_id = Some(cluster.to_owned());
        Self {
            status,
            ready: false,
            reason: Reason::Creating,
            message: format!("claimed topic {topic}"),
        }
    }

    /// The topic as Kafka reports it, Ready unless `problem`.
    pub fn topic(
        ds: &DataStream,
        desired: &DesiredTopic,
        state: &TopicState,
        cluster: &str,
        problem: Option<Problem>,
    ) -> Self {
        let effective_config: BTreeMap<String, String> = desired
            .configs
            .keys()
            .filter_map(|k| state.configs.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let status = DataStreamStatus {
            observed_generation: ds.metadata.generation,
            topic: Some(desired.name.clone()),
            topic_id: Some(state.id.clone()),
            cluster_id: Some(cluster.to_owned()),
            partitions: Some(state.partitions),
            replication_factor: Some(state.replication_factor),
            effective_config,
            ..Default::default()
        };
        match problem {
            Some(p) => Self {
                status,
                ready: false,
                reason: p.reason,
                message: p.message,
            },
            None => Self {
                status,
                ready: true,
                reason: Reason::TopicReady,
                message: format!(
                    "topic {} has {} partitions, replication factor {}",
                    desired.name, state.partitions, state.replication_factor
                ),
            },
        }
    }

    /// The full status: the Ready condition keeps its transition time unless it changed;
    /// the lineage and the `ReadersCompile` condition come from `lineage`.
    fn into_status(
        self,
        previous: Option<&DataStreamStatus>,
        lineage: &Lineage,
    ) -> DataStreamStatus {
        let mut status = self.status;
        status.readers = lineage.readers.clone();
        status.writer = lineage.writer.clone();
        let generation = status.observed_generation;
        let ready_status = if self.ready { "True" } else { "False" };
        let previous_ready =
            previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let last_transition_time = match previous_ready {
            Some(c) if c.status == ready_status => c.last_transition_time.clone(),
            _ => Time(k8s_openapi::jiff::Timestamp::now()),
        };
        status.conditions = vec![Condition {
            type_: "Ready".into(),
            status: ready_status.into(),
            reason: self.reason.as_str().into(),
            message: self.message,
            observed_generation: generation,
            last_transition_time,
        }];
        let (compiles, reason, message) = if lineage.broken.is_empty() {
            (
                "True",
                "ReadersCompile",
                if lineage.readers.is_empty() {
                    "no Transform reads it".to_owned()
                } else {
                    format!(
                        "every Transform that reads it compiles: {}",
                        lineage.readers.join(", ")
                    )
                },
            )
        } else {
            (
                "False",
                "BreaksReaders",
                lineage
                    .broken
                    .iter()
                    .map(|(tf, why)| format!("Transform {tf} no longer compiles: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        let last_transition_time = match previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ReadersCompile"))
        {
            Some(c) if c.status == compiles => c.last_transition_time.clone(),
            _ => Time(k8s_openapi::jiff::Timestamp::now()),
        };
        status.conditions.push(Condition {
            type_: "ReadersCompile".into(),
            status: compiles.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        });
        status
    }
}

/// Replaces the cached status with the stored one.
pub async fn refresh(api: &Api<DataStream>, ds: &mut DataStream) -> Result<()> {
    let name = ds.metadata.name.clone().unwrap_or_default();
    ds.status = api.get_status(&name).await?.status;
    Ok(())
}

/// The topic this DataStream has claimed (created or adopted), if any.
pub fn claimed_topic(ds: &DataStream) -> Option<&str> {
    claim(ds).map(|c| c.topic)
}

/// This DataStream's claim, if its status records one.
pub fn claim(ds: &DataStream) -> Option<Claim<'_>> {
    let status = ds.status.as_ref()?;
    Some(Claim {
        topic: status.topic.as_deref()?,
        topic_id: status.topic_id.as_deref(),
        cluster_id: status.cluster_id.as_deref(),
    })
}

/// Writes the status if it differs from the stored one, and records it in `ds` so later
/// writes in the same reconcile build on it; publishes an Event when the Ready condition's
/// reason changes to a problem.
pub async fn write(
    api: &Api<DataStream>,
    ds: &mut DataStream,
    ctx: &Context,
    update: Update,
) -> Result<()> {
    if update.keeps_claim() && claimed_topic(ds).is_none() {
        // The cached object may predate our claim; a problem must never erase a claim.
        refresh(api, ds).await?;
    }
    let observed = update.observe(ds);
    let previous = ds.status.as_ref();
    let (reason, message, ready) = (observed.reason, observed.message.clone(), observed.ready);
    let lineage = crate::lineage::of(ds, &ctx.transforms.state());
    let status = observed.into_status(previous, &lineage);
    let newly_broken = !lineage.broken.is_empty()
        && previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ReadersCompile"))
            .is_none_or(|c| c.status != "False");
    if previous == Some(&status) {
        return Ok(());
    }
    let written = status.clone();
    let previous_reason = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone());
    let patch = serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "DataStream",
        "status": status,
    });
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.status_write("datastream");
    if !ready && reason != Reason::Creating && previous_reason.as_deref() != Some(reason.as_str()) {
        ctx.publish(
            ds,
            EventType::Warning,
            Happened::Problem(reason.as_str()),
            message,
        )
        .await;
    }
    if newly_broken {
        let readers = status_message(&written, "ReadersCompile");
        ctx.publish(ds, EventType::Warning, Happened::BreaksReaders, readers)
            .await;
    }
    ds.status = Some(written);
    Ok(())
}

fn status_message(status: &DataStreamStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> DataStream {
        let mut ds: DataStream = serde_yaml::from_str(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: s, namespace: n, generation: 3 }
spec:
  description: d
  owner: o
  schema: { fields: [ { name: a, type: string } ] }
"#,
        )
        .expect("valid");
        ds.status = None;
        ds
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let ds = ds();
        let first = Observed::problem(&ds, Problem::new(Reason::InvalidSpec, "x"))
            .into_status(None, &Lineage::default());
        let again = Observed::problem(&ds, Problem::new(Reason::InvalidSpec, "x"))
            .into_status(Some(&first), &Lineage::default());
        assert_eq!(
            first, again,
            "a steady state must produce an identical status"
        );
        assert_eq!(again.conditions[0].observed_generation, Some(3));
        assert_eq!(again.conditions[0].status, "False");
    }

    #[test]
    fn a_claim_records_the_topic_before_creation() {
        let ds = ds();
        let status = Observed::claim(&ds, "n.s", "c1").into_status(None, &Lineage::default());
        assert_eq!(status.topic.as_deref(), Some("n.s"));
        assert_eq!(status.cluster_id.as_deref(), Some("c1"));
        assert_eq!(status.topic_id, None);
        assert_eq!(status.conditions[0].reason, "Creating");
    }
}
