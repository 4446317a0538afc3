//! Which topics a plan needs, with which partition counts, and how its tasks map onto them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use weir_crds::names::TransformNames;

use crate::config::RunConfig;
use crate::metrics::Role;
use crate::route::Route;
use crate::transform::Job;

/// The topics and names a worker uses, resolved from the job and the flags: the names the
/// operator gives ([`TransformNames`]) unless a flag overrides one.
#[derive(Debug, Clone)]
pub struct Names {
    /// The consumer group.
    pub group_id: String,
    /// The restore consumer's group (it commits nothing; the name only identifies it).
    pub restore_group_id: String,
    /// The changelog topic.
    pub changelog: String,
    /// The dead-letter topic.
    pub dead_letters: String,
    /// The repartition topic (used when the plan repartitions).
    pub repartition: String,
    /// The producer's transactional id.
    pub transactional_id: String,
}

impl Names {
    /// The names for `job` under `config`.
    pub fn new(job: &Job, config: &RunConfig) -> Self {
        let names = TransformNames::new(&job.namespace, &job.name, 0);
        let group_id = config.group_id.clone().unwrap_or_else(|| names.group_id());
        Self {
            restore_group_id: match &config.group_id {
                Some(g) => format!("{g}.restore"),
                None => names.restore_group_id(),
            },
            group_id,
            changelog: config
                .changelog_topic
                .clone()
                .unwrap_or_else(|| names.changelog()),
            dead_letters: config
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| names.dead_letters()),
            repartition: config
                .repartition_topic
                .clone()
                .unwrap_or_else(|| names.repartition()),
            transactional_id: names.transactional_id(&config.worker_name),
        }
    }
}

/// How the worker's tasks map onto the topics: fixed once the topics are checked.
pub(super) struct Layout {
    /// The repartition stage, when the plan has one.
    pub route: Option<Route>,
    /// Each input's partition count.
    pub input_partitions: Vec<usize>,
    /// The input topics, in the plan's order.
    input_topics: Vec<String>,
    /// The topics a running task reads: the inputs, or the repartition topic.
    run_sources: Vec<String>,
    /// Each subscribed topic: the role of the tasks reading it, and its index among their
    /// sources.
    topic_index: BTreeMap<String, (Role, usize)>,
    /// Each input's index by its DataStream id (the repartition topic names inputs so).
    pub input_ids: BTreeMap<String, usize>,
}

impl Layout {
    fn new(job: &Job, route: Option<Route>, input_partitions: Vec<usize>) -> Self {
        let mut topic_index = BTreeMap::new();
        let run_sources = match &route {
            Some(r) => {
                for (i, t) in job.input_topics.iter().enumerate() {
                    topic_index.insert(t.clone(), (Role::Route, i));
                }
                topic_index.insert(r.topic.clone(), (Role::Run, 0));
                vec![r.topic.clone()]
            }
            None => {
                for (i, t) in job.input_topics.iter().enumerate() {
                    topic_index.insert(t.clone(), (Role::Run, i));
                }
                job.input_topics.clone()
            }
        };
        Self {
            route,
            input_partitions,
            input_topics: job.input_topics.clone(),
            run_sources,
            topic_index,
            input_ids: job
                .compiled
                .inputs
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id(), i))
                .collect(),
        }
    }

    /// The topics the worker subscribes to.
    pub fn subscribed(&self) -> Vec<String> {
        self.topic_index.keys().cloned().collect()
    }

    /// The topics tasks of `role` read.
    pub fn sources(&self, role: Role) -> &[String] {
        match role {
            Role::Route => &self.input_topics,
            Role::Run => &self.run_sources,
        }
    }

    /// The role of the tasks reading `topic`, and its index among their sources.
    pub fn reader_of(&self, topic: &str) -> Option<(Role, usize)> {
        self.topic_index.get(topic).copied()
    }
}

