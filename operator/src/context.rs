//! What every reconcile shares: the client, Kafka, defaults, metrics, events and caches.

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use tracing::warn;
use weir_crds::DataStream;

use crate::data_stream::Backoff;
use crate::data_stream::validated::Defaults;
use crate::metrics::Metrics;
use crate::topics::Topics;

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
    /// How often a Ready DataStream is checked against Kafka for drift.
    pub resync: Duration,
    /// Per-object retry delays after transient errors.
    pub backoff: Backoff,
}

impl Context {
    /// Builds a context; `instance` identifies this operator replica in Events.
    pub fn new(
        client: kube::Client,
        topics: Topics,
        defaults: Defaults,
        metrics: Arc<Metrics>,
        data_streams: Store<DataStream>,
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
            resync,
            backoff: Backoff::default(),
        }
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
