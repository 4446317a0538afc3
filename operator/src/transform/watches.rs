//! The Transform controller's watches, and which changes of other objects wake which
//! Transforms.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Config;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use weir_crds::compile::id_of;
use weir_crds::{DataStream, Transform};
use weir_sql::sql_ident;

use super::build::TRANSFORM_LABEL;
use crate::watch::{self, WatchHealth};

/// The Transform controller: the Transforms (through the guarded watch, see
/// [`crate::watch`]), the Deployments it deploys (by the operator's label), the worker
/// pods (by the Transform label), and the DataStreams its Transforms read and write.
pub fn controller(
    client: &kube::Client,
    config: Config,
    health: &Arc<WatchHealth>,
) -> Controller<Transform> {
    let any = || watcher::Config::default().any_semantic();
    let managed = watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::FIELD_MANAGER
        ))
        .any_semantic();
    let (store, writer) = reflector::store::<Transform>();
    let events = watch::events(client.clone(), "Transform", any(), health.clone())
        .reflect(writer)
        .applied_objects();
    let lookup = store.clone();
    Controller::for_stream(events, store)
        .with_config(config)
        .owns(Api::<Deployment>::all(client.clone()), managed)
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default()
                .labels(TRANSFORM_LABEL)
                .any_semantic(),
            |pod| {
                let name = pod.labels().get(TRANSFORM_LABEL)?.clone();
                Some(ObjectRef::<Transform>::new(&name).within(&pod.namespace()?))
            },
        )
        .watches_stream(
            watch::events::<DataStream>(
                client.clone(),
                "DataStream (for Transforms)",
                any(),
                health.clone(),
            )
            .touched_objects(),
            move |ds| {
                transforms_for(&ds, &lookup.state())
                    .into_iter()
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
}

/// The Transforms a DataStream change concerns: those reading it, the one writing it, and
/// those not Ready whose SQL names it (its appearing, changing or granting access may
/// unblock them). Others are left alone: waking every waiting Transform on every
/// DataStream change would compile each of them hundreds of times when many are applied
/// at once.
pub fn transforms_for(ds: &DataStream, transforms: &[Arc<Transform>]) -> Vec<Arc<Transform>> {
    let id = id_of(&ds.metadata);
    let ns = ds.namespace();
    let name = sql_ident(&ds.name_any()).to_ascii_lowercase();
    transforms
        .iter()
        .filter(|t| {
            let status = t.status.as_ref();
            let reads = status.is_some_and(|s| s.inputs.contains(&id));
            let writes = t.namespace() == ns && t.spec.output.name == ds.name_any();
            let waiting = !status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            reads || writes || (waiting && t.spec.sql.to_ascii_lowercase().contains(&name))
        })
        .cloned()
        .collect()
}
