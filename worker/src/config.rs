//! `weir-worker run`'s configuration: flags, each also read from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Runs one Transform between Kafka topics.
#[derive(clap::Args, Debug, Clone)]
pub struct RunConfig {
    /// YAML files with the Transform and the DataStreams it reads and writes (the
    /// operator mounts them from a ConfigMap).
    #[arg(required = true, env = "WEIR_FILES", value_delimiter = ',')]
    pub files: Vec<PathBuf>,

    /// Which Transform to run, as `namespace/name`, when the files hold several.
    #[arg(long, env = "WEIR_TRANSFORM")]
    pub transform: Option<String>,

    /// The plan fingerprint the worker must compile to; it refuses to start otherwise.
    #[arg(long, env = "WEIR_PLAN_FINGERPRINT")]
    pub fingerprint: Option<String>,

    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,

    /// How the worker authenticates to Kafka (secrets from mounted files only).
    #[command(flatten)]
    pub kafka_auth: weir_crds::connection::ClientAuth,

    /// This worker's name, unique among the Transform's workers and kept across restarts
    /// (the pod name, from the downward API). It names the transactional producer, so a
    /// restarted worker fences its previous incarnation at once.
    #[arg(long, env = "POD_NAME")]
    pub worker_name: String,

    /// The consumer group; defaults to `weir.<namespace>.<transform>`.
    #[arg(long, env = "WEIR_GROUP_ID")]
    pub group_id: Option<String>,

    /// The changelog topic (compacted, one partition per stateful task: per input
    /// partition, or per repartition partition when the plan repartitions); defaults to
    /// `<namespace>.<transform>.changelog`. Only stateful plans use it.
    #[arg(long, env = "WEIR_CHANGELOG_TOPIC")]
    pub changelog_topic: Option<String>,

    /// The repartition topic, for plans that group or join by another column than the
    /// inputs' key; defaults to `<namespace>.<transform>.repartition`. Its partition
    /// count is the number of stateful tasks.
    #[arg(long, env = "WEIR_REPARTITION_TOPIC")]
    pub repartition_topic: Option<String>,

    /// The dead-letter topic; defaults to `<namespace>.<transform>.dead-letters`.
    #[arg(long, env = "WEIR_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// The longest time between commits.
    #[arg(long, env = "WEIR_COMMIT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,

    /// How long a cycle gathers records at least before it commits early because the
    /// input is caught up (nothing more queued to read). Under load a cycle ends at
    /// `--commit-interval` or `--commit-records`; at lower rates this bounds latency.
    #[arg(long, env = "WEIR_COMMIT_LINGER", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub commit_linger: Duration,

    /// The most records in one commit.
    #[arg(long, env = "WEIR_COMMIT_RECORDS", default_value_t = 10_000)]
    pub commit_records: usize,

    /// The Kafka transaction timeout: how long a crashed worker's open transaction can
    /// hold back readers before the broker aborts it.
    #[arg(long, env = "WEIR_TRANSACTION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub transaction_timeout: Duration,

    /// The consumer group session timeout: how long a silent worker keeps its partitions.
    #[arg(long, env = "WEIR_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,

    /// How long to wait for missing topics at start-up before refusing to run. Topics
    /// created just before the worker may take a moment to appear in the broker's metadata.
    #[arg(long, env = "WEIR_TOPICS_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub topics_timeout: Duration,

    /// The most bytes of fetched records the consumer keeps queued per input partition
    /// (librdkafka's `queued.max.messages.kbytes`, in KiB).
    #[arg(long, env = "WEIR_FETCH_QUEUE_KIB", default_value_t = 8 * 1024)]
    pub fetch_queue_kib: u64,

    /// The most bytes of records the producer holds before they are acknowledged
    /// (librdkafka's `queue.buffering.max.kbytes`, in KiB); processing waits when full.
    #[arg(long, env = "WEIR_PRODUCE_QUEUE_KIB", default_value_t = 64 * 1024)]
    pub produce_queue_kib: u64,

    /// Records larger than this (key and value) are set aside as `too_large`.
    #[arg(long, env = "WEIR_MAX_RECORD_BYTES", default_value_t = 1 << 20)]
    pub max_record_bytes: usize,

    /// Where `/metrics`, `/healthz` and `/readyz` are served, as `ip:port` (an IPv6 address
    /// may go without brackets, as `$(POD_IP):port` expands in an IPv6 cluster).
    #[arg(long, env = "WEIR_HTTP_ADDR", default_value = "0.0.0.0:9090", value_parser = weir_crds::net::listen_addr)]
    pub http_addr: SocketAddr,

    /// Once the worker is ready (or was assigned nothing), unmap the unmodified read-only
    /// pages of its executable (mostly the SQL compiler's code, used only at start-up),
    /// so its resident set is what processing touches; pages used again are read back
    /// from the page cache. `false` keeps them mapped.
    #[arg(long, env = "WEIR_RELEASE_STARTUP_PAGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub release_startup_pages: bool,

    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl RunConfig {
    /// The librdkafka settings every client of the worker shares.
    pub fn kafka_settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut s = BTreeMap::new();
        s.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        // Asking about a missing topic (waiting for it at start-up) must never create it
        // with the broker's defaults.
        s.insert("allow.auto.create.topics".into(), "false".into());
        s.insert(
            "client.id".into(),
            format!("weir-worker-{}", self.worker_name),
        );
        s.extend(self.kafka_auth.settings()?);
        Ok(s)
    }
}
