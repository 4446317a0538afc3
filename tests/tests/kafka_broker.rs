//! The test kit's Kafka broker is a real one: ordered partitions and transactions.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use weir_tests::Stack;
use weir_tests::records::{self, Isolation, Record, client_config};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn ten_thousand_records_come_back_in_order() {
    let stack = Stack::shared().await;
    let bootstrap = stack.bootstrap_servers();
    let topic = unique("ordered");
    records::create_topic(&bootstrap, &topic, 1)
        .await
        .expect("create topic");

    let sent: Vec<Record> = (0..10_000)
        .map(|i| Record::new(format!("k{}", i % 7), format!("record-{i:05}")))
        .collect();
    records::produce(&bootstrap, &topic, &sent)
        .await
        .expect("produce");

    let got = records::consume(
        &bootstrap,
        &topic,
        sent.len(),
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .await
    .expect("consume");
    assert_eq!(got.len(), sent.len());
    let got_values: Vec<String> = got.iter().map(Record::value_str).collect();
    let sent_values: Vec<String> = sent.iter().map(Record::value_str).collect();
    assert_eq!(got_values, sent_values, "records came back out of order");
}

#[tokio::test]
async fn read_committed_sees_only_committed_transactions() {
    let stack = Stack::shared().await;
    let bootstrap = stack.bootstrap_servers();
    let topic = unique("txn");
    records::create_topic(&bootstrap, &topic, 1)
        .await
        .expect("create topic");

    let b = bootstrap.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = client_config(&b)
            .set("transactional.id", unique("weir-test-txn"))
            .create()
            .expect("producer");
        let timeout = Duration::from_secs(30);
        producer
            .init_transactions(timeout)
            .expect("init transactions");

        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            let v = format!("committed-{i}");
            producer
                .send(BaseRecord::<str, str>::to(&t).key("k").payload(&v))
                .expect("send");
        }
        producer.commit_transaction(timeout).expect("commit");

        producer.begin_transaction().expect("begin");
        for i in 0..3 {
            let v = format!("aborted-{i}");
            producer
                .send(BaseRecord::<str, str>::to(&t).key("k").payload(&v))
                .expect("send");
        }
        producer.flush(timeout).expect("flush");
        producer.abort_transaction(timeout).expect("abort");
    })
    .await
    .expect("transactions");

    let committed = records::consume(
        &bootstrap,
        &topic,
        4,
        Isolation::ReadCommitted,
        Duration::from_secs(10),
    )
    .await
    .expect("consume read_committed");
    let values: Vec<String> = committed.iter().map(Record::value_str).collect();
    assert_eq!(values, ["committed-0", "committed-1", "committed-2"]);

    // The aborted records are in the log: a read_uncommitted consumer sees them.
    let everything = records::consume(
        &bootstrap,
        &topic,
        6,
        Isolation::ReadUncommitted,
        Duration::from_secs(30),
    )
    .await
    .expect("consume read_uncommitted");
    assert_eq!(everything.len(), 6);
    assert!(everything.iter().any(|r| r.value_str() == "aborted-0"));
}

/// Kafka ships with `auto.create.topics.enable=true`: a metadata request for a missing
/// topic creates it with the broker's defaults unless the client says not to. Neither
/// the operator (describing a topic before creating it) nor a worker (waiting for its
/// topics at start-up) may create one that way.
#[tokio::test]
async fn asking_about_a_missing_topic_never_creates_it() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let dir = tempfile::tempdir().unwrap();
    let kafka = weir_tests::Kafka::start_auto_creating(&dir.path().join("kafka"))
        .await
        .unwrap();
    let bootstrap = kafka.bootstrap_servers();

    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);
    let topics = weir_operator::kafka_admin::KafkaAdmin::new(config).unwrap();
    assert!(topics.describe("ns.never-created").await.unwrap().is_none());

    // A worker whose output topic is missing refuses to start after its wait.
    let yaml = dir.path().join("t.yaml");
    std::fs::write(
        &yaml,
        "apiVersion: weir.dev/v1alpha1\nkind: DataStream\nmetadata: { name: a, namespace: ns }\n\
         spec:\n  description: A.\n  owner: o@example.com\n  topic: ns.worker-in\n  schema:\n    \
         fields: [ { name: x, type: bigint } ]\n---\n\
         apiVersion: weir.dev/v1alpha1\nkind: Transform\nmetadata: { name: t, namespace: ns }\n\
         spec:\n  description: T.\n  owner: o@example.com\n  output: { name: b }\n  sql: SELECT x FROM a\n",
    )
    .unwrap();
    let mut w = weir_tests::worker::Worker::start(
        dir.path(),
        &bootstrap,
        &[yaml],
        "w",
        &[("WEIR_TOPICS_TIMEOUT", "3s".to_owned())],
    )
    .unwrap();
    let code = w.wait_exit(Duration::from_secs(60)).await;
    assert!(
        code.is_some_and(|c| c != 0),
        "the worker ran without its topics ({code:?}):\n{}",
        w.log_tail(20)
    );

    let admin: BaseConsumer = client_config(&bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    for missing in [
        "ns.never-created",
        "ns.worker-in",
        "ns.b",
        "ns.t.dead-letters",
    ] {
        assert!(
            !names.contains(&missing),
            "{missing} was created by asking about it: {names:?}"
        );
    }
}
