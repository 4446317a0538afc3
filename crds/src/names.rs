//! The names two processes must agree on for one Transform: its internal topics, consumer
//! groups, transactional ids and Kafka principal. The operator creates the topics and the
//! ACLs under these names and the worker uses them; both derive them here.

/// The names of one Transform in one state epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformNames {
    namespace: String,
    name: String,
    epoch: i64,
}

impl TransformNames {
    /// The names of Transform `namespace/name` in state epoch `epoch` (0 is the first).
    pub fn new(namespace: &str, name: &str, epoch: i64) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            epoch,
        }
    }

    /// The same Transform in another epoch.
    pub fn in_epoch(&self, epoch: i64) -> Self {
        Self {
            epoch,
            ..self.clone()
        }
    }

    /// The state epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// `<namespace>.<name>`: the start of every internal topic's name.
    pub fn base(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// The part of a state topic's name that names the epoch: none for 0, `.e<n>` after.
    pub fn epoch_suffix(epoch: i64) -> String {
        if epoch == 0 {
            String::new()
        } else {
            format!(".e{epoch}")
        }
    }

    fn state(&self) -> String {
        format!("{}{}", self.base(), Self::epoch_suffix(self.epoch))
    }

    /// The dead-letter topic (the same in every epoch).
    pub fn dead_letters(&self) -> String {
        format!("{}.dead-letters", self.base())
    }

    /// The state changelog topic of this epoch.
    pub fn changelog(&self) -> String {
        format!("{}.changelog", self.state())
    }

    /// The repartition topic of this epoch.
    pub fn repartition(&self) -> String {
        format!("{}.repartition", self.state())
    }

    /// The workers' consumer group in this epoch.
    pub fn group_id(&self) -> String {
        format!("weir.{}", self.state())
    }

    /// The group id the state restorer's consumer carries (it never joins the group).
    pub fn restore_group_id(&self) -> String {
        format!("{}.restore", self.group_id())
    }

    /// The transactional id of worker `worker` (its pod name).
    pub fn transactional_id(&self, worker: &str) -> String {
        format!("{}{worker}", self.transactional_id_prefix())
    }

    /// What every transactional id of the Transform starts with, in any epoch.
    pub fn transactional_id_prefix(&self) -> String {
        format!("weir.{}.", self.base())
    }

    /// The Kafka user name of the Transform's own principal (managed credentials).
    pub fn principal_user(&self) -> String {
        format!("weir.{}", self.base())
    }
}

/// The kind of internal topic `topic` is named as (`changelog`, `repartition` or
/// `dead-letters`: the last part of every Transform's internal topic), if it is one. Such a
/// name belongs to the Transform `<namespace>.<name>` it starts with, never to a DataStream.
pub fn internal_topic_kind(topic: &str) -> Option<&'static str> {
    ["changelog", "repartition", "dead-letters"]
        .into_iter()
        .find(|kind| {
            topic
                .strip_suffix(kind)
                .and_then(|rest| rest.strip_suffix('.'))
                // `<namespace>.<name>` at least: one dot before the kind's.
                .is_some_and(|base| base.contains('.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topic_names_are_known_by_their_last_part() {
        let n = TransformNames::new("web", "t", 3);
        for topic in [n.changelog(), n.repartition(), n.dead_letters()] {
            assert!(internal_topic_kind(&topic).is_some(), "{topic}");
        }
        assert_eq!(internal_topic_kind("web.t.changelog"), Some("changelog"));
        for topic in [
            "web.changelog-v2",
            "web.orders",
            "changelog",
            "web.t.changelogs",
        ] {
            assert_eq!(internal_topic_kind(topic), None, "{topic}");
        }
    }

    #[test]
    fn names_follow_the_epoch_except_dead_letters_and_principal() {
        let n = TransformNames::new("web", "t", 0);
        assert_eq!(n.changelog(), "web.t.changelog");
        assert_eq!(n.group_id(), "weir.web.t");
        assert_eq!(n.restore_group_id(), "weir.web.t.restore");
        assert_eq!(
            n.transactional_id("t-worker-abc"),
            "weir.web.t.t-worker-abc"
        );
        let e2 = n.in_epoch(2);
        assert_eq!(e2.changelog(), "web.t.e2.changelog");
        assert_eq!(e2.repartition(), "web.t.e2.repartition");
        assert_eq!(e2.group_id(), "weir.web.t.e2");
        assert_eq!(e2.dead_letters(), "web.t.dead-letters");
        assert_eq!(e2.principal_user(), "weir.web.t");
        assert!(
            e2.transactional_id("w")
                .starts_with(&n.transactional_id_prefix())
        );
    }
}
