//! Weir on a secured Kafka: the broker's TLS, SASL (PLAIN, SCRAM, OAUTHBEARER) and mTLS
//! listeners with KRaft's StandardAuthorizer and no ACL meaning no access; the operator on
//! SASL_SSL as the only super user among Weir's components; each Transform's workers with
//! a SCRAM principal of their own and exactly the ACLs their plan needs.
//!
//! The kit's plaintext listener (a super user) is used here only for what a test itself
//! produces and checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::sync::OnceCell;
use weir_crds::{DataStream, Transform};
use weir_operator::kafka_admin::KafkaAdmin;
use weir_operator::kafka_admin::acl::{Acl, Operation, ResourceKind};
use weir_tests::fixtures::apply;
use weir_tests::kafka::SASL_USERNAME;
use weir_tests::records::{self, Record};
use weir_tests::{
    Images, LocalNode, Operator, OperatorOptions, Stack, await_condition, install_crds, wait_until,
    with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(120);

struct Env {
    _operator: Operator,
    node: LocalNode,
}

/// One stack, one operator on SASL_SSL/SCRAM-SHA-512 (managed Transform principals, the
/// default there) and one local node, shared by the tests in this file.
async fn setup() -> (kube::Client, &'static Env, &'static Stack) {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    let env = ENV
        .get_or_init(|| async {
            install_crds(&client).await.expect("crds");
            let node = LocalNode::start(
                &stack.control_plane.kubeconfig_path(),
                &stack.dir().join("node"),
                Images::workspace().expect("built binaries"),
            )
            .await
            .expect("local node");
            let operator = Operator::start(
                stack,
                OperatorOptions::on_sasl_ssl(stack).expect("operator options"),
            )
            .await
            .expect("operator");
            Env {
                _operator: operator,
                node,
            }
        })
        .await;
    (client, env, stack)
}

/// An admin client on the kit's plaintext door (a super user), for the tests' own checks.
fn kit_admin(stack: &Stack) -> KafkaAdmin {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    KafkaAdmin::new(config).expect("admin")
}

fn stream(ns: &str, name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  description: Orders.
  owner: team@example.com
  partitions: 2
  schema:
    fields:
      - {{ name: order_id, type: string, nullable: false }}
      - {{ name: amount, type: bigint }}
  key: [order_id]
{extra}"#
    )
}

fn copy(ns: &str, name: &str, from: &str, output: &str) -> String {
    format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  description: Copies orders.
  owner: team@example.com
  sql: SELECT order_id, amount FROM {from}
  output: {{ name: {output}, deletionPolicy: Delete }}
"#
    )
}

fn condition<'a>(
    tf: &'a Transform,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    tf.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn ready(tf: Option<&Transform>) -> bool {
    tf.and_then(|t| condition(t, "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn reason(r: &'static str) -> impl Fn(Option<&Transform>) -> bool {
    move |tf| {
        tf.and_then(|t| condition(t, "Ready"))
            .is_some_and(|c| c.status == "False" && c.reason == r)
    }
}

fn orders(from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| {
            Record::new(
                format!("{{\"order_id\":\"o{i}\"}}"),
                format!("{{\"order_id\":\"o{i}\",\"amount\":{i}}}"),
            )
        })
        .collect()
}

/// The order ids in `topic` (read committed, through the kit's door), sorted, duplicates
/// kept.
async fn order_ids(stack: &Stack, topic: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        records::consume_all(&stack.bootstrap_servers(), topic, Duration::from_secs(2))
            .await
            .expect("consume")
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.value_str()).expect("json");
                v["order_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
    ids.sort();
    ids
}

async fn wait_for_orders(stack: &Stack, topic: &str, n: usize) {
    let mut want: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
    want.sort();
    wait_until(format!("{topic} to hold o0..o{n} once each"), WAIT, || {
        let want = want.clone();
        async move {
            let got = order_ids(stack, topic).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("{} records: {got:?}", got.len()))
            }
        }
    })
    .await
    .expect("every order exactly once");
}

/// The librdkafka settings of a Transform's managed principal, read from its Secret.
/// Produces orders `from..to` to `topic` on the kit's plaintext listener.
async fn produce_orders(stack: &Stack, topic: &str, from: usize, to: usize) {
    records::produce(&stack.bootstrap_servers(), topic, &orders(from, to))
        .await
        .expect("produce");
}

