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

#[tokio::test]
async fn the_examples_pass_server_side_validation() {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    let kubeconfig = stack.control_plane.kubeconfig_path();
    let kubectl = binary("kubectl").expect("kubectl");
    run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["create", "namespace", "web"]));
    let out = run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--dry-run=server", "-f"])
        .arg(workspace_root().join("manifests/examples")));
    assert!(out.contains("datastream.weir.dev/page-views"), "{out}");
    assert!(out.contains("datastream.weir.dev/customers"), "{out}");
    // The plural and the `weir` category work.
    run(Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "datastreams,weir", "-A"]));
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
