//! DataStream: a Kafka topic with a schema, an owner and a policy.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::connection::KafkaConnection;
use crate::schema::Schema;
use crate::units::{DurationText, RetentionText, SizeText};

/// The annotation that lets a DataStream adopt a topic that already exists in Kafka.
pub const ADOPT_ANNOTATION: &str = "weir.dev/adopt-existing-topic";

/// Set to `"true"` to let an adoption lower the topic's retention (`retention.ms` or
/// `retention.bytes`), which deletes the records older or beyond the new limit. Without it
/// such an adoption waits with a condition that says what would be lost.
pub const ACCEPT_RETENTION_DECREASE_ANNOTATION: &str = "weir.dev/accept-retention-decrease";

/// A DataStream declares a Kafka topic together with its schema, owner and policy.
// Several printer columns share a type; that is not a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "DataStream",
    namespaced,
    status = "DataStreamStatus",
    shortname = "ds",
    category = "weir",
    doc = "A DataStream: a Kafka topic with a schema, an owner and a policy.",
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topic"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".spec.partitions"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(oldSelf.spec) || self.spec.partitions >= oldSelf.spec.partitions")
        .message("spec.partitions cannot be decreased: Kafka cannot remove partitions from a topic")
        .field_path(".spec.partitions")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(oldSelf.spec) || (has(self.spec.topic) == has(oldSelf.spec.topic) && (!has(self.spec.topic) || self.spec.topic == oldSelf.spec.topic))")
        .message("spec.topic is immutable: create a new DataStream to use another topic")
        .field_path(".spec.topic")
        .reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("!has(self.key) || self.key.all(k, self.schema.fields.exists(f, f.name == k))")
        .message("every spec.key field must be a field of spec.schema")
        .field_path(".key"),
    validation = Rule::new("!has(self.eventTime) || self.schema.fields.exists(f, f.name == self.eventTime.field)")
        .message("spec.eventTime.field must be a field of spec.schema")
        .field_path(".eventTime.field"),
)]
#[serde(rename_all = "camelCase")]
pub struct DataStreamSpec {
    /// What the stream holds, for the people who read it.
    #[schemars(length(min = 1, max = 4096))]
    pub description: String,

    /// The person or team responsible for the stream (for example an email address).
    #[x_kube(validation = Rule::new("self.trim() != ''").message("spec.owner must name a person or team"))]
    #[schemars(length(min = 1, max = 256))]
    pub owner: String,

    /// The Kafka topic's name. Defaults to `<namespace>.<name>`. Immutable. Kafka's
    /// internal topics (names starting with `__`) and the names `.` and `..` are refused.
    /// It must start with `<namespace>.` unless the operator grants the namespace another
    /// prefix (`WEIR_TOPIC_GRANTS`); otherwise the DataStream is `InvalidSpec`. Names of
    /// a Transform's internal topics (`<namespace>.<transform>.changelog`, `.repartition`,
    /// `.dead-letters`, also with an epoch `.e<n>`) are reserved for the Transform and
    /// refused, `InvalidSpec` as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    #[x_kube(
        validation = Rule::new("self != '.' && self != '..'")
            .message("spec.topic cannot be '.' or '..': Kafka refuses those names"),
        validation = Rule::new("!self.startsWith('__')")
            .message("spec.topic cannot start with '__': those are Kafka's internal topics, which Weir never manages"),
    )]
    pub topic: Option<String>,

    /// The number of partitions. Can be raised, never lowered.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,

    /// The replication factor. Defaults to the operator's setting. Cannot be changed
    /// after the topic exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,

    /// How long records are kept, as a duration such as `7d`, `12h` or `30m`; `-1` or
    /// `forever` keeps them forever. Defaults to the broker's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionText>,

    /// How much each partition keeps before old segments are deleted, as a quantity such
    /// as `10Gi` or `500Mi`. Defaults to unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_size: Option<SizeText>,

    /// `delete` drops old records; `compact` keeps the latest record per key (a table).
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,

    /// Other Kafka topic configs, by their Kafka names (`max.message.bytes`, …). Weir
    /// manages these keys and reverts changes made behind its back. Only keys the operator
    /// allows are accepted (by default the per-topic settings that are safe for a tenant,
    /// such as `max.message.bytes`, `compression.type`, `message.timestamp.type` and the
    /// compaction lags); at most 32 keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,

    /// Which of the topic's configs Weir manages. `Named` (the default): the keys this spec
    /// sets, changed one by one; a key the spec stops setting is removed; every other key on
    /// the topic (a replication throttle during a reassignment, a setting an admin made) is
    /// left alone. `All`: the topic has exactly the spec's configs; any other key set on it
    /// is removed.
    #[serde(default)]
    pub config_ownership: ConfigOwnership,

    /// How records are encoded.
    #[serde(default)]
    pub format: Format,

    /// The fields of each record.
    pub schema: Schema,

    /// The fields that make up the record key, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub key: Vec<String>,

    /// Which field carries event time, and how late events may arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTime>,

    /// Who may build on this stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,

    /// What happens to the topic when the DataStream is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The Kafka cluster to use. Defaults to the operator's connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConnection>,
}

