//! The shipped YAML — examples and the Helm chart — is accepted by the real apiserver.

use std::process::Command;

use weir_tests::tools::{binary, workspace_root};
use weir_tests::{Stack, install_crds};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
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
        use std::io::Write;
        let mut child = kubectl()
            .args(["apply", "--dry-run=server", "-n", "default", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        child.wait_with_output().expect("kubectl")
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

#[tokio::test]
async fn the_helm_chart_lints_and_installs_against_the_apiserver() {
    let stack = Stack::shared().await;
    let kubeconfig = stack.control_plane.kubeconfig_path();
    let helm = binary("helm").expect("helm");
    let chart = workspace_root().join("charts/weir");
    run(Command::new(&helm)
        .arg("lint")
        .arg(&chart)
        .args(["--set", "kafka.bootstrapServers=kafka:9092"]));
    let out = run(Command::new(&helm)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["install", "weir"])
        .arg(&chart)
        .args([
            "--namespace",
            "weir-chart",
            "--create-namespace",
            "--set",
            "kafka.bootstrapServers=kafka:9092",
        ]));
    assert!(out.contains("STATUS: deployed"), "{out}");
    // Missing the one required value is a clear error.
    let missing = Command::new(&helm)
        .arg("template")
        .arg(&chart)
        .output()
        .expect("helm template");
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("kafka.bootstrapServers is required")
    );
}
