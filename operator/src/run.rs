//! The operator process: preflight, leader election ([`crate::leader`]), the controllers
//! (each builds its own watches), HTTP, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::context::Context;
use crate::data_stream;
use crate::http::{self, Health};
use crate::kafka_admin::{KafkaAdmin, TopicError};
use crate::leader::Candidate;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::transform::{self, build::WorkerSettings};
use crate::watch::WatchHealth;

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
    let leader = if config.leader_election {
        ready.store(true, Ordering::Relaxed);
        let candidate = Candidate {
            client: client.clone(),
            namespace: config.lease_namespace.clone(),
            name: config.lease_name.clone(),
            identity: identity.clone(),
        };
        match candidate
            .acquire(&shutdown)
            .await
            .map_err(RunError::LeaderElection)?
        {
            Some(leader) => Some(leader),
            None => return Ok(()),
        }
    } else {
        None
    };

    // Each controller builds its own watches; the operator's own resources are watched so
    // that one undecodable object cannot stop the watch (see `watch`).
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(config.concurrency);
    let data_streams = data_stream::watches::controller(
        &client,
        controller_config.clone(),
        &watches,
        config.watch_credential_secrets,
    );
    let transforms = transform::watches::controller(&client, controller_config, &watches);
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
        (data_streams.store(), transforms.store()),
        config.resync_interval,
        identity.clone(),
    ));
    let workers = WorkerSettings {
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
    };
    let transform_ctx = Arc::new(transform::Ctx::new(ctx.clone(), workers));
    ready.store(true, Ordering::Relaxed);
    info!("reconciling DataStreams and Transforms");

    let stop = shutdown.clone();
    let held = leader.map(|l| l.hold(shutdown.clone(), controllers_done.clone()));

    let stop_transforms = stop.clone();
    let data_streams = data_streams
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(data_stream::reconcile, data_stream::error_policy, ctx)
        .for_each(log_controller_event);
    let transforms = transforms
        .graceful_shutdown_on(async move { stop_transforms.cancelled().await })
        .run(transform::reconcile, transform::error_policy, transform_ctx)
        .for_each(log_controller_event);
    futures::join!(data_streams, transforms);
    controllers_done.cancel();

    shutdown.cancel();
    let _ = server.await;
    // Release the Lease, so that a successor takes over at once instead of waiting out
    // its duration.
    if let Some(held) = held
        && held.release().await
    {
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

fn hostname_or_random() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| format!("{h}-{}", std::process::id()))
        .unwrap_or_else(|| format!("weir-operator-{}", std::process::id()))
}
