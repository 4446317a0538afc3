//! A Transform's own Kafka principal: which ACLs its plan needs (a pure function of the
//! plan's topics and names), how its workers authenticate, and making Kafka and the
//! credentials Secret match.
//!
//! The principal never gets more than the plan needs, and nothing the grants do not allow:
//! `READ`/`DESCRIBE` on each input topic (only those of DataStreams it may read, so a
//! revoked grant takes the ACL with it), `WRITE`/`DESCRIBE` on its output, `READ`/`WRITE`/
//! `DESCRIBE` on its internal topics, `READ` on its consumer groups, and `WRITE`/`DESCRIBE`
//! on its transactional ids (by prefix). Every name is literal but the transactional ids,
//! and every one lies within the Transform's own namespace's names except the inputs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, KeyToPath, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use weir_crds::Transform;
use weir_crds::connection::SaslMechanism;
use weir_crds::names::TransformNames;

use kube::ResourceExt;
use kube::api::Api;
use tracing::info;

use super::Ctx;
use super::status::{Reason, State};
use crate::kafka_admin::acl::{Acl, AclDiff, Operation, Pattern, ResourceKind, ScramMechanism};
use crate::{Error, Result};

/// How the operator gives each Transform's workers a Kafka identity (per installation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrincipalMode {
    /// The operator creates a SCRAM credential and the ACLs for each Transform.
    Managed,
    /// Each Transform names a Secret of its namespace (`spec.kafkaCredentials`); the
    /// operator mounts it and reports ACLs the plan needs that the principal lacks.
    Provided,
    /// Workers connect without credentials (a cluster without authentication).
    None,
}

/// What the operator's settings say about the workers' identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The mode.
    pub mode: PrincipalMode,
    /// The SCRAM mechanism of managed credentials.
    pub mechanism: SaslMechanism,
    /// Whether workers connect over TLS.
    pub tls: bool,
    /// The CA the brokers' certificates chain to (the operator's own), given to workers.
    pub ca_pem: Option<String>,
    /// How old a managed password may get before the operator replaces it (`None`: only
    /// when a person changes or deletes the Secret).
    pub rotate_after: Option<std::time::Duration>,
}

impl Default for WorkerIdentity {
    fn default() -> Self {
        Self {
            mode: PrincipalMode::None,
            mechanism: SaslMechanism::ScramSha512,
            tls: false,
            ca_pem: None,
            rotate_after: None,
        }
    }
}

/// Where the operator's Secret of a Transform's workers is mounted (beside, not inside, the
/// read-only ConfigMap mount at `/etc/weir`: a mount point cannot be made in there).
pub const CREDENTIALS_DIR: &str = "/etc/weir-kafka";
/// Where a provided Secret is mounted.
pub const PROVIDED_DIR: &str = "/etc/weir-kafka-user";
/// The annotation on the operator's Secret of a Transform holding a hash of the credential
/// last set on Kafka: a password in the Secret that Kafka may not have yet is set again.
pub const APPLIED_CREDENTIAL: &str = "weir.dev/applied-credential";
/// The annotation on the operator's Secret of a Transform saying when its password was set
/// (RFC 3339), for rotation by age.
pub const CREDENTIAL_SET_AT: &str = "weir.dev/credential-set-at";
/// The pod template annotation holding a hash of the credentials: a rotated credential
/// rolls the workers.
pub const CREDENTIALS_HASH: &str = "weir.dev/credentials";

/// The name of the Secret the operator keeps for a Transform's workers (its password in
/// managed mode, and the brokers' CA).
pub fn secret_name(tf: &Transform) -> String {
    format!("{}-kafka", super::build::worker_name(tf))
}

/// The Transform's principal under managed credentials: `User:weir.<namespace>.<name>`.
pub fn managed_principal(names: &TransformNames) -> String {
    format!("User:{}", names.principal_user())
}

