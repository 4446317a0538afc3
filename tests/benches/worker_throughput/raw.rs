//! The baseline: a plain rdkafka consume-and-produce loop (no engine) over the same records.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir_tests::records;

/// [`raw_loop`] off the async runtime.
pub async fn raw_run(bootstrap: &str, n: usize) -> anyhow::Result<Duration> {
    raw_run_with(bootstrap, n, BTreeMap::new()).await
}

/// [`raw_run`] with more client settings (another listener and its security).
pub async fn raw_run_with(
    bootstrap: &str,
    n: usize,
    settings: BTreeMap<String, String>,
) -> anyhow::Result<Duration> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || raw_loop(&bootstrap, n, &settings)).await?
}

fn raw_loop(
    bootstrap: &str,
    n: usize,
    settings: &BTreeMap<String, String>,
) -> anyhow::Result<Duration> {
    let config = |mut c: rdkafka::ClientConfig| {
        for (k, v) in settings {
            c.set(k, v);
        }
        c
    };
    let consumer: BaseConsumer = config(records::client_config(bootstrap))
        .set("group.id", "bench.raw")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let producer: ThreadedProducer<_> = config(records::client_config(bootstrap))
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    records_topic(&consumer, "bench.bids")?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("bench.raw-out");
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(v) = m.payload() {
                rec = rec.payload(v);
            }
            while let Err((e, r)) = producer.send(rec) {
                anyhow::ensure!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "{e}"
                );
                rec = r;
                producer.poll(Duration::from_millis(5));
            }
            seen += 1;
        }
    }
    // Not `flush`, which waits in steps of 100 ms: the baseline's wait ends with its last
    // delivery, as the worker's does.
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.in_flight_count() > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the raw loop's records were not delivered"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(started.elapsed())
}

pub fn records_topic(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(())
}