/// Checks that every topic exists, with partition counts the plan can run on. Missing topics
/// are waited for up to `wait` (a topic created a moment ago may not be in the metadata yet).
pub(super) fn check_topics(
    job: &Job,
    names: &Names,
    config: &ClientConfig,
    wait: Duration,
) -> anyhow::Result<Layout> {
    let deadline = Instant::now() + wait;
    loop {
        match check_topics_once(job, names, config)? {
            Ok(layout) => return Ok(layout),
            Err(missing) if Instant::now() < deadline => {
                tracing::info!(topics = %missing.join(", "), "waiting for topics to exist");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(missing) => bail!(
                "Transform {}: these topics do not exist: {}",
                job.id,
                missing.join(", ")
            ),
        }
    }
}

/// What a topic is to the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Input `i`.
    Input(usize),
    /// The output or the dead-letter topic: it must exist, any partition count.
    Write,
    /// The changelog: one partition per task.
    Changelog,
    /// The repartition topic: one task per partition.
    Repartition,
}

/// The topics a plan needs, in the order they are looked up.
fn needed(job: &Job, names: &Names, stateful: bool, repartitions: bool) -> Vec<(Need, String)> {
    let mut out: Vec<(Need, String)> = (job.input_topics.iter().cloned().enumerate())
        .map(|(i, t)| (Need::Input(i), t))
        .collect();
    out.push((Need::Write, job.output_topic.clone()));
    out.push((Need::Write, names.dead_letters.clone()));
    if stateful {
        out.push((Need::Changelog, names.changelog.clone()));
    }
    if repartitions {
        out.push((Need::Repartition, names.repartition.clone()));
    }
    out
}

/// The partition counts found for a plan's topics.
#[derive(Debug, Default)]
struct Counts {
    /// Each input topic and its partition count.
    inputs: Vec<(String, usize)>,
    changelog: Option<usize>,
    repartition: Option<usize>,
}

