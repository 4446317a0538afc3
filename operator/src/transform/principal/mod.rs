//! A Transform's own Kafka principal: which ACLs its plan needs (a pure function of the
//! plan's topics and names), how its workers authenticate, and making Kafka and the
//! credentials Secret match.
//!
//! The principal never gets more than the plan needs, and nothing the grants do not allow:
//! `READ`/`DESCRIBE` on each input topic (only those of DataStreams it may read, so a
//! revoked grant takes the ACL with it), `WRITE`/`DESCRIBE` on its output, `READ`/`WRITE`/
//! `DESCRIBE` on its internal topics, `READ` on its consumer groups, and `WRITE`/`DESCRIBE`
//! on its transactional ids (by prefix). Every name is literal but the transactional ids,
//! and every one lies within the Transform's own namespace's names except the inputs.//!
//! [`acls`] holds the pure ACL builder; [`credentials`] the Secret layouts, the workers'
//! credential files and environment, and password rotation; this module the modes and
//! making Kafka and the Secret match.

pub mod acls;
pub mod credentials;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use weir_crds::Transform;
use weir_crds::connection::SaslMechanism;
use weir_crds::names::TransformNames;

use kube::ResourceExt;
use kube::api::Api;
use tracing::info;

use super::Ctx;
use super::status::{Reason, State};
use crate::kafka_admin::acl::{Acl, AclDiff, ScramMechanism};
use crate::{Error, Result};

pub use acls::{PlanTopics, desired_acls, missing, without_inputs};
pub use credentials::{
    PodCredentials, ProvidedLayout, credentials_secret, new_password, pod_credentials,
    provided_layout, rotation_due, sasl_layout, tls_layout,
};

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
