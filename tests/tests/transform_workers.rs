//! The Transform controller end to end: the real operator compiles and tests Transforms,
//! creates their output DataStreams and internal topics and deploys workers; the real
//! kube-controller-manager and kube-scheduler turn the Deployment into pods, and the test
//! kit's local node runs them as `weir-worker` processes against the real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;
use tokio::sync::OnceCell;
use weir_crds::{DataStream, Transform};
use weir_tests::fixtures;
use weir_tests::records::{self, Record};
use weir_tests::{
    Images, LocalNode, Operator, OperatorOptions, Stack, await_condition, await_deletion,
    install_crds, wait_until, with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(120);

struct Env {
    _operator: Operator,
    node: LocalNode,
}

/// One stack, one operator and one local node shared by the tests in this file.
async fn setup() -> (kube::Client, &'static Env, String) {
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
            let operator = Operator::start(stack, OperatorOptions::default())
                .await
                .expect("operator");
            Env {
                _operator: operator,
                node,
            }
        })
        .await;
    (client, env, stack.bootstrap_servers())
}

/// Server-side applies a YAML document, with `NS` replaced by `ns`.
async fn apply(client: &kube::Client, ns: &str, yaml: &str) {
    fixtures::apply(client, ns, &yaml.replace("NS", ns)).await;
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

fn is(type_: &'static str, status: &'static str) -> impl Fn(Option<&Transform>) -> bool {
    move |tf: Option<&Transform>| {
        tf.and_then(|t| {
            let generation = t.metadata.generation;
            condition(t, type_).filter(|c| c.observed_generation == generation)
        })
        .is_some_and(|c| c.status == status)
    }
}

const CLICKS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: clicks, namespace: NS }
spec:
  description: Clicks.
  owner: web@example.com
  partitions: 2
  schema:
    fields:
      - { name: user_id, type: string, nullable: false }
      - { name: url, type: string }
      - { name: email, type: string, classification: [pii] }
  key: [user_id]
"#;

const BY_URL: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: { name: by-url, namespace: NS }
spec:
  description: Clicks per URL.
  owner: web@example.com
  sql: |
    SELECT url, COUNT(*) AS clicks
    FROM clicks
    WHERE url IS NOT NULL
    GROUP BY url
  output: { name: clicks-by-url, deletionPolicy: Delete }
  parallelism: 2
  tests:
    - name: counts per url
      given:
        clicks:
          - { user_id: u1, url: /a }
          - { user_id: u2, url: /a }
      expect:
        - { url: /a, clicks: 2 }
"#;

