//! weir-operator is Weir's control plane.
//!
//! It watches the `weir.dev` resources in the apiserver and converges the world to them:
//! DataStreams become Kafka topics ([`data_stream`]); Transforms become checked, tested
//! worker Deployments ([`transform`]). Reconciles are level-triggered and idempotent, write status by
//! server-side apply under one field manager ([`FIELD_MANAGER`]), and never write a
//! resource's spec. One replica leads at a time through a Lease; the reconcile stays safe
//! if two overlap.
//!
//! The parts: [`config`] (flags and env), [`run`] (preflight, controllers,
//! HTTP endpoints, graceful shutdown), [`leader`] (leader election and fencing),
//! [`watch`] (watches no one object can stop),
//! [`kafka_admin`] (the Kafka admin client), [`policy`] (what the operator's configuration
//! decides for every DataStream), [`backoff`], [`metrics`] and [`http`].

pub mod backoff;
pub mod config;
pub mod connection;
pub mod context;
pub mod data_stream;
pub mod http;
pub mod kafka_admin;
pub mod leader;
pub mod lineage;
pub mod metrics;
pub mod policy;
pub mod run;
pub mod telemetry;
pub mod transform;
pub mod watch;

/// The field manager (and Event reporter) for everything the operator writes.
pub const FIELD_MANAGER: &str = "weir-operator";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed a request.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Kafka could not be reached; the reconcile is retried with backoff.
    #[error("{0}")]
    KafkaUnavailable(String),
    /// Kafka refused a request (missing ACLs, a policy); retried with backoff.
    #[error("{0}")]
    KafkaRejected(String),
    /// The finalizer helper failed (adding, removing, or the wrapped reconcile).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object lacks a field the apiserver always sets.
    #[error("the object has no {0}")]
    MissingField(&'static str),
    /// The object waits for something outside it (such as its readers going away).
    #[error("waiting: {0}")]
    Waiting(String),
    /// The operator itself failed (a task panicked, a document did not render).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A stable, low-cardinality name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kubernetes",
            Self::KafkaUnavailable(_) => "kafka_unavailable",
            Self::KafkaRejected(_) => "kafka_rejected",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
            Self::MissingField(_) => "malformed_object",
            Self::Internal(_) => "internal",
            Self::Waiting(_) => "waiting",
        }
    }
}

impl From<kafka_admin::TopicError> for Error {
    fn from(e: kafka_admin::TopicError) -> Self {
        match e {
            kafka_admin::TopicError::Unavailable(_) => Self::KafkaUnavailable(e.to_string()),
            kafka_admin::TopicError::Rejected(_) => Self::KafkaRejected(e.to_string()),
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
