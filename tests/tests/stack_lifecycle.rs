//! A stack stops every process it started when it is dropped, and can restart its broker.

use std::time::Duration;

use weir_tests::Stack;
use weir_tests::records::{self, Isolation, Record};

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

#[tokio::test]
async fn dropping_a_stack_leaves_no_process_or_directory_behind() {
    let mut stack = Stack::start().await.expect("stack");
    let pids = stack.pids();
    assert_eq!(
        pids.len(),
        5,
        "kafka, etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
    );
    assert!(pids.iter().all(|&p| alive(p)));
    let dir = stack.dir().to_path_buf();

    // The broker survives a clean restart with its data.
    let bootstrap = stack.bootstrap_servers();
    records::create_topic(&bootstrap, "kept", 1)
        .await
        .expect("topic");
    records::produce(&bootstrap, "kept", &[Record::new("k", "before restart")])
        .await
        .expect("produce");
    stack.kafka.stop();
    assert!(!stack.kafka.is_running());
    stack.kafka.resume().await.expect("restart");
    let got = records::consume(
        &bootstrap,
        "kept",
        1,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await
    .expect("consume");
    assert_eq!(
        got.first().map(Record::value_str).as_deref(),
        Some("before restart")
    );

    let pids = stack.pids();
    drop(stack);
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived its stack");
    }
    assert!(!dir.exists(), "{} was not deleted", dir.display());
}
