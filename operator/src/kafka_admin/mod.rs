//! Kafka topics as the operator sees them: read a topic's state (with its id), create it,
//! raise its partitions, change its configs key by key, delete it.

mod native;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use native::ConfigChange;

/// How long one admin request may take before the broker counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to Kafka.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopicError {
    /// The broker could not be reached or did not answer in time: retry later.
    #[error("Kafka is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request because of what was asked: fix the spec.
    #[error("Kafka rejected the request: {0}")]
    Rejected(String),
}

impl TopicError {
    fn from_code(what: &str, code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode::*;
        match code {
            InvalidConfig
            | InvalidPartitions
            | InvalidReplicationFactor
            | InvalidReplicaAssignment
            | PolicyViolation
            | InvalidTopic
            | InvalidRequest
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TopicAlreadyExists
            | UnknownTopicOrPartition => Self::Rejected(format!("{what}: {code}")),
            _ => Self::Unavailable(format!("{what}: {code}")),
        }
    }

    fn from_kafka(what: &str, e: KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(code) => Self::from_code(what, code),
            None => Self::Unavailable(format!("{what}: {e}")),
        }
    }

    fn from_native(what: &str, e: native::NativeError) -> Self {
        match e.code {
            Some(code) => match Self::from_code(what, code) {
                Self::Rejected(m) => Self::Rejected(format!("{m} ({})", e.message)),
                Self::Unavailable(m) => Self::Unavailable(format!("{m} ({})", e.message)),
            },
            None => Self::Unavailable(format!("{what}: {}", e.message)),
        }
    }
}

/// A topic as Kafka reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Kafka's id for the topic: a topic deleted and created again under the same name has
    /// a new one, so it tells Weir's topic from a stranger's of the same name.
    pub id: String,
    /// The number of partitions.
    pub partitions: i32,
    /// The replication factor (of partition 0).
    pub replication_factor: i32,
    /// Configs set on the topic itself (not inherited defaults).
    pub dynamic_configs: BTreeMap<String, String>,
    /// Every config's effective value, inherited or not.
    pub configs: BTreeMap<String, String>,
}

/// A topic as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// The topic's name.
    pub name: String,
    /// The number of partitions.
    pub partitions: i32,
    /// The replication factor.
    pub replication_factor: i32,
    /// The configs Weir sets on the topic.
    pub configs: BTreeMap<String, String>,
}

/// An admin connection to one Kafka cluster.
#[derive(Clone)]
pub struct KafkaAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    bootstrap: String,
    cluster_id: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl KafkaAdmin {
    /// Connects to the cluster `config` describes (bootstrap servers and security).
    pub fn new(mut config: ClientConfig) -> Result<Self, TopicError> {
        let bootstrap = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        config
            .set("socket.timeout.ms", "10000")
            // Reading a missing topic's metadata must never create it (librdkafka allows
            // it by default, and so do brokers with auto.create.topics.enable).
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3");
        let admin = config
            .create()
            .map_err(|e| TopicError::Rejected(format!("Kafka client configuration: {e}")))?;
        Ok(Self {
            admin: Arc::new(admin),
            bootstrap,
            cluster_id: Arc::default(),
        })
    }

    /// The cluster's id, which names the cluster a topic was created on.
    pub async fn cluster_id(&self) -> Result<String, TopicError> {
        if let Some(id) = self.cluster_id.get() {
            return Ok(id.clone());
        }
        let admin = self.admin.clone();
        let id =
            tokio::task::spawn_blocking(move || admin.inner().fetch_cluster_id(REQUEST_TIMEOUT))
                .await
                .map_err(|e| TopicError::Unavailable(format!("cluster id task: {e}")))?
                .ok_or_else(|| {
                    TopicError::Unavailable("reading the cluster id: no answer".into())
                })?;
        Ok(self.cluster_id.get_or_init(|| id).clone())
    }

    /// The bootstrap servers this connection uses.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// Reads a topic's id, partitions, replication factor and configs; `None` if it does not
    /// exist.
    pub async fn describe(&self, name: &str) -> Result<Option<TopicState>, TopicError> {
        let admin = self.admin.clone();
        let topic = name.to_owned();
        let description = tokio::task::spawn_blocking(move || {
            native::describe_topic(&admin, &topic, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| TopicError::Unavailable(format!("describe task: {e}")))?
        .map_err(|e| TopicError::from_native("describing the topic", e))?;
        let Some(description) = description else {
            return Ok(None);
        };
        if description.partitions == 0 {
            return Ok(None);
        }

        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(name)], &Self::options())
            .await
            .map_err(|e| TopicError::from_kafka("describing configs", e))?;
        let mut configs = BTreeMap::new();
        let mut dynamic_configs = BTreeMap::new();
        for result in results {
            let resource = match result {
                Ok(r) => r,
                Err(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
                Err(code) => return Err(TopicError::from_code("describing configs", code)),
            };
            for entry in resource.entries {
                let Some(value) = entry.value else { continue };
                if entry.source == ConfigSource::DynamicTopic {
                    dynamic_configs.insert(entry.name.clone(), value.clone());
                }
                configs.insert(entry.name, value);
            }
        }
        Ok(Some(TopicState {
            id: description.id,
            partitions: description.partitions,
            replication_factor: description.replication_factor,
            dynamic_configs,
            configs,
        }))
    }

    /// Creates the topic. An existing topic is not an error (`Ok(false)`).
    pub async fn create(&self, topic: &DesiredTopic) -> Result<bool, TopicError> {
        let mut new = NewTopic::new(
            &topic.name,
            topic.partitions,
            TopicReplication::Fixed(topic.replication_factor),
        );
        for (k, v) in &topic.configs {
            new = new.set(k, v);
        }
        let results = self
            .admin
            .create_topics(&[new], &Self::options())
            .await
            .map_err(|e| TopicError::from_kafka("creating the topic", e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((_, code)) => return Err(TopicError::from_code("creating the topic", code)),
            }
        }
        Ok(true)
    }

    /// Raises the topic's partition count to `total`.
    pub async fn raise_partitions(&self, name: &str, total: i32) -> Result<(), TopicError> {
        let results = self
            .admin
            .create_partitions(
                &[NewPartitions::new(name, total as usize)],
                &Self::options(),
            )
            .await
            .map_err(|e| TopicError::from_kafka("raising partitions", e))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(TopicError::from_code("raising partitions", code));
            }
        }
        Ok(())
    }

    /// Changes the topic's configs key by key; keys not named are left as they are.
    pub async fn change_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
    ) -> Result<(), TopicError> {
        if changes.is_empty() {
            return Ok(());
        }
        let admin = self.admin.clone();
        let topic = name.to_owned();
        tokio::task::spawn_blocking(move || {
            native::alter_topic_configs(&admin, &topic, &changes, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| TopicError::Unavailable(format!("config task: {e}")))?
        .map_err(|e| TopicError::from_native("changing configs", e))
    }

    /// Deletes the topic. A topic that is already gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), TopicError> {
        let results = self
            .admin
            .delete_topics(&[name], &Self::options())
            .await
            .map_err(|e| TopicError::from_kafka("deleting the topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(TopicError::from_code("deleting the topic", code)),
            }
        }
        Ok(())
    }
}
