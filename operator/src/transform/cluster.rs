//! Which Kafka cluster a Transform runs on: the operator's, or the named connection of its
//! `spec.kafka`. One Transform reads and writes one cluster: every input and the output
//! must declare the same place (checked here on the specs, and by cluster id against each
//! DataStream's status in [`super::streams::usable_topic`]). On a named connection the
//! workers connect with that connection's credentials, mounted from its Secrets (in the
//! Transform's namespace) as files, and run as its principal; Weir manages no principal or
//! ACLs there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use weir_crds::compile::id_of;
use weir_crds::connection::{KafkaConnection, SaslMechanism};
use weir_crds::{DataStream, Transform};

use super::principal::credentials::{env, sasl_files, secret_volume_items};
use super::principal::{PodCredentials, ProvidedLayout};

/// Where a named connection's SASL Secret is mounted in the worker pods.
pub const SASL_DIR: &str = "/etc/weir-kafka-sasl";
/// Where a named connection's CA Secret is mounted.
pub const CA_DIR: &str = "/etc/weir-kafka-ca";
/// Where a named connection's client certificate Secret is mounted.
pub const CERT_DIR: &str = "/etc/weir-kafka-cert";

fn place(conn: Option<&KafkaConnection>) -> String {
    match conn {
        Some(c) => format!("named Kafka connection {:?} (spec.kafka)", c.name),
        None => "the operator's Kafka cluster".to_owned(),
    }
}

/// Whether every DataStream of `streams` (inputs and output) declares the cluster the
/// Transform runs on, or a message naming the first that does not.
pub fn one_cluster(tf: &Transform, streams: &[&DataStream]) -> Result<(), String> {
    let own = tf.spec.kafka.as_ref();
    for ds in streams {
        let theirs = ds.spec.kafka.as_ref();
        if own.is_some() != theirs.is_some() {
            let fix = if own.is_none() {
                "name that cluster in the Transform's spec.kafka to read it"
            } else {
                "remove spec.kafka from the Transform, or read DataStreams of that connection"
            };
            return Err(format!(
                "DataStream {} lives on {}, and this Transform runs on {}: a Transform reads \
                 and writes one Kafka cluster; {fix}",
                id_of(&ds.metadata),
                place(theirs),
                place(own),
            ));
        }
    }
    Ok(())
}

