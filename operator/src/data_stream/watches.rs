//! The DataStream controller's watches: the DataStreams (through the guarded watch, see
//! [`crate::watch`]), the Transforms whose status names them as input or output, and, when
//! asked, the credential Secrets their connections name.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Config;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tracing::warn;
use weir_crds::{DataStream, Transform};

use crate::watch::{self, WatchHealth};

/// The DataStream controller. With `credential_secrets`, a change to a Secret marked for
/// Weir wakes the DataStreams of its namespace that name it.
pub fn controller(
    client: &kube::Client,
    config: Config,
    health: &Arc<WatchHealth>,
    credential_secrets: bool,
) -> Controller<DataStream> {
    let any = || watcher::Config::default().any_semantic();
    let (store, writer) = reflector::store::<DataStream>();
    let events = watch::events(client.clone(), "DataStream", any(), health.clone())
        .reflect(writer)
        .applied_objects();
    let credentials_of = store.clone();
    // A DataStream's status shows which Transforms read and write it: their changes wake it.
    let controller = Controller::for_stream(events, store)
        .with_config(config)
        .watches_stream(
            watch::events::<Transform>(
                client.clone(),
                "Transform (for DataStreams)",
                any(),
                health.clone(),
            )
            .touched_objects(),
            |tf| data_streams_of(&tf),
        );
    if !credential_secrets {
        return controller;
    }
    let marked = watcher::Config::default()
        .labels(&format!(
            "{}=true",
            weir_crds::connection::CREDENTIALS_LABEL
        ))
        .any_semantic();
    controller.watches_stream(
        watcher(Api::<Secret>::all(client.clone()), marked)
            .default_backoff()
            .touched_objects()
            .inspect(|event| {
                if let Err(e) = event {
                    warn!(
                        error = %e,
                        "watching credential Secrets failed (does the operator have list \
                         and watch on Secrets? the chart grants them with \
                         watchCredentialSecrets: true)"
                    );
                }
            }),
        move |secret: Secret| {
            let namespace = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            credentials_of
                .state()
                .into_iter()
                .filter(|ds| {
                    ds.namespace().as_deref() == Some(namespace.as_str())
                        && ds
                            .spec
                            .kafka
                            .as_ref()
                            .is_some_and(|k| k.secret_names().any(|n| n == name))
                })
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        },
    )
}

/// The DataStreams a Transform reads and writes, by its status and its spec's output.
fn data_streams_of(tf: &Transform) -> Vec<ObjectRef<DataStream>> {
    let status = tf.status.clone().unwrap_or_default();
    let own = format!(
        "{}/{}",
        tf.namespace().unwrap_or_default(),
        tf.spec.output.name
    );
    status
        .inputs
        .into_iter()
        .chain(status.output)
        .chain(std::iter::once(own))
        .filter_map(|id| {
            let (ns, name) = id.split_once('/')?;
            Some(ObjectRef::<DataStream>::new(name).within(ns))
        })
        .collect()
}
