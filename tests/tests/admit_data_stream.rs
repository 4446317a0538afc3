//! What the apiserver refuses at admission, from the CRD's schema and CEL rules.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use weir_crds::DataStream;
use weir_tests::fixtures::data_stream;
use weir_tests::{Stack, install_crds, with_temp_ns};

async fn stack_client() -> kube::Client {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    install_crds(&client).await.expect("crds");
    client
}

fn rejection(result: Result<DataStream, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("expected a 422 from the apiserver, got {e}"),
        Ok(ds) => panic!("the apiserver admitted {:?}", ds.spec),
    }
}

#[tokio::test]
async fn decreasing_partitions_is_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(&PostParams::default(), &data_stream("views", ""))
            .await
            .expect("create");
        let patch = serde_json::json!({ "spec": { "partitions": 2 } });
        let message = rejection(
            api.patch("views", &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        );
        assert!(message.contains("spec.partitions"), "{message}");
        assert!(message.contains("cannot be decreased"), "{message}");
        // Raising is fine.
        let patch = serde_json::json!({ "spec": { "partitions": 6 } });
        api.patch("views", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("raising partitions is allowed");
    })
    .await;
}

#[tokio::test]
async fn changing_the_topic_name_is_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        api.create(
            &PostParams::default(),
            &data_stream("views", "  topic: views.v1\n"),
        )
        .await
        .expect("create");
        let patch = serde_json::json!({ "spec": { "topic": "views.v2" } });
        let message = rejection(
            api.patch("views", &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        );
        assert!(message.contains("spec.topic is immutable"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_key_outside_the_schema_is_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let mut ds = data_stream("views", "");
        ds.spec.key = vec!["session_id".into()];
        let message = rejection(api.create(&PostParams::default(), &ds).await);
        assert!(message.contains("spec.key"), "{message}");
        assert!(
            message.contains("must be a field of spec.schema"),
            "{message}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_event_time_outside_the_schema_is_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let mut ds = data_stream("views", "");
        if let Some(et) = ds.spec.event_time.as_mut() {
            et.field = "when".into();
        }
        let message = rejection(api.create(&PostParams::default(), &ds).await);
        assert!(message.contains("spec.eventTime.field"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_blank_owner_and_zero_partitions_are_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        let api = Api::<DataStream>::namespaced(client, &ns);
        let mut ds = data_stream("views", "");
        ds.spec.owner = "   ".into();
        let message = rejection(api.create(&PostParams::default(), &ds).await);
        assert!(message.contains("spec.owner"), "{message}");

        let mut ds = data_stream("views", "");
        ds.spec.partitions = 0;
        let message = rejection(api.create(&PostParams::default(), &ds).await);
        assert!(message.contains("spec.partitions"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn an_unknown_field_type_is_rejected_at_admission() {
    with_temp_ns(stack_client().await, |client, ns| async move {
        // The Rust type cannot even hold a bad type name, so send the object untyped.
        let mut ds = serde_json::to_value(data_stream("views", "")).expect("json");
        ds["spec"]["schema"]["fields"][1]["type"] = "datetime".into();
        let obj: DynamicObject = serde_json::from_value(ds).expect("dynamic");
        let api = Api::<DynamicObject>::namespaced_with(
            client,
            &ns,
            &ApiResource::erase::<DataStream>(&()),
        );
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422);
                assert!(
                    status.message.contains("spec.schema.fields[1].type"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    })
    .await;
}
