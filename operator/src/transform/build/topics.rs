//! The names and settings of a Transform's internal topics.

use weir_crds::Transform;
use weir_sql::CompiledTransform;
use weir_sql::partitioning::Partitioning;

use super::names;
use crate::kafka_admin::DesiredTopic;

/// The names of a Transform's internal topics, as the worker derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopics {
    /// Dead letters, always.
    pub dead_letters: String,
    /// State, when the plan keeps state.
    pub changelog: Option<String>,
    /// The repartition stage's topic, when the plan has one.
    pub repartition: Option<String>,
}

impl InternalTopics {
    /// The topics a compiled plan needs in state epoch `epoch`.
    pub fn of(
        tf: &Transform,
        compiled: &CompiledTransform,
        partitioning: &Partitioning,
        epoch: i64,
    ) -> Self {
        let names = names(tf, epoch);
        Self {
            dead_letters: names.dead_letters(),
            changelog: compiled.is_stateful().then(|| names.changelog()),
            repartition: matches!(partitioning, Partitioning::Repartition(_))
                .then(|| names.repartition()),
        }
    }

    /// The state topics of the epochs before `epoch` (to delete once it runs).
    pub fn retired(tf: &Transform, epoch: i64) -> Vec<String> {
        let names = names(tf, 0);
        (0..epoch)
            .flat_map(|e| {
                let n = names.in_epoch(e);
                [n.changelog(), n.repartition()]
            })
            .collect()
    }

    /// Every internal topic name a Transform could have up to epoch `epoch`, needed or not
    /// (for deletion).
    pub fn all(tf: &Transform, epoch: i64) -> Vec<String> {
        let mut all = Self::retired(tf, epoch + 1);
        all.push(names(tf, epoch).dead_letters());
        all
    }

    /// The topics to create: dead letters like the output, the changelog compacted with
    /// one partition per task, the repartition topic with one partition per task.
    pub fn desired(&self, tasks: i32, replication_factor: i32) -> Vec<DesiredTopic> {
        let topic = |name: &str, configs: &[(&str, &str)]| DesiredTopic {
            name: name.to_owned(),
            partitions: tasks.max(1),
            replication_factor,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut out = vec![topic(&self.dead_letters, &[("cleanup.policy", "delete")])];
        if let Some(c) = &self.changelog {
            out.push(topic(c, &[("cleanup.policy", "compact")]));
        }
        if let Some(r) = &self.repartition {
            out.push(topic(r, &[("cleanup.policy", "delete")]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{compiled, transform, views};
    use super::*;

    #[test]
    fn internal_topics_follow_the_plan() {
        let ds = views();
        let stateless = transform("SELECT user_id FROM page_views");
        let c = compiled(&stateless, &ds);
        let p = weir_sql::partitioning::plan(&c).expect("plans");
        let t = InternalTopics::of(&stateless, &c, &p, 0);
        assert_eq!(t.dead_letters, "web.t.dead-letters");
        assert_eq!(t.changelog, None);
        assert_eq!(t.repartition, None);
        let grouped = transform("SELECT url, COUNT(*) AS n FROM page_views GROUP BY url");
        let c = compiled(&grouped, &ds);
        let p = weir_sql::partitioning::plan(&c).expect("plans");
        let t = InternalTopics::of(&grouped, &c, &p, 0);
        assert_eq!(
            InternalTopics::of(&grouped, &c, &p, 1).changelog.as_deref(),
            Some("web.t.e1.changelog")
        );
        assert_eq!(
            InternalTopics::retired(&grouped, 1),
            vec!["web.t.changelog", "web.t.repartition"]
        );
        assert_eq!(t.changelog.as_deref(), Some("web.t.changelog"));
        assert_eq!(t.repartition.as_deref(), Some("web.t.repartition"));
        let desired = t.desired(3, 1);
        assert!(desired.iter().all(|d| d.partitions == 3));
    }
}
