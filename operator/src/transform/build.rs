//! What a Transform deploys, built by pure functions from the Transform, its compiled plan
//! and the operator's settings: the output DataStream, the worker's ConfigMap,
//! ServiceAccount, Deployment, Service and PodDisruptionBudget, and the internal topics.
//!
//! The workload is a **Deployment with the `Recreate` strategy**, not a StatefulSet: a
//! worker keeps no state on disk (its state is in the changelog topic and restores from
//! there), its transactional id needs no stable pod name (KIP-447 fences zombies through
//! the consumer group's generation), and `Recreate` stops the workers of an old plan
//! before the new plan's workers start, so two plans never share a consumer group or a
//! changelog.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use weir_crds::data_stream::{Access, CleanupPolicy, DataStreamSpec, EventTime};
use weir_crds::names::TransformNames;
use weir_crds::schema::{FieldSpec, FieldType, Schema};
use weir_crds::{DataStream, Transform};
use weir_engine::sql::partitioning::Partitioning;
use weir_engine::sql::{CompiledTransform, StreamKind};

use crate::kafka_admin::DesiredTopic;

/// The port a worker serves `/metrics`, `/healthz` and `/readyz` on.
pub const WORKER_HTTP_PORT: i32 = 9090;
/// Where the worker's ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/weir";
/// The ConfigMap key holding the documents the worker reads.
pub const CONFIG_FILE: &str = "transform.yaml";
/// The label naming the Transform a worker pod runs.
pub const TRANSFORM_LABEL: &str = "weir.dev/transform";
/// The annotation holding the hash of what the operator last applied to an object: an
/// object whose hash matches the desired one is not written again.
pub const APPLIED_HASH: &str = "weir.dev/applied-hash";
/// The pod template annotation naming the plan the workers run.
pub const PLAN: &str = "weir.dev/plan";
/// The pod template annotation naming what that plan's state means (its state
/// fingerprint): a plan with the same one can go on from the running state.
pub const STATE: &str = "weir.dev/state";
/// The pod template annotation saying whether that plan keeps state.
pub const STATEFUL: &str = "weir.dev/stateful";
/// The pod template annotation naming the state epoch the workers use.
pub const STATE_EPOCH: &str = "weir.dev/state-epoch";

/// What a workers' Deployment runs, from its pod template.
pub fn deployed(d: &Deployment) -> Option<super::upgrade::Deployed> {
    let a = d.spec.template.metadata.as_ref()?.annotations.as_ref()?;
    Some(super::upgrade::Deployed {
        plan: a.get(PLAN)?.clone(),
        state: a.get(STATE).cloned(),
        stateful: a.get(STATEFUL).is_none_or(|s| s == "true"),
        epoch: a.get(STATE_EPOCH).and_then(|e| e.parse().ok()).unwrap_or(0),
    })
}

/// The worker's path in Weir's image (see the Dockerfile).
pub const WORKER_COMMAND: &str = "/usr/local/bin/weir-worker";

/// The user id workers run as (any non-root id; the image needs no user of that name).
pub const WORKER_UID: i64 = 65532;

/// The operator's settings for the workers it deploys.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The `weir-worker` container image.
    pub image: String,
    /// The Kafka bootstrap servers workers connect to.
    pub bootstrap_servers: String,
    /// How often the workers' `/metrics` are read for dead letters and lag.
    pub sample_interval: std::time::Duration,
    /// How the workers authenticate to Kafka.
    pub identity: super::principal::WorkerIdentity,
}

/// The names of a Transform's internal topics, as the worker derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopics {
    /// Dead letters, always.
    pub dead_letters: String,
    /// State, when the plan keeps state.
    pub changelog: Option<String>,
    /// The repartition stage's topic, when the plan has one.
    pub repartition: Option<String>,
}

impl InternalTopics {
    /// The topics a compiled plan needs in state epoch `epoch`.
    pub fn of(
        tf: &Transform,
        compiled: &CompiledTransform,
        partitioning: &Partitioning,
        epoch: i64,
    ) -> Self {
        let names = names(tf, epoch);
        Self {
            dead_letters: names.dead_letters(),
            changelog: compiled.is_stateful().then(|| names.changelog()),
            repartition: matches!(partitioning, Partitioning::Repartition(_))
                .then(|| names.repartition()),
        }
    }

