//! The DataStream controller against a real broker and apiserver: topics follow specs.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rdkafka::ClientConfig;
use tokio::sync::OnceCell;
use weir_crds::DataStream;
use weir_operator::kafka_admin::{ConfigChange, DesiredTopic, KafkaAdmin, TopicState};
use weir_tests::fixtures::{data_stream, has_reason, is_ready, ready_condition};
use weir_tests::kafka::{SASL_PASSWORD, SASL_USERNAME};
use weir_tests::{
    Operator, OperatorOptions, Stack, await_condition, await_deletion, install_crds, wait_until,
    with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(60);

/// The operator the tests in this file share.
static OPERATOR: OnceCell<Operator> = OnceCell::const_new();

/// One stack and one operator (resync every 2s) shared by the tests in this file.
async fn setup() -> (kube::Client, KafkaAdmin) {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    OPERATOR
        .get_or_init(|| async {
            install_crds(&client).await.expect("crds");
            let options = OperatorOptions {
                env: vec![
                    (
                        "WEIR_TOPIC_GRANTS",
                        GRANTED.map(|ns| format!("{ns}=shared.")).join(","),
                    ),
                    ("WEIR_ALLOWED_BOOTSTRAP_SERVERS", "127.0.0.1:*".to_owned()),
                ],
                ..OperatorOptions::default()
            };
            Operator::start(stack, options).await.expect("operator")
        })
        .await;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    (client, KafkaAdmin::new(config).expect("admin"))
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
        // The broker applies a committed config change to what it describes a moment
        // after the change returns (KRaft's metadata log): look until it shows.
        let topic = format!("{ns}.clicks");
        wait_until("the broker to describe the new retention", WAIT, || async {
            let state = topics
                .describe(&topic)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no topic")?;
            let retention = state.configs.get("retention.ms").cloned();
            if state.partitions == 5 && retention.as_deref() == Some("43200000") {
                Ok(())
            } else {
                Err(format!(
                    "{} partitions, retention.ms {retention:?}",
                    state.partitions
                ))
            }
        })
        .await
        .expect("partitions and retention as the spec says");
    })
    .await;
}

