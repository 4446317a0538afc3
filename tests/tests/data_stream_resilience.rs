//! The DataStream controller through failures: a broker outage, an operator crash, two
//! operators at once, an object the operator cannot decode, a watch that cannot work and a
//! hung apiserver; and credentials rotated in a watched Secret. Each test owns its stack,
//! since it breaks it or runs the operator with settings of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use rdkafka::ClientConfig;
use weir_crds::DataStream;
use weir_operator::kafka_admin::KafkaAdmin;
use weir_tests::fixtures::{data_stream, has_reason, is_ready};
use weir_tests::kafka::{SASL_PASSWORD, SASL_USERNAME};
use weir_tests::operator::LEASE_NAMESPACE;
use weir_tests::{
    Operator, OperatorOptions, Stack, await_condition, install_crds, wait_until, with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(90);

async fn stack() -> (Stack, kube::Client) {
    let stack = Stack::start().await.expect("stack");
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    (stack, client)
}

fn topics(stack: &Stack) -> KafkaAdmin {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    KafkaAdmin::new(config).expect("admin")
}

/// `TopicCreated` Events per DataStream name in `ns`.
async fn created_events(client: &kube::Client, ns: &str) -> BTreeMap<String, usize> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut counts = BTreeMap::new();
    for e in events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
    {
        if e.reason.as_deref() == Some("TopicCreated") {
            let name = e.regarding.and_then(|r| r.name).unwrap_or_default();
            *counts.entry(name).or_insert(0) += e.series.map_or(1, |s| s.count as usize);
        }
    }
    counts
}

#[tokio::test]
async fn a_broker_outage_is_reported_and_clears_when_the_broker_returns() {
    let (mut stack, client) = stack().await;
    let _operator = Operator::start(&stack, OperatorOptions::default())
        .await
        .expect("operator");
    let api = Api::<DataStream>::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &data_stream("before", ""))
        .await
        .expect("create");
    await_condition(api.clone(), "before", is_ready(), WAIT).await;

    stack.kafka.stop();
    api.create(&PostParams::default(), &data_stream("during", ""))
        .await
        .expect("create");
    let during = await_condition(api.clone(), "during", has_reason("KafkaUnavailable"), WAIT).await;
    assert!(!is_ready()(Some(&during)));
    // The resync notices the outage for a Ready stream too.
    await_condition(api.clone(), "before", has_reason("KafkaUnavailable"), WAIT).await;

    stack.kafka.resume().await.expect("broker back");
    await_condition(api.clone(), "during", is_ready(), WAIT).await;
    await_condition(api.clone(), "before", is_ready(), WAIT).await;
    let state = topics(&stack)
        .describe("default.during")
        .await
        .expect("describe")
        .expect("created after the outage");
    assert_eq!(state.partitions, 3);
}

