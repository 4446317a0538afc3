//! The Transform a worker runs: its compiled plan, its topics and its policies, resolved
//! from the same YAML the `weir` CLI reads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use weir_crds::transform::{DeliveryGuarantee, Expectation, OnFailure};
use weir_crds::{DataStream, Transform, compile};
use weir_sql::CompiledTransform;
use weir_sql::partitioning::{self, Partitioning};

use crate::resources::{self, Resources};

/// Everything the worker needs to know about the Transform it runs.
#[derive(Debug, Clone)]
pub struct Job {
    /// `namespace/name` of the Transform.
    pub id: String,
    /// The Transform's namespace.
    pub namespace: String,
    /// The Transform's name.
    pub name: String,
    /// The compiled plan.
    pub compiled: CompiledTransform,
    /// Each input's topic, in the order of `compiled.inputs`.
    pub input_topics: Vec<String>,
    /// The output DataStream's topic.
    pub output_topic: String,
    /// What happens to a record that cannot be processed.
    pub error_policy: OnFailure,
    /// Exactly once or at least once.
    pub delivery: DeliveryGuarantee,
    /// Where a partition with no committed offset starts.
    pub start_from: StartFrom,
    /// How long an input partition may be silent before it stops holding time back.
    pub idle_timeout: Duration,
    /// How the inputs reach the stateful operators, or why no single repartition stage
    /// makes the plan correct at more than one partition.
    pub partitioning: Result<Partitioning, String>,
    /// `spec.expectations`, each known to compile.
    pub expectations: Vec<Expectation>,
    /// Each input's `spec.eventTime.maxFutureSkew` in milliseconds, in the order of
    /// `compiled.inputs` (`None`: no limit).
    pub max_future_skew_ms: Vec<Option<i64>>,
}

/// Where a partition with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest record kept.
    Earliest,
    /// Only records written from now on.
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

impl StartFrom {
    /// Parses `spec.startFrom`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "earliest" => Self::Earliest,
            "latest" => Self::Latest,
            t => {
                let at = humantime::parse_rfc3339_weak(t)
                    .or_else(|_| humantime::parse_rfc3339(t))
                    .with_context(|| {
                        format!("spec.startFrom: {t:?} is not earliest, latest or an RFC 3339 time")
                    })?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Self::Timestamp(ms)
            }
        })
    }
}

/// The topic a DataStream's records live in: `spec.topic`, or `<namespace>.<name>`.
pub fn topic_of(ds: &DataStream) -> String {
    ds.topic_name()
}

impl Job {
    /// Loads the Transform `which` (`namespace/name`, or the only one) from `files` and
    /// compiles it against the DataStreams in the same files.
    pub fn load(files: &[impl AsRef<Path>], which: Option<&str>) -> anyhow::Result<Self> {
        let res = resources::load(files)?;
        let tf = pick(&res, which)?;
        Self::from_resources(&res, tf)
    }

    fn from_resources(res: &Resources, tf: &Transform) -> anyhow::Result<Self> {
        let namespace = tf
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = tf.metadata.name.clone().unwrap_or_default();
        let id = format!("{namespace}/{name}");
        let streams = res
            .data_streams
            .iter()
            .map(compile::stream_input)
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let compiled = compile::compile_transform(tf, &streams)
            .map_err(|e| anyhow::anyhow!("Transform {id}: {e}"))?;
        let ds_of = |ns: &str, n: &str| {
            res.data_streams.iter().find(|d| {
                d.metadata.namespace.as_deref().unwrap_or("default") == ns
                    && d.metadata.name.as_deref() == Some(n)
            })
        };
        let input_topics = compiled
            .inputs
            .iter()
            .map(|i| {
                ds_of(&i.namespace, &i.name)
                    .map(topic_of)
                    .with_context(|| format!("DataStream {} is not in the files", i.id()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let max_future_skew_ms = compiled
            .inputs
            .iter()
            .map(|i| {
                let skew = ds_of(&i.namespace, &i.name)
                    .and_then(|d| d.spec.event_time.as_ref())
                    .and_then(|et| et.max_future_skew.as_ref());
                skew.map(|d| d.millis()).transpose().map_err(|e| {
                    anyhow::anyhow!("DataStream {}: spec.eventTime.maxFutureSkew: {e}", i.id())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let output_topic = match ds_of(&namespace, &tf.spec.output.name) {
            Some(ds) => topic_of(ds),
            None => format!("{namespace}.{}", tf.spec.output.name),
        };
        if input_topics.contains(&output_topic) {
            bail!(
                "Transform {id}: spec.output: the output topic {output_topic} is also an input; \
                 a Transform cannot read its own output"
            );
        }
        let idle_timeout =
            compile::idle_timeout(tf).map_err(|e| anyhow::anyhow!("Transform {id}: {e}"))?;
        if let Err(e) = compile::compile_expectations(&tf.spec.expectations, &compiled) {
            bail!("Transform {id}: {e}");
        }
        Ok(Self {
            id,
            namespace,
            name,
            expectations: tf.spec.expectations.clone(),
            max_future_skew_ms,
            partitioning: partitioning::plan(&compiled),
            compiled,
            input_topics,
            output_topic,
            error_policy: tf.spec.error_policy,
            delivery: tf.spec.delivery_guarantee,
            start_from: StartFrom::parse(&tf.spec.start_from).with_context(|| {
                format!("Transform {}", tf.metadata.name.clone().unwrap_or_default())
            })?,
            idle_timeout,
        })
    }

    /// Whether the plan keeps state between records (and so needs a changelog).
    pub fn is_stateful(&self) -> bool {
        self.compiled.is_stateful()
    }
}

fn pick<'a>(res: &'a Resources, which: Option<&str>) -> anyhow::Result<&'a Transform> {
    let id = |t: &Transform| {
        format!(
            "{}/{}",
            t.metadata.namespace.as_deref().unwrap_or("default"),
            t.metadata.name.as_deref().unwrap_or_default()
        )
    };
    match (which, res.transforms.as_slice()) {
        (_, []) => bail!("no Transform in the given files"),
        (None, [one]) => Ok(one),
        (None, many) => bail!(
            "the files hold {} Transforms ({}): name one with --transform",
            many.len(),
            many.iter().map(id).collect::<Vec<_>>().join(", ")
        ),
        (Some(w), all) => all
            .iter()
            .find(|t| id(t) == w || t.metadata.name.as_deref() == Some(w))
            .with_context(|| {
                format!(
                    "no Transform {w} in the files (they hold {})",
                    all.iter().map(id).collect::<Vec<_>>().join(", ")
                )
            }),
    }
}
