//! The weir-operator binary's command line.

use std::process::Command;

/// `--help` shows where each setting comes from, never a secret's value from the
/// environment (librdkafka settings may carry `sasl.password`).
#[test]
fn help_never_shows_the_kafka_settings_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .arg("--help")
        .env("WEIR_KAFKA_CONFIG", "sasl.password=s3cret-value")
        .env("WEIR_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
        .output()
        .expect("weir-operator runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("WEIR_KAFKA_CONFIG"), "{text}");
    assert!(
        !text.contains("s3cret-value"),
        "--help shows the password:\n{text}"
    );
}
