//! The `weir` CLI on the shipped example: `weir test` passes, a broken expectation fails
//! with a readable diff, and `weir explain` shows the plan and lineage.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("weir runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const STREAM: &str = "manifests/examples/page-views.yaml";
const TRANSFORM: &str = "manifests/examples/transforms/views-per-page.yaml";

/// The example Transform with `from` replaced by `to`, written into `dir` as `name`;
/// its path.
fn variant(dir: &tempfile::TempDir, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(root().join(TRANSFORM)).expect("example");
    assert!(text.contains(from), "the example has no {from:?}");
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace(from, to)).expect("write");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn the_example_transform_passes_its_tests() {
    let (code, out, err) = weir(&["test", STREAM, TRANSFORM]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    counts one minute"), "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = variant(&dir, "broken.yaml", "views: 2 }", "views: 3 }");
    let (code, out, _) = weir(&["test", STREAM, &broken]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  counts one minute"), "{out}");
    assert!(out.contains("- {url: /a, window_start: 2026-01-01T00:00:00Z, window_end: 2026-01-01T00:01:00Z, views: 3}"), "{out}");
    assert!(out.contains("+ {url: /a, window_start: 2026-01-01T00:00:00Z, window_end: 2026-01-01T00:01:00Z, views: 2}"), "{out}");
}

#[test]
fn an_expectation_that_does_not_compile_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = variant(&dir, "broken.yaml", "views > 0", "viewz > 0");
    let (code, out, _) = weir(&["test", STREAM, &broken]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  analytics/views-per-page: spec.expectations[0] (counted):"),
        "{out}"
    );
    assert!(out.contains("viewz"), "{out}");
}

#[test]
fn bad_sql_names_the_resource_and_the_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = variant(
        &dir,
        "broken.yaml",
        "COUNT(*) AS views",
        "COUNT(*) AS views, referrer",
    );
    let (code, out, _) = weir(&["test", STREAM, &broken]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("analytics/views-per-page: spec.sql: line 1, column"),
        "{out}"
    );
    assert!(out.contains("referrer"), "{out}");
}

#[test]
fn explain_shows_kind_lineage_and_plan() {
    let (code, out, err) = weir(&["explain", STREAM, TRANSFORM]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("output: append-only"), "{out}");
    // Counting per URL over a stream keyed by user needs the records re-keyed.
    assert!(
        out.contains(
            "1. route web/page-views by (url) to topic analytics.views-per-page.repartition"
        ),
        "{out}"
    );
    assert!(out.contains("url Utf8  <- web/page-views.url"), "{out}");
    assert!(
        out.contains("Aggregate TUMBLE(web.page_views.ts, 1m) emit=on-close"),
        "{out}"
    );
}

#[test]
fn no_transform_is_an_error() {
    let (code, _, err) = weir(&["test", STREAM]);
    assert_eq!(code, 2);
    assert!(err.contains("no Transform"), "{err}");
}

#[test]
fn the_window_policy_sets_emit_mode_and_lateness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = variant(
        &dir,
        "updates.yaml",
        "  parallelism: 2\n",
        "  parallelism: 2\n  windows: { emit: updates, allowedLateness: 30s }\n",
    );
    let (code, out, err) = weir(&["explain", STREAM, &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("output: changelog keyed by [url, window_start]"),
        "{out}"
    );
    assert!(out.contains("emit=updates lateness=30s"), "{out}");
    // The final state of an updating window is the count emit-on-close gives.
    let (code, out, _) = weir(&["test", STREAM, &path]);
    assert_eq!(code, 0, "{out}");

    let bad = variant(
        &dir,
        "bad.yaml",
        "  parallelism: 2\n",
        "  parallelism: 2\n  windows: { allowedLateness: soon }\n",
    );
    let (code, out, err) = weir(&["explain", STREAM, &bad]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("analytics/views-per-page: spec.windows.allowedLateness: \"soon\""),
        "{err}"
    );
}

#[test]
fn a_misspelled_field_or_kind_is_named_not_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let field = variant(
        &dir,
        "field.yaml",
        "  owner: analytics@example.com",
        "  owner: analytics@example.com\n  errorPolicyy: drop",
    );
    let (code, out, err) = weir(&["test", STREAM, &field]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("Transform") && err.contains("unknown field spec.errorPolicyy"),
        "{err}"
    );
    let kind = variant(&dir, "kind.yaml", "kind: Transform", "kind: Tranform");
    let (code, out, err) = weir(&["test", STREAM, &kind]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("\"Tranform\" is not a kind of weir.dev/"),
        "{err}"
    );
    let case = variant(&dir, "case.yaml", "kind: Transform", "kind: transform");
    let (_, _, err) = weir(&["test", STREAM, &case]);
    assert!(err.contains("did you mean Transform?"), "{err}");
}

/// A DataStream with an integer field and a Transform over it whose one test gives `n` as
/// `value`, in `dir`; their paths.
fn with_given_n(dir: &tempfile::TempDir, value: &str) -> (String, String) {
    let stream = dir.path().join("orders.yaml");
    std::fs::write(
        &stream,
        r#"apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: orders, namespace: shop }
spec:
  description: Orders.
  owner: shop@example.com
  schema:
    fields:
      - { name: id, type: string }
      - { name: n, type: bigint }
"#,
    )
    .expect("write");
    let transform = dir.path().join("big.yaml");
    std::fs::write(
        &transform,
        format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: big, namespace: shop }}
spec:
  description: Big orders.
  owner: shop@example.com
  sql: SELECT id, n FROM orders WHERE n > 1
  output: {{ name: big }}
  tests:
    - name: keeps big ones
      given:
        orders:
          - {{ id: a, n: {value} }}
      expect:
        - {{ id: a, n: 2 }}
"#
        ),
    )
    .expect("write");
    let path = |p: std::path::PathBuf| p.to_str().expect("utf-8").to_owned();
    (path(stream), path(transform))
}

#[test]
fn a_fixture_value_that_would_change_on_the_way_in_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stream, transform) = with_given_n(&dir, "2");
    let (code, out, err) = weir(&["test", &stream, &transform]);
    assert_eq!(code, 0, "{out}{err}");

    // 1.9 into a bigint would be truncated to 1.
    let (stream, transform) = with_given_n(&dir, "1.9");
    let (code, out, err) = weir(&["test", &stream, &transform]);
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("1.9 is not a whole number"),
        "{out}{err}"
    );

    // YAML's .nan would become a null.
    let (stream, transform) = with_given_n(&dir, ".nan");
    let (code, out, err) = weir(&["test", &stream, &transform]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("spec.tests[0].given.orders[0].n is NaN or infinite"),
        "{err}"
    );
}

#[test]
fn a_file_too_large_to_be_a_resource_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&huge).expect("create");
    file.set_len(17 << 20).expect("size");
    let (code, out, err) = weir(&["test", huge.to_str().expect("utf-8")]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("Weir reads files of at most 16 MiB"), "{err}");
}
