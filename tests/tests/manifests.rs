//! What Weir ships works with the real components: the examples, the Helm chart (installed
//! for real, its operator pod on the local node), the plain install manifests, the Argo CD
//! health checks (in Argo CD's Lua runtime) and the container image (its filesystem run as
//! its user).

use std::process::Command;

use weir_tests::tools::{binary, workspace_root};
use weir_tests::{Stack, install_crds};

/// Runs `cmd`; fails the test if it fails. Returns its standard output.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    succeeded(cmd, &out)
}

/// Runs `cmd` with `input` on its standard input; fails the test if it fails.
fn run_with_input(cmd: &mut Command, input: &str) -> String {
    let out = output_with_input(cmd, input);
    succeeded(cmd, &out)
}

/// `cmd`'s output when given `input` on its standard input.
fn output_with_input(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// The standard output of `cmd`, which must have succeeded.
fn succeeded(cmd: &Command, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl against the shared stack, with Weir's CRDs installed.
async fn kubectl_with_crds() -> impl Fn() -> Command {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    let kubeconfig = stack.control_plane.kubeconfig_path();
    let kubectl = binary("kubectl").expect("kubectl");
    move || {
        let mut c = Command::new(&kubectl);
        c.arg("--kubeconfig").arg(&kubeconfig);
        c
    }
}

#[tokio::test]
async fn the_examples_pass_server_side_validation() {
    let kubectl = kubectl_with_crds().await;
    run(kubectl().args(["create", "namespace", "web"]));
    let out = run(kubectl()
        .args(["apply", "--dry-run=server", "-f"])
        .arg(workspace_root().join("manifests/examples")));
    assert!(out.contains("datastream.weir.dev/page-views"), "{out}");
    assert!(out.contains("datastream.weir.dev/customers"), "{out}");
    // The plural and the `weir` category work.
    run(kubectl().args(["get", "datastreams,weir", "-A"]));
}

/// Admission as users meet it: YAML through kubectl, where an optional field is absent
/// (kube-rs clients send `key: []` and never see what a missing key does to a CEL rule).
#[tokio::test]
async fn kubectl_admits_an_event_stream_without_a_key_and_refuses_bad_keys_and_kafkas_topics() {
    let kubectl = kubectl_with_crds().await;
    let apply = |yaml: &str| {
        output_with_input(
            kubectl().args(["apply", "--dry-run=server", "-n", "default", "-f", "-"]),
            yaml,
        )
    };
    let stream = |key: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: DataStream\nmetadata: {{ name: clicks }}\n\
             spec:\n  description: Clicks.\n  owner: web@example.com\n{key}  schema:\n    \
             fields:\n      - {{ name: user_id, type: string }}\n"
        )
    };
    let out = apply(&stream(""));
    assert!(
        out.status.success(),
        "a DataStream without spec.key was refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = apply(&stream("  key: [page]\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("every spec.key field must be a field of spec.schema"),
        "a key outside the schema was not refused with the rule's message:\n{err}"
    );
    // Nested fields are checked like top-level ones (an unknown nested type once reached
    // the operator and broke its watch), down to the supported depth.
    let nested = |inner: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: DataStream\nmetadata: {{ name: orders }}\n\
             spec:\n  description: Orders.\n  owner: web@example.com\n  schema:\n    fields:\n      \
             - {{ name: o, type: struct, fields: [ {inner} ] }}\n"
        )
    };
    let out = apply(&nested(
        "{ name: a, type: struct, fields: [ { name: b, type: list, items: { type: bigint } } ] }",
    ));
    assert!(
        out.status.success(),
        "nesting within the supported depth was refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (inner, expect) in [
        (
            "{ name: id, type: uuid }",
            "spec.schema.fields[0].fields[0].type",
        ),
        (
            "{ name: id, type: bigint, nullable: maybe }",
            "spec.schema.fields[0].fields[0].nullable",
        ),
        (
            "{ name: d, type: decimal, precision: 300 }",
            "spec.schema.fields[0].fields[0].precision",
        ),
        (
            "{ name: a, type: struct, fields: [ { name: b, type: struct, fields: [ { name: c, \
             type: struct, fields: [ { name: d, type: int } ] } ] } ] }",
            "spec.schema.fields[0].fields[0].fields[0].fields[0].fields",
        ),
    ] {
        let out = apply(&nested(inner));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "the nested field {inner} was not refused at {expect}:\n{err}"
        );
    }
    // Kafka's own topics are never Weir's to manage, whatever a tenant writes.
    for topic in ["__consumer_offsets", "__transaction_state", ".."] {
        let out = apply(&stream(&format!("  topic: {topic:?}\n")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("spec.topic cannot"),
            "spec.topic {topic} was not refused:\n{err}"
        );
    }
}

