//! The DataStream controller against a real broker and apiserver: topics follow specs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rdkafka::ClientConfig;
use tokio::sync::OnceCell;
use weir_crds::DataStream;
use weir_operator::topics::{DesiredTopic, Topics};
use weir_tests::fixtures::{data_stream, has_reason, is_ready, ready_condition};
use weir_tests::kafka::{SASL_PASSWORD, SASL_USERNAME};
use weir_tests::{
    Operator, OperatorOptions, Stack, await_condition, await_deletion, install_crds, with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(60);

/// One stack and one operator (resync every 2s) shared by the tests in this file.
async fn setup() -> (kube::Client, Topics) {
    static OPERATOR: OnceCell<Operator> = OnceCell::const_new();
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    OPERATOR
        .get_or_init(|| async {
            install_crds(&client).await.expect("crds");
            Operator::start(stack, OperatorOptions::default())
                .await
                .expect("operator")
        })
        .await;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    (client, Topics::new(config).expect("admin"))
}

#[tokio::test]
async fn a_data_stream_becomes_a_topic_with_its_partitions_and_configs() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let ds = data_stream(
            "page-views",
            "  config: { max.message.bytes: \"2097152\" }\n",
        );
        api.create(&PostParams::default(), &ds)
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "page-views", is_ready(), WAIT).await;

        let topic = format!("{ns}.page-views");
        let status = ds.status.expect("status");
        assert_eq!(status.topic.as_deref(), Some(topic.as_str()));
        assert_eq!(status.partitions, Some(3));
        assert_eq!(status.replication_factor, Some(1));
        assert_eq!(status.effective_config["retention.ms"], "604800000");
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("exists");
        assert_eq!(state.partitions, 3);
        assert_eq!(state.configs["retention.ms"], "604800000");
        assert_eq!(state.configs["max.message.bytes"], "2097152");
        assert_eq!(state.configs["cleanup.policy"], "delete");
    })
    .await;
}

#[tokio::test]
async fn raising_partitions_grows_the_topic() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("clicks", ""))
            .await
            .expect("create");
        await_condition(api.clone(), "clicks", is_ready(), WAIT).await;
        let patch = serde_json::json!({ "spec": { "partitions": 5, "retention": "12h" } });
        api.patch("clicks", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        let ds = await_condition(api.clone(), "clicks", is_ready(), WAIT).await;
        assert_eq!(ds.status.as_ref().and_then(|s| s.partitions), Some(5));
        let state = topics
            .describe(&format!("{ns}.clicks"))
            .await
            .expect("describe")
            .expect("exists");
        assert_eq!(state.partitions, 5);
        assert_eq!(state.configs["retention.ms"], "43200000");
    })
    .await;
}

#[tokio::test]
async fn config_changed_behind_the_operators_back_is_reverted() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("orders", ""))
            .await
            .expect("create");
        await_condition(api.clone(), "orders", is_ready(), WAIT).await;
        let topic = format!("{ns}.orders");
        let tampered = [
            ("retention.ms".to_owned(), "1000".to_owned()),
            ("segment.ms".to_owned(), "60000".to_owned()),
        ]
        .into();
        topics.set_configs(&topic, &tampered).await.expect("tamper");

        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = topics
                .describe(&topic)
                .await
                .expect("describe")
                .expect("exists");
            if state.configs["retention.ms"] == "604800000"
                && !state.dynamic_configs.contains_key("segment.ms")
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "drift not reverted: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn deleting_with_retain_keeps_the_topic_and_with_delete_removes_it() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("kept", ""))
            .await
            .expect("create");
        api.create(
            &PostParams::default(),
            &data_stream("dropped", "  deletionPolicy: Delete\n"),
        )
        .await
        .expect("create");
        await_condition(api.clone(), "kept", is_ready(), WAIT).await;
        await_condition(api.clone(), "dropped", is_ready(), WAIT).await;

        for name in ["kept", "dropped"] {
            api.delete(name, &DeleteParams::default())
                .await
                .expect("delete");
            await_deletion(api.clone(), name, WAIT).await;
        }
        assert!(
            topics
                .describe(&format!("{ns}.kept"))
                .await
                .expect("describe")
                .is_some()
        );
        // Kafka deletes topics asynchronously: the metadata may lag the acknowledgement.
        let deadline = tokio::time::Instant::now() + WAIT;
        let dropped = format!("{ns}.dropped");
        while topics.describe(&dropped).await.expect("describe").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{dropped} was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_spec_mistake_is_a_condition_naming_the_field() {
    let (client, _topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        // eventTime exists in the schema (admission passes) but is not a timestamp.
        let mut ds = data_stream("typo", "");
        if let Some(et) = ds.spec.event_time.as_mut() {
            et.field = "url".into();
        }
        api.create(&PostParams::default(), &ds)
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "typo", has_reason("InvalidSpec"), WAIT).await;
        let (status, _, message) = ready_condition(&ds).expect("condition");
        assert_eq!(status, "False");
        assert!(message.starts_with("spec.eventTime.field:"), "{message}");

        // Fixing the spec clears the condition.
        let patch = serde_json::json!({ "spec": { "eventTime": { "field": "ts" } } });
        api.patch("typo", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("fix");
        await_condition(api.clone(), "typo", is_ready(), WAIT).await;
    })
    .await;
}

