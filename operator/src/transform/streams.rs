//! Whether a Transform may use a DataStream's topic, checked on every reconcile before the
//! workers are given it: isolation between namespaces holds on the data path even on a
//! cluster without an authorizer. A DataStream is used only when it is Ready for its
//! current generation, its status names the topic its spec does, that topic lies within
//! the prefixes its namespace may manage, and it is on the cluster the Transform runs on.
//! The workers then get the topic the status records, never one read from a spec alone.

use weir_crds::DataStream;
use weir_crds::compile::id_of;

use crate::data_stream::validated::check_topic_owner;

/// The topic a Transform may read or write for DataStream `ds`, or why it may not (a
/// message naming the DataStream).
pub fn usable_topic(
    ds: &DataStream,
    grants: &[(String, String)],
    cluster_id: Option<&str>,
) -> Result<String, String> {
    let id = id_of(&ds.metadata);
    let status = ds.status.as_ref();
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let current = match (
        status.and_then(|s| s.observed_generation),
        ds.metadata.generation,
    ) {
        (Some(seen), Some(generation)) => seen == generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    match ready {
        Some(c) if c.status == "True" && current => {}
        Some(c) if current => {
            return Err(format!(
                "DataStream {id} is not Ready ({}: {}); a Transform uses only a Ready \
                 DataStream's topic",
                c.reason, c.message
            ));
        }
        _ => return Err(format!("waiting for DataStream {id} to be Ready")),
    }
    let Some(topic) = status.and_then(|s| s.topic.clone()) else {
        return Err(format!("waiting for the topic of DataStream {id}"));
    };
    let declared = ds.topic_name();
    if topic != declared {
        return Err(format!(
            "DataStream {id} manages topic {topic:?} but its spec names {declared:?}; a \
             Transform uses neither until they agree"
        ));
    }
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("default");
    check_topic_owner(namespace, &topic, grants)
        .map_err(|why| format!("DataStream {id}: {why}"))?;
    if let (Some(want), Some(have)) = (cluster_id, status.and_then(|s| s.cluster_id.as_deref()))
        && want != have
    {
        return Err(format!(
            "DataStream {id}'s topic is on Kafka cluster {have}, not on the cluster this \
             Transform runs on ({want})"
        ));
    }
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn ds(
        ns: &str,
        name: &str,
        topic: Option<&str>,
        status_topic: &str,
        ready: bool,
    ) -> DataStream {
        let mut d: DataStream = serde_yaml::from_str(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: {name}, namespace: {ns}, generation: 2 }}
spec:
  description: d
  owner: o
  schema: {{ fields: [ {{ name: a, type: string }} ] }}
"#
        ))
        .expect("valid");
        d.spec.topic = topic.map(str::to_owned);
        d.status = Some(weir_crds::DataStreamStatus {
            observed_generation: Some(2),
            topic: Some(status_topic.to_owned()),
            cluster_id: Some("c1".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: if ready { "TopicReady" } else { "InvalidSpec" }.into(),
                message: "spec.topic: outside the namespace's prefix".into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: Some(2),
            }],
            ..Default::default()
        });
        d
    }

    #[test]
    fn a_ready_stream_of_ones_own_prefix_gives_its_status_topic() {
        let d = ds("team-a", "src", None, "team-a.src", true);
        assert_eq!(usable_topic(&d, &[], Some("c1")), Ok("team-a.src".into()));
    }

    #[test]
    fn another_teams_topic_is_never_handed_to_a_worker() {
        // The DataStream controller refused it: not Ready, with its reason passed on.
        let alias = ds(
            "team-a",
            "alias",
            Some("team-b.orders"),
            "team-b.orders",
            false,
        );
        let why = usable_topic(&alias, &[], None).unwrap_err();
        assert!(
            why.contains("DataStream team-a/alias is not Ready (InvalidSpec"),
            "{why}"
        );
        // Even a status claiming it Ready does not make it usable.
        let forged = ds(
            "team-a",
            "alias",
            Some("team-b.orders"),
            "team-b.orders",
            true,
        );
        let why = usable_topic(&forged, &[], None).unwrap_err();
        assert!(why.contains("outside namespace team-a's prefix"), "{why}");
        // Nor does a status that names another topic than the spec.
        let mismatch = ds("team-a", "x", None, "team-b.orders", true);
        let why = usable_topic(&mismatch, &[], None).unwrap_err();
        assert!(
            why.contains("manages topic \"team-b.orders\" but its spec names"),
            "{why}"
        );
        // Granted by the operator's configuration, it is.
        let grants = vec![("team-a".to_owned(), "team-b.".to_owned())];
        assert!(usable_topic(&forged, &grants, None).is_ok());
    }

    #[test]
    fn a_stale_status_or_another_cluster_is_refused() {
        let mut d = ds("team-a", "src", None, "team-a.src", true);
        d.metadata.generation = Some(3);
        assert!(
            usable_topic(&d, &[], None)
                .unwrap_err()
                .starts_with("waiting for")
        );
        let d = ds("team-a", "src", None, "team-a.src", true);
        let why = usable_topic(&d, &[], Some("c2")).unwrap_err();
        assert!(why.contains("on Kafka cluster c1"), "{why}");
    }
}