/// A DataStream that asks to adopt an existing topic.
fn adopting(mut ds: DataStream) -> DataStream {
    ds.metadata.annotations = Some(
        [(
            weir_crds::data_stream::ADOPT_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]
        .into(),
    );
    ds
}

/// Waits until Kafka no longer lists the topic (it deletes topics asynchronously: the
/// metadata may lag the acknowledgement).
async fn await_topic_gone(topics: &KafkaAdmin, topic: &str) {
    wait_until(format!("{topic} to be deleted"), WAIT, || async move {
        match topics.describe(topic).await.expect("describe") {
            None => Ok(()),
            Some(state) => Err(format!("{state:?}")),
        }
    })
    .await
    .expect("the topic is deleted");
}

/// Waits until the topic's state passes `check`.
async fn await_topic(topics: &KafkaAdmin, topic: &str, check: impl Fn(&TopicState) -> bool) {
    let check = &check;
    wait_until(
        format!("topic {topic} to reach the expected state"),
        WAIT,
        || async move {
            match topics.describe(topic).await.expect("describe") {
                Some(state) if check(&state) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("the topic reaches the state");
}

#[tokio::test]
async fn configs_are_changed_key_by_key_and_keys_weir_does_not_manage_are_left_alone() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let extra = "  config: { max.message.bytes: \"2097152\" }";
        api.create(&PostParams::default(), &data_stream("orders", extra))
            .await
            .expect("create");
        await_condition(api.clone(), "orders", is_ready(), WAIT).await;
        let topic = format!("{ns}.orders");
        // Behind Weir's back: two keys it manages, and one it does not (as an admin's
        // setting would be).
        let set = |k: &str, v: &str| ConfigChange::Set(k.into(), v.into());
        topics
            .change_configs(
                &topic,
                vec![
                    set("retention.ms", "1000"),
                    set("max.message.bytes", "1000"),
                    set("segment.ms", "7200000"),
                ],
            )
            .await
            .expect("tamper");
        await_topic(&topics, &topic, |s| {
            s.configs["retention.ms"] == "604800000" && s.configs["max.message.bytes"] == "2097152"
        })
        .await;
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("topic");
        assert_eq!(
            state.dynamic_configs.get("segment.ms").map(String::as_str),
            Some("7200000"),
            "a key Weir does not manage was touched"
        );

        // A key the spec stops naming is removed; the admin's key stays.
        let patch = |p: serde_json::Value| {
            let api = api.clone();
            async move {
                api.patch("orders", &PatchParams::default(), &Patch::Merge(&p))
                    .await
                    .expect("patch");
            }
        };
        patch(serde_json::json!({"spec": {"config": null}})).await;
        await_topic(&topics, &topic, |s| {
            !s.dynamic_configs.contains_key("max.message.bytes")
                && s.dynamic_configs.contains_key("segment.ms")
        })
        .await;

        // Asked to own every config, Weir removes the rest.
        patch(serde_json::json!({"spec": {"configOwnership": "All"}})).await;
        await_topic(&topics, &topic, |s| {
            !s.dynamic_configs.contains_key("segment.ms")
        })
        .await;
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
        await_topic_gone(&topics, &format!("{ns}.dropped")).await;
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

        // A topic setting a tenant may not change is refused by name.
        let extra = "  config: { unclean.leader.election.enable: \"true\" }";
        api.create(&PostParams::default(), &data_stream("unsafe", extra))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "unsafe", has_reason("InvalidSpec"), WAIT).await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(
            message.starts_with("spec.config.unclean.leader.election.enable:"),
            "{message}"
        );

        // An allowed key with a value Kafka refuses: KafkaRejected with Kafka's reason, and
        // Ready once the spec is fixed.
        let extra = "  config: { compression.type: bogus }";
        api.create(&PostParams::default(), &data_stream("refused", extra))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "refused", has_reason("KafkaRejected"), WAIT).await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(message.contains("creating the topic"), "{message}");
        let fix = serde_json::json!({ "spec": { "config": { "compression.type": "zstd" } } });
        api.patch("refused", &PatchParams::default(), &Patch::Merge(&fix))
            .await
            .expect("fix");
        await_condition(api.clone(), "refused", is_ready(), WAIT).await;
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
        let ds = adopting(data_stream(
            "grab",
            &format!("  topic: {victim}\n  deletionPolicy: Delete\n"),
        ));
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

        // Adopting a topic that keeps records forever would delete every record older than
        // the spec's 7 days: Weir says so and waits to be told.
        let forever = format!("{ns}.forever");
        let existing = DesiredTopic {
            name: forever.clone(),
            partitions: 3,
            replication_factor: 1,
            configs: [("retention.ms".to_owned(), "-1".to_owned())].into(),
        };
        topics.create(&existing).await.expect("pre-existing topic");
        let ds = adopting(data_stream("forever", ""));
        api.create(&PostParams::default(), &ds)
            .await
            .expect("create");
        let ds = await_condition(
            api.clone(),
            "forever",
            has_reason("RetentionDecrease"),
            WAIT,
        )
        .await;
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(
            message.contains("retention.ms -1 -> 604800000")
                && message.contains("weir.dev/accept-retention-decrease"),
            "{message}"
        );
        assert!(
            ds.status.and_then(|s| s.topic).is_none(),
            "claimed before the user agreed"
        );
        let state = topics
            .describe(&forever)
            .await
            .expect("describe")
            .expect("exists");
        assert_eq!(state.configs["retention.ms"], "-1");
        let patch = serde_json::json!({
            "metadata": { "annotations": { "weir.dev/accept-retention-decrease": "true" } }
        });
        api.patch("forever", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate");
        await_condition(api.clone(), "forever", is_ready(), WAIT).await;
        await_topic(&topics, &forever, |s| {
            s.configs["retention.ms"] == "604800000"
        })
        .await;
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
        let mut ds = await_condition(api.clone(), "calm", is_ready(), WAIT).await;
        // On a loaded broker the first Ready can precede Kafka's settled view of a topic it
        // has just created (the next resync then records it once): wait for one quiet
        // resync period, up to a bound, before calling the state steady.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let now = api.get("calm").await.expect("get");
            let quiet = now.metadata.resource_version == ds.metadata.resource_version;
            ds = now;
            if quiet {
                break;
            }
        }
        // Three resync periods: each reconcile reads Kafka and finds nothing to change.
        tokio::time::sleep(Duration::from_secs(7)).await;
        let again = api.get("calm").await.expect("get");
        assert_eq!(
            again.metadata.resource_version,
            ds.metadata.resource_version,
            "a steady reconcile wrote: before {}\nafter {}",
            serde_json::to_string(&ds.status).unwrap_or_default(),
            serde_json::to_string(&again.status).unwrap_or_default(),
        );
    })
    .await;
}

