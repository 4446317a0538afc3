//! Transform: a SQL SELECT over DataStreams whose result is another DataStream.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{Schema as JsonSchemaObject, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::data_stream::{CleanupPolicy, DeletionPolicy};
use crate::units::{DurationText, RetentionText};

/// A Transform runs a SQL query over DataStreams and writes the result to its own output
/// DataStream.
// Several printer columns share a type; that is not a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "Transform",
    namespaced,
    status = "TransformStatus",
    shortname = "tf",
    category = "weir",
    doc = "A Transform: a SQL SELECT over DataStreams whose result is another DataStream.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Output", type_ = "string", json_path = ".spec.output.name"),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.parallelism"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TransformSpec {
    /// What the Transform computes, for the people who read it.
    #[schemars(length(min = 1, max = 4096))]
    pub description: String,

    /// The person or team responsible for the Transform.
    #[x_kube(validation = Rule::new("self.trim() != ''").message("spec.owner must name a person or team"))]
    #[schemars(length(min = 1, max = 256))]
    pub owner: String,

    /// One SQL SELECT. DataStreams are named `namespace.name` (dashes become underscores),
    /// or by bare name within this namespace.
    #[schemars(length(min = 1, max = 65536))]
    pub sql: String,

    /// The DataStream the result is written to (owned by this Transform).
    pub output: TransformOutput,

    /// How many workers share the input partitions (the replicas of the workers'
    /// Deployment; `kubectl scale transform/<name> --replicas=N` sets it). 0 stops the
    /// workers; the input waits in Kafka.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 0, max = 1000))]
    pub parallelism: i32,

    /// Fixture tests: given input records, expected output. `weir test` runs them, and so
    /// does the operator before every rollout: a failing test sets `TestsPassed=False` and
    /// deploys nothing (the running version keeps running).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub tests: Vec<TransformTest>,

    /// Data checks on every output row, while running: a row for which a check is false
    /// is not written to the output and follows the check's `onFailure` (a NULL check
    /// passes, as in SQL). On a changelog output, a withheld row leaves its key deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub expectations: Vec<Expectation>,

    /// What happens to an input record the worker cannot process (bad JSON, wrong types,
    /// missing fields, too large, a row the engine cannot compute, a record arriving
    /// after its window closed).
    #[serde(default)]
    pub error_policy: OnFailure,

    /// Where a new Transform starts reading: `earliest` (default), `latest`, or an RFC 3339
    /// timestamp.
    #[serde(default = "default_start_from")]
    #[schemars(regex(
        pattern = r"^(earliest|latest|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2}))$"
    ))]
    pub start_from: String,

    /// How a change to the plan (the SQL, the input schemas or the window policy) treats
    /// the running Transform's state. A change the running state stays valid for keeps the
    /// state and the input position under either policy: a change between stateless plans,
    /// or one that keeps every aggregate, join and table input and what feeds them (only
    /// what is computed from their results changes, such as a projection or a HAVING).
    /// Any other change: `keepState` (default) refuses it, saying what would be lost, and
    /// the running version keeps running; `reprocess` drops the state and reads the input
    /// again from `startFrom` into new state (the output receives the results again).
    /// More partitions on an input of a stateful plan split its state into another number
    /// of tasks, and count as such a change.
    #[serde(default)]
    pub upgrade_policy: UpgradePolicy,

    /// Exactly-once (default) or at-least-once delivery to the output.
    #[serde(default)]
    pub delivery_guarantee: DeliveryGuarantee,

    /// CPU and memory for each worker (the worker container's resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// When event-time windows emit, and how late a record may still arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowPolicy>,

    /// The Kafka principal the workers use, where the installation has each Transform bring
    /// its own (the operator's `--transform-principals=provided`). Ignored where the
    /// operator manages one SCRAM principal per Transform (`managed`, the default on a
    /// SCRAM cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_credentials: Option<TransformCredentials>,

    /// The named Kafka connection the Transform runs on, as a DataStream's `spec.kafka`
    /// (its Secrets in the Transform's namespace). Every input must live on that cluster
    /// (DataStreams with a `spec.kafka` of their own reaching the same cluster); the
    /// output DataStream is created there; the workers connect with this connection's
    /// credentials, mounted as files, and run as its principal (Weir manages no principal
    /// or ACLs on a named connection, and `kafkaCredentials` does not apply). Without it the
    /// Transform runs on the operator's cluster, and an input on a named connection is
    /// refused: one Transform never mixes clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<crate::connection::KafkaConnection>,
}

