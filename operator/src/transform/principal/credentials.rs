//! The workers' Kafka credentials: the Secret layouts platform teams already have, the
//! files and environment a worker pod gets, and password rotation.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EnvVar, KeyToPath, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use weir_crds::Transform;

use super::*;
use crate::transform::build;

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

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
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
pub(crate) fn secret_volume_items(
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
pub(crate) fn sasl_files(
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
            let names = build::names(tf, 0);
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
    out.hash = Some(build::hash_of(&hashed));
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
        metadata: build::meta(tf, secret_name(tf)),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
