//! Which Kafka cluster a DataStream lives on: the operator's default, or a named
//! connection whose SASL and TLS credentials come from Secrets in the DataStream's namespace.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rdkafka::ClientConfig;
pub use weir_crds::connection::redact;
use weir_crds::connection::{KafkaConnection, SaslMechanism};

/// Why a named connection cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A referenced Secret does not exist.
    #[error("spec.kafka: Secret {namespace}/{name} does not exist")]
    MissingSecret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// A referenced Secret is not marked for Weir's use.
    #[error(
        "spec.kafka: Secret {namespace}/{name} is not marked for Weir's use: label it \
         {label}=true if it holds Kafka credentials for Weir",
        label = weir_crds::connection::CREDENTIALS_LABEL
    )]
    NotMarked {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// A referenced Secret lacks a key.
    #[error("spec.kafka: Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: &'static str,
    },
    /// A field the connection needs is not set.
    #[error("{0} is required")]
    MissingField(&'static str),
    /// The apiserver could not be asked for the Secret.
    #[error("reading a Secret: {0}")]
    Kube(#[from] kube::Error),
}

/// The librdkafka settings for a named connection, as `key -> value`.
pub async fn settings(
    client: &kube::Client,
    namespace: &str,
    conn: &KafkaConnection,
) -> Result<BTreeMap<String, String>, ConnectionError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = BTreeMap::new();
    out.insert(
        "bootstrap.servers".to_owned(),
        conn.bootstrap_servers.clone(),
    );
    let protocol = match (&conn.sasl, &conn.tls) {
        (Some(_), Some(_)) => "SASL_SSL",
        (Some(_), None) => "SASL_PLAINTEXT",
        (None, Some(_)) => "SSL",
        (None, None) => "PLAINTEXT",
    };
    out.insert("security.protocol".to_owned(), protocol.to_owned());
    if let Some(sasl) = &conn.sasl {
        let secret = read(&secrets, namespace, &sasl.secret_name).await?;
        out.insert(
            "sasl.mechanism".to_owned(),
            sasl.mechanism.as_kafka().to_owned(),
        );
        if sasl.mechanism == SaslMechanism::OAuthBearer {
            let endpoint = sasl
                .token_endpoint
                .clone()
                .ok_or(ConnectionError::MissingField(
                    "spec.kafka.sasl.tokenEndpoint",
                ))?;
            out.insert("sasl.oauthbearer.method".to_owned(), "oidc".to_owned());
            out.insert("sasl.oauthbearer.token.endpoint.url".to_owned(), endpoint);
            out.insert(
                "sasl.oauthbearer.client.id".to_owned(),
                key(&secret, namespace, "clientId")?,
            );
            out.insert(
                "sasl.oauthbearer.client.secret".to_owned(),
                key(&secret, namespace, "clientSecret")?,
            );
            if let Some(scope) = &sasl.scope {
                out.insert("sasl.oauthbearer.scope".to_owned(), scope.clone());
            }
        } else {
            // A generic Secret, or a Strimzi KafkaUser's: `password` and a JAAS line.
            let jaas = optional_key(&secret, "sasl.jaas.config")
                .map(|j| weir_crds::connection::jaas_credentials(&j))
                .unwrap_or_default();
            let username = match optional_key(&secret, "username").or(jaas.0) {
                Some(u) => u,
                None => key(&secret, namespace, "username")?,
            };
            let password = match optional_key(&secret, "password").or(jaas.1) {
                Some(p) => p,
                None => key(&secret, namespace, "password")?,
            };
            out.insert("sasl.username".to_owned(), username);
            out.insert("sasl.password".to_owned(), password);
        }
    }
    if let Some(tls) = &conn.tls {
        out.insert(
            "ssl.endpoint.identification.algorithm".to_owned(),
            "https".to_owned(),
        );
        if let Some(ca) = &tls.ca_secret_name {
            let secret = read(&secrets, namespace, ca).await?;
            out.insert("ssl.ca.pem".to_owned(), key(&secret, namespace, "ca.crt")?);
        }
        if let Some(client_cert) = &tls.client_secret_name {
            let secret = read(&secrets, namespace, client_cert).await?;
            // A kubernetes.io/tls Secret, or a Strimzi KafkaUser's.
            let (cert, private) = if optional_key(&secret, "user.crt").is_some() {
                ("user.crt", "user.key")
            } else {
                ("tls.crt", "tls.key")
            };
            out.insert(
                "ssl.certificate.pem".to_owned(),
                key(&secret, namespace, cert)?,
            );
            out.insert("ssl.key.pem".to_owned(), key(&secret, namespace, private)?);
        }
    }
    Ok(out)
}

