//! DataStream fixtures and conditions the suites share.

use kube::api::{Api, Patch, PatchParams};
use weir_crds::{DataStream, Transform};

/// Server-side applies one YAML document, a DataStream or a Transform, in namespace `ns`
/// (as `kubectl apply --server-side` would, field manager `weir-tests`). Panics with the
/// apiserver's answer if it is refused.
pub async fn apply(client: &kube::Client, ns: &str, yaml: &str) {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("valid YAML");
    let name = value["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    let params = PatchParams::apply("weir-tests").force();
    match value["kind"].as_str() {
        Some("DataStream") => {
            Api::<DataStream>::namespaced(client.clone(), ns)
                .patch(&name, &params, &Patch::Apply(&value))
                .await
                .expect("apply DataStream");
        }
        Some("Transform") => {
            Api::<Transform>::namespaced(client.clone(), ns)
                .patch(&name, &params, &Patch::Apply(&value))
                .await
                .expect("apply Transform");
        }
        other => panic!("unexpected kind {other:?}"),
    }
}

/// A DataStream named `name` with a small valid spec; `extra` is more spec YAML, indented
/// by two spaces.
pub fn data_stream(name: &str, extra: &str) -> DataStream {
    let yaml = format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: {name} }}
spec:
  description: Page views.
  owner: web@example.com
  partitions: 3
  retention: 7d
  schema:
    fields:
      - {{ name: user_id, type: string, nullable: false }}
      - {{ name: url, type: string }}
      - {{ name: ts, type: timestamp }}
  key: [user_id]
  eventTime: {{ field: ts, maxOutOfOrderness: 5s }}
{extra}"#
    );
    match serde_yaml::from_str(&yaml) {
        Ok(ds) => ds,
        Err(e) => panic!("fixture YAML does not parse: {e}\n{yaml}"),
    }
}

/// The Ready condition's `(status, reason, message)`, if any.
pub fn ready_condition(ds: &DataStream) -> Option<(String, String, String)> {
    condition(ds, "Ready")
}

/// The `(status, reason, message)` of the condition of type `type_`, if any.
pub fn condition(ds: &DataStream, type_: &str) -> Option<(String, String, String)> {
    ds.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A condition for [`crate::await_condition`]: Ready=True for the current generation.
pub fn is_ready() -> impl Fn(Option<&DataStream>) -> bool {
    |ds| {
        ds.is_some_and(|ds| {
            let current =
                ds.status.as_ref().and_then(|s| s.observed_generation) == ds.metadata.generation;
            current && ready_condition(ds).is_some_and(|(s, _, _)| s == "True")
        })
    }
}

/// A condition: Ready has this reason (whatever its status).
pub fn has_reason(reason: &'static str) -> impl Fn(Option<&DataStream>) -> bool {
    has_condition_reason("Ready", reason)
}

/// A condition: the condition of type `type_` has this reason (whatever its status).
pub fn has_condition_reason(
    type_: &'static str,
    reason: &'static str,
) -> impl Fn(Option<&DataStream>) -> bool {
    move |ds| {
        ds.and_then(|d| condition(d, type_))
            .is_some_and(|(_, r, _)| r == reason)
    }
}