/// The documents `helm template` renders for `args`, parsed.
fn helm_template(args: &[&str]) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let out = run(Command::new(binary("helm").expect("helm"))
        .args(["template", "weir"])
        .arg(workspace_root().join("charts/weir"))
        .args(args));
    serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|d| !d.is_null())
        .collect()
}

/// SASL credentials and a CA from existing Secrets reach the operator as Kubernetes
/// expands them: the Secret-backed variables come before the setting that names them
/// (`$(VAR)` only sees earlier variables), and the CA is mounted where the setting points.
#[test]
fn the_helm_chart_wires_kafka_credentials_from_existing_secrets_as_files() {
    // A Strimzi cluster: its cluster CA Secret and a scram-sha-512 KafkaUser's Secret, as
    // Strimzi writes them (the user name only in sasl.jaas.config).
    let docs = helm_template(&[
        "--set",
        "kafka.bootstrapServers=my-cluster-kafka-bootstrap.kafka:9093",
        "--set",
        "kafka.securityProtocol=SASL_SSL",
        "--set",
        "kafka.sasl.mechanism=SCRAM-SHA-512",
        "--set",
        "kafka.sasl.existingSecret=weir-operator",
        "--set",
        "kafka.sasl.usernameKey=",
        "--set",
        "kafka.tls.existingSecret=my-cluster-cluster-ca-cert",
        "--set",
        "kafka.config.client\\.rack=eu-1a",
    ]);
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(value("WEIR_KAFKA_SECURITY_PROTOCOL"), "SASL_SSL");
    assert_eq!(value("WEIR_KAFKA_SASL_MECHANISM"), "SCRAM-SHA-512");
    assert_eq!(
        value("WEIR_KAFKA_SASL_JAAS_CONFIG_FILE"),
        "/etc/weir/kafka-sasl/sasl.jaas.config"
    );
    assert_eq!(
        value("WEIR_KAFKA_SASL_PASSWORD_FILE"),
        "/etc/weir/kafka-sasl/password"
    );
    assert_eq!(
        value("WEIR_KAFKA_TLS_CA_FILE"),
        "/etc/weir/kafka-tls/ca.crt"
    );
    assert_eq!(value("WEIR_KAFKA_CONFIG"), "client.rack=eu-1a");
    // No secret reaches an environment variable.
    assert!(
        env.iter().all(|e| e
            .get("valueFrom")
            .and_then(|v| v.get("secretKeyRef"))
            .is_none()),
        "{env:?}"
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    let secrets: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, vec!["weir-operator", "my-cluster-cluster-ca-cert"]);
    let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, vec!["/etc/weir/kafka-sasl", "/etc/weir/kafka-tls"]);
}

#[tokio::test]
async fn the_helm_chart_refuses_bad_values_with_clear_messages() {
    let helm = binary("helm").expect("helm");
    let chart = workspace_root().join("charts/weir");
    run(Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(&chart)
        .args(["--set", "kafka.bootstrapServers=kafka:9092"]));
    for (args, message) in [
        (vec![], "kafka.bootstrapServers is required"),
        (
            vec![
                "--set",
                "kafka.bootstrapServers=kafka:9092",
                "--set",
                "logFormat=xml",
            ],
            "at '/logFormat': value must be one of 'json', 'text'",
        ),
        (
            vec![
                "--set",
                "kafka.bootstrapServers=kafka:9092",
                "--set",
                "replica=3",
            ],
            "additional properties 'replica' not allowed",
        ),
        (
            vec![
                "--set",
                "kafka.bootstrapServers=kafka",
                "--set",
                "replicas=1",
            ],
            "/kafka/bootstrapServers",
        ),
    ] {
        let out = Command::new(&helm)
            .arg("template")
            .arg(&chart)
            .args(&args)
            .output()
            .expect("helm template");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(message),
            "helm template {args:?} did not fail with {message:?}:\n{err}"
        );
    }
}