#[tokio::test]
async fn a_named_connection_uses_sasl_credentials_only_from_a_secret_marked_for_weir() {
    let (client, topics) = setup().await;
    let sasl = Stack::shared().await.kafka.sasl_bootstrap_servers();
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client.clone(), &ns);
        let connection = |servers: &str, plaintext: bool| {
            format!(
                "  deletionPolicy: Delete\n  kafka:\n    name: sasl\n    bootstrapServers: \"{servers}\"\n    \
                 sasl: {{ mechanism: PLAIN, secretName: kafka-user, allowPlaintext: {plaintext} }}\n"
            )
        };
        let message_of = |ds: DataStream| ready_condition(&ds).expect("condition").2;

        // A server the operator does not allow (WEIR_ALLOWED_BOOTSTRAP_SERVERS).
        api.create(
            &PostParams::default(),
            &data_stream("elsewhere", &connection("kafka.example.com:9092", true)),
        )
        .await
        .expect("create");
        let ds = await_condition(api.clone(), "elsewhere", has_reason("InvalidSpec"), WAIT).await;
        let message = message_of(ds);
        assert!(message.starts_with("spec.kafka.bootstrapServers:"), "{message}");

        // SASL without TLS, not opted in.
        api.create(&PostParams::default(), &data_stream("secured", &connection(&sasl, false)))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "secured", has_reason("InvalidSpec"), WAIT).await;
        let message = message_of(ds);
        assert!(message.contains("allowPlaintext"), "{message}");
        let patch = serde_json::json!({ "spec": { "kafka": { "sasl": { "allowPlaintext": true } } } });
        api.patch("secured", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("opt in");

        // Without the Secret: a condition that names it.
        let ds = await_condition(api.clone(), "secured", has_reason("ConnectionInvalid"), WAIT).await;
        let message = message_of(ds);
        assert!(
            message.contains(&format!("Secret {ns}/kafka-user does not exist")),
            "{message}"
        );

        // A Secret that is not marked for Weir is not read.
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
        let ds = await_condition(
            api.clone(),
            "secured",
            |ds: Option<&DataStream>| {
                ds.and_then(ready_condition)
                    .is_some_and(|(_, _, m)| m.contains("not marked for Weir's use"))
            },
            WAIT,
        )
        .await;
        assert!(message_of(ds).contains("weir.dev/kafka-credentials=true"));
        let label = serde_json::json!({
            "metadata": { "labels": { "weir.dev/kafka-credentials": "true" } }
        });
        secrets
            .patch("kafka-user", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("label");
        await_condition(api.clone(), "secured", is_ready(), WAIT).await;
        // The operator keeps one admin client for the connection while it is used.
        let operator = OPERATOR.get().expect("the shared operator");
        let open = || async {
            operator
                .metric_sum("weir_operator_kafka_connections")
                .await
                .expect("metrics")
        };
        assert_eq!(open().await, 1.0);
        let topic = format!("{ns}.secured");
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("created through the SASL listener");
        assert_eq!(state.partitions, 3);

        // The Secret goes first (as when a namespace is deleted): the DataStream's deletion
        // still finishes, and deletes its topic with the connection it used.
        secrets
            .delete("kafka-user", &DeleteParams::default())
            .await
            .expect("delete the Secret");
        api.delete("secured", &DeleteParams::default())
            .await
            .expect("delete");
        await_deletion(api.clone(), "secured", WAIT).await;
        // No DataStream uses the connection any more: its client is closed.
        assert_eq!(open().await, 0.0);
        await_topic_gone(&topics, &topic).await;
    })
    .await;
}