#[tokio::test]
async fn a_namespace_cannot_take_another_namespaces_topic_even_with_the_adopt_annotation() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        // Another tenant's topic, with its own retention.
        let victim = format!("{ns}-other.payments");
        let existing = DesiredTopic {
            name: victim.clone(),
            partitions: 1,
            replication_factor: 1,
            configs: [("retention.ms".to_owned(), "86400000".to_owned())].into(),
        };
        topics
            .create(&existing)
            .await
            .expect("another tenant's topic");

        let api = Api::<DataStream>::namespaced(client, &ns);
        let mut ds = data_stream(
            "grab",
            &format!("  topic: {victim}\n  deletionPolicy: Delete\n"),
        );
        ds.metadata.annotations = Some(
            [(
                "weir.dev/adopt-existing-topic".to_owned(),
                "true".to_owned(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &ds)
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "grab", has_reason("InvalidSpec"), WAIT).await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(
            message.contains(&format!("outside namespace {ns}'s prefix")),
            "{message}"
        );
        assert!(ds.status.unwrap().topic.is_none(), "no claim was recorded");
        // Untouched, and it survives the DataStream's deletion despite its Delete policy.
        api.delete("grab", &Default::default())
            .await
            .expect("delete");
        weir_tests::await_deletion(api, "grab", WAIT).await;
        let state = topics
            .describe(&victim)
            .await
            .expect("describe")
            .expect("still exists");
        assert_eq!(state.configs["retention.ms"], "86400000");
    })
    .await;
}

#[tokio::test]
async fn an_existing_topic_is_left_alone_unless_adopted() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let topic = format!("{ns}.legacy");
        let existing = DesiredTopic {
            name: topic.clone(),
            partitions: 2,
            replication_factor: 1,
            configs: [("retention.ms".to_owned(), "1000".to_owned())].into(),
        };
        topics.create(&existing).await.expect("pre-existing topic");

        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("legacy", ""))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "legacy", has_reason("TopicNotManaged"), WAIT).await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(
            message.contains("weir.dev/adopt-existing-topic"),
            "{message}"
        );
        // Untouched, even after several resyncs.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("exists");
        assert_eq!(state.partitions, 2);
        assert_eq!(state.configs["retention.ms"], "1000");

        let patch = serde_json::json!({
            "metadata": { "annotations": { "weir.dev/adopt-existing-topic": "true" } }
        });
        api.patch("legacy", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
        await_condition(api.clone(), "legacy", is_ready(), WAIT).await;
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("exists");
        assert_eq!(state.partitions, 3);
        assert_eq!(state.configs["retention.ms"], "604800000");
    })
    .await;
}

#[tokio::test]
async fn a_topic_claimed_by_another_data_stream_is_reported_not_fought_over() {
    let (client, _topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let shared = format!("  topic: {ns}.shared\n");
        api.create(&PostParams::default(), &data_stream("first", &shared))
            .await
            .expect("create");
        await_condition(api.clone(), "first", is_ready(), WAIT).await;
        api.create(&PostParams::default(), &data_stream("second", &shared))
            .await
            .expect("create");
        let ds =
            await_condition(api.clone(), "second", has_reason("TopicOwnedByOther"), WAIT).await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(message.contains(&format!("{ns}/first")), "{message}");
        // The owner stays Ready.
        let first = api.get("first").await.expect("get");
        assert!(is_ready()(Some(&first)));
    })
    .await;
}

#[tokio::test]
async fn a_replication_factor_change_is_a_condition_not_a_retry_loop() {
    let (client, _topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("rf", ""))
            .await
            .expect("create");
        await_condition(api.clone(), "rf", is_ready(), WAIT).await;
        let patch = serde_json::json!({ "spec": { "replicationFactor": 3 } });
        api.patch("rf", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        let ds = await_condition(
            api.clone(),
            "rf",
            has_reason("ReplicationFactorChangeUnsupported"),
            WAIT,
        )
        .await;
        let (status, _, message) = ready_condition(&ds).expect("condition");
        assert_eq!(status, "False");
        assert!(message.contains("replication factor 3"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_steady_state_reconcile_writes_nothing() {
    let (client, _topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("calm", ""))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "calm", is_ready(), WAIT).await;
        let version = ds.metadata.resource_version.clone();
        // Three resync periods: each reconcile reads Kafka and finds nothing to change.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let again = api.get("calm").await.expect("get");
        assert_eq!(
            again.metadata.resource_version, version,
            "a steady reconcile wrote"
        );
    })
    .await;
}

#[tokio::test]
async fn a_named_connection_uses_sasl_credentials_from_a_secret() {
    let (client, topics) = setup().await;
    let sasl = Stack::shared().await.kafka.sasl_bootstrap_servers();
    with_temp_ns(client, |client, ns| async move {
        let connection = format!(
            "  kafka:\n    name: sasl\n    bootstrapServers: \"{sasl}\"\n    \
             sasl: {{ mechanism: PLAIN, secretName: kafka-user }}\n"
        );
        let api = Api::<DataStream>::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &data_stream("secured", &connection))
            .await
            .expect("create");
        // Without the Secret: a condition that names it.
        let ds = await_condition(
            api.clone(),
            "secured",
            has_reason("ConnectionInvalid"),
            WAIT,
        )
        .await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(
            message.contains(&format!("Secret {ns}/kafka-user does not exist")),
            "{message}"
        );

        let secrets = Api::<Secret>::namespaced(client, &ns);
        let mut secret = Secret::default();
        secret.metadata.name = Some("kafka-user".into());
        secret.string_data = Some(
            [
                ("username".to_owned(), SASL_USERNAME.to_owned()),
                ("password".to_owned(), SASL_PASSWORD.to_owned()),
            ]
            .into(),
        );
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret");
        await_condition(api.clone(), "secured", is_ready(), WAIT).await;
        let state = topics
            .describe(&format!("{ns}.secured"))
            .await
            .expect("describe")
            .expect("created through the SASL listener");
        assert_eq!(state.partitions, 3);
    })
    .await;
}
