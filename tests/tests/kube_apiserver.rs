//! The test kit's kube-apiserver is a real one: objects are stored, watched and validated.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use weir_tests::{Stack, with_temp_ns};

fn config_map(name: &str, value: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some([("greeting".to_owned(), value.to_owned())].into());
    cm
}

#[tokio::test]
async fn config_maps_are_stored_and_watched_in_a_namespace() {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<ConfigMap>::namespaced(client, &ns);
        let watch_api = api.clone();
        let updates = tokio::spawn(async move {
            watcher(
                watch_api,
                watcher::Config::default().fields("metadata.name=hello"),
            )
            .applied_objects()
            .try_filter_map(|cm: ConfigMap| async move {
                let greeting = cm.data.and_then(|d| d.get("greeting").cloned());
                Ok(greeting.filter(|g| g == "hello, weir"))
            })
            .boxed()
            .next()
            .await
        });

        api.create(&PostParams::default(), &config_map("hello", "hello"))
            .await
            .expect("create");
        let patch = serde_json::json!({ "data": { "greeting": "hello, weir" } });
        api.patch("hello", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");

        let seen = tokio::time::timeout(Duration::from_secs(30), updates)
            .await
            .expect("the watch saw the update in time")
            .expect("watch task")
            .expect("watch stream ended")
            .expect("watch error");
        assert_eq!(seen, "hello, weir");
        let stored = api.get("hello").await.expect("get");
        assert_eq!(stored.metadata.namespace.as_deref(), Some(ns.as_str()));
    })
    .await;
}

#[tokio::test]
async fn an_invalid_object_is_rejected_by_the_apiserver() {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    with_temp_ns(client, |client, ns| async move {
        let api = Api::<ConfigMap>::namespaced(client, &ns);
        let err = api
            .create(&PostParams::default(), &config_map("Not_A_Valid_Name", "x"))
            .await
            .expect_err("an invalid name must be rejected");
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains("Not_A_Valid_Name"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected a 422 from the apiserver, got {other}"),
        }
        assert!(
            api.get_opt("Not_A_Valid_Name")
                .await
                .expect("get")
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_what_it_holds() {
    let stack = Stack::shared().await;
    let client = stack.kube_client().await.expect("client");
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("weir-test-finalized".into());
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    let api = Api::<ConfigMap>::namespaced(client, "weir-test-finalized");
    api.create(&PostParams::default(), &config_map("doomed", "bye"))
        .await
        .expect("create cm");
    namespaces
        .delete("weir-test-finalized", &Default::default())
        .await
        .expect("delete ns");
    // kube-controller-manager's namespace controller empties and finalizes it.
    let gone = tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(
            namespaces,
            "weir-test-finalized",
            |ns: Option<&k8s_openapi::api::core::v1::Namespace>| ns.is_none(),
        ),
    )
    .await;
    assert!(gone.is_ok(), "the namespace was not finalized in time");
}