/// A Transform's own Kafka credentials, from a Secret of its namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformCredentials {
    /// A Secret of the Transform's namespace labelled `weir.dev/kafka-credentials: "true"`:
    /// a Strimzi `KafkaUser` Secret as the User Operator writes it (`password` and
    /// `sasl.jaas.config` for SCRAM-SHA-512; `user.crt` and `user.key` for TLS), or one with
    /// `username` and `password` (or `tls.crt` and `tls.key`). It is mounted into the
    /// worker pods as files, never as environment variables.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The SASL mechanism of a Secret with a password (default `SCRAM-SHA-512`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<crate::connection::SaslMechanism>,
    /// The principal the broker sees for a TLS client certificate (as its
    /// `ssl.principal.mapping.rules` make it, for example `User:CN=team-a-app`), so that
    /// Weir can check its ACLs. For SASL it is `User:<username>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// When event-time windows (`TUMBLE`, `HOP`, `SESSION` in GROUP BY) emit their rows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowPolicy {
    /// `onClose` (default): each window's row is emitted once, when the watermark passes
    /// the window's end plus `allowedLateness`; the output is append-only. `updates`:
    /// rows are emitted as records arrive and revised as more do; the output is a
    /// changelog keyed by the group and the window.
    #[serde(default)]
    pub emit: WindowEmit,
    /// How long after the watermark passes a window's end the window still accepts
    /// records, such as `30s`. Records later than that are counted and follow
    /// `spec.errorPolicy`.
    /// Defaults to `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<DurationText>,
    /// How long an input partition may stay silent before it stops holding event time
    /// back, such as `30s` (the default). Windows and joins advance on the slowest input
    /// partition that is not idle; a partition that speaks again holds time from where
    /// it then is, and its records older than that are late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationText>,
}

/// When windows emit.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum WindowEmit {
    /// Once per window, when it closes.
    #[default]
    OnClose,
    /// As records arrive, revising earlier rows.
    Updates,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_parallelism() -> i32 {
    1
}

fn default_start_from() -> String {
    "earliest".into()
}

/// The output DataStream's name and topic settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformOutput {
    /// The output DataStream's name, in the Transform's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Its description. Defaults to the Transform's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its topic's partitions. Defaults to the most any input has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Its topic's replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
    /// Its retention, such as `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionText>,
    /// Its cleanup policy. Defaults to `compact` for a changelog output, `delete` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<CleanupPolicy>,
    /// What happens to its topic, and to the Transform's internal topics (dead letters,
    /// changelog, repartition), when the Transform is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Namespaces whose Transforms may read the output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<String>,
}

/// One fixture test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformTest {
    /// What the test shows.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Input records per DataStream (named as in the SQL), in arrival order.
    #[schemars(schema_with = "records_by_stream_schema")]
    pub given: BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>>,
    /// The expected output rows, compared as a multiset (the final state, for a changelog).
    #[schemars(schema_with = "records_schema")]
    pub expect: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn records_schema(_: &mut SchemaGenerator) -> JsonSchemaObject {
    json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    })
}

fn records_by_stream_schema(_: &mut SchemaGenerator) -> JsonSchemaObject {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "array",
            "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
        },
    })
}

/// A data check on every output record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// The check's name, used in conditions, metrics and dead letters.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// A SQL boolean expression over the output's columns.
    #[schemars(length(min = 1, max = 4096))]
    pub check: String,
    /// What happens to a record that fails the check.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What happens to a record that breaks an expectation or cannot be decoded.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    schemars::JsonSchema,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase")]
pub enum OnFailure {
    /// Send it to the dead-letter stream with the reason, and count it.
    #[default]
    DeadLetter,
    /// Skip it, and count it.
    Drop,
    /// Stop the Transform and report the failure.
    Fail,
}

/// How a change to a running Transform's SQL is rolled out.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum UpgradePolicy {
    /// Keep state and input position; a change the state is not valid for is refused.
    #[default]
    KeepState,
    /// On a change the state is not valid for, drop the state and reprocess the input
    /// from `startFrom`.
    Reprocess,
}

/// The delivery guarantee to the output stream.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryGuarantee {
    /// Input offsets, output and state commit in one Kafka transaction.
    #[default]
    ExactlyOnce,
    /// Output may repeat after a crash; lower latency.
    AtLeastOnce,
}

/// The observed state of a Transform.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workers running (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    /// The label selector of the workers (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The compiled plan's stable fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_fingerprint: Option<String>,
    /// What the plan's state means (for a stateful plan): a change that keeps this value
    /// keeps the running state under either `upgradePolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_fingerprint: Option<String>,
    /// The DataStreams the SQL reads, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The output DataStream, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The state epoch: 0 at first, one more each time `upgradePolicy: reprocess` drops
    /// the state for a changed plan (its group and state topics then end in `.e<epoch>`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_epoch: i64,
    /// The internal topics the workers use (dead letters, changelog, repartition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_topics: Vec<String>,
    /// `Ready` and the other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::OnFailure;

    #[test]
    fn a_policy_reads_the_same_in_metrics_as_in_the_spec() {
        for p in [OnFailure::DeadLetter, OnFailure::Drop, OnFailure::Fail] {
            let label: &'static str = p.into();
            assert_eq!(serde_json::to_value(p).unwrap(), label);
        }
    }
}
