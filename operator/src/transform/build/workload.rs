//! The workload a Transform runs: the worker's ConfigMap, ServiceAccount, Deployment,
//! Service and PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use weir_crds::{DataStream, Transform};
use weir_sql::CompiledTransform;

use super::*;

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
    pub identity: crate::transform::principal::WorkerIdentity,
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
    tasks: i32,
    credentials: &crate::transform::principal::PodCredentials,
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
                            (TASKS.into(), tasks.to_string()),
                        ]
                        .into_iter()
                        .chain(
                            credentials.hash.clone().map(|h| {
                                (crate::transform::principal::CREDENTIALS_HASH.to_owned(), h)
                            }),
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
    use super::super::fixtures::{compiled, transform, views};
    use super::*;

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
        let d = deployment(&tf, &c, &settings, "h", 0, 3, &none);
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
        let a = stamp(deployment(&tf, &c, &settings, "h", 0, 3, &none));
        let b = stamp(deployment(&tf, &c, &settings, "h", 0, 3, &none));
        assert_eq!(stamped_hash(&a), stamped_hash(&b));
        let other = stamp(deployment(&tf, &c, &settings, "other", 0, 3, &none));
        assert_eq!(
            deployed(&a).map(|d| (d.stateful, d.epoch)),
            Some((false, 0))
        );
        let later = deployment(&tf, &c, &settings, "h", 2, 3, &none);
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
