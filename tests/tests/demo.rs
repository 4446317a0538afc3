//! `make demo` end to end: the example network from `manifests/examples/` applied with
//! kubectl, run by worker pods on the local node, its outputs checked (the demo fails when
//! a window is missing or doubled, a join loses an order, or a dead letter is missing).

use std::process::Command;

#[test]
fn the_demo_runs_the_example_network_and_its_outputs_are_right() {
    let demo = weir_tests::operator::workspace_binary("weir-dev").expect("weir-dev is built");
    let out = Command::new(demo)
        .arg("demo")
        .current_dir(weir_tests::tools::workspace_root())
        .output()
        .expect("running weir-dev demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "no drift from the manifests",
        "every window exactly once, none lost or doubled",
        "web.orders-with-customers joined 30 of them",
        "9. Dead letters: 2",
        "Done:",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stderr.contains("nothing is left running"), "{stderr}");
}