    /// The state topics of the epochs before `epoch` (to delete once it runs).
    pub fn retired(tf: &Transform, epoch: i64) -> Vec<String> {
        let names = names(tf, 0);
        (0..epoch)
            .flat_map(|e| {
                let n = names.in_epoch(e);
                [n.changelog(), n.repartition()]
            })
            .collect()
    }

    /// Every internal topic name a Transform could have up to epoch `epoch`, needed or not
    /// (for deletion).
    pub fn all(tf: &Transform, epoch: i64) -> Vec<String> {
        let mut all = Self::retired(tf, epoch + 1);
        all.push(names(tf, epoch).dead_letters());
        all
    }

    /// The topics to create: dead letters like the output, the changelog compacted with
    /// one partition per task, the repartition topic with one partition per task.
    pub fn desired(&self, tasks: i32, replication_factor: i32) -> Vec<DesiredTopic> {
        let topic = |name: &str, configs: &[(&str, &str)]| DesiredTopic {
            name: name.to_owned(),
            partitions: tasks.max(1),
            replication_factor,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut out = vec![topic(&self.dead_letters, &[("cleanup.policy", "delete")])];
        if let Some(c) = &self.changelog {
            out.push(topic(c, &[("cleanup.policy", "compact")]));
        }
        if let Some(r) = &self.repartition {
            out.push(topic(r, &[("cleanup.policy", "delete")]));
        }
        out
    }
}

/// The names operator and worker share for `tf` in state epoch `epoch`.
pub fn names(tf: &Transform, epoch: i64) -> TransformNames {
    TransformNames::new(
        tf.metadata.namespace.as_deref().unwrap_or("default"),
        tf.metadata.name.as_deref().unwrap_or_default(),
        epoch,
    )
}

/// The name of the workload, ConfigMap, ServiceAccount, Service and PDB of a Transform.
pub fn worker_name(tf: &Transform) -> String {
    format!("{}-worker", tf.metadata.name.as_deref().unwrap_or_default())
}

/// The labels on every object a Transform deploys (and the workers' selector).
pub fn selector_labels(tf: &Transform) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "weir-worker".into()),
        (
            "app.kubernetes.io/instance".into(),
            tf.metadata.name.clone().unwrap_or_default(),
        ),
        (
            TRANSFORM_LABEL.into(),
            tf.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

/// The label selector, as the scale subresource reports it.
pub fn selector_string(tf: &Transform) -> String {
    selector_labels(tf)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(tf: &Transform) -> BTreeMap<String, String> {
    let mut l = selector_labels(tf);
    l.insert("app.kubernetes.io/component".into(), "worker".into());
    l.insert("app.kubernetes.io/part-of".into(), "weir".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::FIELD_MANAGER.into(),
    );
    l
}

/// The owner reference that makes `tf` the controller of what it deploys.
pub fn owner_ref(tf: &Transform) -> Option<OwnerReference> {
    tf.controller_owner_ref(&())
}

/// The metadata of an object a Transform owns: its name, namespace, labels and owner.
pub(crate) fn meta(tf: &Transform, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: tf.metadata.namespace.clone(),
        labels: Some(labels(tf)),
        owner_references: owner_ref(tf).map(|o| vec![o]),
        ..Default::default()
    }
}

/// A hex SHA-256 of the JSON of `value`, to tell whether an object must be applied again.
pub fn hash_of<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Stamps `meta` with the hash of the object as built (before the stamp).
pub fn stamp<T: serde::Serialize + Resource>(mut obj: T) -> T {
    let hash = hash_of(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), hash);
    obj
}

/// The hash an object carries, if the operator applied it.
pub fn stamped_hash<T: Resource>(obj: &T) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_HASH))
        .map(String::as_str)
}

/// Why a compiled output cannot be declared as a DataStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError(pub String);

