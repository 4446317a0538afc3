//! Weir's resources read from YAML files: the DataStreams and Transforms that `weir test`
//! and `weir explain` check and that a worker runs (its ConfigMap holds them), refused
//! with the file and field when a document is not one Weir reads.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use weir_crds::{DataStream, Transform};

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