/// The SCRAM mechanism of a SASL mechanism, if it is one.
pub fn scram(mechanism: SaslMechanism) -> Option<ScramMechanism> {
    match mechanism {
        SaslMechanism::ScramSha256 => Some(ScramMechanism::Sha256),
        SaslMechanism::ScramSha512 => Some(ScramMechanism::Sha512),
        SaslMechanism::Plain | SaslMechanism::OAuthBearer => None,
    }
}

/// The topics and names one deployed plan touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTopics {
    /// Input topics (from the DataStreams' status, each granted).
    pub inputs: Vec<String>,
    /// The output topic.
    pub output: String,
    /// Dead letters, changelog, repartition.
    pub internal: Vec<String>,
}

/// The ACLs `principal` needs to run a plan over `topics` under `names` (and `worker`, the
/// prefix its pods' names start with).
pub fn desired_acls(
    principal: &str,
    names: &TransformNames,
    worker_prefix: &str,
    topics: &PlanTopics,
) -> BTreeSet<Acl> {
    let acl = |kind, name: &str, pattern, operation| Acl {
        principal: principal.to_owned(),
        kind,
        name: name.to_owned(),
        pattern,
        operation,
    };
    let mut out = BTreeSet::new();
    let topic = |out: &mut BTreeSet<Acl>, name: &str, ops: &[Operation]| {
        for op in ops {
            out.insert(acl(ResourceKind::Topic, name, Pattern::Literal, *op));
        }
    };
    use Operation::{Describe, Read, Write};
    for input in &topics.inputs {
        topic(&mut out, input, &[Read, Describe]);
    }
    topic(&mut out, &topics.output, &[Write, Describe]);
    for internal in &topics.internal {
        topic(&mut out, internal, &[Read, Write, Describe]);
    }
    for group in [names.group_id(), names.restore_group_id()] {
        out.insert(acl(ResourceKind::Group, &group, Pattern::Literal, Read));
    }
    // Transactional ids are `<prefix><pod name>`; pod names start with the workload's.
    let txn = format!("{}{worker_prefix}", names.transactional_id_prefix());
    for op in [Write, Describe] {
        out.insert(acl(
            ResourceKind::TransactionalId,
            &txn,
            Pattern::Prefixed,
            op,
        ));
    }
    out
}

/// The ACLs of `live` to keep while the Transform may read nothing: all but the READ and
/// DESCRIBE ACLs on topics that are neither its internal topics (under `names.base()`) nor
/// its output (a topic it may WRITE).
pub fn without_inputs(live: &BTreeSet<Acl>, names: &TransformNames) -> BTreeSet<Acl> {
    let internal = format!("{}.", names.base());
    let written: BTreeSet<&str> = live
        .iter()
        .filter(|a| a.kind == ResourceKind::Topic && a.operation == Operation::Write)
        .map(|a| a.name.as_str())
        .collect();
    live.iter()
        .filter(|a| {
            a.kind != ResourceKind::Topic
                || a.name.starts_with(&internal)
                || written.contains(a.name.as_str())
        })
        .cloned()
        .collect()
}

/// The ACLs of `desired` no ACL of `live` covers, each as a person reads it.
pub fn missing(live: &BTreeSet<Acl>, desired: &BTreeSet<Acl>) -> Vec<String> {
    desired
        .iter()
        .filter(|want| !live.iter().any(|have| have.covers(want)))
        .map(ToString::to_string)
        .collect()
}

/// Whether a password set at `set_at` (RFC 3339, from [`CREDENTIAL_SET_AT`]) is due for
/// rotation at `now` when passwords live at most `rotate_after`. Unknown ages are not due:
/// they are recorded from now on.
pub fn rotation_due(
    set_at: Option<&str>,
    now: std::time::SystemTime,
    rotate_after: Option<std::time::Duration>,
) -> bool {
    let (Some(max), Some(at)) = (
        rotate_after,
        set_at.and_then(|t| humantime::parse_rfc3339(t).ok()),
    ) else {
        return false;
    };
    now.duration_since(at).is_ok_and(|age| age >= max)
}

/// A new random password: 32 characters from 190 bits of the system's randomness.
pub fn new_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    for b in uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
    {
        out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    out
}