#[tokio::test]
async fn an_operator_crash_mid_way_neither_loses_nor_repeats_work() {
    let (stack, client) = stack().await;
    let topics = topics(&stack);
    with_temp_ns(client.clone(), |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client.clone(), &ns);
        let names: Vec<String> = (0..25).map(|i| format!("s{i:02}")).collect();
        for name in &names {
            api.create(&PostParams::default(), &data_stream(name, ""))
                .await
                .expect("create");
        }
        let mut first = Operator::start(&stack, OperatorOptions::default())
            .await
            .expect("operator");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        first.crash();
        let _second = Operator::start(
            &stack,
            OperatorOptions {
                identity: "weir-operator-1".into(),
                ..OperatorOptions::default()
            },
        )
        .await
        .expect("operator");
        for name in &names {
            await_condition(api.clone(), name, is_ready(), WAIT).await;
            let state = topics
                .describe(&format!("{ns}.{name}"))
                .await
                .expect("describe")
                .expect("topic");
            assert_eq!(state.partitions, 3);
        }
        let created = created_events(&client, &ns).await;
        for name in &names {
            assert!(
                created.get(name).copied().unwrap_or(0) <= 1,
                "{name} was created more than once: {created:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn two_operators_at_once_agree_on_one_topic_and_one_status() {
    let (stack, client) = stack().await;
    let topics = topics(&stack);
    // Worst case: no leader election, both reconcile everything concurrently.
    let options = |id: &str| OperatorOptions {
        identity: id.into(),
        leader_election: false,
        ..OperatorOptions::default()
    };
    let a = Operator::start(&stack, options("a"))
        .await
        .expect("operator a");
    let b = Operator::start(&stack, options("b"))
        .await
        .expect("operator b");
    with_temp_ns(client.clone(), |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client.clone(), &ns);
        let names: Vec<String> = (0..15).map(|i| format!("t{i:02}")).collect();
        for name in &names {
            api.create(&PostParams::default(), &data_stream(name, ""))
                .await
                .expect("create");
        }
        for name in &names {
            let ds = await_condition(api.clone(), name, is_ready(), WAIT).await;
            let status = ds.status.expect("status");
            assert_eq!(
                status.topic.as_deref(),
                Some(format!("{ns}.{name}").as_str())
            );
            assert_eq!(status.partitions, Some(3));
            let state = topics
                .describe(&format!("{ns}.{name}"))
                .await
                .expect("describe")
                .expect("topic");
            assert_eq!(state.partitions, 3);
        }
        let created = created_events(&client, &ns).await;
        assert!(created.values().all(|&n| n == 1), "{created:?}");
    })
    .await;
    drop((a, b));

    // With leader election, a second replica stands by and reconciles nothing.
    let leader = Operator::start(&stack, OperatorOptions::default())
        .await
        .expect("leader");
    let standby = Operator::start(
        &stack,
        OperatorOptions {
            identity: "weir-operator-standby".into(),
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("standby");
    let api = Api::<DataStream>::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &data_stream("led", ""))
        .await
        .expect("create");
    await_condition(api.clone(), "led", is_ready(), WAIT).await;
    assert!(
        leader
            .metric_sum("weir_operator_reconciles_total")
            .await
            .expect("metrics")
            > 0.0
    );
    assert_eq!(
        standby
            .metric_sum("weir_operator_reconciles_total")
            .await
            .expect("metrics"),
        0.0
    );

    // A leader stopped by SIGTERM releases the Lease as it exits (a rollout does not wait
    // out the Lease's 15 s), and the standby takes over.
    let mut leader = leader;
    leader.stop();
    let lease = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .get("weir-operator")
        .await
        .expect("lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_ne!(
        holder.as_deref(),
        Some("weir-operator-0"),
        "the stopped leader still holds the Lease"
    );
    api.create(&PostParams::default(), &data_stream("led-again", ""))
        .await
        .expect("create");
    await_condition(api, "led-again", is_ready(), WAIT).await;
    assert!(
        standby
            .metric_sum("weir_operator_reconciles_total")
            .await
            .expect("metrics")
            > 0.0
    );
}

/// The DataStream CRD as an older install might have had it: `spec` unchecked.
async fn install_unchecked_data_stream_crd(client: &kube::Client) {
    let path = weir_tests::tools::workspace_root().join("manifests/crds/weir.dev_datastreams.yaml");
    let text = std::fs::read_to_string(&path).expect("CRD file");
    let mut crd: serde_json::Value = serde_yaml::from_str(&text).expect("CRD YAML");
    for version in crd["spec"]["versions"].as_array_mut().expect("versions") {
        let schema = &mut version["schema"]["openAPIV3Schema"];
        schema["properties"]["spec"] = serde_json::json!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        });
        if let Some(o) = schema.as_object_mut() {
            o.remove("x-kubernetes-validations");
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "datastreams.weir.dev",
        &PatchParams::apply("weir-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the unchecked CRD");
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The Ready condition's reason and message of an object read as plain JSON.
async fn ready_of(api: &Api<DynamicObject>, name: &str) -> Option<(String, String)> {
    let obj = api.get(name).await.ok()?;
    let conditions = obj.data["status"]["conditions"].as_array()?.clone();
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    Some((
        ready["reason"].as_str()?.to_owned(),
        ready["message"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn no_bad_object_lost_watch_or_hung_apiserver_leaves_the_operator_stuck() {
    let stack = Stack::start().await.expect("stack");
    let client = stack.kube_client().await.expect("client");

    // A DataStream stored before the CRD checked nested field types, then the CRD of today.
    install_unchecked_data_stream_crd(&client).await;
    let resource = ApiResource::erase::<DataStream>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let mut bad = serde_json::to_value(data_stream("bad", "")).expect("json");
    bad["spec"]["schema"]["fields"][1] = serde_json::json!({"name": "u", "type": "struct", "fields": [{"name": "x", "type": "uuid"}]});
    let bad: DynamicObject = serde_json::from_value(bad).expect("object");
    raw.create(&PostParams::default(), &bad)
        .await
        .expect("stored under the unchecked CRD");
    install_crds(&client).await.expect("crds");

    let mut leader = Operator::start(
        &stack,
        OperatorOptions {
            env: vec![("WEIR_WATCH_STALL_TIMEOUT", "3s".to_owned())],
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator");
    // The bad object is reported on itself, naming the field; every other one is served.
    let api = Api::<DataStream>::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &data_stream("good", ""))
        .await
        .expect("create");
    await_condition(api.clone(), "good", is_ready(), WAIT).await;
    let raw = &raw;
    let (reason, message) = wait_until("a status on the bad object", WAIT, || async move {
        ready_of(raw, "bad").await.ok_or("none")
    })
    .await
    .expect("the bad object is reported");
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("spec.schema.fields[1].fields[0].type") && message.contains("uuid"),
        "{message}"
    );
    assert_eq!(leader.healthz().await.map(|(code, _)| code), Some(200));

    // A watch that cannot work (its CRD deleted) makes /healthz fail after the stall
    // timeout, and recover when the watch does.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("transforms.weir.dev", &Default::default())
        .await
        .expect("delete the Transform CRD");
    let healthz = |want: u16| {
        let leader = &leader;
        move || async move {
            match leader.healthz().await {
                Some((code, body)) if code == want => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    };
    let why = wait_until("/healthz to fail", WAIT, healthz(503))
        .await
        .expect("a wedged watch fails /healthz");
    assert!(why.contains("Transform"), "{why}");
    install_crds(&client).await.expect("crds again");
    wait_until("/healthz to recover", WAIT, healthz(200))
        .await
        .expect("/healthz recovers with the watch");

    // The apiserver hangs. A standby asked to stop exits within its shutdown timeout, and
    // the leader, unable to renew its Lease, exits by itself before the Lease can expire.
    let mut standby = Operator::start(
        &stack,
        OperatorOptions {
            identity: "weir-operator-standby".into(),
            env: vec![("WEIR_SHUTDOWN_TIMEOUT", "3s".to_owned())],
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("standby");
    stack.control_plane.freeze_apiserver();
    let frozen = std::time::Instant::now();
    let stopped = standby.stops_within(Duration::from_secs(8));
    let fenced = leader.exits_within(Duration::from_secs(15).saturating_sub(frozen.elapsed()));
    stack.control_plane.thaw_apiserver();
    assert!(
        stopped,
        "SIGTERM did not stop the standby: {}",
        standby.log_tail(20)
    );
    assert!(
        fenced,
        "the leader kept running with an unrenewable Lease: {}",
        leader.log_tail(20)
    );
    assert!(
        leader
            .log_tail(20)
            .contains("could not renew the leader lease"),
        "{}",
        leader.log_tail(20)
    );
}

/// With `WEIR_WATCH_CREDENTIAL_SECRETS`, a change to a Secret marked for Weir wakes the
/// DataStreams that name it at once. The resync here is an hour and a connection problem
/// waits for it, so nothing else would wake it within the test.
#[tokio::test]
async fn a_fixed_credential_secret_wakes_its_data_stream_when_secrets_are_watched() {
    let (stack, client) = stack().await;
    let _operator = Operator::start(
        &stack,
        OperatorOptions {
            resync_interval: "1h",
            leader_election: false,
            env: vec![("WEIR_WATCH_CREDENTIAL_SECRETS", "true".to_owned())],
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator");
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("kafka-user".into());
    secret.metadata.labels =
        Some([("weir.dev/kafka-credentials".to_owned(), "true".to_owned())].into());
    secret.string_data = Some([("username".to_owned(), SASL_USERNAME.to_owned())].into());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let api = Api::<DataStream>::namespaced(client.clone(), "default");
    let connection = format!(
        "  kafka:\n    name: sasl\n    bootstrapServers: \"{}\"\n    sasl: {{ mechanism: PLAIN, \
         secretName: kafka-user, allowPlaintext: true }}\n",
        stack.kafka.sasl_bootstrap_servers()
    );
    api.create(&PostParams::default(), &data_stream("rotated", &connection))
        .await
        .expect("create");
    let ds = await_condition(
        api.clone(),
        "rotated",
        has_reason("ConnectionInvalid"),
        WAIT,
    )
    .await;
    let message = ds
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("has no key \"password\""), "{message}");
    let password = serde_json::json!({ "stringData": { "password": SASL_PASSWORD } });
    secrets
        .patch(
            "kafka-user",
            &PatchParams::default(),
            &Patch::Merge(&password),
        )
        .await
        .expect("add the password");
    await_condition(api, "rotated", is_ready(), WAIT).await;
}
