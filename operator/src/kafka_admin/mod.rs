//! Kafka as the operator sees it: read a topic's state (with its id), create it, raise its
//! partitions, change its configs key by key, delete it; and a principal's ACLs and SCRAM
//! credential ([`acl`]).

pub mod acl;
mod native;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use native::ConfigChange;

use acl::{Acl, ScramMechanism};

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

/// How long a connection error librdkafka reported explains a failed request.
const ERROR_MEMORY: Duration = Duration::from_secs(60);

/// The admin client's context: keeps the last connection error librdkafka reported (a
/// refused password, an untrusted certificate, a token endpoint that said no), with every
/// secret of the client's settings redacted, so that a request that times out can say why.
#[derive(Default)]
pub struct AdminContext {
    secrets: std::collections::BTreeMap<String, String>,
    last_error: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl ClientContext for AdminContext {}

impl AdminContext {
    /// Logs what librdkafka reported on the client's main queue and keeps errors (some
    /// failures, such as a token endpoint that refuses, are only logged at error level).
    fn record(&self, event: native::MainEvent) {
        let redact = |m: &str| weir_crds::connection::redact(m, &self.secrets);
        match event {
            native::MainEvent::Error(m) => {
                let m = redact(&m);
                tracing::warn!(reason = %m, "Kafka client error");
                self.remember(m);
            }
            native::MainEvent::Log(level, facility, m) => {
                let m = redact(&m);
                match level {
                    ..=3 => {
                        tracing::error!(facility, "librdkafka: {m}");
                        self.remember(m);
                    }
                    4 => tracing::warn!(facility, "librdkafka: {m}"),
                    5 | 6 => tracing::info!(facility, "librdkafka: {m}"),
                    _ => tracing::debug!(facility, "librdkafka: {m}"),
                }
            }
        }
    }

    fn remember(&self, reason: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((std::time::Instant::now(), reason));
        }
    }

    fn recent_error(&self) -> Option<String> {
        let last = self.last_error.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < ERROR_MEMORY)
            .map(|(_, m)| m.clone())
    }
}

/// The admin client type the native calls take.
pub type Admin = AdminClient<AdminContext>;

/// An admin connection to one Kafka cluster.
#[derive(Clone)]
pub struct KafkaAdmin {
    admin: Arc<Admin>,
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
        let secrets = weir_crds::connection::SECRET_SETTINGS
            .iter()
            .filter_map(|k| Some(((*k).to_owned(), config.get(k)?.to_owned())))
            .collect();
        let context = AdminContext {
            secrets,
            ..AdminContext::default()
        };
        let admin = config
            .create_with_context(context)
            .map_err(|e| TopicError::Rejected(format!("Kafka client configuration: {e}")))?;
        let admin = Arc::new(admin);
        // Reads the client's main queue (logs and errors) while the client lives.
        let weak = Arc::downgrade(&admin);
        std::thread::Builder::new()
            .name("kafka-admin-events".into())
            .spawn(move || {
                while let Some(admin) = weak.upgrade() {
                    if let Some(event) = native::poll_main(&admin, Duration::from_millis(200)) {
                        admin.inner().context().record(event);
                    }
                }
            })
            .map_err(|e| {
                TopicError::Unavailable(format!("starting the client's event thread: {e}"))
            })?;
        Ok(Self {
            admin,
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

    /// `e` with the connection error librdkafka reported lately, when there is one: a
    /// request that timed out then says that the broker refused the credentials.
    pub fn explain(&self, e: TopicError) -> TopicError {
        match (e, self.admin.inner().context().recent_error()) {
            (TopicError::Unavailable(m), Some(reason)) if !m.contains(&reason) => {
                TopicError::Unavailable(format!("{m}; the client reported: {reason}"))
            }
            (e, _) => e,
        }
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

    /// Runs a blocking native call off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        call: impl FnOnce(&Admin) -> Result<T, native::NativeError> + Send + 'static,
    ) -> Result<T, TopicError> {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || call(&admin))
            .await
            .map_err(|e| TopicError::Unavailable(format!("{what} task: {e}")))?
            .map_err(|e| TopicError::from_native(what, e))
    }

    /// The ACLs Weir manages that the broker holds for `principal` (`User:<name>`).
    pub async fn acls(
        &self,
        principal: &str,
    ) -> Result<std::collections::BTreeSet<Acl>, TopicError> {
        let principal = principal.to_owned();
        self.blocking("describing ACLs", move |a| {
            native::describe_acls(a, &principal, REQUEST_TIMEOUT)
        })
        .await
        .map(|v| v.into_iter().collect())
    }

    /// Creates ACLs.
    pub async fn create_acls(&self, acls: Vec<Acl>) -> Result<(), TopicError> {
        self.blocking("creating ACLs", move |a| {
            native::create_acls(a, &acls, REQUEST_TIMEOUT)
        })
        .await
    }

    /// Deletes exactly these ACLs.
    pub async fn delete_acls(&self, acls: Vec<Acl>) -> Result<(), TopicError> {
        self.blocking("deleting ACLs", move |a| {
            native::delete_acls(a, &acls, REQUEST_TIMEOUT)
        })
        .await
    }

    /// Creates or replaces `user`'s SCRAM credential.
    pub async fn set_scram(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        password: &str,
    ) -> Result<(), TopicError> {
        let (user, password) = (user.to_owned(), password.to_owned());
        self.blocking("setting a SCRAM credential", move |a| {
            native::alter_scram(a, &user, mechanism, Some(&password), REQUEST_TIMEOUT)
        })
        .await
    }

    /// Deletes `user`'s SCRAM credential (if it has one).
    pub async fn delete_scram(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<(), TopicError> {
        let user = user.to_owned();
        self.blocking("deleting a SCRAM credential", move |a| {
            native::alter_scram(a, &user, mechanism, None, REQUEST_TIMEOUT)
        })
        .await
    }

    /// Whether `user` has a SCRAM credential for `mechanism`.
    pub async fn has_scram(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<bool, TopicError> {
        let user = user.to_owned();
        self.blocking("describing SCRAM credentials", move |a| {
            native::has_scram(a, &user, mechanism, REQUEST_TIMEOUT)
        })
        .await
    }
}