/// How a provided Secret authenticates, from the keys it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvidedLayout {
    /// SASL with a password: `username` (or a JAAS line) and `password`.
    Sasl {
        /// The user name (for the ACL check).
        username: String,
        /// Whether the user name is in a `username` key (else in `sasl.jaas.config`).
        username_key: bool,
    },
    /// A TLS client certificate: the certificate and key keys.
    Tls {
        /// `user.crt` or `tls.crt`.
        cert: &'static str,
        /// `user.key` or `tls.key`.
        key: &'static str,
    },
}

/// The certificate and key keys of a TLS client Secret (a Strimzi KafkaUser's `user.crt`
/// and `user.key`, or a `kubernetes.io/tls` Secret's), if it holds them.
pub fn tls_layout(secret: &Secret) -> Option<(&'static str, &'static str)> {
    [("user.crt", "user.key"), ("tls.crt", "tls.key")]
        .into_iter()
        .find(|(cert, key)| {
            crate::connection::optional_key(secret, cert).is_some()
                && crate::connection::optional_key(secret, key).is_some()
        })
}

/// The SASL layout of a password Secret (`password` with `username`, or with a
/// `sasl.jaas.config` line naming the user, as Strimzi writes it), if it is one.
pub fn sasl_layout(secret: &Secret) -> Option<ProvidedLayout> {
    crate::connection::optional_key(secret, "password")?;
    if let Some(u) = crate::connection::optional_key(secret, "username") {
        return Some(ProvidedLayout::Sasl {
            username: u.trim_end().to_owned(),
            username_key: true,
        });
    }
    match crate::connection::optional_key(secret, "sasl.jaas.config")
        .map(|j| weir_crds::connection::jaas_credentials(&j))
    {
        Some((Some(u), _)) => Some(ProvidedLayout::Sasl {
            username: u,
            username_key: false,
        }),
        _ => None,
    }
}

/// What a provided Secret holds, or why it cannot be used.
pub fn provided_layout(secret: &Secret) -> Result<ProvidedLayout, String> {
    if let Some((cert, key)) = tls_layout(secret) {
        return Ok(ProvidedLayout::Tls { cert, key });
    }
    sasl_layout(secret).ok_or_else(|| {
        "it holds neither `password` with `username` or `sasl.jaas.config` (SCRAM), nor \
         `user.crt` and `user.key` or `tls.crt` and `tls.key` (TLS)"
            .into()
    })
}

/// What the workers' pods get for their Kafka identity: environment (names and paths,
/// never a secret), volumes and mounts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodCredentials {
    /// Environment variables of the worker container.
    pub env: Vec<EnvVar>,
    /// Volumes of the pod.
    pub volumes: Vec<Volume>,
    /// Mounts of the worker container.
    pub mounts: Vec<VolumeMount>,
    /// A hash of the credentials' content, for the pod template (rotation rolls).
    pub hash: Option<String>,
    /// The bootstrap servers, where they are not the operator's default for workers (a
    /// named connection's).
    pub bootstrap_servers: Option<String>,
}

pub(super) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

pub(super) fn secret_volume(volume: &str, secret: &str, dir: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                // Readable by the worker's user only.
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: volume.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        },
    )
}

/// [`secret_volume`] with only `keys` of the Secret mounted (each as a file of its name).
pub(super) fn secret_volume_items(
    volume: &str,
    secret: &str,
    dir: &str,
    keys: &[&str],
) -> (Volume, VolumeMount) {
    let (mut v, m) = secret_volume(volume, secret, dir);
    if let Some(s) = v.secret.as_mut() {
        s.items = Some(
            keys.iter()
                .map(|k| KeyToPath {
                    key: (*k).into(),
                    path: (*k).into(),
                    ..Default::default()
                })
                .collect(),
        );
    }
    (v, m)
}