/// Runs Argo CD's health check for `group/kind` (from `manifests/argocd`) on `object`, in
/// Argo CD's Lua runtime; returns the status and message it gives.
fn argocd_health(group_kind: &str, object: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.yaml");
    std::fs::write(&live, object).expect("write");
    let out = run(
        Command::new(binary("argocd-health").expect("argocd-health"))
            .arg("eval")
            .arg(
                workspace_root()
                    .join("manifests/argocd/resource_customizations")
                    .join(group_kind)
                    .join("health.lua"),
            )
            .arg(&live),
    );
    let got: serde_json::Value = serde_json::from_str(&out).expect("a JSON status");
    let text = |k: &str| got[k].as_str().unwrap_or_default().to_owned();
    (text("status"), text("message"))
}

/// The health checks pass their own tests (Argo CD's `health_test.yaml` layout, so they can
/// be contributed upstream as they are) in the Lua runtime Argo CD uses, and the argocd-cm
/// snippet carries exactly those scripts.
#[test]
fn the_argocd_health_checks_pass_their_tests_in_argo_cds_lua_runtime() {
    let out = run(
        Command::new(binary("argocd-health").expect("argocd-health"))
            .arg(workspace_root().join("manifests/argocd/resource_customizations")),
    );
    assert!(out.contains(" checked, 0 failed"), "{out}");
    for kind in ["DataStream", "Transform"] {
        assert!(
            out.contains(&format!("weir.dev/{kind}")),
            "{kind} has no tests:\n{out}"
        );
    }
    let rendered =
        run(Command::new("bash").arg(workspace_root().join("tools/render-argocd-cm.sh")));
    let committed =
        std::fs::read_to_string(workspace_root().join("manifests/argocd/argocd-cm.yaml"))
            .expect("read");
    assert!(
        rendered == committed,
        "manifests/argocd/argocd-cm.yaml differs from the health checks: run `make manifests`"
    );
}