/// How many tasks a plan runs over `counts`, or why it cannot run on them. `unkeyed` is
/// why the plan's operators cannot be partitioned (it then needs inputs of one partition).
fn task_count(
    job_id: &str,
    changelog: &str,
    counts: &Counts,
    unkeyed: Option<&str>,
    stateful: bool,
) -> anyhow::Result<usize> {
    let max = counts.inputs.iter().map(|(_, n)| *n).max().unwrap_or(1);
    if let Some(why) = unkeyed
        && max > 1
    {
        bail!(
            "Transform {job_id}: {why}. Over {max} input partitions this plan cannot give \
             correct results: group and join each input by one set of columns, or give the \
             inputs one partition"
        );
    }
    if counts.repartition.is_none() && stateful && counts.inputs.iter().any(|(_, n)| *n != max) {
        bail!(
            "Transform {job_id}: a stateful plan needs co-partitioned inputs with the same \
             number of partitions, but they have {}",
            counts
                .inputs
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let tasks = counts.repartition.unwrap_or(max);
    if let Some(n) = counts.changelog
        && n < tasks
    {
        bail!(
            "Transform {job_id}: the changelog topic {changelog} has {n} partitions but the \
             plan runs {tasks} tasks (one per {}partition): it needs one partition per task",
            if counts.repartition.is_some() {
                "repartition "
            } else {
                "input "
            }
        );
    }
    Ok(tasks)
}

/// One look at the metadata: `Ok(Err(missing))` when some topics are not there (yet).
fn check_topics_once(
    job: &Job,
    names: &Names,
    config: &ClientConfig,
) -> anyhow::Result<Result<Layout, Vec<String>>> {
    let probe: BaseConsumer = config.create().context("creating a metadata client")?;
    let partitions = |topic: &str| -> anyhow::Result<Option<usize>> {
        let md = probe
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        let Some(t) = md.topics().first() else {
            return Ok(None);
        };
        match t.error() {
            // Kafka hides a topic the principal may not describe; waiting would not help.
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) => bail!(
                "Transform {}: Kafka does not authorize this worker's principal to use topic \
                 {topic} (TOPIC_AUTHORIZATION_FAILED): a Transform reads and writes only the \
                 topics its ACLs grant",
                job.id
            ),
            Some(_) => Ok(None),
            None if t.partitions().is_empty() => Ok(None),
            None => Ok(Some(t.partitions().len())),
        }
    };
    let keys = match &job.partitioning {
        Ok(p) => Route::keys_of(p).map(<[_]>::to_vec),
        Err(_) => None,
    };
    let mut missing = Vec::new();
    let mut counts = Counts::default();
    for (need, topic) in needed(job, names, job.is_stateful(), keys.is_some()) {
        let Some(n) = partitions(&topic)? else {
            missing.push(topic);
            continue;
        };
        match need {
            Need::Input(_) => counts.inputs.push((topic, n)),
            Need::Write => {}
            Need::Changelog => counts.changelog = Some(n),
            Need::Repartition => counts.repartition = Some(n),
        }
    }
    if !missing.is_empty() {
        return Ok(Err(missing));
    }
    task_count(
        &job.id,
        &names.changelog,
        &counts,
        job.partitioning.as_ref().err().map(String::as_str),
        job.is_stateful(),
    )?;
    let route = match (keys, counts.repartition) {
        (Some(keys), Some(n)) => Some(Route::new(
            &job.compiled,
            &keys,
            names.repartition.clone(),
            n as i32,
        )?),
        _ => None,
    };
    let input_partitions = counts.inputs.iter().map(|(_, n)| *n).collect();
    Ok(Ok(Layout::new(job, route, input_partitions)))
}

#[cfg(test)]
mod tests {
    use super::{Counts, task_count};

    fn counts(inputs: &[usize], changelog: Option<usize>, repartition: Option<usize>) -> Counts {
        Counts {
            inputs: (inputs.iter().enumerate())
                .map(|(i, n)| (format!("t.in{i}"), *n))
                .collect(),
            changelog,
            repartition,
        }
    }

    fn tasks(c: &Counts, unkeyed: Option<&str>, stateful: bool) -> Result<usize, String> {
        task_count("t/x", "t.x.changelog", c, unkeyed, stateful).map_err(|e| e.to_string())
    }

    #[test]
    fn a_task_per_input_partition_or_per_repartition_partition() {
        assert_eq!(tasks(&counts(&[3, 3], Some(3), None), None, true), Ok(3));
        assert_eq!(tasks(&counts(&[4], None, None), None, false), Ok(4));
        assert_eq!(tasks(&counts(&[2, 5], Some(6), Some(6)), None, true), Ok(6));
        // A stateless plan reads inputs of any partition counts.
        assert_eq!(tasks(&counts(&[2, 5], None, None), None, false), Ok(5));
    }

    #[test]
    fn a_stateful_plan_refuses_inputs_that_are_not_co_partitioned() {
        let e = tasks(&counts(&[2, 3], Some(3), None), None, true).unwrap_err();
        assert!(e.contains("co-partitioned"), "{e}");
        assert!(e.contains("t.in0: 2, t.in1: 3"), "{e}");
    }

    #[test]
    fn a_changelog_needs_a_partition_per_task() {
        let e = tasks(&counts(&[4], Some(2), None), None, true).unwrap_err();
        assert!(e.contains("t.x.changelog has 2 partitions"), "{e}");
        assert!(e.contains("one per input partition"), "{e}");
        let e = tasks(&counts(&[1], Some(2), Some(3)), None, true).unwrap_err();
        assert!(e.contains("one per repartition partition"), "{e}");
    }

    #[test]
    fn a_plan_that_cannot_be_partitioned_runs_only_on_one_partition() {
        let why = "the join's keys differ";
        assert_eq!(
            tasks(&counts(&[1, 1], Some(1), None), Some(why), true),
            Ok(1)
        );
        let e = tasks(&counts(&[1, 2], Some(2), None), Some(why), true).unwrap_err();
        assert!(
            e.contains(why) && e.contains("Over 2 input partitions"),
            "{e}"
        );
    }
}