fn default_partitions() -> i32 {
    1
}

/// What Kafka does with old records.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    schemars::JsonSchema,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete records older than the retention.
    #[default]
    Delete,
    /// Keep the latest record per key: the stream is a table.
    Compact,
}

impl CleanupPolicy {
    /// The value of Kafka's `cleanup.policy`.
    pub fn as_kafka(self) -> &'static str {
        self.into()
    }
}

/// The wire format of records. Only JSON is supported today; Avro and Protobuf will join.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// One JSON object per record value.
    #[default]
    Json,
}

/// The event-time field and its allowed out-of-orderness.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTime {
    /// The schema field that holds each record's event time (a timestamp).
    #[schemars(length(min = 1, max = 128))]
    pub field: String,
    /// How far behind the newest event time a record may arrive and still count as on
    /// time, as a duration such as `5s`. Defaults to `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_orderness: Option<DurationText>,
    /// How far ahead of a worker's clock a record's event time may be, as a duration such
    /// as `1h`. A record further ahead (a producer's clock gone wrong, a year typed
    /// wrong) is a dead letter of class `time_out_of_range` and moves no watermark, so it
    /// cannot make every later record late. Unset: no limit. Workers check it against
    /// their clock; `weir test` fixtures, which have no clock, are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_skew: Option<DurationText>,
}

/// Who may read a DataStream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Namespaces whose Transforms may read this stream (its own namespace always may).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub readers: Vec<String>,
}

/// Which of a topic's configs Weir manages.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ConfigOwnership {
    /// The keys the spec sets (and removes those it stops setting); others are left alone.
    #[default]
    Named,
    /// Every key: keys the spec does not set are removed from the topic.
    All,
}

/// What happens to the topic when its DataStream is deleted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the topic and its data.
    #[default]
    Retain,
    /// Delete the topic and its data.
    Delete,
}

/// The observed state of a DataStream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStreamStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Kafka topic's name: the topic this DataStream manages (created or adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka's id of that topic, recorded when Weir created or adopted it: a topic of the
    /// same name with another id (deleted and created again outside Weir) is not managed,
    /// and `deletionPolicy: Delete` deletes only the topic with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// The id of the Kafka cluster the topic is on: a claim on one cluster says nothing
    /// about a topic of the same name on another (after `spec.kafka` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The topic's partition count, as Kafka reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The topic's replication factor, as Kafka reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// The topic configs Weir manages, as Kafka reports them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub effective_config: BTreeMap<String, String>,
    /// The Transforms that read this DataStream, in any namespace, as `namespace/name`.
    /// A DataStream with `deletionPolicy: Delete` is not deleted while any is left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
    /// The Transform that writes this DataStream, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// `Ready` and the other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl DataStream {
    /// The Kafka topic this DataStream names: `spec.topic`, or `<namespace>.<name>`.
    pub fn topic_name(&self) -> String {
        match &self.spec.topic {
            Some(t) => t.clone(),
            None => format!(
                "{}.{}",
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}
