//! The operator's configuration: every flag can also be set from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use crate::telemetry::LogFormat;

/// Weir's Kubernetes operator: reconciles DataStreams into Kafka topics and Transforms into
/// checked, tested worker Deployments.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "weir-operator", version, about)]
pub struct Config {
    /// The default Kafka cluster's bootstrap servers (`host:port[,host:port…]`).
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: String,

    /// How the operator authenticates to the default cluster (secrets from mounted files
    /// only): its principal must be a super user, or hold the ACLs to manage topics, ACLs
    /// and SCRAM credentials.
    #[command(flatten)]
    pub kafka_auth: weir_crds::connection::ClientAuth,

    /// Extra librdkafka settings for the default cluster, as `key=value` (repeatable), for
    /// what the `--kafka-*` flags do not cover (for example `client.rack=a`). Credentials
    /// belong in files (`--kafka-sasl-password-file` and the like); `--help` never shows
    /// this flag's environment value.
    #[arg(long = "kafka-config", env = "WEIR_KAFKA_CONFIG", hide_env_values = true, value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_config: Vec<(String, String)>,

    /// The replication factor of new topics whose spec does not set one.
    #[arg(long, env = "WEIR_DEFAULT_REPLICATION_FACTOR", default_value_t = 3)]
    pub default_replication_factor: i32,

    /// Topic prefixes a namespace may manage beyond its own `<namespace>.`, as
    /// `namespace=prefix` (repeatable), for example `legacy=orders.` to let namespace
    /// `legacy` create or adopt `orders.*`. Without one, a DataStream may only name topics
    /// under its namespace's prefix.
    #[arg(long = "topic-grant", env = "WEIR_TOPIC_GRANTS", value_delimiter = ',', value_parser = parse_key_value)]
    pub topic_grants: Vec<(String, String)>,

    /// The `spec.config` keys a DataStream may set (comma-separated; replaces the default
    /// list). The default allows per-topic settings that are safe for a tenant:
    /// `compression.type`, `delete.retention.ms`, `max.compaction.lag.ms`,
    /// `max.message.bytes`, `message.timestamp.*`, `min.cleanable.dirty.ratio`,
    /// `min.compaction.lag.ms`, `min.insync.replicas`, `segment.bytes`, `segment.ms`.
    #[arg(long = "topic-config-allow-list", env = "WEIR_TOPIC_CONFIG_ALLOW_LIST", value_delimiter = ',', default_values_t = crate::policy::DEFAULT_CONFIG_ALLOW_LIST.iter().map(|k| k.to_string()))]
    pub topic_config_allow_list: Vec<String>,