/// A client config from settings.
pub fn client_config(settings: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

/// A cache key for settings (credentials included, so a rotated password makes a new client).
pub fn fingerprint(settings: &BTreeMap<String, String>) -> u64 {
    let mut h = DefaultHasher::new();
    settings.hash(&mut h);
    h.finish()
}

/// Reads a Secret a connection names, refusing one not marked for Weir's use.
pub async fn read(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<Secret, ConnectionError> {
    let secret = secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| ConnectionError::MissingSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    if !weir_crds::connection::marked_for_weir(secret.metadata.labels.as_ref()) {
        return Err(ConnectionError::NotMarked {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(secret)
}

/// Whether every server of `bootstrap_servers` matches one of `allowed`: `host:port`
/// entries, where the host may start with `*.` (any subdomain) and the port may be `*`. An
/// empty list allows any server.
pub fn bootstrap_allowed(bootstrap_servers: &str, allowed: &[String]) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let matches = |server: &str, pattern: &str| {
        let (Some((host, port)), Some((want_host, want_port))) =
            (server.rsplit_once(':'), pattern.rsplit_once(':'))
        else {
            return false;
        };
        let host_ok = match want_host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => host.eq_ignore_ascii_case(want_host),
        };
        host_ok && (want_port == "*" || port == want_port)
    };
    for server in bootstrap_servers.split(',').map(str::trim) {
        if !allowed.iter().any(|p| matches(server, p)) {
            return Err(format!(
                "{server:?} is not a Kafka server this operator lets DataStreams use (allowed: \
                 {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// The text of `key` in `secret`, if it holds it.
pub(crate) fn optional_key(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        })
}

fn key(secret: &Secret, namespace: &str, key: &'static str) -> Result<String, ConnectionError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    optional_key(secret, key).ok_or(ConnectionError::MissingKey {
        namespace: namespace.to_owned(),
        name,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_reach_a_message() {
        let settings: BTreeMap<String, String> = [
            ("bootstrap.servers".to_owned(), "k:9092".to_owned()),
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            (
                "ssl.key.pem".to_owned(),
                "-----BEGIN KEY-----abc".to_owned(),
            ),
        ]
        .into();
        // librdkafka's own refusal quotes the value it refused (here the key, in a build
        // without OpenSSL; in others an invalid key).
        let error = client_config(&settings)
            .create::<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let redacted = redact(&error, &settings);
        assert!(
            !redacted.contains("BEGIN KEY") && !redacted.contains("hunter2"),
            "{redacted}"
        );
        assert_eq!(
            redact("bad key -----BEGIN KEY-----abc", &settings),
            "bad key <redacted>"
        );
    }

    #[test]
    fn bootstrap_servers_are_checked_against_the_operators_list() {
        let allowed = vec!["*.kafka.svc:9093".to_owned(), "10.0.0.7:*".to_owned()];
        assert!(bootstrap_allowed("b-1.kafka.svc:9093,b-2.kafka.svc:9093", &allowed).is_ok());
        assert!(bootstrap_allowed("10.0.0.7:19092", &allowed).is_ok());
        let e = bootstrap_allowed("b-1.kafka.svc:9093,evil.example.com:9093", &allowed)
            .expect_err("refused");
        assert!(
            e.starts_with("\"evil.example.com:9093\" is not a Kafka server"),
            "{e}"
        );
        // `*.` needs a subdomain: the bare suffix and look-alikes are refused.
        assert!(bootstrap_allowed("kafka.svc:9093", &allowed).is_err());
        assert!(bootstrap_allowed("evilkafka.svc:9093", &allowed).is_err());
        assert!(bootstrap_allowed("b-1.kafka.svc:9092", &allowed).is_err());
        assert!(bootstrap_allowed("anything:1", &[]).is_ok());
    }

    #[test]
    fn the_fingerprint_changes_with_any_setting() {
        let mut a = BTreeMap::new();
        a.insert("bootstrap.servers".to_owned(), "k:9092".to_owned());
        a.insert("sasl.password".to_owned(), "one".to_owned());
        let mut b = a.clone();
        b.insert("sasl.password".to_owned(), "two".to_owned());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
