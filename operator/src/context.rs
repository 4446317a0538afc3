//! What every reconcile shares: the client, Kafka, defaults, metrics, events and caches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use tracing::warn;
use weir_crds::connection::KafkaConnection;
use weir_crds::{DataStream, Transform};

use crate::backoff::Backoff;
use crate::kafka_admin::KafkaAdmin;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// What an Event reports: its `reason` and `action`, stable for alerting and filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum Happened {
    /// Weir created a topic.
    TopicCreated,
    /// Weir adopted an existing topic.
    TopicAdopted,
    /// Weir took over a topic another DataStream had created while racing the owner.
    TopicClaimed,
    /// Weir raised a topic's partitions.
    PartitionsRaised,
    /// Weir changed a topic's configs after a spec change.
    ConfigUpdated,
    /// Weir reverted configs changed behind its back.
    ConfigDriftReverted,
    /// A DataStream went away and its topic stayed (by policy, or because Weir could not
    /// prove it was its own).
    TopicRetained,
    /// A DataStream went away and its topic with it.
    TopicDeleted,
    /// A Transform's changed plan reprocesses from the start into a new state epoch.
    Reprocessing,
    /// A DataStream's schema change leaves a Transform that reads it not compiling.
    BreaksReaders,
    /// A condition turned to a problem: the condition's reason.
    Problem(&'static str),
}

impl Happened {
    /// The Event's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Problem(reason) => reason,
            other => other.into(),
        }
    }

    /// The Event's action: what the operator did or was doing.
    pub fn action(self) -> &'static str {
        match self {
            Self::TopicCreated => "Create",
            Self::TopicAdopted | Self::TopicClaimed => "Adopt",
            Self::PartitionsRaised | Self::ConfigUpdated | Self::ConfigDriftReverted => "Update",
            Self::TopicRetained | Self::TopicDeleted => "Delete",
            Self::Reprocessing => "Upgrade",
            Self::BreaksReaders | Self::Problem(_) => "Reconcile",
        }
    }
}

/// A named connection that cannot be used, with a message naming what is missing.
#[derive(Debug, Clone)]
pub struct ConnectionProblem(pub String);

/// The shared state of the controllers.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The default Kafka cluster's admin client.
    pub kafka: KafkaAdmin,
    /// The operator-wide policy for DataStreams.
    pub policy: Policy,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Every DataStream, as the controller's watch sees them (to find a topic's owner).
    pub data_streams: Store<DataStream>,
    /// Every Transform, as the Transform controller's watch sees them.
    pub transforms: Store<Transform>,
    /// How often a Ready DataStream is checked against Kafka for drift.
    pub resync: Duration,
    /// Per-object retry delays after transient errors.
    pub backoff: Backoff,
    /// Admin clients for named connections, and which DataStream uses which.
    connections: std::sync::Mutex<Connections>,
}

/// Admin clients for named connections, by the fingerprint of their settings, and the
/// fingerprint each DataStream (by uid) used last: a client no DataStream uses any more is
/// closed, so the cache follows the connections in use instead of every one ever seen.
#[derive(Default)]
struct Connections {
    clients: HashMap<u64, KafkaAdmin>,
    users: HashMap<String, u64>,
}

impl Connections {
    /// Records that `user` now uses the connection `key` (or none).
    fn use_connection(&mut self, user: &str, key: Option<u64>) {
        let previous = match key {
            Some(key) => self.users.insert(user.to_owned(), key),
            None => self.users.remove(user),
        };
        if let Some(old) = previous.filter(|old| Some(*old) != key)
            && !self.users.values().any(|k| *k == old)
        {
            self.clients.remove(&old);
        }
    }
}

