//! The operator process: preflight, leader election, controllers, HTTP, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use weir_crds::{DataStream, Transform};

use crate::config::Config;
use crate::context::Context;
use crate::data_stream::{self, validated::Defaults};
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::topics::Topics;

/// How long a stopping leader waits to release its Lease.
const LEASE_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
use crate::transform::{self, build::WorkerSettings};

/// Why the operator could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable Kubernetes configuration.
    #[error("connecting to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    /// The weir.dev CRDs are not installed.
    #[error(
        "the weir.dev CustomResourceDefinitions are not installed (missing {0}): install them \
         with `kubectl apply -f manifests/crds/` or the Helm chart, then restart the operator"
    )]
    MissingCrd(String),
    /// The apiserver could not be asked about the CRDs.
    #[error("checking the weir.dev CRDs: {0}")]
    Preflight(#[source] kube::Error),
    /// The Kafka client configuration is invalid.
    #[error("configuring Kafka: {0}")]
    Kafka(#[source] crate::topics::TopicError),
    /// The HTTP endpoints could not be served.
    #[error("serving HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    LeaderElection(String),
    /// This replica lost its leadership; it stops so that it cannot act as a second leader.
    #[error("lost the leader lease; stopping")]
    LostLeadership,
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Connect)?;
    preflight(&client).await?;

    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &config.kafka_bootstrap_servers);
    for (k, v) in &config.kafka_config {
        kafka.set(k, v);
    }
    let topics = Topics::new(kafka).map_err(RunError::Kafka)?;

    let identity = config.identity.clone().unwrap_or_else(hostname_or_random);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let http_shutdown = shutdown.clone();
    let addr = config.http_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    let server = tokio::spawn(http::serve(
        listener,
        Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        async move { http_shutdown.cancelled().await },
    ));

    let leadership = if config.leader_election {
        info!(identity, lease = %config.lease_name, namespace = %config.lease_namespace, "waiting for the leader lease");
        ready.store(true, Ordering::Relaxed);
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &config.lease_name)
                .with_namespace(&config.lease_namespace)
                .with_identity(&identity)
                .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .map_err(|e| RunError::LeaderElection(e.to_string()))?;
        let (mut leader, task) = manager.watch().await;
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err(RunError::LeaderElection("the lease manager stopped".into()));
                    }
                }
                _ = shutdown.cancelled() => {
                    drop(leader);
                    let _ = task.await;
                    return Ok(());
                }
            }
        }
        info!(identity, "became the leader");
        Some((leader, task))
    } else {
        None
    };

    let api: Api<DataStream> = Api::all(client.clone());
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(config.concurrency);
    // A DataStream's status shows which Transforms read and write it: their changes wake it.
    let controller = Controller::new(api.clone(), watcher::Config::default().any_semantic())
        .with_config(controller_config.clone())
        .watches(
            Api::<Transform>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            |tf| {
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
                    .collect::<Vec<_>>()
            },
        );
    // The Transform controller watches what it deploys (by the operator's label) and the
    // DataStreams its Transforms read and write.
    let managed = watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::FIELD_MANAGER
        ))
        .any_semantic();
    let transforms = Controller::new(
        Api::<Transform>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(controller_config);
    let transform_store = transforms.store();
    let lookup = transform_store.clone();
    let transforms = transforms
        .owns(Api::<Deployment>::all(client.clone()), managed)
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default()
                .labels(transform::build::TRANSFORM_LABEL)
                .any_semantic(),
            |pod| {
                let name = pod.labels().get(transform::build::TRANSFORM_LABEL)?.clone();
                Some(ObjectRef::<Transform>::new(&name).within(&pod.namespace()?))
            },
        )
        .watches(api, watcher::Config::default().any_semantic(), move |ds| {
            transform::transforms_for(&ds, &lookup.state())
                .into_iter()
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        });
    let ctx = Arc::new(Context::new(
        client.clone(),
        topics,
        Defaults {
            replication_factor: config.default_replication_factor,
            topic_grants: config.topic_grants.clone(),
        },
        metrics.clone(),
        (controller.store(), transform_store),
        WorkerSettings {
            image: config.worker_image.clone(),
            bootstrap_servers: config
                .worker_kafka_bootstrap_servers
                .clone()
                .unwrap_or_else(|| config.kafka_bootstrap_servers.clone()),
            sample_interval: config.worker_sample_interval,
        },
        config.resync_interval,
        identity.clone(),
    ));
    ready.store(true, Ordering::Relaxed);
    info!("reconciling DataStreams and Transforms");

    let stop = shutdown.clone();
    let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<()>();
    let mut lease = None;
    if let Some((mut leader, task)) = leadership {
        let stop = shutdown.clone();
        // Watches for lost leadership until shutdown; then drops the last receiver, which
        // tells the lease task to release the Lease.
        let monitor = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = leader.changed() => {
                        if changed.is_err() || !*leader.borrow_and_update() {
                            let _ = lost_tx.send(());
                            stop.cancel();
                            return;
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
        });
        lease = Some((monitor, task));
    }

    let stop_transforms = stop.clone();
    let data_streams = controller
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(
            data_stream::reconcile,
            data_stream::error_policy,
            ctx.clone(),
        )
        .for_each(log_controller_event);
    let transforms = transforms
        .graceful_shutdown_on(async move { stop_transforms.cancelled().await })
        .run(transform::reconcile, transform::error_policy, ctx)
        .for_each(log_controller_event);
    futures::join!(data_streams, transforms);

    shutdown.cancel();
    let _ = server.await;
    if let Some((monitor, task)) = lease {
        // Release the Lease, so that a successor takes over at once instead of waiting
        // out its duration; never wait long for it.
        let _ = monitor.await;
        match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, task).await {
            Ok(Ok(Ok(_))) => info!("released the leader lease"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "the lease task failed"),
            Err(_) => warn!("could not release the leader lease in time; it expires on its own"),
        }
    }
    if lost_rx.try_recv().is_ok() {
        error!("lost the leader lease");
        return Err(RunError::LostLeadership);
    }
    info!("stopped");
    Ok(())
}

async fn log_controller_event<K, E: std::fmt::Display>(
    result: Result<K, kube::runtime::controller::Error<E, kube::runtime::watcher::Error>>,
) {
    if let Err(e) = result {
        match e {
            kube::runtime::controller::Error::ObjectNotFound(_) => {}
            other => warn!(error = %other, "controller event"),
        }
    }
}

/// Checks that the CRDs the operator serves are installed.
async fn preflight(client: &kube::Client) -> Result<(), RunError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["datastreams.weir.dev", "transforms.weir.dev"] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(RunError::MissingCrd(name.into())),
            Err(e) => return Err(RunError::Preflight(e)),
        }
    }
    Ok(())
}

async fn cancel_on_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    info!("shutting down");
    token.cancel();
}

fn hostname_or_random() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| format!("{h}-{}", std::process::id()))
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()))
}
