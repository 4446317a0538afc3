//! The `weir` CLI's work: load DataStream and Transform YAML, compile Transforms with the
//! same compiler the operator uses, and run their fixture tests with the same engine the
//! workers use. No cluster, no Kafka.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::bail;
use weir_sql::partitioning::Partitioning;
use weir_sql::{StreamInput, StreamKind};

use crate::resources::{Resources, load};

use weir_crds::compile::{
    compile_expectations, compile_transform, id_of, namespace_of, run_tests, stream_input,
};

fn inputs(res: &Resources) -> anyhow::Result<Vec<StreamInput>> {
    res.data_streams
        .iter()
        .map(stream_input)
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)
}

/// `weir test`: runs every Transform's fixture tests. Returns the report and whether all
/// passed.
pub fn test(files: &[impl AsRef<Path>]) -> anyhow::Result<(String, bool)> {
    let res = load(files)?;
    if res.transforms.is_empty() {
        bail!("no Transform in the given files");
    }
    let streams = inputs(&res)?;
    let mut report = String::new();
    let (mut passed, mut failed) = (0, 0);
    for tf in &res.transforms {
        let id = id_of(&tf.metadata);
        let compiled = match compile_transform(tf, &streams) {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(report, "FAIL  {id}: Transform {id}: {e}");
                failed += 1;
                continue;
            }
        };
        if let Err(e) = compile_expectations(&tf.spec.expectations, &compiled) {
            let _ = writeln!(report, "FAIL  {id}: {e}");
            failed += 1;
            continue;
        }
        let _ = writeln!(report, "{id}");
        if tf.spec.tests.is_empty() {
            let _ = writeln!(report, "      (no tests)");
        }
        for (_, outcome) in run_tests(tf, &compiled) {
            match outcome {
                Ok(r) => {
                    if r.passed() {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                    let _ = writeln!(
                        report,
                        "  {}",
                        r.to_string().trim_end().replace('\n', "\n  ")
                    );
                }
                Err(e) => {
                    failed += 1;
                    let _ = writeln!(report, "  FAIL  {e}");
                }
            }
        }
    }
    let _ = writeln!(report, "\n{passed} passed, {failed} failed");
    Ok((report, failed == 0))
}

/// `weir explain`: the compiled plan of every Transform.
pub fn explain(files: &[impl AsRef<Path>]) -> anyhow::Result<String> {
    let res = load(files)?;
    if res.transforms.is_empty() {
        bail!("no Transform in the given files");
    }
    let streams = inputs(&res)?;
    let mut out = String::new();
    for tf in &res.transforms {
        let id = id_of(&tf.metadata);
        let c =
            compile_transform(tf, &streams).map_err(|e| anyhow::anyhow!("Transform {id}: {e}"))?;
        let _ = writeln!(out, "Transform {id}");
        let _ = writeln!(out, "fingerprint: {}", c.fingerprint);
        let kind = match c.output_kind {
            StreamKind::AppendOnly => "append-only".to_owned(),
            StreamKind::Changelog => format!("changelog keyed by [{}]", c.output_key.join(", ")),
        };
        let _ = writeln!(out, "output: {kind}");
        let ns = namespace_of(&tf.metadata);
        let name = tf.metadata.name.clone().unwrap_or_default();
        let _ = match weir_sql::partitioning::plan(&c) {
            Ok(Partitioning::AsIs) => {
                writeln!(
                    out,
                    "stages: one task per input partition, as the inputs are keyed"
                )
            }
            Ok(Partitioning::Repartition(keys)) => {
                let topic = weir_crds::names::TransformNames::new(&ns, &name, 0).repartition();
                let _ = writeln!(out, "stages:");
                for (input, cols) in c.inputs.iter().zip(&keys) {
                    let _ = writeln!(
                        out,
                        "  1. route {} {} to topic {topic}",
                        input.id(),
                        match cols {
                            Some(cols) if cols.is_empty() => "all to one partition".to_owned(),
                            Some(cols) => format!("by ({})", cols.join(", ")),
                            None => "to any partition".to_owned(),
                        }
                    );
                }
                writeln!(out, "  2. one task per partition of {topic} runs the plan")
            }
            Err(why) => writeln!(
                out,
                "stages: {why}; the plan runs only on inputs with one partition"
            ),
        };
        if let Some(et) = &c.output_event_time {
            let _ = writeln!(out, "output event time: {et}");
        }
        let _ = writeln!(out, "columns:");
        for (f, l) in c.output_schema.fields().iter().zip(&c.lineage) {
            let from: Vec<String> = l
                .sources
                .iter()
                .map(|(s, col)| format!("{s}.{col}"))
                .collect();
            let _ = writeln!(
                out,
                "  {} {}{}  <- {}",
                f.name(),
                f.data_type(),
                if f.is_nullable() { "" } else { " not null" },
                if from.is_empty() {
                    "(computed)".to_owned()
                } else {
                    from.join(", ")
                }
            );
        }
        let _ = writeln!(out, "plan:");
        for line in c.explain.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    Ok(out)
}
