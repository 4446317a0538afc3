//! Transforms that bring their own Kafka principal (`--transform-principals=provided`), as
//! a team does with a Strimzi `KafkaUser`: the operator mounts the named Secret into the
//! workers, and deploys nothing while the principal lacks an ACL the plan needs, saying
//! which. The broker's authorizer is on: what the principal may do is what Kafka allows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rdkafka::ClientConfig;
use weir_crds::Transform;
use weir_operator::kafka_admin::KafkaAdmin;
use weir_operator::kafka_admin::acl::{Acl, Operation, Pattern, ResourceKind, ScramMechanism};
use weir_tests::fixtures::apply;
use weir_tests::records::{self, Record};
use weir_tests::{
    Images, LocalNode, Operator, OperatorOptions, Stack, await_condition, install_crds, wait_until,
    with_temp_ns,
};

const WAIT: Duration = Duration::from_secs(120);

fn condition(tf: &Transform) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    tf.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn ready_reason(status: &'static str, reason: &'static str) -> impl Fn(Option<&Transform>) -> bool {
    move |tf| {
        tf.and_then(condition)
            .is_some_and(|c| c.status == status && (reason.is_empty() || c.reason == reason))
    }
}

#[tokio::test]
async fn a_transform_with_its_own_principal_runs_once_kafka_grants_what_its_plan_needs() {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    let _node = LocalNode::start(
        &stack.control_plane.kubeconfig_path(),
        &stack.dir().join("node"),
        Images::workspace().expect("built binaries"),
    )
    .await
    .expect("local node");
    let mut options = OperatorOptions::on_sasl_ssl(stack).expect("options");
    options
        .env
        .push(("WEIR_TRANSFORM_PRINCIPALS", "provided".into()));
    let _operator = Operator::start(stack, options).await.expect("operator");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack.bootstrap_servers());
    let kit = KafkaAdmin::new(config).expect("admin");

    with_temp_ns(client, move |client, ns| async move {
        apply(
            &client,
            &ns,
            &format!(
                r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: src, namespace: {ns} }}
spec:
  description: Orders.
  owner: team@example.com
  schema: {{ fields: [ {{ name: order_id, type: string, nullable: false }} ] }}
  key: [order_id]
"#
            ),
        )
        .await;
        let transform = |credentials: &str| {
            format!(
                r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: {{ name: copy, namespace: {ns} }}
spec:
  description: Copies orders.
  owner: team@example.com
  sql: SELECT order_id FROM src
  output: {{ name: copied, deletionPolicy: Delete }}
{credentials}"#
            )
        };
        let transforms = Api::<Transform>::namespaced(client.clone(), &ns);

        // No credentials named: nothing runs, and the Transform says what to do.
        apply(&client, &ns, &transform("")).await;
        let tf = await_condition(
            transforms.clone(),
            "copy",
            ready_reason("False", "CredentialsInvalid"),
            WAIT,
        )
        .await;
        assert!(
            condition(&tf)
                .unwrap()
                .message
                .starts_with("spec.kafkaCredentials")
        );

        // The team's user, as Strimzi's User Operator makes it: a SCRAM-SHA-512 credential
        // and a Secret with `password` and `sasl.jaas.config`.
        let user = format!("{ns}-app");
        let password = "team-app-password-0123456789abcdef";
        kit.set_scram(&user, ScramMechanism::Sha512, password)
            .await
            .expect("scram user");
        let mut secret = Secret::default();
        secret.metadata.name = Some(user.clone());
        secret.metadata.labels =
            Some([("weir.dev/kafka-credentials".to_owned(), "true".to_owned())].into());
        secret.string_data = Some(
            [
                ("password".to_owned(), password.to_owned()),
                (
                    "sasl.jaas.config".to_owned(),
                    format!(
                        "org.apache.kafka.common.security.scram.ScramLoginModule required \
                         username=\"{user}\" password=\"{password}\";"
                    ),
                ),
            ]
            .into(),
        );
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret");
        apply(
            &client,
            &ns,
            &transform(&format!("  kafkaCredentials: {{ secretName: {user} }}\n")),
        )
        .await;

        // Without ACLs: the missing ones are named, nothing is deployed.
        let tf = await_condition(
            transforms.clone(),
            "copy",
            ready_reason("False", "AclMissing"),
            WAIT,
        )
        .await;
        let message = &condition(&tf).unwrap().message;
        assert!(
            message.contains(&format!("READ on topic {ns}.src for User:{user}")),
            "{message}"
        );
        assert!(message.contains("transactional id"), "{message}");

        // An administrator grants them (by prefix, as one would for a team): it runs.
        let principal = format!("User:{user}");
        let acl = |kind, name: String, operation| Acl {
            principal: principal.clone(),
            kind,
            name,
            pattern: Pattern::Prefixed,
            operation,
        };
        let mut grants = Vec::new();
        for op in [Operation::Read, Operation::Write, Operation::Describe] {
            grants.push(acl(ResourceKind::Topic, format!("{ns}."), op));
        }
        grants.push(acl(
            ResourceKind::Group,
            format!("weir.{ns}."),
            Operation::Read,
        ));
        for op in [Operation::Write, Operation::Describe] {
            grants.push(acl(
                ResourceKind::TransactionalId,
                format!("weir.{ns}."),
                op,
            ));
        }
        kit.create_acls(grants).await.expect("acls");
        await_condition(transforms.clone(), "copy", ready_reason("True", ""), WAIT).await;
        let input: Vec<Record> = (0..10)
            .map(|i| {
                Record::new(
                    format!("{{\"order_id\":\"o{i}\"}}"),
                    format!("{{\"order_id\":\"o{i}\"}}"),
                )
            })
            .collect();
        records::produce(&stack.bootstrap_servers(), &format!("{ns}.src"), &input)
            .await
            .expect("produce");
        let output = format!("{ns}.copied");
        wait_until("the output to hold every order", WAIT, || {
            let output = output.clone();
            async move {
                let got = records::consume_all(
                    &stack.bootstrap_servers(),
                    &output,
                    Duration::from_secs(1),
                )
                .await
                .map_err(|e| e.to_string())?;
                if got.len() == 10 {
                    Ok(())
                } else {
                    Err(format!("{} records", got.len()))
                }
            }
        })
        .await
        .expect("the provided principal runs the plan");
        // The operator never touched the team's ACLs.
        let held = kit.acls(&principal).await.expect("acls");
        assert_eq!(held.len(), 6, "{held:?}");
    })
    .await;
}
