//! The operator-wide policy for DataStreams, set by the operator's configuration (the
//! chart's values): defaults, and the limits that keep tenants apart.

/// The `spec.config` keys a tenant may set unless the operator is configured otherwise:
/// per-topic settings that shape the tenant's own data. Left out on purpose: settings that
/// trade durability or availability for everyone on the brokers (`unclean.leader.election.enable`,
/// `flush.*`, `preallocate`), replication throttles (an admin's, during reassignments),
/// tiered storage (`remote.storage.enable`, `local.retention.*`) and index tuning.
pub const DEFAULT_CONFIG_ALLOW_LIST: &[&str] = &[
    "compression.type",
    "delete.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "segment.bytes",
    "segment.ms",
];

/// What the operator's configuration decides for every DataStream: defaults a spec may
/// leave out, and the limits no tenant can lift.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The replication factor of new topics.
    pub replication_factor: i32,
    /// Topic prefixes granted to namespaces beyond their own `<namespace>.`, as
    /// `(namespace, prefix)` pairs from the operator's configuration (a tenant cannot
    /// grant itself one).
    pub topic_grants: Vec<(String, String)>,
    /// The `spec.config` keys a DataStream may set ([`DEFAULT_CONFIG_ALLOW_LIST`] unless the
    /// operator is configured otherwise).
    pub config_allow_list: Vec<String>,
    /// The Kafka servers a DataStream's `spec.kafka` may name (empty: any).
    pub allowed_bootstrap_servers: Vec<String>,
}
