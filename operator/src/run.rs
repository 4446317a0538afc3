//! The operator process: preflight, leader election, controllers, HTTP, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use weir_crds::{DataStream, Transform};

use crate::config::Config;
use crate::context::Context;
use crate::data_stream;
use crate::http::{self, Health};
use crate::kafka_admin::{KafkaAdmin, TopicError};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::watch::{self, WatchHealth};

use crate::transform::{self, build::WorkerSettings};

/// How long a stopping leader waits to release its Lease.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the Lease lasts after its last renewal; another replica may take over then.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before the Lease expires the leader renews it.
const LEASE_GRACE: Duration = Duration::from_secs(5);
/// How long before the Lease would expire an unrenewed leader stops (its safety margin for
/// noticing late and for clock differences).
const FENCE_MARGIN: Duration = Duration::from_secs(3);

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
    Kafka(#[source] crate::kafka_admin::TopicError),
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
    let auth = config
        .kafka_auth
        .settings()
        .map_err(|e| RunError::Kafka(TopicError::Rejected(e.to_string())))?;
    for (k, v) in auth
        .iter()
        .chain(config.kafka_config.iter().map(|(k, v)| (k, v)))
    {
        kafka.set(k, v);
    }
    let topics = KafkaAdmin::new(kafka).map_err(RunError::Kafka)?;

    let identity = config.identity.clone().unwrap_or_else(hostname_or_random);
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let watches = Arc::new(WatchHealth::new(config.watch_stall_timeout));
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tokio::spawn(exit_after(shutdown.clone(), config.shutdown_timeout));

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
            watches: watches.clone(),
        },
        async move { http_shutdown.cancelled().await },
    ));

    // Cancelled once the controllers have stopped: from then on nothing reconciles, and
    // the leader may release its Lease without being fenced for it.
    let controllers_done = CancellationToken::new();
    let leadership = if config.leader_election {
        info!(identity, lease = %config.lease_name, namespace = %config.lease_namespace, "waiting for the leader lease");
        ready.store(true, Ordering::Relaxed);
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &config.lease_name)
                .with_namespace(&config.lease_namespace)
                .with_identity(&identity)
                .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
                .with_duration(LEASE_DURATION.as_secs())
                .with_grace(LEASE_GRACE.as_secs())
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
        let fencing = fence(
            client.clone(),
            config.lease_namespace.clone(),
            config.lease_name.clone(),
            identity.clone(),
        );
        let done = controllers_done.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fencing => {}
                _ = done.cancelled() => {}
            }
        });
        Some((leader, task))
    } else {
        None
    };

    // The operator's own resources are watched so that one undecodable object cannot stop
    // the watch (see `watch`); the Deployments and pods it deploys are ordinary watches.
    let any = || watcher::Config::default().any_semantic();
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(config.concurrency);
    let (data_stream_store, writer) = reflector::store::<DataStream>();
    let data_streams = watch::events(client.clone(), "DataStream", any(), watches.clone())
        .reflect(writer)
        .applied_objects();
    // A DataStream's status shows which Transforms read and write it: their changes wake it.
    let credentials_of = data_stream_store.clone();
    let controller = Controller::for_stream(data_streams, data_stream_store)
        .with_config(controller_config.clone())
        .watches_stream(
            watch::events::<Transform>(
                client.clone(),
                "Transform (for DataStreams)",
                any(),
                watches.clone(),
            )
            .touched_objects(),
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
    // With `watch_credential_secrets`, a change to a Secret marked for Weir wakes the
    // DataStreams of its namespace that name it.
    let controller = if config.watch_credential_secrets {
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
    } else {
        controller
    };
    // The Transform controller watches what it deploys (by the operator's label) and the
    // DataStreams its Transforms read and write.
    let managed = watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::FIELD_MANAGER
        ))
        .any_semantic();
    let (transform_store, writer) = reflector::store::<Transform>();
    let transform_events = watch::events(client.clone(), "Transform", any(), watches.clone())
        .reflect(writer)
        .applied_objects();
    let transforms = Controller::for_stream(transform_events, transform_store.clone())
        .with_config(controller_config);
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
        .watches_stream(
            watch::events::<DataStream>(
                client.clone(),
                "DataStream (for Transforms)",
                any(),
                watches.clone(),
            )
            .touched_objects(),
            move |ds| {
                transform::transforms_for(&ds, &lookup.state())
                    .into_iter()
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        );
    let ctx = Arc::new(Context::new(
        client.clone(),
        topics,
        Policy {
            replication_factor: config.default_replication_factor,
            topic_grants: config.topic_grants.clone(),
            config_allow_list: config.topic_config_allow_list.clone(),
            allowed_bootstrap_servers: config.allowed_bootstrap_servers.clone(),
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
            identity: config.worker_identity().map_err(|e| {
                RunError::Kafka(TopicError::Rejected(format!(
                    "--kafka-tls-ca-file (WEIR_KAFKA_TLS_CA_FILE): {e}"
                )))
            })?,
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
    controllers_done.cancel();

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

/// Once `stopping` is cancelled, gives the operator `timeout` to finish and then ends the
/// process, on a thread of its own so that nothing the runtime waits on can hold it up.
async fn exit_after(stopping: CancellationToken, timeout: Duration) {
    stopping.cancelled().await;
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        error!(
            timeout = ?timeout,
            "the operator did not stop in time (the apiserver or Kafka may not be answering); exiting"
        );
        std::process::exit(1);
    });
}

/// Fencing: the leader reads its Lease every second and ends the process at once, before
/// the Lease can expire and another replica take over, if the Lease shows no renewal by
/// this replica in time (the apiserver unreachable, renewals failing) or names another
/// holder. Exiting, rather than stopping the controllers, is what guarantees that no
/// reconcile in flight goes on writing to Kafka or the apiserver after leadership ends.
async fn fence(client: kube::Client, namespace: String, name: String, identity: String) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let mut valid_until = SystemTime::now() + LEASE_DURATION - FENCE_MARGIN;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let read = tokio::time::timeout(Duration::from_secs(2), leases.get(&name)).await;
        if let Ok(Ok(lease)) = read {
            let spec = lease.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                error!(holder = ?spec.holder_identity, "the leader lease names another holder; exiting");
                std::process::exit(1);
            }
            if let Some(renewed) = spec.renew_time {
                let renewed = SystemTime::from(renewed.0);
                let duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(LEASE_DURATION, Duration::from_secs);
                valid_until = renewed + duration.saturating_sub(FENCE_MARGIN);
            }
        }
        if SystemTime::now() > valid_until {
            error!(
                "could not renew the leader lease in time; exiting before another replica may                  take over"
            );
            std::process::exit(1);
        }
    }
}

fn hostname_or_random() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| format!("{h}-{}", std::process::id()))
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()))
}