/// The clicks per URL in a `by-url` output (a changelog: the last value per key), read
/// committed.
async fn clicks_per_url(bootstrap: &str, topic: &str) -> BTreeMap<String, i64> {
    let mut table = BTreeMap::new();
    for r in records::consume_all(bootstrap, topic, Duration::from_secs(2))
        .await
        .expect("consume")
    {
        match r.value {
            Some(_) => table.insert(r.key_str(), r.value_str()),
            None => table.remove(&r.key_str()),
        };
    }
    table
        .values()
        .map(|v| {
            let v: serde_json::Value = serde_json::from_str(v).expect("json");
            (
                v["url"].as_str().unwrap_or_default().to_owned(),
                v["clicks"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Waits until the `by-url` output counts `want`.
async fn wait_for_clicks(bootstrap: &str, topic: &str, want: &BTreeMap<String, i64>) {
    wait_until(format!("{topic} to count {want:?}"), WAIT, || async move {
        let got = clicks_per_url(bootstrap, topic).await;
        if &got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
    .expect("the output counts what was clicked");
}

/// Waits until Kafka no longer has topic `name`.
async fn wait_for_topic_deleted(bootstrap: &str, name: &str) {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let admin = &weir_operator::kafka_admin::KafkaAdmin::new(config).expect("admin");
    wait_until(format!("topic {name} to be deleted"), WAIT, || async move {
        match admin.describe(name).await.expect("describe") {
            None => Ok(()),
            Some(state) => Err(format!("{state:?}")),
        }
    })
    .await
    .expect("the topic is deleted");
}

/// Whether condition `type_` of a Transform has reason `reason`.
/// Ready for its generation, in state epoch `epoch`.
fn ready_in_epoch(epoch: i64) -> impl Fn(Option<&Transform>) -> bool {
    move |t| {
        t.and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.state_epoch == epoch)
            && is("Ready", "True")(t)
    }
}

fn has_reason(type_: &'static str, reason: &'static str) -> impl Fn(Option<&Transform>) -> bool {
    move |tf: Option<&Transform>| {
        tf.and_then(|t| condition(t, type_))
            .is_some_and(|c| c.reason == reason)
    }
}

#[tokio::test]
async fn a_transform_runs_as_workers_that_survive_a_crash() {
    let (client, env, bootstrap) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        // Worker pods must pass Pod Security "restricted".
        Api::<Namespace>::all(client.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "metadata": { "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted" } } })),
            )
            .await
            .expect("label the namespace");
        apply(&client, &ns, CLICKS).await;
        apply(&client, &ns, BY_URL).await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);
        let tf = await_condition(transforms.clone(), "by-url", is("Ready", "True"), WAIT).await;
        let degraded = condition(&tf, "Degraded").expect("Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "Healthy")
        );

        // A steady state writes nothing: no object changes over several resyncs.
        let versions = || async {
            let rv = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                m.resource_version.clone().unwrap_or_default()
            };
            vec![
                rv(&transforms.get("by-url").await.expect("tf").metadata),
                rv(&Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get("by-url-worker")
                    .await
                    .expect("deployment")
                    .metadata),
                rv(&Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get("by-url-worker")
                    .await
                    .expect("config map")
                    .metadata),
                rv(&Api::<DataStream>::namespaced(client.clone(), &ns)
                    .get("clicks-by-url")
                    .await
                    .expect("output")
                    .metadata),
            ]
        };
        let before = versions().await;
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(
            versions().await,
            before,
            "a steady state wrote to the apiserver"
        );
        let status = tf.status.clone().expect("status");
        assert_eq!(status.inputs, vec![format!("{ns}/clicks")]);
        assert_eq!(status.output, Some(format!("{ns}/clicks-by-url")));
        assert_eq!(status.replicas, 2);
        assert!(status.plan_fingerprint.is_some());
        assert_eq!(
            condition(&tf, "TestsPassed").unwrap().message,
            "1 of 1 fixture tests passed"
        );

        // The output DataStream: owned, compacted, keyed by the group, lineage-classified.
        let out = Api::<DataStream>::namespaced(client.clone(), &ns)
            .get("clicks-by-url")
            .await
            .expect("output DataStream");
        assert_eq!(out.spec.key, vec!["url"]);
        assert_eq!(
            out.spec.cleanup_policy,
            weir_crds::data_stream::CleanupPolicy::Compact
        );
        assert_eq!(
            out.metadata.owner_references.as_ref().unwrap()[0].name,
            "by-url"
        );

        // Records flow through two worker pods.
        let mut input = Vec::new();
        for i in 0..300 {
            input.push(Record::new(
                format!("{{\"user_id\":\"u{i}\"}}"),
                format!("{{\"user_id\":\"u{i}\",\"url\":\"/p{}\"}}", i % 3),
            ));
        }
        records::produce(&bootstrap, &format!("{ns}.clicks"), &input[..150])
            .await
            .expect("produce");
        let topic = format!("{ns}.clicks-by-url");
        let expect_counts = |n: usize| {
            let mut want = BTreeMap::new();
            for i in 0..n {
                *want.entry(format!("/p{}", i % 3)).or_insert(0) += 1;
            }
            want
        };
        wait_for_clicks(&bootstrap, &topic, &expect_counts(150)).await;

        // SIGKILL one worker pod; it restarts and the output stays exact.
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        let list = pods
            .list(&ListParams::default().labels("weir.dev/transform=by-url"))
            .await
            .expect("pods");
        assert_eq!(list.items.len(), 2, "two worker pods");
        let victim = list.items[0].metadata.name.clone().unwrap();
        assert_eq!(env.node.signal(&ns, &victim, Signal::SIGKILL), 1);
        records::produce(&bootstrap, &format!("{ns}.clicks"), &input[150..])
            .await
            .expect("produce");
        wait_for_clicks(&bootstrap, &topic, &expect_counts(300)).await;
        let restarted = pods.get(&victim).await.expect("pod");
        let restarts = restarted.status.unwrap().container_statuses.unwrap()[0].restart_count;
        assert!(restarts >= 1, "the killed worker restarted");

        // Scale down through the scale subresource.
        transforms
            .patch_scale(
                "by-url",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "replicas": 1 } })),
            )
            .await
            .expect("scale");
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let d = await_condition(
            deployments,
            "by-url-worker",
            |d: Option<&Deployment>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.replicas == Some(1) && s.ready_replicas == Some(1))
            },
            WAIT,
        )
        .await;
        assert_eq!(d.spec.replicas, Some(1));
        let plan = |d: &Deployment| {
            d.spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["weir.dev/plan"]
                .clone()
        };
        let running_plan = plan(&d);

        // And up again with kubectl itself.
        let kubectl =
            std::process::Command::new(weir_tests::tools::binary("kubectl").expect("kubectl"))
                .env(
                    "KUBECONFIG",
                    Stack::shared().await.control_plane.kubeconfig_path(),
                )
                .args(["scale", "transform/by-url", "--replicas=2", "-n", &ns])
                .output()
                .expect("kubectl scale");
        assert!(
            kubectl.status.success(),
            "{}",
            String::from_utf8_lossy(&kubectl.stderr)
        );
        await_condition(
            Api::<Deployment>::namespaced(client.clone(), &ns),
            "by-url-worker",
            |d: Option<&Deployment>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.replicas == Some(2) && s.ready_replicas == Some(2))
            },
            WAIT,
        )
        .await;
        let tf = await_condition(transforms.clone(), "by-url", is("Ready", "True"), WAIT).await;
        assert_eq!(tf.status.unwrap().replicas, 2);

        // A failing fixture test blocks the rollout and keeps the running version running.
        apply(&client, &ns, &BY_URL.replace("clicks: 2 }", "clicks: 5 }")).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            is("TestsPassed", "False"),
            WAIT,
        )
        .await;
        assert_eq!(condition(&tf, "Ready").unwrap().reason, "TestsFailed");
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let d = deployments.get("by-url-worker").await.expect("deployment");
        assert_eq!(plan(&d), running_plan);
        assert_eq!(
            d.status.and_then(|s| s.ready_replicas),
            Some(2),
            "still running"
        );

        // Deleting the Transform removes its workers, its internal topics and (by its output's
        // Delete policy) the output DataStream and topic.
        transforms
            .delete("by-url", &Default::default())
            .await
            .expect("delete");
        await_deletion(transforms.clone(), "by-url", WAIT).await;
        await_deletion(deployments, "by-url-worker", WAIT).await;
        await_deletion(
            Api::<DataStream>::namespaced(client.clone(), &ns),
            "clicks-by-url",
            WAIT,
        )
        .await;
        for t in [
            "by-url.dead-letters",
            "by-url.changelog",
            "by-url.repartition",
            "clicks-by-url",
        ] {
            wait_for_topic_deleted(&bootstrap, &format!("{ns}.{t}")).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_keeps_crashing_or_dead_letters_marks_its_transform_degraded() {
    let (client, _env, bootstrap) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        apply(
            &client,
            &ns,
            &CLICKS.replace("partitions: 2", "partitions: 1"),
        )
        .await;
        let one = BY_URL.replace("parallelism: 2", "parallelism: 1");
        let strict = one
            .replace("parallelism: 1", "parallelism: 1\n  errorPolicy: fail")
            .replace("by-url", "strict");
        apply(&client, &ns, &strict).await;
        apply(&client, &ns, &one.replace("by-url", "lenient")).await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);
        await_condition(transforms.clone(), "strict", is("Ready", "True"), WAIT).await;
        await_condition(transforms.clone(), "lenient", is("Ready", "True"), WAIT).await;
        // A record that is not JSON: under errorPolicy fail it stops the worker every time;
        // under deadLetter it is written to the dead letters (Degraded until the next look
        // finds no new ones, so both are watched from before the record is produced).
        let crash_looping = tokio::spawn(await_condition(
            transforms.clone(),
            "strict",
            is("Degraded", "True"),
            WAIT,
        ));
        let dead_lettering = tokio::spawn(await_condition(
            transforms.clone(),
            "lenient",
            has_reason("Degraded", "DeadLettersRising"),
            WAIT,
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        records::produce(
            &bootstrap,
            &format!("{ns}.clicks"),
            &[Record::new("k", "not json")],
        )
        .await
        .expect("produce");
        let tf = crash_looping.await.expect("watch");
        let c = condition(&tf, "Degraded").unwrap();
        assert_eq!(c.reason, "CrashLooping");
        assert!(c.message.contains("keeps crashing"), "{}", c.message);

        let tf = dead_lettering.await.expect("watch");
        let c = condition(&tf, "Degraded").unwrap();
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains(&format!("{ns}.lenient.dead-letters")),
            "{}",
            c.message
        );
        // No more dead letters: it clears by itself.
        await_condition(transforms, "lenient", is("Degraded", "False"), WAIT).await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_transform_deploys_nothing_and_says_why() {
    let (client, _env, _) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        apply(&client, &ns, CLICKS).await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);

        // A compile error names the line and column.
        apply(
            &client,
            &ns,
            &BY_URL.replace("SELECT url, COUNT(*)", "SELECT nope, COUNT(*)"),
        )
        .await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            |t: Option<&Transform>| {
                t.and_then(|t| condition(t, "Compiled"))
                    .is_some_and(|c| c.status == "False" && c.message.contains("nope"))
            },
            WAIT,
        )
        .await;
        let c = condition(&tf, "Compiled").unwrap();
        assert_eq!(c.reason, "CompileFailed");
        assert!(
            c.message.starts_with("spec.sql: line 1, column 8:"),
            "{}",
            c.message
        );

        // A failing fixture test blocks the rollout.
        apply(&client, &ns, &BY_URL.replace("clicks: 2 }", "clicks: 3 }")).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            is("TestsPassed", "False"),
            WAIT,
        )
        .await;
        let c = condition(&tf, "TestsPassed").unwrap();
        assert!(
            c.message.contains("expected but not produced"),
            "{}",
            c.message
        );
        assert!(c.message.contains("clicks: 3"), "{}", c.message);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        assert!(
            deployments
                .get_opt("by-url-worker")
                .await
                .unwrap()
                .is_none(),
            "nothing is deployed while a test fails"
        );

        // Reading another namespace's DataStream needs its grant.
        let other = format!("{ns}-x");
        apply(
            &client,
            &ns,
            &BY_URL
                .replace(
                    "FROM clicks",
                    &format!("FROM {}.clicks", other.replace('-', "_")),
                )
                .replace("tests:", "tests: []\n  old:")
                .lines()
                .take_while(|l| !l.starts_with("  old:"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .await;
        let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(other.clone());
        namespaces
            .create(&Default::default(), &n)
            .await
            .expect("second namespace");
        apply(&client, &other, CLICKS).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            has_reason("Compiled", "InputNotGranted"),
            WAIT,
        )
        .await;
        let c = condition(&tf, "Compiled").unwrap();
        assert!(
            c.message.contains(&format!(
                "DataStream {other}/clicks, which does not grant namespace {ns}"
            )),
            "{}",
            c.message
        );
        // The grant is given: the Transform compiles.
        apply(
            &client,
            &other,
            &format!("{CLICKS}  access: {{ readers: [{ns}] }}\n"),
        )
        .await;
        await_condition(transforms.clone(), "by-url", is("Compiled", "True"), WAIT).await;

        // Two Transforms may not write one DataStream: the younger one says whose it is.
        apply(
            &client,
            &ns,
            &BY_URL
                .replace("name: by-url,", "name: by-url-too,")
                .replace("parallelism: 2", "parallelism: 0"),
        )
        .await;
        let tf = await_condition(
            transforms.clone(),
            "by-url-too",
            has_reason("Ready", "OutputConflict"),
            WAIT,
        )
        .await;
        let c = condition(&tf, "Ready").unwrap();
        assert!(
            c.message
                .contains(&format!("already written by Transform {ns}/by-url;")),
            "{}",
            c.message
        );
        let _ = namespaces.delete(&other, &Default::default()).await;
    })
    .await;
}