#[tokio::test]
async fn a_claim_names_the_topic_by_id_and_only_that_topic_is_ever_deleted() {
    let (client, topics) = setup().await;
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let extra = "  deletionPolicy: Delete\n";
        api.create(&PostParams::default(), &data_stream("owned", extra))
            .await
            .expect("create");
        let ds = await_condition(api.clone(), "owned", is_ready(), WAIT).await;
        let topic = format!("{ns}.owned");
        let state = topics
            .describe(&topic)
            .await
            .expect("describe")
            .expect("topic");
        let status = ds.status.expect("status");
        assert_eq!(status.topic_id.as_deref(), Some(state.id.as_str()));
        assert!(status.cluster_id.is_some_and(|c| !c.is_empty()));

        // The claim now names another topic id, as after the topic was deleted and created
        // again outside Weir (or a status edited by hand): Weir stops managing the topic
        // and its Delete policy leaves it.
        // A reconcile already in flight (woken by the operator's own Ready write) may
        // write its claim over the edit: edit again until the operator has seen it.
        let patch = serde_json::json!({ "status": { "topicId": "AAAAAAAAAAAAAAAAAAAAAA" } });
        let ds = wait_until("the operator to see the edited claim", WAIT, || {
            let api = api.clone();
            let patch = patch.clone();
            async move {
                let ds = api.get("owned").await.map_err(|e| e.to_string())?;
                if has_reason("TopicNotManaged")(Some(&ds)) {
                    return Ok(ds);
                }
                if ds.status.as_ref().and_then(|s| s.topic_id.as_deref())
                    != Some("AAAAAAAAAAAAAAAAAAAAAA")
                {
                    api.patch_status("owned", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Err(format!("{:?}", ready_condition(&ds)))
            }
        })
        .await
        .expect("TopicNotManaged");
        let (_, _, message) = ready_condition(&ds).expect("condition");
        assert!(message.contains("created again outside Weir"), "{message}");
        api.delete("owned", &DeleteParams::default())
            .await
            .expect("delete");
        await_deletion(api.clone(), "owned", WAIT).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kept = topics.describe(&topic).await.expect("describe");
        assert_eq!(
            kept.map(|s| s.id),
            Some(state.id),
            "a topic Weir cannot prove is its own was deleted"
        );
        topics.delete(&topic).await.expect("clean up");
    })
    .await;
}

/// Namespaces granted the shared prefix `shared.` by the operator's configuration.
const GRANTED: [&str; 2] = ["claim-a", "claim-b"];

#[tokio::test]
async fn data_streams_racing_for_one_topic_end_with_exactly_one_owner() {
    let (client, topics) = setup().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in GRANTED {
        let mut n = Namespace::default();
        n.metadata.name = Some(ns.into());
        let _ = namespaces.create(&PostParams::default(), &n).await;
    }
    let apis = GRANTED.map(|ns| Api::<DataStream>::namespaced(client.clone(), ns));
    // Three topics, each named at the same moment by a DataStream in both namespaces.
    let names = ["r0", "r1", "r2"];
    let mut creates = Vec::new();
    for name in names {
        for api in &apis {
            let ds = data_stream(
                name,
                &format!("  topic: shared.{name}\n  deletionPolicy: Delete\n"),
            );
            let api = api.clone();
            creates.push(async move { api.create(&PostParams::default(), &ds).await });
        }
    }
    for created in futures::future::join_all(creates).await {
        created.expect("create");
    }
    for name in names {
        let topic = format!("shared.{name}");
        let [a, b] = &apis;
        let settled =
            |ds: Option<&DataStream>| is_ready()(ds) || has_reason("TopicOwnedByOther")(ds);
        let both = [
            await_condition(a.clone(), name, settled, WAIT).await,
            await_condition(b.clone(), name, settled, WAIT).await,
        ];
        // The owner is the oldest, then the first by namespace: the same answer everywhere.
        let owner = both
            .iter()
            .min_by_key(|d| {
                (
                    d.metadata.creation_timestamp.clone().map(|t| t.0),
                    d.metadata.namespace.clone(),
                )
            })
            .expect("two");
        let owner_ns = owner.metadata.namespace.clone().unwrap_or_default();
        // Give a racing reconcile time to settle, then look again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut claims = Vec::new();
        for api in &apis {
            let ds = api.get(name).await.expect("get");
            let ns = ds.metadata.namespace.clone().unwrap_or_default();
            if ns == owner_ns {
                assert!(
                    is_ready()(Some(&ds)),
                    "the owner is not Ready: {:?}",
                    ds.status
                );
            } else {
                assert!(
                    has_reason("TopicOwnedByOther")(Some(&ds)),
                    "{:?}",
                    ds.status
                );
            }
            if ds.status.as_ref().and_then(|s| s.topic.as_deref()) == Some(topic.as_str()) {
                claims.push(ns);
            }
        }
        assert_eq!(
            claims,
            vec![owner_ns.clone()],
            "{topic} must have exactly one claim"
        );

        // Deleting the other DataStream (Delete policy) leaves the owner's topic.
        let other = apis
            .iter()
            .find(|api| api.namespace() != Some(owner_ns.as_str()))
            .expect("other");
        other
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        await_deletion(other.clone(), name, WAIT).await;
        assert!(topics.describe(&topic).await.expect("describe").is_some());
        let owner_api = apis
            .iter()
            .find(|api| api.namespace() == Some(owner_ns.as_str()))
            .expect("owner");
        owner_api
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        await_deletion(owner_api.clone(), name, WAIT).await;
        await_topic_gone(&topics, &topic).await;
    }
}
