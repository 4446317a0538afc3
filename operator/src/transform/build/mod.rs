//! What a Transform deploys, built by pure functions from the Transform, its compiled plan
//! and the operator's settings, one module per thing built: the output DataStream
//! ([`output`]), the internal topics ([`topics`]) and the workload ([`workload`]: the
//! worker's ConfigMap, ServiceAccount, Deployment, Service and PodDisruptionBudget). This
//! module holds what they share: names, labels, owner and the applied-hash stamp.
//!
//! The workload is a **Deployment with the `Recreate` strategy**, not a StatefulSet: a
//! worker keeps no state on disk (its state is in the changelog topic and restores from
//! there), its transactional id needs no stable pod name (KIP-447 fences zombies through
//! the consumer group's generation), and `Recreate` stops the workers of an old plan
//! before the new plan's workers start, so two plans never share a consumer group or a
//! changelog.

pub mod output;
pub mod topics;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};
use weir_crds::Transform;
use weir_crds::names::TransformNames;

pub use output::{OutputError, check_declared_output, output_data_stream};
pub use topics::InternalTopics;
pub use workload::{
    WorkerSettings, config_map, deployment, pod_disruption_budget, service, service_account,
};

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
/// The pod template annotation naming how many tasks the workers' state is split into.
pub const TASKS: &str = "weir.dev/tasks";

/// What a workers' Deployment runs, from its pod template.
pub fn deployed(d: &Deployment) -> Option<super::upgrade::Deployed> {
    let a = d.spec.template.metadata.as_ref()?.annotations.as_ref()?;
    Some(super::upgrade::Deployed {
        plan: a.get(PLAN)?.clone(),
        state: a.get(STATE).cloned(),
        stateful: a.get(STATEFUL).is_none_or(|s| s == "true"),
        epoch: a.get(STATE_EPOCH).and_then(|e| e.parse().ok()).unwrap_or(0),
        tasks: a.get(TASKS).and_then(|t| t.parse().ok()),
    })
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

#[cfg(test)]
pub(super) mod fixtures {
    //! A DataStream and Transforms the builders' tests share.
    use weir_crds::compile::{compile_transform, stream_input};
    use weir_crds::{DataStream, Transform};
    use weir_sql::CompiledTransform;

    pub fn load<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).expect("valid YAML")
    }

    pub fn views() -> DataStream {
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

    pub fn transform(sql: &str) -> Transform {
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

    pub fn compiled(tf: &Transform, ds: &DataStream) -> CompiledTransform {
        compile_transform(tf, &[stream_input(ds).expect("input")]).expect("compiles")
    }
}