/// The worker's settings for a SASL password Secret mounted at `dir` (its user name in a
/// `username` key, or else in a `sasl.jaas.config` line), and the keys to mount.
pub(super) fn sasl_files(
    dir: &str,
    protocol: &str,
    mechanism: SaslMechanism,
    username_key: bool,
) -> (Vec<EnvVar>, Vec<&'static str>) {
    let mut out = vec![
        env("WEIR_KAFKA_SECURITY_PROTOCOL", protocol),
        env("WEIR_KAFKA_SASL_MECHANISM", mechanism.as_kafka()),
        env("WEIR_KAFKA_SASL_PASSWORD_FILE", format!("{dir}/password")),
    ];
    if username_key {
        out.push(env(
            "WEIR_KAFKA_SASL_USERNAME_FILE",
            format!("{dir}/username"),
        ));
        (out, vec!["username", "password"])
    } else {
        out.push(env(
            "WEIR_KAFKA_SASL_JAAS_CONFIG_FILE",
            format!("{dir}/sasl.jaas.config"),
        ));
        (out, vec!["sasl.jaas.config", "password"])
    }
}

/// The worker pods' Kafka identity: `own` is the operator's Secret for the Transform
/// (password, CA), `provided` the Secret the Transform names with its layout.
pub fn pod_credentials(
    tf: &Transform,
    identity: &WorkerIdentity,
    own: Option<&Secret>,
    provided: Option<(&Secret, &ProvidedLayout)>,
) -> PodCredentials {
    let mut out = PodCredentials::default();
    if identity.mode == PrincipalMode::None {
        return out;
    }
    let own_name = secret_name(tf);
    let (v, m) = secret_volume("kafka-credentials", &own_name, CREDENTIALS_DIR);
    out.volumes.push(v);
    out.mounts.push(m);
    let sasl_protocol = if identity.tls {
        "SASL_SSL"
    } else {
        "SASL_PLAINTEXT"
    };
    if identity.ca_pem.is_some() {
        out.env.push(env(
            "WEIR_KAFKA_TLS_CA_FILE",
            format!("{CREDENTIALS_DIR}/ca.crt"),
        ));
    }
    let mut hashed: BTreeMap<String, Option<BTreeMap<String, ByteString>>> = BTreeMap::new();
    hashed.insert(own_name, own.and_then(|s| s.data.clone()));
    match (identity.mode, provided) {
        (PrincipalMode::Managed, _) => {
            let names = super::build::names(tf, 0);
            out.env.extend([
                env("WEIR_KAFKA_SECURITY_PROTOCOL", sasl_protocol),
                env("WEIR_KAFKA_SASL_MECHANISM", identity.mechanism.as_kafka()),
                env("WEIR_KAFKA_SASL_USERNAME", names.principal_user()),
                env(
                    "WEIR_KAFKA_SASL_PASSWORD_FILE",
                    format!("{CREDENTIALS_DIR}/password"),
                ),
            ]);
        }
        (PrincipalMode::Provided, Some((secret, layout))) => {
            let name = secret.metadata.name.clone().unwrap_or_default();
            let keys: Vec<&str> = match layout {
                ProvidedLayout::Sasl { username_key, .. } => {
                    let mechanism = tf
                        .spec
                        .kafka_credentials
                        .as_ref()
                        .and_then(|c| c.mechanism)
                        .unwrap_or(SaslMechanism::ScramSha512);
                    let (vars, keys) =
                        sasl_files(PROVIDED_DIR, sasl_protocol, mechanism, *username_key);
                    out.env.extend(vars);
                    keys
                }
                ProvidedLayout::Tls { cert, key } => {
                    out.env.extend([
                        env(
                            "WEIR_KAFKA_SECURITY_PROTOCOL",
                            if identity.tls { "SSL" } else { "PLAINTEXT" },
                        ),
                        env("WEIR_KAFKA_TLS_CERT_FILE", format!("{PROVIDED_DIR}/{cert}")),
                        env("WEIR_KAFKA_TLS_KEY_FILE", format!("{PROVIDED_DIR}/{key}")),
                    ]);
                    vec![*cert, *key]
                }
            };
            // Only the keys the worker reads are mounted.
            let (v, m) = secret_volume_items("kafka-user", &name, PROVIDED_DIR, &keys);
            out.volumes.push(v);
            out.mounts.push(m);
            hashed.insert(name, secret.data.clone());
        }
        (PrincipalMode::Provided | PrincipalMode::None, _) => {}
    }
    out.hash = Some(super::build::hash_of(&hashed));
    out
}