/// Runs `cmd`; fails the test if it fails or warns. Returns its standard output.
fn run_without_warnings(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.to_lowercase().contains("warning"),
        "{cmd:?} failed or warned:\n{}{err}",
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two ways to install Weir, in one test because both name the operator's cluster-wide
/// objects the same, and the operator pods of the first must be gone before the local node
/// that would run them starts:
///
/// 1. `manifests/install` is the chart rendered with its defaults (a drift fails here), and
///    `kubectl apply --server-side` of it and the CRDs works twice, without warnings.
/// 2. `helm install` as a platform team runs it: the operator's own pod runs on the local
///    node under the chart's ServiceAccount and RBAC (the token and the apiserver's address
///    as a kubelet gives them), makes a DataStream and a Transform Ready, survives a
///    `helm upgrade` without disturbing the workers, and `helm uninstall` leaves the CRDs,
///    the resources and their topics.
#[tokio::test]
async fn plain_manifests_apply_twice_and_helm_installs_upgrades_and_uninstalls_a_working_operator()
{
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ListParams};
    use weir_crds::{DataStream, Transform};
    use weir_tests::{Images, LocalNode, await_condition, await_deletion, fixtures};

    const WAIT: std::time::Duration = std::time::Duration::from_secs(120);
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    let kubeconfig = stack.control_plane.kubeconfig_path();
    let helm = binary("helm").expect("helm");
    let kubectl = binary("kubectl").expect("kubectl");
    let helm = || {
        let mut c = Command::new(&helm);
        c.arg("--kubeconfig").arg(&kubeconfig);
        c
    };
    let kubectl = || {
        let mut c = Command::new(&kubectl);
        c.arg("--kubeconfig").arg(&kubeconfig);
        c
    };
    let chart = workspace_root().join("charts/weir");

    // 1. The plain manifests.
    let rendered = run(Command::new("bash")
        .arg(workspace_root().join("tools/render-install.sh"))
        .env("HELM", binary("helm").expect("helm")));
    let install = workspace_root().join("manifests/install");
    let committed = std::fs::read_to_string(install.join("weir.yaml")).expect("read");
    assert!(
        rendered == committed,
        "manifests/install/weir.yaml differs from the chart: run `make manifests`"
    );
    let crds_dir = workspace_root().join("manifests/crds");
    for _ in 0..2 {
        let out = run_without_warnings(
            kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(&crds_dir)
                .arg("-f")
                .arg(&install),
        );
        assert!(
            out.contains("deployment.apps/weir-operator serverside-applied")
                && out.contains("customresourcedefinition.apiextensions.k8s.io/datastreams.weir.dev serverside-applied"),
            "{out}"
        );
    }
    run(kubectl()
        .args(["delete", "deployment", "weir-operator", "-n", "weir-system"])
        .args(["--cascade=foreground", "--wait"]));
    run(kubectl()
        .args(["delete", "--wait=false", "--ignore-not-found", "-f"])
        .arg(&install));

    // 2. Helm, with the operator running as a pod.
    let node = LocalNode::start(
        &kubeconfig,
        &stack.dir().join("helm-node"),
        Images::workspace().expect("built binaries"),
    )
    .await
    .expect("local node");
    let bootstrap = format!("kafka.bootstrapServers={}", stack.bootstrap_servers());
    let out = run(helm()
        .args(["install", "weir"])
        .arg(&chart)
        .args(["--namespace", "weir-helm", "--create-namespace"])
        .args(["--set", &bootstrap, "--set", "replicas=1"])
        .args(["--set", "kafka.defaultReplicationFactor=1"])
        .args(["--wait", "--timeout", "3m"]));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("kubectl -n weir-helm rollout status deployment/weir-operator"),
        "NOTES.txt says how to check the operator:\n{out}"
    );

    // Least privilege, as the apiserver's RBAC answers for the operator's ServiceAccount:
    // it reads the Secrets it is pointed at one by one and cannot list or watch them.
    let account = run(kubectl().args([
        "get",
        "deployment",
        "weir-operator",
        "-n",
        "weir-helm",
        "-o",
        "jsonpath={.spec.template.spec.serviceAccountName}",
    ]));
    let as_operator = format!("system:serviceaccount:weir-helm:{}", account.trim());
    let can = |verb: &str, resource: &str| {
        let out = kubectl()
            .args([
                "auth",
                "can-i",
                verb,
                resource,
                "--all-namespaces",
                "--as",
                &as_operator,
            ])
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource, allowed) in [
        ("get", "secrets", true),
        ("list", "secrets", false),
        ("watch", "secrets", false),
        ("watch", "datastreams.weir.dev", true),
        ("patch", "datastreams.weir.dev/status", true),
        ("update", "datastreams.weir.dev", false),
        ("delete", "datastreams.weir.dev", false),
        ("delete", "deployments.apps", false),
        ("list", "configmaps", false),
        ("create", "pods", false),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", false),
    ] {
        assert_eq!(
            can(verb, resource),
            allowed,
            "the operator's ServiceAccount {} {verb} {resource}",
            if allowed { "cannot" } else { "can" }
        );
    }

    // A team applies a DataStream and a Transform with kubectl; the operator in its pod
    // makes them Ready.
    run(kubectl().args(["create", "namespace", "helm-web"]));
    run_with_input(
        kubectl().args(["apply", "-n", "helm-web", "-f", "-"]),
        r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: clicks }
spec:
  description: Clicks on the site.
  owner: web@example.com
  partitions: 1
  schema:
    fields:
      - { name: user_id, type: string }
      - { name: url, type: string, nullable: true }
