//! What it takes to bring a topic to its spec: the config changes, a lowered retention
//! worth naming, and what Kafka cannot do in place.

use std::collections::{BTreeMap, BTreeSet};

use weir_crds::data_stream::ConfigOwnership;

use super::status::{Problem, Reason};
use crate::kafka_admin::{ConfigChange, DesiredTopic, TopicState};

/// What the spec asks for that Kafka cannot do in place.
pub fn limits(topic: &DesiredTopic, state: &TopicState) -> Option<Problem> {
    if state.replication_factor != topic.replication_factor {
        return Some(Problem::new(
            Reason::ReplicationFactorChangeUnsupported,
            format!(
                "the spec asks for replication factor {} but topic {} has {}; Kafka cannot change \
                 it in place (reassign partitions with Kafka's tools, or restore the spec)",
                topic.replication_factor, topic.name, state.replication_factor
            ),
        ));
    }
    if state.partitions > topic.partitions {
        return Some(Problem::new(
            Reason::PartitionsDecreaseUnsupported,
            format!(
                "the spec asks for {} partitions but topic {} has {}; Kafka cannot remove partitions",
                topic.partitions, topic.name, state.partitions
            ),
        ));
    }
    None
}

/// The per-key changes that bring the topic's own configs (`actual`) to the spec's
/// (`desired`): set what differs; remove keys Weir managed before (`managed_before`) that the
/// spec no longer names; under [`ConfigOwnership::All`], remove every other key too. Keys
/// Weir never managed are otherwise left alone.
pub fn config_changes(
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
    managed_before: &BTreeSet<String>,
    ownership: ConfigOwnership,
) -> Vec<ConfigChange> {
    let set = desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| ConfigChange::Set(k.clone(), v.clone()));
    let delete = actual
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .filter(|k| ownership == ConfigOwnership::All || managed_before.contains(*k))
        .map(|k| ConfigChange::Delete(k.clone()));
    set.chain(delete).collect()
}

/// The changes as `key: from -> to`, for Events.
pub fn describe_changes(changes: &[ConfigChange], actual: &BTreeMap<String, String>) -> String {
    if changes.is_empty() {
        return "none".into();
    }
    changes
        .iter()
        .map(|c| {
            let (key, to) = match c {
                ConfigChange::Set(k, v) => (k, v.as_str()),
                ConfigChange::Delete(k) => (k, "(default)"),
            };
            let from = actual.get(key).map_or("(default)", String::as_str);
            format!("{key}: {from} -> {to}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The retention limits an adoption would lower, as `key from -> to`: a smaller
/// `retention.ms`/`retention.bytes` than the topic has (`-1`, unlimited, is larger than any),
/// or removing one the topic sets (the broker's default may be smaller).
pub fn retention_lowered(
    desired: &BTreeMap<String, String>,
    effective: &BTreeMap<String, String>,
    changes: &[ConfigChange],
) -> Vec<String> {
    let limit = |v: Option<&String>| -> Option<i64> {
        v.and_then(|v| v.parse::<i64>().ok())
            .map(|n| if n < 0 { i64::MAX } else { n })
    };
    let mut lowered = Vec::new();
    for key in ["retention.ms", "retention.bytes"] {
        let have = effective.get(key);
        match (limit(desired.get(key)), limit(have)) {
            (Some(want), Some(now)) if want < now => lowered.push(format!(
                "{key} {} -> {}",
                have.map_or("(default)", String::as_str),
                desired.get(key).map_or("", String::as_str)
            )),
            _ => {}
        }
        if changes
            .iter()
            .any(|c| matches!(c, ConfigChange::Delete(k) if k == key))
        {
            lowered.push(format!(
                "{key} {} -> the broker's default",
                have.map_or("(default)", String::as_str)
            ));
        }
    }
    lowered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(k: &str, v: &str) -> ConfigChange {
        ConfigChange::Set(k.into(), v.into())
    }

    #[test]
    fn config_changes_touch_only_the_keys_weir_manages() {
        let desired = map(&[("cleanup.policy", "delete"), ("retention.ms", "1000")]);
        // The topic: one managed key drifted, one Weir set before and the spec dropped, one
        // an admin set (a replication throttle).
        let actual = map(&[
            ("retention.ms", "5"),
            ("max.message.bytes", "10"),
            ("leader.replication.throttled.replicas", "*"),
        ]);
        let before: BTreeSet<String> = ["max.message.bytes".to_owned()].into();
        let changes = config_changes(&desired, &actual, &before, ConfigOwnership::Named);
        assert_eq!(
            changes,
            vec![
                set("cleanup.policy", "delete"),
                set("retention.ms", "1000"),
                ConfigChange::Delete("max.message.bytes".into()),
            ]
        );
        assert_eq!(
            describe_changes(&changes, &actual),
            "cleanup.policy: (default) -> delete, retention.ms: 5 -> 1000, max.message.bytes: 10 -> (default)"
        );
        // Owning every key removes the admin's too.
        let all = config_changes(&desired, &actual, &before, ConfigOwnership::All);
        assert!(all.contains(&ConfigChange::Delete(
            "leader.replication.throttled.replicas".into()
        )));
        assert!(config_changes(&desired, &desired, &before, ConfigOwnership::All).is_empty());
    }

    #[test]
    fn an_adoption_that_lowers_retention_is_named() {
        let desired = map(&[("retention.ms", "604800000")]);
        let forever = map(&[("retention.ms", "-1"), ("retention.bytes", "-1")]);
        assert_eq!(
            retention_lowered(&desired, &forever, &[]),
            vec!["retention.ms -1 -> 604800000"]
        );
        let short = map(&[("retention.ms", "1000")]);
        assert!(retention_lowered(&desired, &short, &[]).is_empty());
        // Removing a retention the topic sets may fall back to a smaller default.
        let removed = [ConfigChange::Delete("retention.bytes".into())];
        assert_eq!(
            retention_lowered(&desired, &forever, &removed),
            vec![
                "retention.ms -1 -> 604800000",
                "retention.bytes -1 -> the broker's default"
            ]
        );
    }

    #[test]
    fn limits_report_what_kafka_cannot_do() {
        let topic = DesiredTopic {
            name: "t".into(),
            partitions: 3,
            replication_factor: 3,
            configs: BTreeMap::new(),
        };
        let state = TopicState {
            replication_factor: 1,
            ..crate::data_stream::ownership::tests::topic_state("id")
        };
        let p = limits(&topic, &state).expect("rf change");
        assert_eq!(p.reason, Reason::ReplicationFactorChangeUnsupported);
        let state = TopicState {
            partitions: 6,
            replication_factor: 3,
            ..state
        };
        assert_eq!(
            limits(&topic, &state).map(|p| p.reason),
            Some(Reason::PartitionsDecreaseUnsupported)
        );
    }
}
