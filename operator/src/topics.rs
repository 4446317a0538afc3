//! Kafka topics as the operator sees them: read a topic's state, create it, raise its
//! partitions, set its configs, delete it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
}

/// A topic as Kafka reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
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
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    bootstrap: String,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Topics {
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
        })
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

    /// Reads a topic's partitions, replication factor and configs; `None` if it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<TopicState>, TopicError> {
        let admin = self.admin.clone();
        let topic = name.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map(|m| {
                    m.topics().first().map(|t| {
                        (
                            t.error(),
                            t.partitions().len() as i32,
                            t.partitions()
                                .first()
                                .map_or(0, |p| p.replicas().len() as i32),
                        )
                    })
                })
        })
        .await
        .map_err(|e| TopicError::Unavailable(format!("metadata task: {e}")))?
        .map_err(|e| TopicError::from_kafka("reading metadata", e))?;
        let (partitions, replication_factor) = match metadata {
            None => return Ok(None),
            Some((Some(err), _, _)) => {
                let code = RDKafkaErrorCode::from(err);
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Ok(None);
                }
                return Err(TopicError::from_code("reading metadata", code));
            }
            Some((None, 0, _)) => return Ok(None),
            Some((None, p, rf)) => (p, rf),
        };

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
            partitions,
            replication_factor,
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

    /// Replaces the topic's own configs with exactly `configs` (others return to defaults).
    pub async fn set_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
        for (k, v) in configs {
            alter = alter.set(k, v);
        }
        let results = self
            .admin
            .alter_configs(&[alter], &Self::options())
            .await
            .map_err(|e| TopicError::from_kafka("setting configs", e))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(TopicError::from_code("setting configs", code));
            }
        }
        Ok(())
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
