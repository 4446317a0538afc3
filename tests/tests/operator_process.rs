//! The operator binary as a process: preflight, logs, metrics and graceful shutdown.

use std::time::Duration;

use kube::api::{Api, PostParams};
use weir_crds::DataStream;
use weir_tests::fixtures::{data_stream, is_ready};
use weir_tests::operator::workspace_binary;
use weir_tests::process::Supervised;
use weir_tests::tools::free_port;
use weir_tests::{Operator, OperatorOptions, Stack, await_condition, install_crds};

async fn exit_of(process: &mut Supervised, within: Duration) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Some(code) = process.exit_code() {
            return Some(code);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn without_crds_the_operator_stops_and_says_how_to_install_them() {
    let stack = Stack::start().await.expect("stack");
    let log = stack.dir().join("operator-no-crds.log");
    let env = vec![
        (
            "KUBECONFIG",
            stack.control_plane.kubeconfig_path().display().to_string(),
        ),
        ("WEIR_KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()),
        (
            "WEIR_HTTP_ADDR",
            format!("127.0.0.1:{}", free_port().expect("port")),
        ),
        ("WEIR_LOG_FORMAT", "json".to_owned()),
    ];
    let mut process = Supervised::spawn_with_env(
        "weir-operator",
        &workspace_binary("weir-operator").expect("binary"),
        &[],
        &env,
        &log,
    )
    .expect("spawn");
    let code = exit_of(&mut process, Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "log:\n{}", process.log_tail(20));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("kubectl apply -f manifests/crds/"), "{text}");
    // Logs are JSON lines.
    let first = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON log line");
    let line: serde_json::Value = serde_json::from_str(first).expect("valid JSON");
    assert!(
        line.get("level").is_some() && line.get("message").is_some(),
        "{line}"
    );

    // With the CRDs installed it runs, serves metrics, and stops cleanly on SIGTERM.
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    let mut operator = Operator::start(&stack, OperatorOptions::default())
        .await
        .expect("operator");
    let api = Api::<DataStream>::namespaced(client, "default");
    api.create(&PostParams::default(), &data_stream("measured", ""))
        .await
        .expect("create");
    await_condition(api, "measured", is_ready(), Duration::from_secs(60)).await;
    let metrics = operator.metrics().await.expect("metrics");
    for name in [
        "weir_operator_reconciles_total{controller=\"datastream\"}",
        "weir_operator_reconcile_duration_seconds_count{controller=\"datastream\"}",
        "weir_operator_status_writes_total{controller=\"datastream\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let started = std::time::Instant::now();
    operator.stop();
    assert!(!operator.is_running());
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "shutdown was not graceful"
    );
    assert!(
        operator.log_tail(5).contains("stopped"),
        "{}",
        operator.log_tail(5)
    );
}
