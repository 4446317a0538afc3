//! The `weir` CLI's work: load DataStream and Transform YAML, compile Transforms with the
//! same compiler the operator uses, and run their fixture tests with the same engine the
//! workers use. No cluster, no Kafka.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use weir_crds::{DataStream, Transform};
use weir_engine::sql::partitioning::Partitioning;
use weir_engine::sql::{StreamInput, StreamKind};

/// The resources found in some YAML files.
#[derive(Default)]
pub struct Resources {
    /// DataStreams.
    pub data_streams: Vec<DataStream>,
    /// Transforms.
    pub transforms: Vec<Transform>,
}

#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

/// The kinds Weir reads.
const KINDS: [&str; 2] = ["DataStream", "Transform"];

/// The largest file Weir reads: its files describe resources and small fixtures, and
/// anything larger is a mistake (a data file passed by accident) better refused than read
/// into memory whole.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The first value in `value` that JSON cannot carry (YAML's `.nan`, `.inf`, `-.inf`), by
/// its path: reading it would silently turn it into a null.
fn non_finite(value: &serde_yaml::Value, path: &str) -> Option<String> {
    use serde_yaml::Value;
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(path.to_owned()),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, &format!("{path}[{i}]"))),
        Value::Mapping(map) => map.iter().find_map(|(k, v)| {
            let key = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let path = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            non_finite(v, &path)
        }),
        Value::Tagged(t) => non_finite(&t.value, path),
        _ => None,
    }
}

/// Decodes `value` as a `T`, refusing fields `T` does not have (a misspelled field would
/// otherwise be ignored silently), each named by its path.
fn decode<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> anyhow::Result<T> {
    let mut unknown = Vec::new();
    let decoded = serde_ignored::deserialize(value, |path| {
        let path = path.to_string();
        // Read by the kind's own deserializer rather than stored as fields.
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })?;
    if !unknown.is_empty() {
        bail!("unknown field {}", unknown.join(", "));
    }
    Ok(decoded)
}

/// Reads every YAML document in `files`. Documents of other kinds are skipped; a document
/// of a `weir.dev` API with a kind Weir does not have, or a field a Weir kind does not
/// have, is an error that names it.
pub fn load(files: &[impl AsRef<Path>]) -> anyhow::Result<Resources> {
    let mut out = Resources::default();
    for file in files {
        let file = file.as_ref();
        let size = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if size > MAX_FILE_BYTES {
            bail!(
                "{} has {size} bytes; Weir reads files of at most {} MiB (resources and small \
                 fixtures, not data sets)",
                file.display(),
                MAX_FILE_BYTES >> 20
            );
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("{}: document {} is not YAML", file.display(), i + 1))?;
            if value.is_null() {
                continue;
            }
            let kind: Kind = serde_yaml::from_value(value.clone()).unwrap_or(Kind {
                api_version: None,
                kind: None,
            });
            let at = || format!("{}: document {}", file.display(), i + 1);
            if matches!(kind.kind.as_deref(), Some("DataStream" | "Transform"))
                && let Some(path) = non_finite(&value, "")
            {
                bail!(
                    "{}: {path} is NaN or infinite, which a record cannot carry (JSON has \
                     neither); write null for a missing value",
                    at()
                );
            }
            match kind.kind.as_deref() {
                Some("DataStream") => out
                    .data_streams
                    .push(decode(value).with_context(|| format!("{}: DataStream", at()))?),
                Some("Transform") => out
                    .transforms
                    .push(decode(value).with_context(|| format!("{}: Transform", at()))?),
                other => {
                    let weir_api = kind
                        .api_version
                        .as_deref()
                        .is_some_and(|v| v.starts_with("weir.dev/"));
                    let near =
                        other.and_then(|k| KINDS.into_iter().find(|w| w.eq_ignore_ascii_case(k)));
                    if let Some(w) = near {
                        bail!(
                            "{}: kind {:?} is not a Weir kind; did you mean {w}?",
                            at(),
                            other.unwrap_or_default()
                        );
                    }
                    if weir_api {
                        bail!(
                            "{}: kind {:?} is not a kind of {}: use DataStream or Transform",
                            at(),
                            other.unwrap_or_default(),
                            kind.api_version.as_deref().unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    Ok(out)
}

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
        let _ = match weir_engine::sql::partitioning::plan(&c) {
            Ok(Partitioning::AsIs) => {
                writeln!(
                    out,
                    "stages: one task per input partition, as the inputs are keyed"
                )
            }
            Ok(Partitioning::Repartition(keys)) => {
                let topic = format!("{ns}.{name}.repartition");
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
