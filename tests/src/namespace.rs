//! Temporary namespaces and waiting for conditions, in the style of linkerd's policy-test.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::Condition;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Runs `test` with a fresh namespace, then deletes the namespace (the controller-manager
/// finalizes it). A panic inside `test` still deletes the namespace, then re-raises.
pub async fn with_temp_ns<F, Fut>(client: kube::Client, test: F)
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api = Api::<Namespace>::all(client.clone());
    let name = format!(
        "weir-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    ns.labels_mut()
        .insert("weir.dev/test".into(), "true".into());
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    tracing::debug!(namespace = %name, "created a test namespace");

    let result = tokio::spawn(test(client, name.clone())).await;

    if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
        tracing::warn!(namespace = %name, error = %e, "could not delete a test namespace");
    }
    if let Err(e) = result {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test in namespace {name} was cancelled: {e}");
    }
}

/// Waits until the named resource satisfies `condition`, and returns it; panics with the
/// resource's last seen state after `timeout`.
pub async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    condition: impl Condition<K>,
    timeout: Duration,
) -> K
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, condition),
    )
    .await;
    match waited {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} was deleted while waiting for a condition"),
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!(
                "timed out after {timeout:?} waiting for a condition on {name}; last seen: {last:#?}"
            )
        }
    }
}

/// Waits until the named resource is gone (finalizers done); panics after `timeout`.
pub async fn await_deletion<K>(api: Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let gone = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, |obj: Option<&K>| obj.is_none()),
    )
    .await;
    if !matches!(gone, Ok(Ok(None))) {
        let last = api.get_opt(name).await;
        panic!("{name} was not deleted within {timeout:?}; last seen: {last:#?}");
    }
}
