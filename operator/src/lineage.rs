//! Lineage: which Transforms read and write a DataStream, across namespaces, from the
//! Transforms' status (the inputs and output their last compile found).

use std::sync::Arc;

use kube::ResourceExt;
use weir_crds::compile::id_of;
use weir_crds::{DataStream, Transform};

/// Who reads and writes one DataStream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The Transforms reading it, as `namespace/name`, sorted.
    pub readers: Vec<String>,
    /// The Transform writing it.
    pub writer: Option<String>,
    /// Readers that no longer compile, with why.
    pub broken: Vec<(String, String)>,
}

/// The lineage of `ds` among `transforms`. A Transform being deleted no longer counts.
pub fn of(ds: &DataStream, transforms: &[Arc<Transform>]) -> Lineage {
    let id = id_of(&ds.metadata);
    let mut out = Lineage::default();
    for tf in transforms {
        if tf.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = tf.status.as_ref() else {
            continue;
        };
        let tf_id = id_of(&tf.metadata);
        if status.inputs.contains(&id) {
            out.readers.push(tf_id.clone());
            if let Some(c) = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Compiled" && c.status == "False")
            {
                out.broken.push((tf_id.clone(), c.message.clone()));
            }
        }
        let writes = status.output.as_deref() == Some(id.as_str())
            || (tf.namespace() == ds.namespace() && tf.spec.output.name == ds.name_any());
        if writes {
            out.writer = Some(tf_id);
        }
    }
    out.readers.sort();
    out.broken.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn tf(ns: &str, name: &str, inputs: &[&str], output: &str, compiled: bool) -> Arc<Transform> {
        let mut t: Transform = serde_yaml::from_str(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: {name}, namespace: {ns} }}
spec: {{ description: d, owner: o, sql: "SELECT 1", output: {{ name: {output} }} }}
"#
        ))
        .expect("valid");
        let mut status = weir_crds::TransformStatus {
            inputs: inputs.iter().map(|i| (*i).to_owned()).collect(),
            output: Some(format!("{ns}/{output}")),
            ..Default::default()
        };
        status.conditions.push(Condition {
            type_: "Compiled".into(),
            status: if compiled { "True" } else { "False" }.into(),
            reason: "x".into(),
            message: "line 1, column 8: no field nope".into(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        t.status = Some(status);
        Arc::new(t)
    }

    #[test]
    fn readers_writer_and_broken_readers_across_namespaces() {
        let ds: DataStream = serde_yaml::from_str(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: views, namespace: web }
spec: { description: d, owner: o, schema: { fields: [ { name: a, type: string } ] } }
"#,
        )
        .expect("valid");
        let all = vec![
            tf("analytics", "b", &["web/views"], "out-b", true),
            tf("web", "a", &["web/views", "web/x"], "out-a", false),
            tf("web", "producer", &["web/raw"], "views", true),
            tf("other", "c", &["web/x"], "out-c", true),
        ];
        let l = of(&ds, &all);
        assert_eq!(l.readers, vec!["analytics/b", "web/a"]);
        assert_eq!(l.writer.as_deref(), Some("web/producer"));
        assert_eq!(l.broken.len(), 1);
        assert_eq!(l.broken[0].0, "web/a");
    }
}