    /// The Kafka servers a DataStream's `spec.kafka.bootstrapServers` may name, as
    /// comma-separated `host:port` patterns (`*.kafka.example.com:9093`, `10.0.0.7:*`).
    /// Empty (the default): any server. Set it so that a tenant cannot make the operator
    /// connect, with credentials, to a server of the tenant's choosing.
    #[arg(
        long = "allowed-bootstrap-servers",
        env = "WEIR_ALLOWED_BOOTSTRAP_SERVERS",
        value_delimiter = ','
    )]
    pub allowed_bootstrap_servers: Vec<String>,

    /// Watch the Secrets labelled `weir.dev/kafka-credentials: "true"`, so that a
    /// DataStream reconciles as soon as a Secret it names changes. This needs `list` and
    /// `watch` on Secrets in every namespace, which lets the operator read every Secret:
    /// the chart grants them only with `watchCredentialSecrets: true`. Off (the default),
    /// Secrets are read with `get` on each reconcile, and a changed Secret is used from
    /// the next one (a failed attempt's retry, or the resync).
    #[arg(long, env = "WEIR_WATCH_CREDENTIAL_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub watch_credential_secrets: bool,

    /// How often each DataStream is compared with Kafka to revert out-of-band changes.
    #[arg(long, env = "WEIR_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// How many DataStreams are reconciled at once (bounds the load on Kafka's admin API).
    #[arg(long, env = "WEIR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Where `/metrics`, `/healthz` and `/readyz` are served, as `ip:port` (an IPv6 address
    /// may go without brackets, as `$(POD_IP):port` expands in an IPv6 cluster).
    #[arg(long, env = "WEIR_HTTP_ADDR", default_value = "0.0.0.0:8080", value_parser = weir_crds::net::listen_addr)]
    pub http_addr: SocketAddr,

    /// Elect one active replica through a Lease (turn off only for a single replica).
    #[arg(long, env = "WEIR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// The Lease's namespace.
    #[arg(long, env = "WEIR_LEASE_NAMESPACE", default_value = "weir-system")]
    pub lease_namespace: String,

    /// The Lease's name.
    #[arg(long, env = "WEIR_LEASE_NAME", default_value = "weir-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease and in Events (defaults to the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// The container image of the workers the operator deploys for Transforms: Weir's image,
    /// which holds `/usr/local/bin/weir-worker` (the workers' command).
    #[arg(long, env = "WEIR_WORKER_IMAGE", default_value = concat!("ghcr.io/weir-dev/weir:", env!("CARGO_PKG_VERSION")))]
    pub worker_image: String,

    /// How each Transform's workers get a Kafka identity of their own: `managed` (the
    /// operator creates a SCRAM credential and exactly the ACLs the plan needs, per
    /// Transform), `provided` (each Transform names a Secret in `spec.kafkaCredentials`,
    /// such as a Strimzi KafkaUser's), or `none` (a cluster without authentication).
    /// Workers never use the operator's own principal. Default: `managed` when the
    /// operator itself authenticates with SCRAM, `none` on PLAINTEXT, `provided` otherwise.
    #[arg(long, env = "WEIR_TRANSFORM_PRINCIPALS", value_enum)]
    pub transform_principals: Option<crate::transform::principal::PrincipalMode>,

    /// How old a managed Transform password may get before the operator replaces it (set on
    /// Kafka first, then in the Transform's Secret; the workers roll onto it). Unset (the
    /// default): passwords change only when a person changes or deletes the Secret.
    #[arg(long, env = "WEIR_TRANSFORM_CREDENTIAL_ROTATION", value_parser = humantime::parse_duration)]
    pub transform_credential_rotation: Option<Duration>,

    /// The SCRAM mechanism of managed Transform credentials.
    #[arg(
        long,
        env = "WEIR_TRANSFORM_SCRAM_MECHANISM",
        value_enum,
        default_value = "SCRAM-SHA-512"
    )]
    pub transform_scram_mechanism: weir_crds::connection::SaslMechanism,

    /// The Kafka bootstrap servers workers connect to, when they reach Kafka by another
    /// address than the operator (such as a SCRAM listener while the operator uses mutual
    /// TLS). Defaults to `--kafka-bootstrap-servers`.
    #[arg(long, env = "WEIR_WORKER_KAFKA_BOOTSTRAP_SERVERS")]
    pub worker_kafka_bootstrap_servers: Option<String>,

    /// How often the operator reads the workers' `/metrics` (on their pod IPs) to see dead
    /// letters rising or consumer lag growing (the Transform's `Degraded` condition).
    #[arg(long, env = "WEIR_WORKER_SAMPLE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub worker_sample_interval: Duration,

    /// How long a watch of DataStreams or Transforms may keep failing (the apiserver
    /// unreachable, the CRD gone, access revoked) before `/healthz` fails, so that the
    /// kubelet restarts the operator rather than leave it blind to changes.
    #[arg(long, env = "WEIR_WATCH_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_stall_timeout: Duration,

    /// How long a stopping operator (SIGTERM, or lost leadership) may take to finish the
    /// reconciles in flight and release its Lease before it exits anyway. Keep it below the
    /// pod's `terminationGracePeriodSeconds` (30 s by default): a stop must not wait on an
    /// apiserver or broker that does not answer.
    #[arg(long, env = "WEIR_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Config {
    /// How workers authenticate, from the flags and the operator's own connection. Reads
    /// the CA file, which workers are given too.
    pub fn worker_identity(&self) -> std::io::Result<crate::transform::principal::WorkerIdentity> {
        use crate::transform::principal::{PrincipalMode, WorkerIdentity, scram};
        let auth = &self.kafka_auth;
        let mode = self.transform_principals.unwrap_or(
            match (
                auth.security_protocol.sasl(),
                auth.sasl_mechanism.and_then(scram),
            ) {
                (true, Some(_)) => PrincipalMode::Managed,
                _ if auth.security_protocol
                    == weir_crds::connection::SecurityProtocol::Plaintext =>
                {
                    PrincipalMode::None
                }
                _ => PrincipalMode::Provided,
            },
        );
        let ca_pem = auth
            .tls_ca_file
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose()?;
        Ok(WorkerIdentity {
            mode,
            mechanism: self.transform_scram_mechanism,
            tls: auth.security_protocol.tls(),
            ca_pem,
            rotate_after: self.transform_credential_rotation,
        })
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_have_sensible_defaults() {
        let c = Config::try_parse_from(["weir-operator", "--kafka-bootstrap-servers", "k:9092"])
            .expect("parses");
        assert_eq!(c.default_replication_factor, 3);
        assert_eq!(c.resync_interval, Duration::from_secs(300));
        assert!(c.leader_election);
        assert_eq!(c.http_addr.port(), 8080);
    }

    #[test]
    fn kafka_settings_parse_as_key_value_pairs() {
        let c = Config::try_parse_from([
            "weir-operator",
            "--kafka-bootstrap-servers=k:9092",
            "--kafka-config=security.protocol=SSL,ssl.ca.location=/ca.pem",
            "--leader-election=false",
        ])
        .expect("parses");
        assert_eq!(
            c.kafka_config[1],
            ("ssl.ca.location".into(), "/ca.pem".into())
        );
        assert!(!c.leader_election);
        assert!(
            Config::try_parse_from([
                "weir-operator",
                "--kafka-bootstrap-servers=k",
                "--kafka-config=nope"
            ])
            .is_err()
        );
    }
}