/// The operator's Secret for a Transform's workers: `password` (managed mode) and `ca.crt`
/// (when the operator trusts a CA of its own).
pub fn credentials_secret(
    tf: &Transform,
    identity: &WorkerIdentity,
    password: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(p) = password {
        data.insert("password".to_owned(), ByteString(p.as_bytes().to_vec()));
    }
    if let Some(ca) = &identity.ca_pem {
        data.insert("ca.crt".to_owned(), ByteString(ca.as_bytes().to_vec()));
    }
    Secret {
        metadata: super::build::meta(tf, secret_name(tf)),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Gives the workers their Kafka identity: in managed mode the SCRAM credential (kept in the
/// Transform's Secret) and exactly the ACLs `topics` need; in provided mode the named
/// Secret, checked to grant every ACL the plan needs. `Ok(Err(state))` is a problem the
/// user must fix; nothing is deployed until then.
pub async fn ensure(
    tf: &Transform,
    ctx: &Ctx,
    epoch: i64,
    topics: &PlanTopics,
) -> Result<Result<PodCredentials, State>> {
    use PrincipalMode;
    let identity = &ctx.workers.identity;
    let ns = tf.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let names = super::build::names(tf, epoch);
    let worker_prefix = format!("{}-", super::build::worker_name(tf));
    match identity.mode {
        PrincipalMode::None => Ok(Ok(PodCredentials::default())),
        PrincipalMode::Managed => {
            let user = names.principal_user();
            let principal_name = managed_principal(&names);
            let mechanism = scram(identity.mechanism).ok_or_else(|| {
                Error::Internal("managed credentials need a SCRAM mechanism".into())
            })?;
            let live = secrets.get_opt(&secret_name(tf)).await?;
            let annotation = |key: &str| {
                live.as_ref()
                    .and_then(|s| s.metadata.annotations.as_ref()?.get(key))
                    .cloned()
            };
            let now = std::time::SystemTime::now();
            let set_at = annotation(CREDENTIAL_SET_AT);
            let rotate = rotation_due(set_at.as_deref(), now, identity.rotate_after);
            let password = live
                .as_ref()
                .and_then(|s| s.data.as_ref()?.get("password"))
                .map(|p| String::from_utf8_lossy(&p.0).into_owned())
                .filter(|p| !p.is_empty() && !rotate)
                .unwrap_or_else(new_password);
            // The credential is set on Kafka first, then recorded: a Secret's password
            // that Kafka may not have yet (new, or changed by a person to rotate it) is set
            // again; its hash in an annotation says which password Kafka has.
            let applied = super::build::hash_of(&(&user, &password, identity.mechanism.as_kafka()));
            let fresh = annotation(APPLIED_CREDENTIAL).as_deref() != Some(applied.as_str());
            if fresh || !ctx.kafka.has_scram(&user, mechanism).await? {
                ctx.kafka.set_scram(&user, mechanism, &password).await?;
                info!(
                    user,
                    rotated = rotate,
                    "set the Transform's SCRAM credential"
                );
            }
            let set_at = match set_at {
                Some(at) if !fresh => at,
                _ => humantime::format_rfc3339_seconds(now).to_string(),
            };
            let mut secret = credentials_secret(tf, identity, Some(&password));
            let annotations = secret
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert(APPLIED_CREDENTIAL.into(), applied);
            annotations.insert(CREDENTIAL_SET_AT.into(), set_at);
            let secret = super::ensure(&secrets, secret, live).await?;
            let desired = desired_acls(&principal_name, &names, &worker_prefix, topics);
            apply_acls(ctx, &principal_name, &desired).await?;
            Ok(Ok(pod_credentials(tf, identity, Some(&secret), None)))
        }
        PrincipalMode::Provided => {
            let problem = |why: String| Ok(Err(State::no(Reason::CredentialsInvalid, why)));
            let Some(named) = &tf.spec.kafka_credentials else {
                return problem(
                    "spec.kafkaCredentials: this installation runs each Transform with Kafka \
                     credentials of its own: name a Secret of the namespace that holds them"
                        .into(),
                );
            };
            let Some(secret) = secrets.get_opt(&named.secret_name).await? else {
                return problem(format!(
                    "spec.kafkaCredentials.secretName: Secret {ns}/{} does not exist",
                    named.secret_name
                ));
            };
            if !weir_crds::connection::marked_for_weir(secret.metadata.labels.as_ref()) {
                return problem(format!(
                    "spec.kafkaCredentials.secretName: Secret {ns}/{} is not marked for \
                     Weir's use: label it {}=true",
                    named.secret_name,
                    weir_crds::connection::CREDENTIALS_LABEL
                ));
            }
            let layout = match provided_layout(&secret) {
                Ok(l) => l,
                Err(why) => {
                    return problem(format!(
                        "spec.kafkaCredentials.secretName: Secret {ns}/{}: {why}",
                        named.secret_name
                    ));
                }
            };
            let principal_name = match (&layout, &named.principal) {
                (_, Some(p)) => p.clone(),
                (ProvidedLayout::Sasl { username, .. }, None) => {
                    format!("User:{username}")
                }
                (ProvidedLayout::Tls { .. }, None) => {
                    return problem(
                        "spec.kafkaCredentials.principal: name the principal the brokers \
                         see for this client certificate (such as User:CN=app), so that Weir \
                         can check its ACLs"
                            .into(),
                    );
                }
            };
            let desired = desired_acls(&principal_name, &names, &worker_prefix, topics);
            let mut live = ctx.kafka.acls(&principal_name).await?;
            live.extend(ctx.kafka.acls("User:*").await?.into_iter().map(|mut a| {
                a.principal = principal_name.clone();
                a
            }));
            let missing = missing(&live, &desired);
            if !missing.is_empty() {
                return Ok(Err(State::no(
                    Reason::AclMissing,
                    format!(
                        "{principal_name} (Secret {ns}/{}) lacks ACLs the plan needs, which an \
                         administrator must grant: {}",
                        named.secret_name,
                        missing.join("; ")
                    ),
                )));
            }
            let own = super::ensure_named(&secrets, credentials_secret(tf, identity, None)).await?;
            Ok(Ok(pod_credentials(
                tf,
                identity,
                Some(&own),
                Some((&secret, &layout)),
            )))
        }
    }
}

/// Makes `principal`'s ACLs on Kafka exactly `desired`.
pub async fn apply_acls(ctx: &Ctx, principal: &str, desired: &BTreeSet<Acl>) -> Result<()> {
    let live = ctx.kafka.acls(principal).await?;
    let diff = AclDiff::between(&live, desired);
    if !diff.is_empty() {
        info!(
            principal,
            created = diff.create.len(),
            deleted = diff.delete.len(),
            "ACLs changed"
        );
        ctx.kafka.create_acls(diff.create).await?;
        ctx.kafka.delete_acls(diff.delete).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> TransformNames {
        TransformNames::new("team-a", "copy", 0)
    }

    fn topics() -> PlanTopics {
        PlanTopics {
            inputs: vec!["team-b.pay".into(), "team-a.src".into()],
            output: "team-a.out".into(),
            internal: vec![
                "team-a.copy.dead-letters".into(),
                "team-a.copy.changelog".into(),
            ],
        }
    }

    #[test]
    fn a_plan_gets_exactly_the_acls_it_needs() {
        let p = managed_principal(&names());
        assert_eq!(p, "User:weir.team-a.copy");
        let acls = desired_acls(&p, &names(), "copy-worker-", &topics());
        let shown: Vec<String> = acls.iter().map(ToString::to_string).collect();
        for want in [
            "READ on topic team-b.pay for User:weir.team-a.copy",
            "DESCRIBE on topic team-b.pay for User:weir.team-a.copy",
            "WRITE on topic team-a.out for User:weir.team-a.copy",
            "WRITE on topic team-a.copy.changelog for User:weir.team-a.copy",
            "READ on group weir.team-a.copy for User:weir.team-a.copy",
            "READ on group weir.team-a.copy.restore for User:weir.team-a.copy",
            "WRITE on transactional id weir.team-a.copy.copy-worker- (prefix) for User:weir.team-a.copy",
        ] {
            assert!(
                shown.iter().any(|s| s == want),
                "{want} missing from {shown:#?}"
            );
        }
        // Never WRITE on an input, never READ on the output.
        assert!(
            !shown
                .iter()
                .any(|s| s.starts_with("WRITE on topic team-b.pay"))
        );
        assert!(
            !shown
                .iter()
                .any(|s| s.starts_with("READ on topic team-a.out"))
        );
        // Nothing is a wildcard and only the transactional ids go by prefix.
        assert!(acls.iter().all(|a| a.name != "*"));
        assert_eq!(
            acls.iter()
                .filter(|a| a.pattern == Pattern::Prefixed)
                .count(),
            2
        );
        assert_eq!(acls.len(), 4 + 2 + 6 + 2 + 2);
    }

    #[test]
    fn stopping_the_reader_keeps_only_its_own_topics() {
        let p = managed_principal(&names());
        let live = desired_acls(&p, &names(), "copy-worker-", &topics());
        let kept = without_inputs(&live, &names());
        assert!(
            kept.iter()
                .all(|a| a.name != "team-b.pay" && a.name != "team-a.src")
        );
        assert!(kept.iter().any(|a| a.name == "team-a.out"));
        assert!(kept.iter().any(|a| a.name == "team-a.copy.changelog"));
        assert_eq!(live.len() - kept.len(), 4);
    }

    #[test]
    fn missing_acls_are_named() {
        let p = "User:app".to_owned();
        let desired = desired_acls(&p, &names(), "copy-worker-", &topics());
        let mut live = desired.clone();
        live.retain(|a| !(a.name == "team-b.pay" && a.operation == Operation::Read));
        // DESCRIBE is implied by READ elsewhere, but not here: both are named.
        let m = missing(&live, &desired);
        assert_eq!(m, vec!["READ on topic team-b.pay for User:app".to_owned()]);
    }

    #[test]
    fn provided_secrets_are_read_in_strimzi_and_generic_layouts() {
        let secret = |keys: &[(&str, &str)]| Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let strimzi = secret(&[
            ("password", "p"),
            (
                "sasl.jaas.config",
                r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="team-a-app" password="p";"#,
            ),
        ]);
        assert_eq!(
            provided_layout(&strimzi),
            Ok(ProvidedLayout::Sasl {
                username: "team-a-app".into(),
                username_key: false
            })
        );
        let tls = secret(&[("user.crt", "c"), ("user.key", "k"), ("ca.crt", "ca")]);
        assert_eq!(
            provided_layout(&tls),
            Ok(ProvidedLayout::Tls {
                cert: "user.crt",
                key: "user.key"
            })
        );
        assert!(provided_layout(&secret(&[("token", "x")])).is_err());
    }

    #[test]
    fn a_password_is_rotated_once_it_is_older_than_the_limit() {
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let at =
            |ago: std::time::Duration| humantime::format_rfc3339_seconds(now - ago).to_string();
        assert!(rotation_due(Some(&at(day * 31)), now, Some(day * 30)));
        assert!(!rotation_due(Some(&at(day * 29)), now, Some(day * 30)));
        assert!(
            !rotation_due(Some(&at(day * 365)), now, None),
            "no limit, no rotation"
        );
        assert!(
            !rotation_due(None, now, Some(day)),
            "an unknown age is recorded, not rotated"
        );
        assert!(!rotation_due(Some("yesterday"), now, Some(day)));
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
