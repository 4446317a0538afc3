//! How a resource reaches its Kafka cluster.

use serde::{Deserialize, Serialize};

/// The label a Secret must carry, with value `"true"`, for Weir to read it as a
/// connection's credentials: a DataStream cannot name any Secret of its namespace (a
/// ServiceAccount token, another application's password) and have Weir send it to a server.
pub const CREDENTIALS_LABEL: &str = "weir.dev/kafka-credentials";

/// A Kafka cluster other than the operator's default, with credentials from Secrets in
/// the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// A name for the connection, shown in status and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The cluster's bootstrap servers, `host:port[,host:port…]`. The operator may restrict
    /// which servers a DataStream may name (`WEIR_ALLOWED_BOOTSTRAP_SERVERS`).
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: String,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<Sasl>,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

impl KafkaConnection {
    /// The names of the Secrets the connection reads, in its resource's namespace.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let sasl = self.sasl.as_ref().map(|s| s.secret_name.as_str());
        let tls = self.tls.as_ref().into_iter().flat_map(|t| {
            [t.ca_secret_name.as_deref(), t.client_secret_name.as_deref()]
                .into_iter()
                .flatten()
        });
        sasl.into_iter().chain(tls)
    }
}

/// SASL credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sasl {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// A Secret with keys `username` and `password`, labelled
    /// `weir.dev/kafka-credentials: "true"`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// SASL without `tls` sends the credentials (with `PLAIN`, the password itself) and every
    /// record unencrypted; it is refused unless this is `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext: bool,
}

/// The SASL mechanisms Weir supports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SaslMechanism {
    /// SASL/PLAIN (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanism`.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// A Secret with key `ca.crt`: the CA that signed the brokers' certificates, labelled
    /// `weir.dev/kafka-credentials: "true"`. Defaults to the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) for mutual TLS, labelled
    /// `weir.dev/kafka-credentials: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,
}
