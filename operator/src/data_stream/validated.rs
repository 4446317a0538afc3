//! Checks a DataStream's spec and turns it into the topic it asks for (pure).

use std::collections::BTreeMap;

use weir_crds::DataStream;
use weir_crds::data_stream::{
    ACCEPT_RETENTION_DECREASE_ANNOTATION, ADOPT_ANNOTATION, CleanupPolicy, ConfigOwnership,
    DeletionPolicy,
};
use weir_crds::schema::FieldType;

use crate::kafka_admin::DesiredTopic;
use crate::policy::Policy;

/// Topic configs Weir derives from first-class spec fields; `spec.config` may not set them.
const DERIVED_CONFIGS: [(&str, &str); 3] = [
    ("retention.ms", "spec.retention"),
    ("retention.bytes", "spec.retentionSize"),
    ("cleanup.policy", "spec.cleanupPolicy"),
];

/// The most `spec.config` keys a DataStream may set, and the longest value.
const MAX_CONFIG_KEYS: usize = 32;
const MAX_CONFIG_VALUE: usize = 256;

/// Lower bounds that keep a tenant's topic from loading the brokers (tiny segments mean
/// many files and frequent rolls) and upper bounds on record size: `(key, min, max)`.
const CONFIG_BOUNDS: &[(&str, i64, i64)] = &[
    ("segment.bytes", 16 << 20, i64::MAX),
    ("segment.ms", 3_600_000, i64::MAX),
    ("max.message.bytes", 1, 16 << 20),
];

/// A mistake in a spec, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending field, such as `spec.retention`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A DataStream whose spec passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedDataStream {
    /// The topic the spec asks for.
    pub topic: DesiredTopic,
    /// Whether an existing topic may be adopted.
    pub adopt: bool,
    /// What happens to the topic on deletion.
    pub deletion_policy: DeletionPolicy,
    /// Which of the topic's configs Weir manages.
    pub config_ownership: ConfigOwnership,
    /// Whether an adoption may lower the topic's retention.
    pub accept_retention_decrease: bool,
}

/// Checks a named connection (`spec.kafka` of a DataStream or a Transform) against the
/// operator's policy: its servers are among those allowed, and SASL goes over TLS unless
/// the resource accepts plaintext in so many words.
pub fn check_connection(
    conn: &weir_crds::connection::KafkaConnection,
    policy: &Policy,
) -> Result<(), SpecError> {
    crate::connection::bootstrap_allowed(
        &conn.bootstrap_servers,
        &policy.allowed_bootstrap_servers,
    )
    .map_err(|m| SpecError::new("spec.kafka.bootstrapServers", m))?;
    if let Some(sasl) = &conn.sasl
        && conn.tls.is_none()
        && !sasl.allow_plaintext
    {
        return Err(SpecError::new(
            "spec.kafka.sasl",
            "SASL without spec.kafka.tls sends the credentials and every record unencrypted: \
             add tls, or set allowPlaintext: true to accept that",
        ));
    }
    Ok(())
}