/// The output DataStream the Transform creates and owns: the compiled schema (with the
/// classifications of the input columns each output column derives from), key, kind and
/// event time, and `spec.output`'s topic settings.
pub fn output_data_stream(
    tf: &Transform,
    compiled: &CompiledTransform,
    inputs: &[&DataStream],
) -> Result<DataStream, OutputError> {
    let out = &tf.spec.output;
    let mut fields = Vec::new();
    for (field, lineage) in compiled
        .output_schema
        .fields()
        .iter()
        .zip(&compiled.lineage)
    {
        let mut spec = field_spec(field).map_err(|e| {
            OutputError(format!(
                "output column {:?}: {e}; CAST it to a DataStream type",
                field.name()
            ))
        })?;
        let mut classes = BTreeSet::new();
        for (source, column) in &lineage.sources {
            let Some(ds) = inputs
                .iter()
                .find(|d| weir_crds::compile::id_of(&d.metadata) == *source)
            else {
                continue;
            };
            if let Some(f) = ds.spec.schema.field(column) {
                classes.extend(f.classification.iter().cloned());
            }
        }
        spec.classification = classes.into_iter().collect();
        fields.push(spec);
    }
    let changelog = compiled.output_kind == StreamKind::Changelog;
    let cleanup_policy = out.cleanup_policy.unwrap_or(if changelog {
        CleanupPolicy::Compact
    } else {
        CleanupPolicy::Delete
    });
    let partitions = out
        .partitions
        .unwrap_or_else(|| inputs.iter().map(|d| d.spec.partitions).max().unwrap_or(1));
    let spec = DataStreamSpec {
        description: out
            .description
            .clone()
            .unwrap_or_else(|| tf.spec.description.clone()),
        owner: tf.spec.owner.clone(),
        topic: None,
        partitions,
        replication_factor: out.replication_factor,
        retention: out.retention.clone(),
        retention_size: None,
        cleanup_policy,
        config: BTreeMap::new(),
        config_ownership: Default::default(),
        format: Default::default(),
        schema: Schema { fields },
        key: if changelog {
            compiled.output_key.clone()
        } else {
            Vec::new()
        },
        event_time: compiled.output_event_time.as_ref().map(|f| EventTime {
            field: f.clone(),
            max_out_of_orderness: None,
        }),
        access: (!out.readers.is_empty()).then(|| Access {
            readers: out.readers.clone(),
        }),
        deletion_policy: out.deletion_policy,
        kafka: None,
    };
    let mut ds = DataStream::new(&out.name, spec);
    ds.metadata.namespace = tf.metadata.namespace.clone();
    ds.metadata.owner_references = owner_ref(tf).map(|o| vec![o]);
    ds.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            crate::FIELD_MANAGER.into(),
        ),
        (
            TRANSFORM_LABEL.into(),
            tf.metadata.name.clone().unwrap_or_default(),
        ),
    ]));
    Ok(ds)
}

fn field_spec(field: &arrow_schema::Field) -> Result<FieldSpec, String> {
    use arrow_schema::DataType as T;
    let mut spec = FieldSpec {
        name: field.name().clone(),
        type_: FieldType::String,
        nullable: field.is_nullable(),
        description: None,
        classification: Vec::new(),
        precision: None,
        scale: None,
        fields: Vec::new(),
        items: None,
    };
    spec.type_ = match field.data_type() {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => FieldType::String,
        T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 => FieldType::Int,
        T::Int64 | T::UInt32 => FieldType::Bigint,
        T::Float16 | T::Float32 | T::Float64 => FieldType::Double,
        T::Boolean => FieldType::Boolean,
        T::Decimal128(p, s) => {
            spec.precision = Some(*p);
            spec.scale = Some(*s);
            FieldType::Decimal
        }
        T::Date32 | T::Date64 => FieldType::Date,
        T::Timestamp(_, _) => FieldType::Timestamp,
        T::Binary | T::LargeBinary | T::BinaryView => FieldType::Bytes,
        T::Struct(children) => {
            spec.fields = children
                .iter()
                .map(|c| field_spec(c))
                .collect::<Result<_, _>>()?;
            FieldType::Struct
        }
        T::List(item) | T::LargeList(item) => {
            let mut item = field_spec(item)?;
            item.name = String::new();
            spec.items = Some(Box::new(item));
            FieldType::List
        }
        other => return Err(format!("type {other} has no DataStream field type")),
    };
    Ok(spec)
}