/// Reads the Secrets a Transform's connection names (each must be marked for Weir) and
/// gives the workers' settings for them; `Ok(Err(message))` is a problem the user must fix.
pub async fn pod_credentials(
    client: &kube::Client,
    namespace: &str,
    conn: &KafkaConnection,
) -> Result<Result<PodCredentials, String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    for name in conn.secret_names() {
        match crate::connection::read(&api, namespace, name).await {
            Ok(s) => {
                secrets.insert(name.to_owned(), s);
            }
            Err(crate::connection::ConnectionError::Kube(e)) => return Err(e),
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
    Ok(connection_credentials(conn, &secrets))
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// The worker pods' settings for a named connection, given its Secrets by name: the
/// servers, the protocol, and each Secret's keys the worker reads mounted as files (names
/// and paths in the environment, never a secret).
pub fn connection_credentials(
    conn: &KafkaConnection,
    secrets: &BTreeMap<String, Secret>,
) -> Result<PodCredentials, String> {
    let get = |name: &str| {
        secrets
            .get(name)
            .ok_or_else(|| format!("spec.kafka: Secret {name} was not read"))
    };
    let mut out = PodCredentials {
        bootstrap_servers: Some(conn.bootstrap_servers.clone()),
        ..Default::default()
    };
    let protocol = match (&conn.sasl, &conn.tls) {
        (Some(_), Some(_)) => "SASL_SSL",
        (Some(_), None) => "SASL_PLAINTEXT",
        (None, Some(_)) => "SSL",
        (None, None) => "PLAINTEXT",
    };
    if let Some(sasl) = &conn.sasl {
        let secret = get(&sasl.secret_name)?;
        let keys = if sasl.mechanism == SaslMechanism::OAuthBearer {
            let endpoint = sasl
                .token_endpoint
                .clone()
                .ok_or("spec.kafka.sasl.tokenEndpoint is required for OAUTHBEARER")?;
            let client_id = text(secret, "clientId").ok_or_else(|| {
                format!(
                    "spec.kafka: Secret {} has no key \"clientId\"",
                    sasl.secret_name
                )
            })?;
            if text(secret, "clientSecret").is_none() {
                return Err(format!(
                    "spec.kafka: Secret {} has no key \"clientSecret\"",
                    sasl.secret_name
                ));
            }
            out.env.extend([
                env("WEIR_KAFKA_SECURITY_PROTOCOL", protocol),
                env("WEIR_KAFKA_SASL_MECHANISM", sasl.mechanism.as_kafka()),
                env("WEIR_KAFKA_OAUTH_TOKEN_ENDPOINT", endpoint),
                env("WEIR_KAFKA_OAUTH_CLIENT_ID", client_id),
                env(
                    "WEIR_KAFKA_OAUTH_CLIENT_SECRET_FILE",
                    format!("{SASL_DIR}/clientSecret"),
                ),
            ]);
            if let Some(scope) = &sasl.scope {
                out.env.push(env("WEIR_KAFKA_OAUTH_SCOPE", scope));
            }
            vec!["clientSecret"]
        } else {
            let Some(ProvidedLayout::Sasl { username_key, .. }) =
                super::principal::sasl_layout(secret)
            else {
                return Err(format!(
                    "spec.kafka: Secret {} holds no `password` with `username` or \
                     `sasl.jaas.config`",
                    sasl.secret_name
                ));
            };
            let (vars, keys) = sasl_files(SASL_DIR, protocol, sasl.mechanism, username_key);
            out.env.extend(vars);
            keys
        };
        let (v, m) = secret_volume_items("kafka-sasl", &sasl.secret_name, SASL_DIR, &keys);
        out.volumes.push(v);
        out.mounts.push(m);
    } else {
        out.env.push(env("WEIR_KAFKA_SECURITY_PROTOCOL", protocol));
    }
    if let Some(tls) = &conn.tls {
        if let Some(ca) = &tls.ca_secret_name {
            if text(get(ca)?, "ca.crt").is_none() {
                return Err(format!("spec.kafka: Secret {ca} has no key \"ca.crt\""));
            }
            let (v, m) = secret_volume_items("kafka-ca", ca, CA_DIR, &["ca.crt"]);
            out.volumes.push(v);
            out.mounts.push(m);
            out.env
                .push(env("WEIR_KAFKA_TLS_CA_FILE", format!("{CA_DIR}/ca.crt")));
        }
        if let Some(client) = &tls.client_secret_name {
            let (cert, key) = super::principal::tls_layout(get(client)?).ok_or_else(|| {
                format!(
                    "spec.kafka: Secret {client} holds neither `user.crt` and `user.key` nor \
                     `tls.crt` and `tls.key`"
                )
            })?;
            let (v, m) = secret_volume_items("kafka-cert", client, CERT_DIR, &[cert, key]);
            out.volumes.push(v);
            out.mounts.push(m);
            out.env.extend([
                env("WEIR_KAFKA_TLS_CERT_FILE", format!("{CERT_DIR}/{cert}")),
                env("WEIR_KAFKA_TLS_KEY_FILE", format!("{CERT_DIR}/{key}")),
            ]);
        }
    }
    // A changed Secret (a rotated password or certificate) rolls the workers.
    let hashed: BTreeMap<&String, Option<&BTreeMap<String, k8s_openapi::ByteString>>> =
        secrets.iter().map(|(n, s)| (n, s.data.as_ref())).collect();
    out.hash = Some(super::build::hash_of(&(conn, hashed)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(keys: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn conn(yaml: &str) -> KafkaConnection {
        serde_yaml::from_str(yaml).expect("connection")
    }

    fn ds(name: &str, kafka: Option<&str>) -> DataStream {
        let mut d: DataStream = serde_yaml::from_str(&format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: DataStream
metadata: {{ name: {name}, namespace: team-a }}
spec:
  description: d
  owner: o@example.com
  schema: {{ fields: [ {{ name: a, type: string }} ] }}
"#
        ))
        .expect("ds");
        d.spec.kafka = kafka.map(conn);
        d
    }

    fn tf(kafka: Option<&str>) -> Transform {
        let mut t: Transform = serde_yaml::from_str(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: { name: copy, namespace: team-a }
spec:
  description: d
  owner: o@example.com
  sql: SELECT a FROM src
  output: { name: out }
"#,
        )
        .expect("tf");
        t.spec.kafka = kafka.map(conn);
        t
    }

    const TEAM: &str = "{ name: team, bootstrapServers: \"k.example:9093\" }";

    fn env_of(creds: &PodCredentials) -> BTreeMap<&str, &str> {
        creds
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn one_transform_reads_and_writes_one_cluster() {
        let on_team = ds("src", Some(TEAM));
        let on_default = ds("other", None);
        assert!(one_cluster(&tf(Some(TEAM)), &[&on_team]).is_ok());
        assert!(one_cluster(&tf(None), &[&on_default]).is_ok());
        let why = one_cluster(&tf(None), &[&on_default, &on_team]).unwrap_err();
        assert!(
            why.starts_with(
                "DataStream team-a/src lives on named Kafka connection \"team\" (spec.kafka), \
                 and this Transform runs on the operator's Kafka cluster"
            ),
            "{why}"
        );
        let why = one_cluster(&tf(Some(TEAM)), &[&on_team, &on_default]).unwrap_err();
        assert!(
            why.contains("DataStream team-a/other lives on the operator's Kafka cluster"),
            "{why}"
        );
    }

    #[test]
    fn a_connections_secrets_are_mounted_as_files_and_never_put_in_the_environment() {
        let c = conn(
            r#"
name: team
bootstrapServers: "k.example:9093"
sasl: { mechanism: SCRAM-SHA-512, secretName: app }
tls: { caSecretName: ca }
"#,
        );
        let strimzi = secret(&[
            ("password", "s3cret"),
            (
                "sasl.jaas.config",
                r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="app" password="s3cret";"#,
            ),
        ]);
        let secrets: BTreeMap<String, Secret> = [
            ("app".to_owned(), strimzi),
            ("ca".to_owned(), secret(&[("ca.crt", "PEM")])),
        ]
        .into();
        let creds = connection_credentials(&c, &secrets).expect("credentials");
        assert_eq!(creds.bootstrap_servers.as_deref(), Some("k.example:9093"));
        let vars = env_of(&creds);
        assert_eq!(vars["WEIR_KAFKA_SECURITY_PROTOCOL"], "SASL_SSL");
        assert_eq!(vars["WEIR_KAFKA_SASL_MECHANISM"], "SCRAM-SHA-512");
        assert_eq!(
            vars["WEIR_KAFKA_SASL_PASSWORD_FILE"],
            "/etc/weir-kafka-sasl/password"
        );
        assert_eq!(
            vars["WEIR_KAFKA_SASL_JAAS_CONFIG_FILE"],
            "/etc/weir-kafka-sasl/sasl.jaas.config"
        );
        assert_eq!(vars["WEIR_KAFKA_TLS_CA_FILE"], "/etc/weir-kafka-ca/ca.crt");
        assert!(vars.values().all(|v| !v.contains("s3cret")));
        assert_eq!(creds.volumes.len(), 2);
        assert_eq!(creds.mounts.len(), 2);
        // A rotated password rolls the workers.
        let mut rotated = secrets.clone();
        rotated.insert(
            "app".into(),
            secret(&[("username", "app"), ("password", "new")]),
        );
        let after = connection_credentials(&c, &rotated).expect("credentials");
        assert_ne!(after.hash, creds.hash);
        // A Secret without what the connection needs is named.
        let mut broken = secrets;
        broken.insert("ca".into(), secret(&[("tls.crt", "x")]));
        assert_eq!(
            connection_credentials(&c, &broken).unwrap_err(),
            "spec.kafka: Secret ca has no key \"ca.crt\""
        );
    }

    #[test]
    fn oauth_and_client_certificates_are_mounted_too() {
        let c = conn(
            r#"
name: cloud
bootstrapServers: "k.example:9093"
sasl: { mechanism: OAUTHBEARER, secretName: oidc, tokenEndpoint: "https://idp/token", scope: kafka }
tls: { clientSecretName: user }
"#,
        );
        let secrets: BTreeMap<String, Secret> = [
            (
                "oidc".to_owned(),
                secret(&[("clientId", "weir"), ("clientSecret", "s3cret")]),
            ),
            (
                "user".to_owned(),
                secret(&[("user.crt", "C"), ("user.key", "K"), ("ca.crt", "A")]),
            ),
        ]
        .into();
        let creds = connection_credentials(&c, &secrets).expect("credentials");
        let vars = env_of(&creds);
        assert_eq!(vars["WEIR_KAFKA_OAUTH_CLIENT_ID"], "weir");
        assert_eq!(vars["WEIR_KAFKA_OAUTH_SCOPE"], "kafka");
        assert_eq!(
            vars["WEIR_KAFKA_OAUTH_CLIENT_SECRET_FILE"],
            "/etc/weir-kafka-sasl/clientSecret"
        );
        assert_eq!(
            vars["WEIR_KAFKA_TLS_CERT_FILE"],
            "/etc/weir-kafka-cert/user.crt"
        );
        assert!(vars.values().all(|v| !v.contains("s3cret")));
    }
}