---
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: { name: known-clicks }
spec:
  description: Clicks with a URL.
  owner: web@example.com
  sql: SELECT user_id, url FROM clicks WHERE url IS NOT NULL
  output: { name: known-clicks }
"#,
    );
    let streams = Api::<DataStream>::namespaced(client.clone(), "helm-web");
    let transforms = Api::<Transform>::namespaced(client.clone(), "helm-web");
    let transform_ready = |t: Option<&Transform>| {
        t.and_then(|t| t.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    await_condition(streams.clone(), "clicks", fixtures::is_ready(), WAIT).await;
    await_condition(transforms.clone(), "known-clicks", transform_ready, WAIT).await;
    // Argo CD's health checks read the live objects as Healthy.
    for (group_kind, object) in [
        ("weir.dev/DataStream", "datastream/clicks"),
        ("weir.dev/Transform", "transform/known-clicks"),
    ] {
        let live = run(kubectl().args(["get", "-n", "helm-web", object, "-o", "yaml"]));
        let (status, message) = argocd_health(group_kind, &live);
        assert_eq!(status, "Healthy", "{object}: {message}");
    }
    let pods = Api::<Pod>::namespaced(client.clone(), "helm-web");
    let workers = ListParams::default().labels("weir.dev/transform=known-clicks");
    let worker_uids = |list: Vec<Pod>| -> Vec<String> {
        list.into_iter().filter_map(|p| p.metadata.uid).collect()
    };
    let workers_before = worker_uids(pods.list(&workers).await.expect("pods").items);
    assert_eq!(workers_before.len(), 1, "one worker runs");

    // The optional objects: the PodDisruptionBudget and NetworkPolicy pass the apiserver's
    // validation, and the PodMonitor selects the real worker pods by a port they have.
    let extras = run(helm()
        .args(["template", "weir"])
        .arg(&chart)
        .args([
            "--namespace",
            "weir-helm",
            "--show-only",
            "templates/extras.yaml",
        ])
        .args(["--set", &bootstrap, "--set", "replicas=2"])
        .args(["--set", "networkPolicy.enabled=true"]));
    let applied = run_with_input(
        kubectl().args(["apply", "--dry-run=server", "-n", "weir-helm", "-f", "-"]),
        &extras,
    );
    assert!(
        applied.contains("poddisruptionbudget.policy/weir-operator")
            && applied.contains("networkpolicy.networking.k8s.io/weir-operator"),
        "{applied}"
    );
    let monitor = helm_template(&[
        "--show-only",
        "templates/extras.yaml",
        "--set",
        &bootstrap,
        "--set",
        "podDisruptionBudget.enabled=false",
        "--set",
        "podMonitor.enabled=true",
    ]);
    let spec = &monitor[0]["spec"];
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    let monitored = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("pods");
    assert_eq!(
        worker_uids(monitored.items.clone()),
        workers_before,
        "{selector}"
    );
    let port = spec["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port");
    let ports = monitored.items[0].spec.as_ref().unwrap().containers[0]
        .ports
        .clone()
        .unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.name.as_deref() == Some(port)),
        "the workers have no port {port}"
    );

    // `helm upgrade` with a changed value rolls the operator; the workers keep running
    // and the new operator takes over.
    let operators = Api::<Pod>::namespaced(client.clone(), "weir-helm");
    let operator_pods = ListParams::default().labels("app.kubernetes.io/component=operator");
    let before = operators.list(&operator_pods).await.expect("pods");
    let out = run(helm()
        .args(["upgrade", "weir"])
        .arg(&chart)
        .args(["--namespace", "weir-helm", "--reuse-values"])
        .args(["--set", "logFormat=text", "--wait", "--timeout", "3m"]));
    assert!(out.contains("STATUS: deployed"), "{out}");
    let deployment = Api::<Deployment>::namespaced(client.clone(), "weir-helm")
        .get("weir-operator")
        .await
        .expect("deployment");
    let env = deployment.spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "WEIR_LOG_FORMAT" && e.value.as_deref() == Some("text"))
    );
    for old in before.items {
        await_deletion(operators.clone(), &old.metadata.name.unwrap(), WAIT).await;
    }
    run_with_input(
        kubectl().args(["apply", "-n", "helm-web", "-f", "-"]),
        "apiVersion: weir.dev/v1alpha1\nkind: DataStream\nmetadata: { name: views }\nspec:\n  \
         description: Page views.\n  owner: web@example.com\n  partitions: 1\n  schema:\n    \
         fields:\n      - { name: url, type: string }\n",
    );
    await_condition(streams.clone(), "views", fixtures::is_ready(), WAIT).await;
    await_condition(transforms.clone(), "known-clicks", transform_ready, WAIT).await;
    assert_eq!(
        worker_uids(pods.list(&workers).await.expect("pods").items),
        workers_before,
        "the upgrade left the workers running"
    );

    // `helm uninstall` removes the operator and its RBAC, and leaves the CRDs, the
    // resources and their topics.
    run(helm().args(["uninstall", "weir", "--namespace", "weir-helm", "--wait"]));
    await_deletion(
        Api::<Deployment>::namespaced(client.clone(), "weir-helm"),
        "weir-operator",
        WAIT,
    )
    .await;
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("weir-operator")
            .await
            .expect("get")
            .is_none()
    );
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in ["datastreams.weir.dev", "transforms.weir.dev"] {
        assert!(
            crds.get_opt(crd).await.expect("get").is_some(),
            "{crd} was kept"
        );
    }
    assert!(streams.get_opt("clicks").await.expect("get").is_some());
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    let admin = weir_operator::kafka_admin::KafkaAdmin::new(config).expect("admin");
    for topic in ["helm-web.clicks", "helm-web.known-clicks"] {
        assert!(
            admin.describe(topic).await.expect("describe").is_some(),
            "topic {topic} was kept"
        );
    }
    node.shutdown().await;
}