/// Whether a DataStream someone declared can hold the compiled output: the same columns
/// with the same types in the same order, and for a changelog the same key. `Err` says
/// what differs.
pub fn check_declared_output(
    declared: &DataStream,
    built: &DataStream,
    compiled: &CompiledTransform,
) -> Result<(), String> {
    let have = declared
        .spec
        .schema
        .to_arrow()
        .map_err(|e| format!("its schema is invalid: {e}"))?;
    let want = &compiled.output_schema;
    let names = |s: &arrow_schema::Schema| -> Vec<String> {
        s.fields().iter().map(|f| f.name().clone()).collect()
    };
    if names(&have) != names(want) {
        return Err(format!(
            "its schema has columns [{}] but the SQL produces [{}]",
            names(&have).join(", "),
            names(want).join(", ")
        ));
    }
    for (h, w) in have.fields().iter().zip(want.fields()) {
        let expected = built
            .spec
            .schema
            .field(w.name())
            .map(|f| f.type_)
            .unwrap_or(FieldType::String);
        let declared_type = declared
            .spec
            .schema
            .field(h.name())
            .map(|f| f.type_)
            .unwrap_or(FieldType::String);
        if declared_type != expected {
            return Err(format!(
                "column {:?} is declared {declared_type:?} but the SQL produces {expected:?}",
                w.name()
            ));
        }
        if !h.is_nullable() && w.is_nullable() {
            return Err(format!(
                "column {:?} is declared not nullable but the SQL can produce NULL",
                w.name()
            ));
        }
    }
    if compiled.output_kind == StreamKind::Changelog && declared.spec.key != compiled.output_key {
        return Err(format!(
            "the SQL produces a changelog keyed by [{}] but the DataStream's key is [{}]",
            compiled.output_key.join(", "),
            declared.spec.key.join(", ")
        ));
    }
    Ok(())
}

/// A document the worker reads: the resource's identity and spec, nothing the apiserver
/// added (the worker's loader refuses fields it does not know).
fn document<K: Resource<DynamicType = ()> + serde::Serialize>(
    obj: &K,
    spec: &impl serde::Serialize,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {
            "name": obj.meta().name,
            "namespace": obj.meta().namespace,
        },
        "spec": spec,
    })
}

/// The ConfigMap holding what the worker reads: the Transform, its input DataStreams and
/// its output DataStream, as YAML documents.
pub fn config_map(
    tf: &Transform,
    inputs: &[&DataStream],
    output: &DataStream,
) -> Result<ConfigMap, serde_yaml::Error> {
    let mut docs = Vec::new();
    for ds in inputs {
        docs.push(serde_yaml::to_string(&document(*ds, &ds.spec))?);
    }
    docs.push(serde_yaml::to_string(&document(output, &output.spec))?);
    // What the workers do not read stays out, so that scaling or editing a fixture test
    // does not change the ConfigMap and roll the workers.
    let mut spec =
        serde_json::to_value(&tf.spec).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("parallelism");
        fields.remove("tests");
        fields.remove("kafkaCredentials");
    }
    docs.push(serde_yaml::to_string(&document(tf, &spec))?);
    Ok(ConfigMap {
        metadata: meta(tf, worker_name(tf)),
        data: Some(BTreeMap::from([(CONFIG_FILE.into(), docs.join("---\n"))])),
        ..Default::default()
    })
}