/// The environment of the first worker pod of Transform `transform`, by variable name.
async fn worker_env(client: &kube::Client, ns: &str, transform: &str) -> BTreeMap<String, String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("weir.dev/transform={transform}")))
        .await
        .expect("pods");
    let pod = pods.items.first().expect("a worker pod");
    pod.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

async fn transform_settings(
    client: &kube::Client,
    stack: &Stack,
    ns: &str,
    tf: &str,
) -> ClientConfig {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&format!("{tf}-worker-kafka"))
        .await
        .expect("the Transform's credentials Secret");
    let data = secret.data.expect("data");
    let password = String::from_utf8(data["password"].0.clone()).expect("utf-8");
    assert!(password.len() >= 32, "a long random password");
    assert_eq!(
        String::from_utf8(data["ca.crt"].0.clone()).unwrap(),
        stack.kafka.pki().ca_pem(),
        "the workers trust the brokers' CA"
    );
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        stack.kafka.sasl_ssl_bootstrap_servers(),
    )
    .set("security.protocol", "SASL_SSL")
    .set("sasl.mechanism", "SCRAM-SHA-512")
    .set("sasl.username", format!("weir.{ns}.{tf}"))
    .set("sasl.password", password)
    .set(
        "ssl.ca.location",
        stack.kafka.pki().ca_path().display().to_string(),
    )
    .set("log_level", "0");
    c
}

#[tokio::test]
async fn every_mechanism_connects_and_bad_credentials_are_refused() {
    let stack = Stack::shared().await;
    let kafka = &stack.kafka;
    let admin = |settings: std::collections::BTreeMap<String, String>| {
        let mut c = ClientConfig::new();
        for (k, v) in settings {
            c.set(k, v);
        }
        KafkaAdmin::new(c).expect("a client config")
    };
    // The operator's principal over each mechanism: describing a topic needs a principal
    // the authorizer knows.
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key) = kafka
        .pki()
        .client_cert_files(SASL_USERNAME, dir.path())
        .expect("client cert");
    let mtls = |cert: &std::path::Path, key: &std::path::Path| {
        [
            ("bootstrap.servers", kafka.ssl_bootstrap_servers()),
            ("security.protocol", "SSL".to_owned()),
            (
                "ssl.ca.location",
                kafka.pki().ca_path().display().to_string(),
            ),
            ("ssl.certificate.location", cert.display().to_string()),
            ("ssl.key.location", key.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<std::collections::BTreeMap<String, String>>()
    };
    let (expired_cert, expired_key) = kafka
        .pki()
        .expired_client_cert_files(SASL_USERNAME, dir.path())
        .expect("expired client cert");
    let mut good = vec![("mTLS".to_owned(), mtls(&cert, &key))];
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
        good.push((
            mechanism.to_owned(),
            kafka.operator_sasl_ssl_settings(mechanism),
        ));
    }
    let topic = format!("secured-{}", uuid::Uuid::new_v4().simple());
    records::create_topic(&stack.bootstrap_servers(), &topic, 1)
        .await
        .expect("topic");
    let issued = kafka.token_issuer().issued();
    for (name, settings) in good {
        let client = admin(settings);
        let state = client
            .describe(&topic)
            .await
            .map_err(|e| client.explain(e))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(state.map(|s| s.partitions), Some(1), "{name}");
    }
    assert!(
        kafka.token_issuer().issued() > issued,
        "OAUTHBEARER fetched a token"
    );

    // Each kind of bad credential is refused.
    let with = |mechanism: &str, changes: &[(&str, String)]| {
        let mut s = kafka.operator_sasl_ssl_settings(mechanism);
        for (k, v) in changes {
            s.insert((*k).to_owned(), v.clone());
        }
        s
    };
    let untrusted = dir.path().join("other-ca.crt");
    std::fs::write(
        &untrusted,
        weir_tests::kafka_pki::unrelated_ca().expect("ca"),
    )
    .unwrap();
    let refusals = [
        (
            "a wrong password",
            with(
                "SCRAM-SHA-512",
                &[("sasl.password", "wrong-password".into())],
            ),
            "Authentication failed",
        ),
        (
            "an untrusted CA",
            with(
                "SCRAM-SHA-512",
                &[("ssl.ca.location", untrusted.display().to_string())],
            ),
            "certificate verify failed",
        ),
        (
            "a certificate for another host",
            with(
                "SCRAM-SHA-512",
                &[("bootstrap.servers", kafka.wrong_name_bootstrap_servers())],
            ),
            "certificate verify failed",
        ),
        (
            "an expired client certificate",
            mtls(&expired_cert, &expired_key),
            // The broker's TLS stack answers an expired client certificate with alert 46.
            "alert certificate unknown",
        ),
        (
            "a token endpoint that refuses",
            with(
                "OAUTHBEARER",
                &[("sasl.oauthbearer.client.secret", "wrong-secret".into())],
            ),
            "invalid_client",
        ),
    ]
    .map(|(name, settings, reason)| {
        let (client, topic) = (admin(settings), topic.clone());
        async move {
            let refused = client
                .describe(&topic)
                .await
                .map_err(|e| client.explain(e).to_string());
            let message = refused.expect_err(&format!("{name} was accepted"));
            assert!(message.contains(reason), "{name}: {message}");
            assert!(
                !message.contains("wrong-password") && !message.contains("wrong-secret"),
                "{message}"
            );
        }
    });
    futures::future::join_all(refusals).await;
}