#[tokio::test]
async fn data_streams_show_their_readers_and_writer_and_protect_their_readers() {
    let (client, _env, _) = setup().await;
    with_temp_ns(client, move |client, ns| async move {
        apply(
            &client,
            &ns,
            &format!("{CLICKS}  deletionPolicy: Delete\n")
                .replace("partitions: 2", "partitions: 1"),
        )
        .await;
        apply(
            &client,
            &ns,
            &BY_URL.replace("parallelism: 2", "parallelism: 1"),
        )
        .await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);
        await_condition(transforms.clone(), "by-url", is("Compiled", "True"), WAIT).await;
        let streams = Api::<DataStream>::namespaced(client.clone(), &ns);
        let me = format!("{ns}/by-url");
        let reader = me.clone();
        let clicks = await_condition(
            streams.clone(),
            "clicks",
            move |d: Option<&DataStream>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.readers == vec![reader.clone()])
            },
            WAIT,
        )
        .await;
        assert!(clicks.status.unwrap().writer.is_none());
        let writer = me.clone();
        await_condition(
            streams.clone(),
            "clicks-by-url",
            move |d: Option<&DataStream>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.writer.as_deref() == Some(writer.as_str()))
            },
            WAIT,
        )
        .await;

        // A schema change that breaks the Transform is reported on both.
        apply(
            &client,
            &ns,
            &format!("{CLICKS}  deletionPolicy: Delete\n")
                .replace("partitions: 2", "partitions: 1")
                .replace("      - { name: url, type: string }\n", ""),
        )
        .await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            |t: Option<&Transform>| {
                t.and_then(|t| condition(t, "Compiled"))
                    .is_some_and(|c| c.status == "False")
            },
            WAIT,
        )
        .await;
        assert!(
            condition(&tf, "Compiled").unwrap().message.contains("url"),
            "{:?}",
            condition(&tf, "Compiled")
        );
        let clicks = await_condition(
            streams.clone(),
            "clicks",
            fixtures::has_condition_reason("ReadersCompile", "BreaksReaders"),
            WAIT,
        )
        .await;
        let (status, _, message) = fixtures::condition(&clicks, "ReadersCompile").unwrap();
        assert_eq!(status, "False");
        assert!(
            message.contains(&format!("Transform {me} no longer compiles")),
            "{message}"
        );

        // Deleting a DataStream that is still read waits, and says who reads it.
        streams
            .delete("clicks", &Default::default())
            .await
            .expect("delete");
        let clicks = await_condition(
            streams.clone(),
            "clicks",
            fixtures::has_reason("StillRead"),
            WAIT,
        )
        .await;
        let ready = fixtures::ready_condition(&clicks).unwrap();
        assert!(
            ready.2.contains(&format!("still read by {me}")),
            "{}",
            ready.2
        );
        // Once the reader is gone, the deletion completes.
        transforms
            .delete("by-url", &Default::default())
            .await
            .expect("delete");
        await_deletion(streams, "clicks", WAIT).await;
    })
    .await;
}