/// Checks the spec and computes the desired topic.
pub fn validate(ds: &DataStream, policy: &Policy) -> Result<ValidatedDataStream, SpecError> {
    let spec = &ds.spec;
    if spec.owner.trim().is_empty() {
        return Err(SpecError::new("spec.owner", "must name a person or team"));
    }
    spec.schema
        .to_arrow()
        .map_err(|e| SpecError::new(format!("spec.schema.{}", e.path), e.message))?;
    for (i, key) in spec.key.iter().enumerate() {
        if spec.schema.field(key).is_none() {
            return Err(SpecError::new(
                format!("spec.key[{i}]"),
                format!("{key:?} is not a field of spec.schema"),
            ));
        }
        if spec.key[..i].contains(key) {
            return Err(SpecError::new(
                format!("spec.key[{i}]"),
                format!("{key:?} is listed twice"),
            ));
        }
    }
    if let Some(et) = &spec.event_time {
        match spec.schema.field(&et.field) {
            None => {
                return Err(SpecError::new(
                    "spec.eventTime.field",
                    format!("{:?} is not a field of spec.schema", et.field),
                ));
            }
            Some(f) if f.type_ != FieldType::Timestamp => {
                return Err(SpecError::new(
                    "spec.eventTime.field",
                    format!(
                        "{:?} has type {:?}; event time needs a timestamp",
                        et.field, f.type_
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(d) = &et.max_out_of_orderness {
            d.millis()
                .map_err(|m| SpecError::new("spec.eventTime.maxOutOfOrderness", m))?;
        }
        if let Some(d) = &et.max_future_skew {
            d.millis()
                .map_err(|m| SpecError::new("spec.eventTime.maxFutureSkew", m))?;
        }
    }
    if spec.cleanup_policy == CleanupPolicy::Compact && spec.key.is_empty() {
        return Err(SpecError::new(
            "spec.key",
            "a compacted DataStream (a table) needs a key: compaction keeps the latest record per key",
        ));
    }

    let replication_factor = spec.replication_factor.unwrap_or(policy.replication_factor);
    let mut configs = BTreeMap::new();
    if spec.config.len() > MAX_CONFIG_KEYS {
        return Err(SpecError::new(
            "spec.config",
            format!(
                "sets {} keys; at most {MAX_CONFIG_KEYS} are allowed",
                spec.config.len()
            ),
        ));
    }
    for (key, value) in &spec.config {
        let field = || format!("spec.config.{key}");
        if let Some((_, derived)) = DERIVED_CONFIGS.iter().find(|(k, _)| k == key) {
            return Err(SpecError::new(field(), format!("set {derived} instead")));
        }
        if !policy.config_allow_list.iter().any(|k| k == key) {
            return Err(SpecError::new(
                field(),
                format!(
                    "{key} is not a topic setting a DataStream may change; allowed: {} (the \
                     operator's WEIR_TOPIC_CONFIG_ALLOW_LIST sets the list)",
                    policy.config_allow_list.join(", ")
                ),
            ));
        }
        if value.is_empty() || value.len() > MAX_CONFIG_VALUE {
            return Err(SpecError::new(
                field(),
                format!("must be 1 to {MAX_CONFIG_VALUE} characters"),
            ));
        }
        check_config_value(key, value, replication_factor)
            .map_err(|m| SpecError::new(field(), m))?;
        configs.insert(key.clone(), value.clone());
    }
    configs.insert(
        "cleanup.policy".into(),
        spec.cleanup_policy.as_kafka().into(),
    );
    if let Some(r) = &spec.retention {
        let ms = r
            .millis()
            .map_err(|m| SpecError::new("spec.retention", m))?;
        configs.insert("retention.ms".into(), ms.to_string());
    }
    if let Some(size) = &spec.retention_size {
        let bytes = size
            .bytes()
            .map_err(|m| SpecError::new("spec.retentionSize", m))?;
        configs.insert("retention.bytes".into(), bytes.to_string());
    }

    if let Some(conn) = &spec.kafka {
        check_connection(conn, policy)?;
    }

    let name = ds.topic_name();
    check_topic_name(&name).map_err(|m| {
        let field = if spec.topic.is_some() {
            "spec.topic"
        } else {
            "metadata.name"
        };
        SpecError::new(field, m)
    })?;
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("default");
    check_topic_owner(namespace, &name, &policy.topic_grants)
        .map_err(|m| SpecError::new("spec.topic", m))?;

    let annotated = |key: &str| {
        ds.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .is_some_and(|v| v == "true")
    };
    Ok(ValidatedDataStream {
        topic: DesiredTopic {
            name,
            partitions: spec.partitions,
            replication_factor,
            configs,
        },
        adopt: annotated(ADOPT_ANNOTATION),
        deletion_policy: spec.deletion_policy,
        config_ownership: spec.config_ownership,
        accept_retention_decrease: annotated(ACCEPT_RETENTION_DECREASE_ANNOTATION),
    })
}

/// Checks the values whose range matters to the brokers or to durability.
fn check_config_value(key: &str, value: &str, replication_factor: i32) -> Result<(), String> {
    let number = || {
        value
            .parse::<i64>()
            .map_err(|_| format!("{value:?} is not a whole number"))
    };
    if let Some((_, min, max)) = CONFIG_BOUNDS.iter().find(|(k, _, _)| *k == key) {
        let n = number()?;
        if n < *min || n > *max {
            return Err(if *max == i64::MAX {
                format!("{n} is below the smallest allowed value, {min}")
            } else {
                format!("{n} is outside the allowed range {min}..={max}")
            });
        }
    }
    if key == "min.insync.replicas" {
        let n = number()?;
        if n < 1 || i64::from(replication_factor) < n {
            return Err(format!(
                "{n} must be between 1 and the replication factor ({replication_factor}): more \
                 in-sync replicas than replicas would refuse every write"
            ));
        }
    }
    Ok(())
}

/// Whether namespace `namespace` may manage (create, adopt, delete) topic `name`: topics
/// under its own prefix `<namespace>.`, or under a prefix the operator's configuration
/// grants it. Everything else belongs to other tenants or to no tenant.
pub fn check_topic_owner(
    namespace: &str,
    name: &str,
    grants: &[(String, String)],
) -> Result<(), String> {
    let own = format!("{namespace}.");
    if name.starts_with(&own)
        || grants
            .iter()
            .any(|(ns, prefix)| ns == namespace && !prefix.is_empty() && name.starts_with(prefix))
    {
        return Ok(());
    }
    Err(format!(
        "topic {name:?} is outside namespace {namespace}'s prefix {own:?}: a namespace may only \
         create or adopt topics under its own prefix, unless the operator grants it another \
         (WEIR_TOPIC_GRANTS={namespace}=<prefix>)"
    ))
}

/// Kafka's rules for a topic name, and Weir's: never one of Kafka's internal topics.
/// The CRD checks `spec.topic` at admission; this also covers the default
/// `<namespace>.<name>`, which the CRD cannot see whole (and objects admitted before a rule).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("the topic name {name:?} is not allowed by Kafka"));
    }
    if name.len() > 249 {
        return Err(format!(
            "the topic name {name:?} is {} characters; Kafka allows at most 249 (set spec.topic \
             or use a shorter name)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the topic name {name:?} contains {c:?}; Kafka allows letters, digits, '.', '_' and '-'"
        ));
    }
    if let Some(kind) = weir_crds::names::internal_topic_kind(name) {
        return Err(format!(
            "the topic name {name:?} is a Transform's {kind} topic (<namespace>.<transform>.{kind}): \
             Weir keeps a Transform's internal topics itself, and a DataStream may not manage \
             or adopt one"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "the topic name {name:?} starts with '__': Kafka's internal topics are never \
             managed by Weir"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_stream(yaml: &str) -> DataStream {
        let mut ds: DataStream = serde_yaml::from_str(yaml).expect("valid yaml");
        ds.metadata.namespace = Some("web".into());
        ds
    }

    const BASE: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: { name: page-views }
spec:
  description: Page views.
  owner: web@example.com
  partitions: 6
  retention: 7d
  retentionSize: 1Gi
  config: { max.message.bytes: "2097152" }
  schema:
    fields:
      - { name: user_id, type: string, nullable: false }
      - { name: ts, type: timestamp }
  key: [user_id]
  eventTime: { field: ts, maxOutOfOrderness: 5s }
"#;

    fn defaults() -> Policy {
        Policy {
            replication_factor: 1,
            topic_grants: vec![("legacy".into(), "orders.".into())],
            config_allow_list: crate::policy::DEFAULT_CONFIG_ALLOW_LIST
                .iter()
                .map(|k| k.to_string())
                .collect(),
            allowed_bootstrap_servers: vec!["*.kafka.svc:9093".into()],
        }
    }

    #[test]
    fn a_namespace_manages_only_topics_under_its_prefix_or_a_grant() {
        let grants = defaults().topic_grants;
        assert!(check_topic_owner("web", "web.page-views", &grants).is_ok());
        assert!(check_topic_owner("legacy", "orders.v1", &grants).is_ok());
        for (ns, topic) in [
            ("web", "webshop.x"),
            ("web", "analytics.views"),
            ("web", "orders.v1"),
            ("team-b", "__consumer_offsets"),
        ] {
            let err = check_topic_owner(ns, topic, &grants).unwrap_err();
            assert!(
                err.contains(&format!("outside namespace {ns}'s prefix")),
                "{err}"
            );
        }
        let ds = data_stream(&BASE.replace(
            "  partitions: 6",
            "  topic: analytics.views\n  partitions: 6",
        ));
        let err = validate(&ds, &defaults()).expect_err("another namespace's topic");
        assert!(
            err.to_string()
                .starts_with("spec.topic: topic \"analytics.views\""),
            "{err}"
        );
    }

    #[test]
    fn a_valid_spec_becomes_the_topic_it_asks_for() {
        let v = validate(&data_stream(BASE), &defaults()).expect("valid");
        assert_eq!(v.topic.name, "web.page-views");
        assert_eq!(v.topic.partitions, 6);
        assert_eq!(v.topic.replication_factor, 1);
        assert_eq!(v.topic.configs["retention.ms"], "604800000");
        assert_eq!(v.topic.configs["retention.bytes"], "1073741824");
        assert_eq!(v.topic.configs["cleanup.policy"], "delete");
        assert_eq!(v.topic.configs["max.message.bytes"], "2097152");
        assert!(!v.adopt);
        assert_eq!(v.deletion_policy, DeletionPolicy::Retain);
    }

    #[test]
    fn event_time_must_be_a_timestamp_field() {
        let ds = data_stream(&BASE.replace("field: ts,", "field: user_id,"));
        let err = validate(&ds, &defaults()).expect_err("string event time");
        assert_eq!(err.field, "spec.eventTime.field");
        assert!(err.message.contains("needs a timestamp"), "{err}");
    }

    #[test]
    fn a_key_must_name_a_schema_field() {
        let ds = data_stream(&BASE.replace("key: [user_id]", "key: [user_id, nope]"));
        let err = validate(&ds, &defaults()).expect_err("unknown key");
        assert_eq!(
            err.to_string(),
            "spec.key[1]: \"nope\" is not a field of spec.schema"
        );
    }

    #[test]
    fn a_bad_retention_names_the_field() {
        let ds = data_stream(&BASE.replace("retention: 7d", "retention: 7 parsecs"));
        let err = validate(&ds, &defaults()).expect_err("bad duration");
        assert_eq!(err.field, "spec.retention");
    }

    #[test]
    fn config_may_not_shadow_first_class_fields() {
        let ds =
            data_stream(&BASE.replace("max.message.bytes: \"2097152\"", "retention.ms: \"1000\""));
        let err = validate(&ds, &defaults()).expect_err("shadowing");
        assert_eq!(
            err.to_string(),
            "spec.config.retention.ms: set spec.retention instead"
        );
    }

    #[test]
    fn config_takes_only_allowed_keys_within_bounds() {
        let with =
            |config: &str| data_stream(&BASE.replace("max.message.bytes: \"2097152\"", config));
        let refused = |config: &str| {
            validate(&with(config), &defaults())
                .expect_err(config)
                .to_string()
        };
        let e = refused("unclean.leader.election.enable: \"true\"");
        assert!(
            e.starts_with("spec.config.unclean.leader.election.enable: unclean.leader.election.enable is not a topic setting a DataStream may change; allowed: compression.type"),
            "{e}"
        );
        assert!(refused("flush.messages: \"1\"").contains("not a topic setting"));
        assert_eq!(
            refused("segment.bytes: \"1024\""),
            "spec.config.segment.bytes: 1024 is below the smallest allowed value, 16777216"
        );
        assert_eq!(
            refused("max.message.bytes: \"1e9\""),
            "spec.config.max.message.bytes: \"1e9\" is not a whole number"
        );
        // More in-sync replicas than replicas would refuse every write (replication 1 here).
        assert!(
            refused("min.insync.replicas: \"2\"")
                .contains("between 1 and the replication factor (1)")
        );
        let many = (0..33)
            .map(|i| format!("k{i}: v"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            refused(&many),
            "spec.config: sets 33 keys; at most 32 are allowed"
        );
        assert!(validate(&with("compression.type: zstd"), &defaults()).is_ok());
        // The operator's list replaces the default.
        let mut narrow = defaults();
        narrow.config_allow_list = vec!["compression.type".into()];
        assert!(validate(&with("max.message.bytes: \"10\""), &narrow).is_err());
    }

    #[test]
    fn a_connection_must_use_an_allowed_server_and_encrypt_sasl_unless_told() {
        let with = |kafka: &str| data_stream(&format!("{BASE}  kafka: {kafka}\n"));
        let e = validate(
            &with("{ name: c, bootstrapServers: \"evil.example.com:9093\" }"),
            &defaults(),
        )
        .expect_err("not allowed");
        assert!(
            e.to_string()
                .starts_with("spec.kafka.bootstrapServers: \"evil.example.com:9093\""),
            "{e}"
        );
        let sasl = "{ name: c, bootstrapServers: \"b.kafka.svc:9093\", sasl: { mechanism: PLAIN, secretName: s } }";
        let e = validate(&with(sasl), &defaults()).expect_err("plaintext");
        assert_eq!(e.field, "spec.kafka.sasl");
        let opted_in = sasl.replace("secretName: s", "secretName: s, allowPlaintext: true");
        assert!(validate(&with(&opted_in), &defaults()).is_ok());
        let encrypted = sasl.replace("secretName: s }", "secretName: s }, tls: {}");
        assert!(
            validate(&with(&encrypted), &defaults()).is_ok(),
            "{encrypted}"
        );
    }

    #[test]
    fn a_compacted_stream_needs_a_key() {
        let ds = data_stream(
            &BASE
                .replace("key: [user_id]", "")
                .replace("retention: 7d", "cleanupPolicy: compact"),
        );
        let err = validate(&ds, &defaults()).expect_err("no key");
        assert_eq!(err.field, "spec.key");
    }

    #[test]
    fn forever_retention_is_minus_one() {
        let ds = data_stream(&BASE.replace("retention: 7d", "retention: forever"));
        let v = validate(&ds, &defaults()).expect("valid");
        assert_eq!(v.topic.configs["retention.ms"], "-1");
    }

    #[test]
    fn topic_names_follow_kafka_and_never_name_an_internal_topic() {
        assert!(check_topic_name("web.page-views_2").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "__consumer_offsets",
            "__transaction_state",
            "web.t.changelog",
            "web.t.e2.repartition",
            "web.t.dead-letters",
            "a/b",
            "é",
        ] {
            assert!(check_topic_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_topic_name(&"a".repeat(249)).is_ok());
        let long = check_topic_name(&"a".repeat(250)).unwrap_err();
        assert!(long.contains("at most 249"), "{long}");
    }

    #[test]
    fn a_default_topic_name_over_kafkas_limit_names_metadata_name() {
        let mut ds = data_stream(BASE);
        ds.metadata.name = Some("x".repeat(250));
        let e = validate(&ds, &defaults()).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        let mut ds = data_stream(BASE);
        ds.spec.topic = Some("__consumer_offsets".into());
        let e = validate(&ds, &defaults()).unwrap_err();
        assert_eq!(e.field, "spec.topic");
        assert!(e.message.contains("internal"), "{}", e.message);
    }

    #[test]
    fn the_adopt_annotation_allows_adoption() {
        let mut ds = data_stream(BASE);
        ds.metadata.annotations = Some([(ADOPT_ANNOTATION.to_owned(), "true".to_owned())].into());
        assert!(validate(&ds, &defaults()).expect("valid").adopt);
    }
}
