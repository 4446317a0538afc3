//! Which Kafka cluster a DataStream lives on: the operator's default, or a named
//! connection whose SASL and TLS credentials come from Secrets in the DataStream's namespace.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rdkafka::ClientConfig;
use weir_crds::connection::KafkaConnection;

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
        out.insert(
            "sasl.username".to_owned(),
            key(&secret, namespace, "username")?,
        );
        out.insert(
            "sasl.password".to_owned(),
            key(&secret, namespace, "password")?,
        );
    }
    if let Some(tls) = &conn.tls {
        if let Some(ca) = &tls.ca_secret_name {
            let secret = read(&secrets, namespace, ca).await?;
            out.insert("ssl.ca.pem".to_owned(), key(&secret, namespace, "ca.crt")?);
        }
        if let Some(client_cert) = &tls.client_secret_name {
            let secret = read(&secrets, namespace, client_cert).await?;
            out.insert(
                "ssl.certificate.pem".to_owned(),
                key(&secret, namespace, "tls.crt")?,
            );
            out.insert(
                "ssl.key.pem".to_owned(),
                key(&secret, namespace, "tls.key")?,
            );
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

async fn read(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<Secret, ConnectionError> {
    secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| ConnectionError::MissingSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

fn key(secret: &Secret, namespace: &str, key: &'static str) -> Result<String, ConnectionError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        });
    value.ok_or(ConnectionError::MissingKey {
        namespace: namespace.to_owned(),
        name,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