/// `make image`'s image, built from the workspace's binaries, holds every binary and every
/// library they load: unpacked, each runs from the image's own filesystem as the image's
/// numeric user (chroot, in new namespaces, with no network), and there is no shell.
#[test]
fn the_image_runs_each_binary_from_its_own_filesystem_as_its_non_root_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("weir.oci.tar");
    let bin_dir = weir_tests::operator::workspace_binary("weir-operator")
        .expect("built binaries")
        .parent()
        .expect("a folder")
        .to_owned();
    let umoci = binary("umoci").expect("umoci");
    run(Command::new("bash")
        .arg(workspace_root().join("tools/build-image.sh"))
        .arg(&bin_dir)
        .arg(&archive)
        .arg("test")
        .env("UMOCI", &umoci));
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = dir.path().join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config"))
            .expect("json");
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 65532, "{process}");
    assert_eq!(process["user"]["gid"], 65532, "{process}");
    assert_eq!(
        process["args"][0], "/usr/local/bin/weir-operator",
        "{process}"
    );

    let rootfs = bundle.join("rootfs");
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash"] {
        assert!(!rootfs.join(shell).exists(), "the image has {shell}");
    }
    let in_image = |args: &[&str]| {
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--fork",
            "--mount",
            "--net",
            "chroot",
            "--userspec=65532:65532",
        ])
        .arg(&rootfs)
        .args(args);
        run(&mut c)
    };
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["weir-operator", "weir-worker", "weir"] {
        let out = in_image(&[&format!("/usr/local/bin/{bin}"), "--version"]);
        assert_eq!(out.trim(), format!("{bin} {version}"));
    }
    // The CLI compiles and tests an example Transform inside the image.
    for f in ["page-views.yaml", "transforms/views-per-page.yaml"] {
        let to = rootfs.join("tmp").join(f.rsplit('/').next().unwrap());
        std::fs::copy(workspace_root().join("manifests/examples").join(f), &to).expect("copy");
    }
    let out = in_image(&[
        "/usr/local/bin/weir",
        "test",
        "/tmp/page-views.yaml",
        "/tmp/views-per-page.yaml",
    ]);
    assert!(out.contains("2 passed, 0 failed"), "{out}");
}
