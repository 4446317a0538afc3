//! Producing and consuming records on the test broker.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Error, Result};

/// One record as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's key, if any.
    pub key: Option<Vec<u8>>,
    /// The record's value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// The partition it was read from (or is to be written to, if set).
    pub partition: Option<i32>,
    /// Its headers, in order (read only; produce ignores them).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A record with a UTF-8 key and value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: Some(key.into().into_bytes()),
            value: Some(value.into().into_bytes()),
            partition: None,
            headers: Vec::new(),
        }
    }

    /// The header `name` as UTF-8 text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The value as UTF-8 text (empty for a tombstone).
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }

    /// The key as UTF-8 text (empty when absent).
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
}

/// A base client config for the broker at `bootstrap`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    config
}

/// Creates a topic and waits until the broker reports it.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    create_topic_with(bootstrap, topic, partitions, &[]).await
}

/// Creates a topic with topic configs (such as `cleanup.policy=compact`).
pub async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)
        .create()
        .map_err(|e| Error::Kafka(format!("creating an admin client: {e}")))?;
    let results = admin
        .create_topics(
            &[configs.iter().fold(
                NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| Error::Kafka(format!("creating topic {topic}: {e}")))?;
    for r in results {
        r.map_err(|(t, e)| Error::Kafka(format!("creating topic {t}: {e}")))?;
    }
    wait_for_topic(bootstrap, topic, partitions).await
}

/// Waits until the broker's metadata shows `topic` with `partitions` led partitions: a
/// topic just created may not be visible yet to the next client that asks.
pub async fn wait_for_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let probe: rdkafka::consumer::BaseConsumer = client_config(bootstrap)
        .create()
        .map_err(|e| Error::Kafka(format!("creating a metadata client: {e}")))?;
    let probe = std::sync::Arc::new(probe);
    let want = usize::try_from(partitions).unwrap_or_default();
    crate::wait_until(
        format!("topic {topic} with {partitions} led partitions in the metadata"),
        Duration::from_secs(30),
        || {
            let (probe, topic) = (probe.clone(), topic.to_owned());
            async move {
                tokio::task::spawn_blocking(move || {
                    let md = probe
                        .fetch_metadata(Some(&topic), Duration::from_secs(5))
                        .map_err(|e| e.to_string())?;
                    let t = md.topics().first().ok_or("no such topic")?;
                    let led = t.partitions().iter().filter(|p| p.leader() >= 0).count();
                    match t.error() {
                        None if t.partitions().len() == want && led == want => Ok(()),
                        None => Err(format!(
                            "{} partitions, {led} with a leader",
                            t.partitions().len()
                        )),
                        Some(e) => Err(format!("{e:?}")),
                    }
                })
                .await
                .map_err(|e| e.to_string())?
            }
        },
    )
    .await
}

/// Produces `records` to `topic` in order and waits for every acknowledgement.
pub async fn produce(bootstrap: &str, topic: &str, records: &[Record]) -> Result<()> {
    let producer: FutureProducer = client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| Error::Kafka(format!("creating a producer: {e}")))?;
    let sends = records.iter().map(|r| {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        producer.send(record, Duration::from_secs(30))
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| Error::Kafka(format!("producing to {topic}: {e}")))?;
    }
    Ok(())
}

/// How a consumer reads: `read_committed` hides aborted transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// See every record, including those of aborted transactions.
    ReadUncommitted,
    /// See only records of committed transactions.
    ReadCommitted,
}

/// Reads `topic` from the beginning until `count` records arrived or `timeout` passed,
/// and returns what was read, in the order each partition holds it.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    count: usize,
    isolation: Isolation,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let consumer: StreamConsumer = client_config(bootstrap)
        .set("group.id", format!("weir-test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .create()
        .map_err(|e| Error::Kafka(format!("creating a consumer: {e}")))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::Kafka(format!("subscribing to {topic}: {e}")))?;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < count {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Error::Kafka(format!("consuming {topic}: {e}"))),
            Ok(Some(Ok(m))) => out.push(Record {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                partition: Some(m.partition()),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    Ok(out)
}

/// Whether some transaction on `topic` is still open: the last stable offset of a
/// partition lags its high watermark.
pub fn open_transactions(bootstrap: &str, topic: &str, partitions: i32) -> Result<bool> {
    use rdkafka::consumer::BaseConsumer;
    let high = |isolation: &str| -> Result<Vec<i64>> {
        let c: BaseConsumer = client_config(bootstrap)
            .set("group.id", format!("weir-test-{}", uuid::Uuid::new_v4()))
            .set("isolation.level", isolation)
            .create()
            .map_err(|e| Error::Kafka(format!("creating a consumer: {e}")))?;
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map(|(_, h)| h)
                    .map_err(|e| Error::Kafka(format!("watermarks of {topic}/{p}: {e}")))
            })
            .collect()
    };
    Ok(high("read_committed")? != high("read_uncommitted")?)
}

/// Reads all of `topic` (`read_committed`): reads for `window` at a time, until two
/// reads in a row see the same number of records (for at most five minutes).
pub async fn consume_all(bootstrap: &str, topic: &str, window: Duration) -> Result<Vec<Record>> {
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    crate::poll_until(
        format!("reads of {topic} to see the same records twice"),
        Duration::from_secs(300),
        Duration::ZERO,
        || {
            let last = last.clone();
            async move {
                let got = consume(
                    bootstrap,
                    topic,
                    usize::MAX,
                    Isolation::ReadCommitted,
                    window,
                )
                .await?;
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if *last == Some(got.len()) {
                    return Ok(Ok(got));
                }
                *last = Some(got.len());
                Ok(Err(format!("{} records", got.len())))
            }
        },
    )
    .await
}
