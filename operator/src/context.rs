//! What every reconcile shares: the client, Kafka, defaults, metrics, events and caches.

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use tracing::warn;
use weir_crds::{DataStream, Transform};

use crate::data_stream::Backoff;
use crate::data_stream::validated::Defaults;
use crate::metrics::Metrics;
use crate::topics::Topics;
use crate::transform::build::WorkerSettings;

/// A named connection that cannot be used, with a message naming what is missing.
#[derive(Debug, Clone)]
pub struct ConnectionProblem(pub String);

/// The shared state of the controllers.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The default Kafka cluster.
    pub topics: Topics,
    /// Defaults for what a spec leaves out.
    pub defaults: Defaults,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Every DataStream, as the controller's watch sees them (to find a topic's owner).
    pub data_streams: Store<DataStream>,
    /// Every Transform, as the Transform controller's watch sees them.
    pub transforms: Store<Transform>,
    /// What the workers the operator deploys run and connect to.
    pub workers: WorkerSettings,
    /// How often a Ready DataStream is checked against Kafka for drift.
    pub resync: Duration,
    /// What the workers' metrics showed recently, per Transform.
    pub worker_health: crate::transform::health::Histories,
    /// Per-object retry delays after transient errors.
    pub backoff: Backoff,
    /// Admin clients for named connections, by the fingerprint of their settings.
    connections: std::sync::Mutex<std::collections::HashMap<u64, Topics>>,
}

impl Context {
    /// Builds a context; `instance` identifies this operator replica in Events.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        topics: Topics,
        defaults: Defaults,
        metrics: Arc<Metrics>,
        (data_streams, transforms): (Store<DataStream>, Store<Transform>),
        workers: WorkerSettings,
        resync: Duration,
        instance: String,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            topics,
            defaults,
            metrics,
            data_streams,
            transforms,
            workers,
            resync,
            backoff: Backoff::default(),
            worker_health: Default::default(),
            connections: Default::default(),
        }
    }

    /// The Kafka cluster a DataStream lives on: its named connection, or the default.
    pub async fn topics_for(&self, ds: &DataStream) -> Result<Topics, ConnectionProblem> {
        let Some(conn) = &ds.spec.kafka else {
            return Ok(self.topics.clone());
        };
        let namespace = ds.metadata.namespace.clone().unwrap_or_default();
        let settings = crate::connection::settings(&self.client, &namespace, conn)
            .await
            .map_err(|e| ConnectionProblem(e.to_string()))?;
        let key = crate::connection::fingerprint(&settings);
        let mut cache = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(&key) {
            return Ok(t.clone());
        }
        let topics = Topics::new(crate::connection::client_config(&settings))
            .map_err(|e| ConnectionProblem(format!("spec.kafka: {e}")))?;
        cache.insert(key, topics.clone());
        Ok(topics)
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish an event");
        }
    }
}