#[tokio::test]
async fn a_transform_runs_with_its_own_principal_and_exactly_the_acls_its_plan_needs() {
    let (client, _env, stack) = setup().await;
    with_temp_ns(client, move |client, a| async move {
        with_temp_ns(client, move |client, b| async move {
            apply(&client, &b, &stream(&b, "orders", "")).await;
            apply(&client, &a, &stream(&a, "src", "")).await;
            apply(&client, &a, &copy(&a, "copy", "src", "copied")).await;
            let transforms = Api::<Transform>::namespaced(client.clone(), &a);
            await_condition(transforms.clone(), "copy", ready, WAIT).await;
            produce_orders(stack, &format!("{a}.src"), 0, 20).await;
            wait_for_orders(stack, &format!("{a}.copied"), 20).await;

            // The workers run as the Transform's principal, never the operator's.
            let env = worker_env(&client, &a, "copy").await;
            assert_eq!(env["WEIR_KAFKA_SASL_USERNAME"], format!("weir.{a}.copy"));
            assert_eq!(env["WEIR_KAFKA_SECURITY_PROTOCOL"], "SASL_SSL");
            assert!(
                env.keys()
                    .all(|n| !n.contains("PASSWORD") || n.ends_with("_FILE")),
                "{env:?}"
            );

            // Exactly the ACLs the plan needs.
            let principal = format!("User:weir.{a}.copy");
            let acls: BTreeSet<String> = kit_admin(stack)
                .acls(&principal)
                .await
                .expect("acls")
                .iter()
                .map(|acl: &Acl| format!("{} {} {}", acl.operation, acl.kind, acl.name))
                .collect();
            for want in [
                format!("READ topic {a}.src"),
                format!("WRITE topic {a}.copied"),
                format!("WRITE topic {a}.copy.dead-letters"),
                format!("READ group weir.{a}.copy"),
                format!("WRITE transactional id weir.{a}.copy.copy-worker-"),
            ] {
                assert!(acls.contains(&want), "{want} missing from {acls:#?}");
            }
            assert!(
                !acls.iter().any(|x| x.contains(&b)),
                "nothing of namespace {b}: {acls:#?}"
            );

            // By hand with the Transform's credentials, Kafka refuses what the plan does not
            // need: another team's topic (read or write), another Transform's transactional
            // id and consumer group.
            let creds = transform_settings(&client, stack, &a, "copy").await;
            let consumer: BaseConsumer = creds
                .clone()
                .set("group.id", format!("weir.{a}.copy"))
                .create()
                .expect("consumer");
            let other = format!("{b}.orders");
            let metadata = tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(Some(&other), Duration::from_secs(10))
                    .map(|m| m.topics()[0].error())
            })
            .await
            .unwrap()
            .expect("metadata answers");
            assert!(
                metadata.is_some(),
                "{b}.orders is not visible to the Transform's principal"
            );
            let producer: ThreadedProducer<DefaultProducerContext> =
                creds.clone().create().expect("producer");
            let target = format!("{b}.orders");
            let sent = producer
                .send(BaseRecord::<str, str>::to(&target).payload("{\"order_id\":\"forged\"}"));
            let flushed = sent.is_ok() && producer.flush(Duration::from_secs(10)).is_ok();
            let ids = order_ids(stack, &format!("{b}.orders")).await;
            assert!(
                ids.is_empty(),
                "a forged row reached {b}.orders (sent: {flushed})"
            );
            let stranger: ThreadedProducer<DefaultProducerContext> = creds
                .clone()
                .set("transactional.id", format!("weir.{b}.other.other-worker-0"))
                .create()
                .expect("producer");
            let init = tokio::task::spawn_blocking(move || {
                stranger.init_transactions(Duration::from_secs(15))
            })
            .await
            .unwrap();
            assert!(
                init.is_err(),
                "another Transform's transactional id was usable"
            );
            let thief: BaseConsumer = creds
                .clone()
                .set("group.id", format!("weir.{b}.other"))
                .create()
                .expect("consumer");
            let src = format!("{a}.src");
            let committed = tokio::task::spawn_blocking(move || {
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition(&src, 0);
                thief.committed_offsets(tpl, Duration::from_secs(10))
            })
            .await
            .unwrap();
            assert!(committed.is_err(), "another Transform's group was usable");

            // A weir-worker started by hand with the Transform's credentials, its output
            // document pointed at the other team's topic: Kafka refuses the writes.
            let hand = tempfile::tempdir().expect("tmp");
            let password_file = hand.path().join("password");
            std::fs::write(&password_file, creds.get("sasl.password").unwrap()).unwrap();
            let mut files = Vec::new();
            for (name, text) in [
                ("input.yaml", stream(&a, "src", "")),
                (
                    "output.yaml",
                    stream(&a, "copied", &format!("  topic: {b}.orders\n")),
                ),
                ("transform.yaml", copy(&a, "copy", "src", "copied")),
            ] {
                let path = hand.path().join(name);
                std::fs::write(&path, text).unwrap();
                files.push(path);
            }
            produce_orders(stack, &format!("{a}.src"), 100, 105).await;
            let mut worker = weir_tests::worker::Worker::start(
                hand.path(),
                &stack.kafka.sasl_ssl_bootstrap_servers(),
                &files,
                "copy-worker-by-hand",
                &[
                    ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
                    ("WEIR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
                    ("WEIR_KAFKA_SASL_USERNAME", format!("weir.{a}.copy")),
                    (
                        "WEIR_KAFKA_SASL_PASSWORD_FILE",
                        password_file.display().to_string(),
                    ),
                    (
                        "WEIR_KAFKA_TLS_CA_FILE",
                        stack.kafka.pki().ca_path().display().to_string(),
                    ),
                ],
            )
            .expect("worker");
            let exited = worker.wait_exit(Duration::from_secs(30)).await;
            let log = worker.log_tail(40);
            worker.stop();
            assert!(
                order_ids(stack, &format!("{b}.orders")).await.is_empty(),
                "a worker by hand wrote into {b}.orders (exit {exited:?}):\n{log}"
            );
            assert!(
                log.to_ascii_lowercase().contains("authoriz"),
                "the worker says Kafka refused it (exit {exited:?}):\n{log}"
            );

            // Deleting the Transform deletes its principal's ACLs (and its credential).
            transforms
                .delete("copy", &Default::default())
                .await
                .expect("delete");
            wait_until("the principal's ACLs to go", WAIT, || async {
                let left = kit_admin(stack).acls(&principal).await.expect("acls");
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:?}"))
                }
            })
            .await
            .expect("no ACL outlives its Transform");
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_naming_another_teams_topic_never_carries_a_row_there() {
    let (client, _env, stack) = setup().await;
    with_temp_ns(client, move |client, a| async move {
        with_temp_ns(client, move |client, b| async move {
            apply(&client, &b, &stream(&b, "orders", "")).await;
            apply(&client, &a, &stream(&a, "src", "")).await;
            let streams = Api::<DataStream>::namespaced(client.clone(), &b);
            await_condition(streams, "orders", weir_tests::fixtures::is_ready(), WAIT).await;
            // A DataStream in namespace a naming namespace b's topic, as a Transform output.
            apply(
                &client,
                &a,
                &stream(&a, "alias", &format!("  topic: {b}.orders\n")),
            )
            .await;
            apply(&client, &a, &copy(&a, "forge", "src", "alias")).await;
            let transforms = Api::<Transform>::namespaced(client.clone(), &a);
            // Until the alias has a status of its own the Transform says it waits for it;
            // once the alias is refused, the Transform names that.
            let not_ready = format!("DataStream {a}/alias is not Ready");
            let refused = move |tf: Option<&Transform>| {
                reason("OutputConflict")(tf)
                    && tf
                        .and_then(|t| condition(t, "Ready"))
                        .is_some_and(|c| c.message.contains(&not_ready))
            };
            await_condition(transforms, "forge", refused, WAIT).await;
            produce_orders(stack, &format!("{a}.src"), 0, 10).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert!(
                order_ids(stack, &format!("{b}.orders")).await.is_empty(),
                "a forged row"
            );
            let deployments = Api::<Deployment>::namespaced(client.clone(), &a);
            assert!(deployments.get_opt("forge-worker").await.unwrap().is_none());
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_grant_stops_the_reader_and_a_restored_one_resumes_exactly() {
    let (client, _env, stack) = setup().await;
    with_temp_ns(client, move |client, a| async move {
        with_temp_ns(client, move |client, b| async move {
            let grant = |readers: &str| {
                stream(
                    &b,
                    "pay",
                    &format!("  access: {{ readers: [{readers}] }}\n"),
                )
            };
            apply(&client, &b, &grant(&a)).await;
            let sql_ns = b.replace('-', "_");
            apply(
                &client,
                &a,
                &copy(&a, "pay-copy", &format!("{sql_ns}.pay"), "pay-copy"),
            )
            .await;
            let transforms = Api::<Transform>::namespaced(client.clone(), &a);
            await_condition(transforms.clone(), "pay-copy", ready, WAIT).await;
            let input = format!("{b}.pay");
            let output = format!("{a}.pay-copy");
            produce_orders(stack, &input, 0, 10).await;
            wait_for_orders(stack, &output, 10).await;

            // Revoked: not Ready, no workers, no READ ACL on the topic.
            apply(&client, &b, &grant("someone-else")).await;
            let tf = await_condition(
                transforms.clone(),
                "pay-copy",
                reason("InputNotGranted"),
                WAIT,
            )
            .await;
            assert!(
                condition(&tf, "Ready")
                    .unwrap()
                    .message
                    .contains(&format!("DataStream {b}/pay")),
                "names the DataStream"
            );
            let principal = format!("User:weir.{a}.pay-copy");
            let acls = kit_admin(stack).acls(&principal).await.expect("acls");
            assert!(
                !acls.iter().any(|x| x.name == input
                    && x.operation == Operation::Read
                    && x.kind == ResourceKind::Topic),
                "the READ ACL is gone: {acls:?}"
            );
            let deployments = Api::<Deployment>::namespaced(client.clone(), &a);
            wait_until("the workers to stop", WAIT, || async {
                let d = deployments
                    .get("pay-copy-worker")
                    .await
                    .expect("deployment");
                match d.status.and_then(|s| s.replicas).unwrap_or(0) {
                    0 => Ok(()),
                    n => Err(format!("{n} replicas")),
                }
            })
            .await
            .expect("no worker reads a revoked input");
            // No longer a reader: the StillRead guard does not wait for it.
            let reader = format!("{a}/pay-copy");
            let pay = Api::<DataStream>::namespaced(client.clone(), &b);
            await_condition(
                pay,
                "pay",
                |ds: Option<&DataStream>| {
                    ds.and_then(|d| d.status.as_ref())
                        .is_some_and(|s| !s.readers.contains(&reader))
                },
                WAIT,
            )
            .await;
            produce_orders(stack, &input, 10, 20).await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(
                order_ids(stack, &output).await.len(),
                10,
                "nothing read while revoked"
            );

            // Restored: resumes from the committed offsets, nothing lost or doubled.
            apply(&client, &b, &grant(&a)).await;
            await_condition(transforms.clone(), "pay-copy", ready, WAIT).await;
            wait_for_orders(stack, &output, 20).await;
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn exactly_once_holds_on_sasl_ssl_through_a_sigkill_and_a_credential_rotation() {
    let (client, env, stack) = setup().await;
    with_temp_ns(client, move |client, a| async move {
        apply(&client, &a, &stream(&a, "src", "")).await;
        apply(&client, &a, &copy(&a, "rotating", "src", "rotated")).await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &a);
        await_condition(transforms.clone(), "rotating", ready, WAIT).await;
        let (input, output) = (format!("{a}.src"), format!("{a}.rotated"));
        produce_orders(stack, &input, 0, 100).await;

        // SIGKILL the worker mid-stream.
        let pods = Api::<Pod>::namespaced(client.clone(), &a);
        let list = pods
            .list(&ListParams::default().labels("weir.dev/transform=rotating"))
            .await
            .expect("pods");
        let victim = list.items[0].metadata.name.clone().unwrap();
        assert_eq!(env.node.signal(&a, &victim, Signal::SIGKILL), 1);
        produce_orders(stack, &input, 100, 200).await;
        wait_for_orders(stack, &output, 200).await;

        // Rotate the credential: a new password in the Secret is set on Kafka and rolls
        // the workers, which go on where they were.
        let secrets = Api::<Secret>::namespaced(client.clone(), &a);
        let old = transform_settings(&client, stack, &a, "rotating").await;
        let patch =
            serde_json::json!({ "stringData": { "password": "a-rotated-password-of-32-chars!!" } });
        secrets
            .patch(
                "rotating-worker-kafka",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("rotate");
        produce_orders(stack, &input, 200, 300).await;
        wait_until(
            "the workers to roll onto the new credential",
            WAIT,
            || async {
                let list = pods
                    .list(&ListParams::default().labels("weir.dev/transform=rotating"))
                    .await
                    .map_err(|e| e.to_string())?;
                let names: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if !names.is_empty() && !names.contains(&victim) {
                    Ok(())
                } else {
                    Err(format!("{names:?}"))
                }
            },
        )
        .await
        .expect("rolled");
        produce_orders(stack, &input, 300, 400).await;
        wait_for_orders(stack, &output, 400).await;
        // The old password no longer works.
        let stale: BaseConsumer = old
            .clone()
            .set("group.id", "stale")
            .create()
            .expect("consumer");
        let topic = input.clone();
        let refused = tokio::task::spawn_blocking(move || {
            stale
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .is_err()
        })
        .await
        .unwrap();
        assert!(refused, "the old password still authenticates");
    })
    .await;
}

#[tokio::test]
async fn a_named_connection_the_broker_refuses_says_why_without_the_secret() {
    let (client, _env, stack) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let labelled = |name: &str, data: &[(&str, &str)]| {
            let mut s = Secret::default();
            s.metadata.name = Some(name.to_owned());
            s.metadata.labels =
                Some([("weir.dev/kafka-credentials".to_owned(), "true".to_owned())].into());
            s.string_data = Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
            s
        };
        // Strimzi's cluster CA Secret layout, and a user whose password is wrong.
        for secret in [
            labelled(
                "my-cluster-cluster-ca-cert",
                &[("ca.crt", stack.kafka.pki().ca_pem())],
            ),
            labelled(
                "wrong-user",
                &[
                    ("username", SASL_USERNAME),
                    ("password", "not-the-password"),
                ],
            ),
        ] {
            secrets
                .create(&Default::default(), &secret)
                .await
                .expect("secret");
        }
        let extra = format!(
            "  kafka:\n    name: secured\n    bootstrapServers: \"{}\"\n    \
             sasl: {{ mechanism: SCRAM-SHA-512, secretName: wrong-user }}\n    \
             tls: {{ caSecretName: my-cluster-cluster-ca-cert }}\n",
            stack.kafka.sasl_ssl_bootstrap_servers()
        );
        apply(&client, &ns, &stream(&ns, "elsewhere", &extra)).await;
        let streams = Api::<DataStream>::namespaced(client.clone(), &ns);
        let ds = await_condition(
            streams,
            "elsewhere",
            weir_tests::fixtures::has_reason("KafkaUnavailable"),
            WAIT,
        )
        .await;
        let message = weir_tests::fixtures::ready_condition(&ds).expect("Ready").2;
        assert!(message.contains("Authentication failed"), "{message}");
        assert!(!message.contains("not-the-password"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_transform_on_a_named_connection_runs_as_its_principal_and_never_mixes_clusters() {
    use weir_operator::kafka_admin::acl::{Pattern, ScramMechanism};
    let (client, _env, stack) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        // The team's own user on the cluster, with what an administrator grants a team:
        // everything under its prefixes. Weir's operator never uses it.
        let kit = kit_admin(stack);
        let user = format!("{ns}-app");
        let password = "team-connection-password-0123456789";
        kit.set_scram(&user, ScramMechanism::Sha512, password)
            .await
            .expect("scram user");
        let grant = |kind, name: String| Acl {
            principal: format!("User:{user}"),
            kind,
            name,
            pattern: Pattern::Prefixed,
            operation: Operation::All,
        };
        kit.create_acls(vec![
            grant(ResourceKind::Topic, format!("{ns}.")),
            grant(ResourceKind::Group, format!("weir.{ns}.")),
            grant(ResourceKind::TransactionalId, format!("weir.{ns}.")),
        ])
        .await
        .expect("acls");
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        for (name, data) in [
            (
                "team-app",
                vec![("username", user.as_str()), ("password", password)],
            ),
            ("kafka-ca", vec![("ca.crt", stack.kafka.pki().ca_pem())]),
        ] {
            let mut s = Secret::default();
            s.metadata.name = Some(name.to_owned());
            s.metadata.labels =
                Some([("weir.dev/kafka-credentials".to_owned(), "true".to_owned())].into());
            s.string_data = Some(
                data.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
            secrets
                .create(&Default::default(), &s)
                .await
                .expect("secret");
        }
        let conn = format!(
            "  kafka:\n    name: team\n    bootstrapServers: \"{}\"\n    \
             sasl: {{ mechanism: SCRAM-SHA-512, secretName: team-app }}\n    \
             tls: {{ caSecretName: kafka-ca }}\n",
            stack.kafka.sasl_ssl_bootstrap_servers()
        );
        apply(&client, &ns, &stream(&ns, "src", &conn)).await;
        apply(&client, &ns, &stream(&ns, "local", "")).await;
        let streams = Api::<DataStream>::namespaced(client.clone(), &ns);
        for name in ["src", "local"] {
            await_condition(
                streams.clone(),
                name,
                weir_tests::fixtures::is_ready(),
                WAIT,
            )
            .await;
        }

        // On the connection: its output is made there and every row comes out once.
        apply(
            &client,
            &ns,
            &format!("{}{conn}", copy(&ns, "copy", "src", "out")),
        )
        .await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);
        await_condition(transforms.clone(), "copy", ready, WAIT).await;
        let out = streams.get("out").await.expect("output DataStream");
        assert_eq!(
            out.spec.kafka.as_ref().map(|k| k.name.as_str()),
            Some("team")
        );
        produce_orders(stack, &format!("{ns}.src"), 0, 20).await;
        wait_for_orders(stack, &format!("{ns}.out"), 20).await;

        // The workers ran as the connection's user: its servers, its Secret as files, no
        // secret in their environment, and no principal or ACL of Weir's making.
        let env = worker_env(&client, &ns, "copy").await;
        assert_eq!(
            env["WEIR_KAFKA_BOOTSTRAP_SERVERS"],
            stack.kafka.sasl_ssl_bootstrap_servers(),
            "{env:?}"
        );
        assert!(env.values().all(|v| !v.contains(password)), "{env:?}");
        assert!(
            kit.acls(&format!("User:weir.{ns}.copy"))
                .await
                .expect("acls")
                .is_empty()
        );

        // One Transform never mixes clusters, either way round.
        apply(&client, &ns, &copy(&ns, "plain", "src", "out2")).await;
        let tf = await_condition(transforms.clone(), "plain", reason("InvalidSpec"), WAIT).await;
        let message = &condition(&tf, "Ready").unwrap().message;
        assert!(
            message.contains(&format!(
                "DataStream {ns}/src lives on named Kafka connection \"team\""
            )),
            "{message}"
        );
        apply(
            &client,
            &ns,
            &format!("{}{conn}", copy(&ns, "mixed", "local", "out3")),
        )
        .await;
        let tf = await_condition(transforms, "mixed", reason("InvalidSpec"), WAIT).await;
        let message = &condition(&tf, "Ready").unwrap().message;
        assert!(
            message.contains(&format!(
                "DataStream {ns}/local lives on the operator's Kafka cluster"
            )),
            "{message}"
        );
    })
    .await;
}