/// The workers' ServiceAccount: no API permissions are bound to it and no token is
/// mounted.
pub fn service_account(tf: &Transform) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(tf, worker_name(tf)),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The Deployment running `weir-worker` with `spec.parallelism` replicas, under Pod
/// Security "restricted". `config_hash` rolls the workers when the ConfigMap changes.
pub fn deployment(
    tf: &Transform,
    compiled: &CompiledTransform,
    settings: &WorkerSettings,
    config_hash: &str,
    epoch: i64,
    credentials: &super::principal::PodCredentials,
) -> Deployment {
    let name = worker_name(tf);
    let mut pod_labels = selector_labels(tf);
    pod_labels.insert("app.kubernetes.io/component".into(), "worker".into());
    let id = weir_crds::compile::id_of(&tf.metadata);
    let container = Container {
        name: "worker".into(),
        image: Some(settings.image.clone()),
        // Weir's image holds the operator (its entrypoint), the worker and the CLI.
        command: Some(vec![WORKER_COMMAND.into()]),
        args: Some({
            let mut args = vec![
                "run".into(),
                format!("{CONFIG_DIR}/{CONFIG_FILE}"),
                format!("--transform={id}"),
                format!("--fingerprint={}", compiled.fingerprint),
            ];
            if epoch > 0 {
                // A new state epoch: its own group, changelog and repartition topic.
                let names = names(tf, epoch);
                args.push(format!("--group-id={}", names.group_id()));
                args.push(format!("--changelog-topic={}", names.changelog()));
                args.push(format!("--repartition-topic={}", names.repartition()));
            }
            args
        }),
        env: Some(
            [
                env_field("POD_NAME", "metadata.name"),
                env_field("POD_IP", "status.podIP"),
                env(
                    "WEIR_KAFKA_BOOTSTRAP_SERVERS",
                    credentials
                        .bootstrap_servers
                        .as_deref()
                        .unwrap_or(&settings.bootstrap_servers),
                ),
                env("WEIR_HTTP_ADDR", format!("$(POD_IP):{WORKER_HTTP_PORT}")),
            ]
            .into_iter()
            .chain(credentials.env.iter().cloned())
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: WORKER_HTTP_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: tf.spec.resources.clone(),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "transform".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            })
            .chain(credentials.mounts.iter().cloned())
            .collect(),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(tf, name.clone()),
        spec: DeploymentSpec {
            replicas: Some(tf.spec.parallelism),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tf)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(
                        [
                            ("weir.dev/config-hash".into(), config_hash.into()),
                            (PLAN.into(), compiled.fingerprint.clone()),
                            (STATE.into(), compiled.state_fingerprint.clone()),
                            (STATEFUL.into(), compiled.is_stateful().to_string()),
                            (STATE_EPOCH.into(), epoch.to_string()),
                        ]
                        .into_iter()
                        .chain(
                            credentials
                                .hash
                                .clone()
                                .map(|h| (super::principal::CREDENTIALS_HASH.to_owned(), h)),
                        )
                        .collect(),
                    ),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    // A worker aborts its transaction on SIGTERM within a few seconds.
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(
                        std::iter::once(Volume {
                            name: "transform".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .chain(credentials.volumes.iter().cloned())
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The Service in front of the workers' `/metrics`.
pub fn service(tf: &Transform) -> Service {
    Service {
        metadata: meta(tf, worker_name(tf)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(tf)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: WORKER_HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one worker down at a time for voluntary disruptions (when there are several).
pub fn pod_disruption_budget(tf: &Transform) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(tf, worker_name(tf)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(tf)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::compile::{compile_transform, stream_input};

    fn load<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).expect("valid YAML")
    }

    fn views() -> DataStream {
        load(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: page-views, namespace: web, uid: u1 }
spec:
  description: d
  owner: o
  partitions: 3
  schema:
    fields:
      - { name: user_id, type: string, nullable: false }
      - { name: url, type: string }
      - { name: email, type: string, classification: [pii] }
      - { name: ts, type: timestamp }
  key: [user_id]
  eventTime: { field: ts }
"#,
        )
    }

    fn transform(sql: &str) -> Transform {
        load(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: t, namespace: web, uid: t1 }}
spec:
  description: d
  owner: o
  sql: "{sql}"
  parallelism: 2
  output: {{ name: out, readers: [analytics] }}
"#
        ))
    }

    fn compiled(tf: &Transform, ds: &DataStream) -> CompiledTransform {
        compile_transform(tf, &[stream_input(ds).expect("input")]).expect("compiles")
    }

    #[test]
    fn the_output_carries_schema_key_kind_and_pii_lineage() {
        let ds = views();
        let tf = transform("SELECT url, email, COUNT(*) AS n FROM page_views GROUP BY url, email");
        let c = compiled(&tf, &ds);
        let out = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        assert_eq!(out.spec.key, vec!["url", "email"]);
        assert_eq!(out.spec.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(out.spec.partitions, 3, "as many partitions as the input");
        let email = out.spec.schema.field("email").expect("email");
        assert_eq!(email.classification, vec!["pii"]);
        assert!(
            out.spec
                .schema
                .field("url")
                .unwrap()
                .classification
                .is_empty()
        );
        assert_eq!(out.spec.schema.field("n").unwrap().type_, FieldType::Bigint);
        assert_eq!(
            out.spec.access.as_ref().map(|a| a.readers.clone()),
            Some(vec!["analytics".to_owned()])
        );
        assert_eq!(out.metadata.owner_references.as_ref().unwrap()[0].uid, "t1");
        // The built schema converts back to what the SQL produces.
        let arrow = out.spec.schema.to_arrow().expect("valid");
        for (a, b) in arrow.fields().iter().zip(c.output_schema.fields()) {
            assert_eq!(a.name(), b.name());
        }
        assert_eq!(check_declared_output(&out, &out, &c), Ok(()));
    }

    #[test]
    fn a_declared_output_must_match_the_sql() {
        let ds = views();
        let tf = transform("SELECT user_id, url FROM page_views WHERE url <> ''");
        let c = compiled(&tf, &ds);
        let built = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        assert_eq!(built.spec.cleanup_policy, CleanupPolicy::Delete);
        assert!(built.spec.key.is_empty());
        let mut declared = built.clone();
        declared.spec.schema.fields.pop();
        let err = check_declared_output(&declared, &built, &c).unwrap_err();
        assert!(
            err.contains("columns [user_id] but the SQL produces [user_id, url]"),
            "{err}"
        );
        let mut declared = built.clone();
        declared.spec.schema.fields[1].type_ = FieldType::Int;
        let err = check_declared_output(&declared, &built, &c).unwrap_err();
        assert!(err.contains("\"url\" is declared Int"), "{err}");
    }

    #[test]
    fn the_deployment_is_restricted_and_probed() {
        let ds = views();
        let tf = transform("SELECT user_id, url FROM page_views");
        let c = compiled(&tf, &ds);
        let settings = WorkerSettings {
            image: "weir-worker:test".into(),
            bootstrap_servers: "kafka:9092".into(),
            sample_interval: std::time::Duration::from_secs(30),
            identity: Default::default(),
        };
        let none = Default::default();
        let d = deployment(&tf, &c, &settings, "h", 0, &none);
        let spec = &d.spec;
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let args = pod.containers[0].args.as_ref().unwrap();
        assert!(args.contains(&format!("--fingerprint={}", c.fingerprint)));
        assert!(pod.containers[0].readiness_probe.is_some());
        // Stamped objects carry the hash of what was built; the same input, the same hash.
        let a = stamp(deployment(&tf, &c, &settings, "h", 0, &none));
        let b = stamp(deployment(&tf, &c, &settings, "h", 0, &none));
        assert_eq!(stamped_hash(&a), stamped_hash(&b));
        let other = stamp(deployment(&tf, &c, &settings, "other", 0, &none));
        assert_eq!(
            deployed(&a).map(|d| (d.stateful, d.epoch)),
            Some((false, 0))
        );
        let later = deployment(&tf, &c, &settings, "h", 2, &none);
        let args = later.spec.template.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            args.contains(&"--changelog-topic=web.t.e2.changelog".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--group-id=weir.web.t.e2".to_owned()),
            "{args:?}"
        );
        assert_ne!(stamped_hash(&a), stamped_hash(&other));
    }

    #[test]
    fn internal_topics_follow_the_plan() {
        let ds = views();
        let stateless = transform("SELECT user_id FROM page_views");
        let c = compiled(&stateless, &ds);
        let p = weir_engine::sql::partitioning::plan(&c).expect("plans");
        let t = InternalTopics::of(&stateless, &c, &p, 0);
        assert_eq!(t.dead_letters, "web.t.dead-letters");
        assert_eq!(t.changelog, None);
        assert_eq!(t.repartition, None);
        let grouped = transform("SELECT url, COUNT(*) AS n FROM page_views GROUP BY url");
        let c = compiled(&grouped, &ds);
        let p = weir_engine::sql::partitioning::plan(&c).expect("plans");
        let t = InternalTopics::of(&grouped, &c, &p, 0);
        assert_eq!(
            InternalTopics::of(&grouped, &c, &p, 1).changelog.as_deref(),
            Some("web.t.e1.changelog")
        );
        assert_eq!(
            InternalTopics::retired(&grouped, 1),
            vec!["web.t.changelog", "web.t.repartition"]
        );
        assert_eq!(t.changelog.as_deref(), Some("web.t.changelog"));
        assert_eq!(t.repartition.as_deref(), Some("web.t.repartition"));
        let desired = t.desired(3, 1);
        assert!(desired.iter().all(|d| d.partitions == 3));
    }

    #[test]
    fn the_config_map_holds_specs_without_apiserver_fields_or_scaling() {
        let ds = views();
        let tf = transform("SELECT user_id FROM page_views");
        let c = compiled(&tf, &ds);
        let out = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        let cm = config_map(&tf, &[&ds], &out).expect("renders");
        let text = &cm.data.as_ref().unwrap()[CONFIG_FILE];
        assert_eq!(text.matches("kind: DataStream").count(), 2);
        assert!(text.contains("kind: Transform"));
        assert!(!text.contains("uid"), "{text}");
        // Scaling does not change what the workers read.
        let mut scaled = tf.clone();
        scaled.spec.parallelism = 7;
        assert_eq!(
            config_map(&scaled, &[&ds], &out).expect("renders").data,
            cm.data
        );
    }
}