impl Context {
    /// Builds a context; `instance` identifies this operator replica in Events.
    pub fn new(
        client: kube::Client,
        kafka: KafkaAdmin,
        policy: Policy,
        metrics: Arc<Metrics>,
        (data_streams, transforms): (Store<DataStream>, Store<Transform>),
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
            kafka,
            policy,
            metrics,
            data_streams,
            transforms,
            resync,
            backoff: Backoff::default(),
            connections: Default::default(),
        }
    }

    /// The Kafka cluster a DataStream lives on: its named connection, or the default.
    pub async fn kafka_for(&self, ds: &DataStream) -> Result<KafkaAdmin, ConnectionProblem> {
        self.kafka_for_connection(&ds.metadata, ds.spec.kafka.as_ref())
            .await
    }

    /// The Kafka cluster of `conn` (a named connection of the object with `meta`, its
    /// Secrets in that object's namespace), or the default one; the object is recorded as
    /// the connection's user, so that the client stays open while someone uses it.
    pub async fn kafka_for_connection(
        &self,
        meta: &ObjectMeta,
        conn: Option<&KafkaConnection>,
    ) -> Result<KafkaAdmin, ConnectionProblem> {
        let user = meta.uid.clone().unwrap_or_default();
        let Some(conn) = conn else {
            self.with_connections(|c| c.use_connection(&user, None));
            return Ok(self.kafka.clone());
        };
        let namespace = meta.namespace.clone().unwrap_or_default();
        let settings = crate::connection::settings(&self.client, &namespace, conn)
            .await
            .map_err(|e| ConnectionProblem(e.to_string()))?;
        let key = crate::connection::fingerprint(&settings);
        if let Some(t) = self.with_connections(|c| c.clients.get(&key).cloned()) {
            self.with_connections(|c| c.use_connection(&user, Some(key)));
            return Ok(t);
        }
        let topics = KafkaAdmin::new(crate::connection::client_config(&settings)).map_err(|e| {
            let message = crate::connection::redact(&e.to_string(), &settings);
            ConnectionProblem(format!("spec.kafka: {message}"))
        })?;
        self.with_connections(|c| {
            c.clients.entry(key).or_insert_with(|| topics.clone());
            c.use_connection(&user, Some(key));
        });
        Ok(topics)
    }

    /// The admin client the object with `meta` used last, while it is still open (for
    /// deleting its topics after its Secret is gone).
    pub fn cached_connection(&self, meta: &ObjectMeta) -> Option<KafkaAdmin> {
        let user = meta.uid.as_deref().unwrap_or_default();
        self.with_connections(|c| c.clients.get(c.users.get(user)?).cloned())
    }

    /// Forgets a deleted object's connection, closing it if no one else uses it.
    pub fn forget_connection(&self, meta: &ObjectMeta) {
        let user = meta.uid.clone().unwrap_or_default();
        self.with_connections(|c| c.use_connection(&user, None));
    }

    fn with_connections<T>(&self, f: impl FnOnce(&mut Connections) -> T) -> T {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut connections);
        self.metrics
            .set_kafka_connections(connections.clients.len());
        out
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn publish<K>(&self, obj: &K, type_: EventType, happened: Happened, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let reason = happened.reason();
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: happened.action().into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_no_data_stream_uses_is_closed() {
        let mut c = Connections::default();
        let client = || {
            let mut config = rdkafka::ClientConfig::new();
            config.set("bootstrap.servers", "127.0.0.1:1");
            KafkaAdmin::new(config).expect("client")
        };
        c.clients.insert(1, client());
        c.use_connection("a", Some(1));
        c.use_connection("b", Some(1));
        c.clients.insert(2, client());
        // `a` moves to another connection: 1 stays open for `b`.
        c.use_connection("a", Some(2));
        assert_eq!(c.clients.len(), 2);
        // `b` is deleted: nobody uses 1 any more.
        c.use_connection("b", None);
        assert!(!c.clients.contains_key(&1));
        // `a` goes back to the default connection: 2 is closed too.
        c.use_connection("a", None);
        assert!(c.clients.is_empty() && c.users.is_empty());
    }
}