#[tokio::test]
async fn a_changed_stateful_plan_keeps_its_state_or_is_refused_or_reprocessed_by_upgrade_policy() {
    let (client, env, bootstrap) = setup().await;
    let _ = env;
    with_temp_ns(client, move |client, ns| async move {
        apply(
            &client,
            &ns,
            &CLICKS.replace("partitions: 2", "partitions: 1"),
        )
        .await;
        let v1 = BY_URL.replace("parallelism: 2", "parallelism: 1");
        apply(&client, &ns, &v1).await;
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);
        await_condition(transforms.clone(), "by-url", is("Ready", "True"), WAIT).await;
        let input: Vec<Record> = (0..30)
            .map(|i| {
                Record::new(
                    format!("{{\"user_id\":\"u{i}\"}}"),
                    format!("{{\"user_id\":\"u{i}\",\"url\":\"/p{}\"}}", i % 2),
                )
            })
            .collect();
        records::produce(&bootstrap, &format!("{ns}.clicks"), &input)
            .await
            .expect("produce");
        let topic = format!("{ns}.clicks-by-url");
        let want = BTreeMap::from([("/p0".to_owned(), 15), ("/p1".to_owned(), 15)]);
        wait_for_clicks(&bootstrap, &topic, &want).await;

        // A change above the aggregate keeps the state: the new workers go on from the
        // counts so far (16, not 1, after one more click each), with the new computation.
        let plan_of = |t: &Transform| t.status.as_ref().and_then(|s| s.plan_fingerprint.clone());
        let state_of = |t: &Transform| t.status.as_ref().and_then(|s| s.state_fingerprint.clone());
        let running = transforms.get("by-url").await.expect("get");
        let (v1_plan, v1_state) = (plan_of(&running), state_of(&running));
        assert!(
            v1_state.is_some(),
            "a stateful plan shows its state fingerprint"
        );
        let v1x = v1
            .replace("COUNT(*) AS clicks", "COUNT(*) * 10 AS clicks")
            .replace("clicks: 2 }", "clicks: 20 }");
        apply(&client, &ns, &v1x).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            |t: Option<&Transform>| {
                t.is_some_and(|t| plan_of(t) != v1_plan) && is("Ready", "True")(t)
            },
            WAIT,
        )
        .await;
        assert_eq!(
            state_of(&tf),
            v1_state,
            "the status shows the same state fingerprint"
        );
        assert_eq!(tf.status.unwrap().state_epoch, 0, "the state epoch is kept");
        let more: Vec<Record> = (0..2)
            .map(|i| {
                Record::new(
                    format!("{{\"user_id\":\"v{i}\"}}"),
                    format!("{{\"user_id\":\"v{i}\",\"url\":\"/p{i}\"}}"),
                )
            })
            .collect();
        records::produce(&bootstrap, &format!("{ns}.clicks"), &more)
            .await
            .expect("produce");
        let want_x10 = BTreeMap::from([("/p0".to_owned(), 160), ("/p1".to_owned(), 160)]);
        wait_for_clicks(&bootstrap, &topic, &want_x10).await;

        // keepState refuses a change to what the state holds (here, what feeds the
        // aggregate); the running version keeps running.
        let v2 = v1.replace(
            "WHERE url IS NOT NULL",
            "WHERE url IS NOT NULL AND url <> ''",
        );
        apply(&client, &ns, &v2).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            has_reason("Ready", "UpgradeBlocked"),
            WAIT,
        )
        .await;
        let why = &condition(&tf, "Ready").unwrap().message;
        assert!(
            why.contains(&format!("state is in {ns}.by-url.changelog")),
            "{why}"
        );
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let before = deployments.get("by-url-worker").await.expect("deployment");

        // reprocess drops the state and rebuilds it from the input in a new epoch.
        apply(&client, &ns, &format!("{v2}  upgradePolicy: reprocess\n")).await;
        let tf = await_condition(transforms.clone(), "by-url", ready_in_epoch(1), WAIT).await;
        assert!(
            tf.status
                .unwrap()
                .internal_topics
                .contains(&format!("{ns}.by-url.e1.changelog"))
        );
        let after = deployments.get("by-url-worker").await.expect("deployment");
        assert_ne!(
            before.metadata.generation, after.metadata.generation,
            "the workers were rolled"
        );
        // The rebuilt state gives the counts of all 32 clicks; the old epoch's state topic
        // is gone.
        let want = BTreeMap::from([("/p0".to_owned(), 16), ("/p1".to_owned(), 16)]);
        wait_for_clicks(&bootstrap, &topic, &want).await;
        wait_for_topic_deleted(&bootstrap, &format!("{ns}.by-url.changelog")).await;

        // More input partitions split the state differently: keepState refuses them (the
        // running version keeps running), reprocess rebuilds the state in as many tasks.
        apply(&client, &ns, &v2).await;
        apply(&client, &ns, CLICKS).await;
        let tf = await_condition(
            transforms.clone(),
            "by-url",
            has_reason("Ready", "UpgradeBlocked"),
            WAIT,
        )
        .await;
        let why = &condition(&tf, "Ready").unwrap().message;
        assert!(why.contains("now have 2 partitions"), "{why}");
        assert!(why.contains("split into 1"), "{why}");
        apply(&client, &ns, &format!("{v2}  upgradePolicy: reprocess\n")).await;
        await_condition(transforms.clone(), "by-url", ready_in_epoch(2), WAIT).await;
        wait_for_clicks(&bootstrap, &topic, &want).await;
    })
    .await;
}
