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
