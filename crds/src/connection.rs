//! How a resource, and a process, reaches its Kafka cluster: a DataStream's named
//! connection ([`KafkaConnection`], credentials from Secrets the operator reads), and the
//! flags every Weir process connects with ([`ClientAuth`], credentials from mounted files),
//! both turned into librdkafka settings here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The label a Secret must carry, with value `"true"`, for Weir to read it as a
/// connection's credentials: a DataStream cannot name any Secret of its namespace (a
/// ServiceAccount token, another application's password) and have Weir send it to a server.
pub const CREDENTIALS_LABEL: &str = "weir.dev/kafka-credentials";

/// Whether an object's labels mark it for Weir's use as Kafka credentials
/// ([`CREDENTIALS_LABEL`]`: "true"`).
pub fn marked_for_weir(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true")
}

/// A Kafka cluster other than the operator's default, with credentials from Secrets in
/// the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// A name for the connection, shown in status and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The cluster's bootstrap servers, `host:port[,host:port…]`. The operator may restrict
    /// which servers a DataStream may name (`WEIR_ALLOWED_BOOTSTRAP_SERVERS`).
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: String,
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<Sasl>,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

impl KafkaConnection {
    /// The names of the Secrets the connection reads, in its resource's namespace.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let sasl = self.sasl.as_ref().map(|s| s.secret_name.as_str());
        let tls = self.tls.as_ref().into_iter().flat_map(|t| {
            [t.ca_secret_name.as_deref(), t.client_secret_name.as_deref()]
                .into_iter()
                .flatten()
        });
        sasl.into_iter().chain(tls)
    }
}

/// SASL credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sasl {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// A Secret labelled `weir.dev/kafka-credentials: "true"` with keys `username` and
    /// `password`, or a Strimzi KafkaUser Secret (`password` and `sasl.jaas.config`); for
    /// `OAUTHBEARER`, keys `clientId` and `clientSecret`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// `OAUTHBEARER`: the identity provider's token endpoint (client-credentials grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// `OAUTHBEARER`: the scope to ask for, if the provider needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// SASL without `tls` sends the credentials (with `PLAIN`, the password itself) and every
    /// record unencrypted; it is refused unless this is `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext: bool,
}

/// The SASL mechanisms Weir supports. GSSAPI (Kerberos) is not among them: the Kafka
/// client Weir is built with has no Kerberos library.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema, clap::ValueEnum,
)]
pub enum SaslMechanism {
    /// SASL/PLAIN (use with TLS).
    #[serde(rename = "PLAIN")]
    #[value(name = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2.0 bearer tokens, fetched with the client-credentials grant from a token
    /// endpoint (OIDC); the broker validates them.
    #[serde(rename = "OAUTHBEARER")]
    #[value(name = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanism`.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// A Secret with key `ca.crt` (such as Strimzi's `<cluster>-cluster-ca-cert`): the CA
    /// that signed the brokers' certificates, labelled `weir.dev/kafka-credentials:
    /// "true"`. Defaults to the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
    /// A Secret for mutual TLS, labelled `weir.dev/kafka-credentials: "true"`: a
    /// `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) or a Strimzi KafkaUser Secret
    /// (`user.crt`, `user.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,
}

/// Kafka's security protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    #[value(name = "PLAINTEXT")]
    Plaintext,
    /// TLS; with a client certificate, mutual TLS (the certificate names the principal).
    #[value(name = "SSL")]
    Ssl,
    /// SASL without TLS: credentials and records travel unencrypted.
    #[value(name = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[value(name = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The value of librdkafka's `security.protocol`.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether the protocol authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// Whether the protocol runs over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// Why a process's Kafka credentials cannot be used: names the flag (and its environment
/// variable) to fix, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} ({env}): {problem}")]
pub struct AuthError {
    /// The flag.
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// How a Weir process (the operator, a worker) authenticates to its Kafka cluster. Every
/// secret comes from a file (a mounted Secret key), never from a flag's value or an
/// environment variable. The file layouts platform teams have are accepted as they are:
/// a generic `username`/`password` Secret, Strimzi's `KafkaUser` Secrets (`password` and
/// `sasl.jaas.config` for SCRAM; `user.crt`, `user.key`, `ca.crt` for TLS) and its cluster
/// CA Secret (`ca.crt`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuth {
    /// Kafka security protocol: PLAINTEXT, SSL (with --kafka-tls-cert-file, mutual TLS),
    /// SASL_PLAINTEXT or SASL_SSL.
    #[arg(
        long = "kafka-security-protocol",
        env = "WEIR_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "PLAINTEXT"
    )]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (GSSAPI is not
    /// supported).
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "WEIR_KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name (or use --kafka-sasl-username-file, or --kafka-sasl-jaas-config-file).
    #[arg(long = "kafka-sasl-username", env = "WEIR_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// A file holding the SASL user name (a mounted Secret key such as `username`).
    #[arg(
        long = "kafka-sasl-username-file",
        env = "WEIR_KAFKA_SASL_USERNAME_FILE"
    )]
    pub sasl_username_file: Option<PathBuf>,

    /// A file holding the SASL password (a mounted Secret key such as `password`).
    #[arg(
        long = "kafka-sasl-password-file",
        env = "WEIR_KAFKA_SASL_PASSWORD_FILE"
    )]
    pub sasl_password_file: Option<PathBuf>,

    /// A file holding a JAAS line with `username="…"` and `password="…"` (the
    /// `sasl.jaas.config` key of a Strimzi KafkaUser Secret): used for the user name and
    /// password the other flags do not give.
    #[arg(
        long = "kafka-sasl-jaas-config-file",
        env = "WEIR_KAFKA_SASL_JAAS_CONFIG_FILE"
    )]
    pub sasl_jaas_config_file: Option<PathBuf>,

    /// A PEM file with the CA that signed the brokers' certificates (`ca.crt` of a
    /// Strimzi cluster CA Secret); without it, the system's trust store.
    #[arg(long = "kafka-tls-ca-file", env = "WEIR_KAFKA_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// A PEM client certificate for mutual TLS (`tls.crt`, or `user.crt` of a Strimzi
    /// KafkaUser Secret).
    #[arg(long = "kafka-tls-cert-file", env = "WEIR_KAFKA_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The PEM private key of --kafka-tls-cert-file (`tls.key`, or `user.key`).
    #[arg(long = "kafka-tls-key-file", env = "WEIR_KAFKA_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Check that each broker's certificate names the host connected to (on by default;
    /// turn off only for brokers whose certificates lack their names).
    #[arg(long = "kafka-tls-verify-hostname", env = "WEIR_KAFKA_TLS_VERIFY_HOSTNAME", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify_hostname: bool,

    /// OAUTHBEARER: the identity provider's token endpoint (client-credentials grant).
    #[arg(
        long = "kafka-oauth-token-endpoint",
        env = "WEIR_KAFKA_OAUTH_TOKEN_ENDPOINT"
    )]
    pub oauth_token_endpoint: Option<String>,

    /// OAUTHBEARER: the client id.
    #[arg(long = "kafka-oauth-client-id", env = "WEIR_KAFKA_OAUTH_CLIENT_ID")]
    pub oauth_client_id: Option<String>,

    /// OAUTHBEARER: a file holding the client secret.
    #[arg(
        long = "kafka-oauth-client-secret-file",
        env = "WEIR_KAFKA_OAUTH_CLIENT_SECRET_FILE"
    )]
    pub oauth_client_secret_file: Option<PathBuf>,

    /// OAUTHBEARER: the scope to ask for (space-separated), if the provider needs one.
    #[arg(long = "kafka-oauth-scope", env = "WEIR_KAFKA_OAUTH_SCOPE")]
    pub oauth_scope: Option<String>,
}

/// `(flag, env)` of each [`ClientAuth`] field that errors name.
mod flags {
    pub const MECHANISM: (&str, &str) = ("--kafka-sasl-mechanism", "WEIR_KAFKA_SASL_MECHANISM");
    pub const USERNAME: (&str, &str) = ("--kafka-sasl-username", "WEIR_KAFKA_SASL_USERNAME");
    pub const USERNAME_FILE: (&str, &str) = (
        "--kafka-sasl-username-file",
        "WEIR_KAFKA_SASL_USERNAME_FILE",
    );
    pub const PASSWORD_FILE: (&str, &str) = (
        "--kafka-sasl-password-file",
        "WEIR_KAFKA_SASL_PASSWORD_FILE",
    );
    pub const JAAS_FILE: (&str, &str) = (
        "--kafka-sasl-jaas-config-file",
        "WEIR_KAFKA_SASL_JAAS_CONFIG_FILE",
    );
    pub const CA_FILE: (&str, &str) = ("--kafka-tls-ca-file", "WEIR_KAFKA_TLS_CA_FILE");
    pub const CERT_FILE: (&str, &str) = ("--kafka-tls-cert-file", "WEIR_KAFKA_TLS_CERT_FILE");
    pub const KEY_FILE: (&str, &str) = ("--kafka-tls-key-file", "WEIR_KAFKA_TLS_KEY_FILE");
    pub const TOKEN_ENDPOINT: (&str, &str) = (
        "--kafka-oauth-token-endpoint",
        "WEIR_KAFKA_OAUTH_TOKEN_ENDPOINT",
    );
    pub const CLIENT_ID: (&str, &str) = ("--kafka-oauth-client-id", "WEIR_KAFKA_OAUTH_CLIENT_ID");
    pub const CLIENT_SECRET_FILE: (&str, &str) = (
        "--kafka-oauth-client-secret-file",
        "WEIR_KAFKA_OAUTH_CLIENT_SECRET_FILE",
    );
    pub const PROTOCOL: (&str, &str) =
        ("--kafka-security-protocol", "WEIR_KAFKA_SECURITY_PROTOCOL");
}

fn auth_error((flag, env): (&'static str, &'static str), problem: impl Into<String>) -> AuthError {
    AuthError {
        flag,
        env,
        problem: problem.into(),
    }
}

/// A secret file's content, without the trailing newline `kubectl create secret
/// --from-file` and editors leave.
fn read_secret_file(flag: (&'static str, &'static str), path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| auth_error(flag, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        return Err(auth_error(flag, format!("{} is empty", path.display())));
    }
    Ok(text)
}

fn existing_file(flag: (&'static str, &'static str), path: &Path) -> Result<String, AuthError> {
    if path.is_file() {
        Ok(path.display().to_string())
    } else {
        Err(auth_error(
            flag,
            format!("{} is not a file", path.display()),
        ))
    }
}

/// The `username` and `password` of a JAAS line such as Strimzi writes:
/// `org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="p";`.
pub fn jaas_credentials(jaas: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        let mut rest = jaas;
        while let Some(at) = rest.find(key) {
            let before = rest[..at].chars().last();
            let after = rest[at + key.len()..].trim_start();
            rest = &rest[at + key.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let Some(after) = after.strip_prefix('=') else {
                continue;
            };
            let after = after.trim_start();
            if let Some(quoted) = after.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => return Some(out),
                        c => out.push(c),
                    }
                }
                return None;
            }
            return Some(
                after
                    .split(|c: char| c.is_whitespace() || c == ';')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        None
    };
    (value("username"), value("password"))
}

impl ClientAuth {
    /// SASL/SCRAM with a user name and a password file, over TLS when `ca_file` is given
    /// (how the operator connects a Transform's workers with their own principal).
    pub fn scram(
        mechanism: SaslMechanism,
        username: &str,
        password_file: PathBuf,
        tls: bool,
        ca_file: Option<PathBuf>,
    ) -> Self {
        Self {
            security_protocol: if tls {
                SecurityProtocol::SaslSsl
            } else {
                SecurityProtocol::SaslPlaintext
            },
            sasl_mechanism: Some(mechanism),
            sasl_username: Some(username.to_owned()),
            sasl_password_file: Some(password_file),
            tls_ca_file: ca_file,
            tls_verify_hostname: true,
            ..Self::default()
        }
    }

    /// The SASL user name these settings authenticate as, if any (reading the files).
    pub fn username(&self) -> Result<Option<String>, AuthError> {
        if let Some(u) = &self.sasl_username {
            return Ok(Some(u.clone()));
        }
        if let Some(f) = &self.sasl_username_file {
            return read_secret_file(flags::USERNAME_FILE, f).map(Some);
        }
        if let Some(f) = &self.sasl_jaas_config_file {
            return Ok(jaas_credentials(&read_secret_file(flags::JAAS_FILE, f)?).0);
        }
        Ok(None)
    }

    /// The librdkafka settings, with the secrets read from their files. Errors name the
    /// flag to fix.
    pub fn settings(&self) -> Result<BTreeMap<String, String>, AuthError> {
        let protocol = self.security_protocol;
        let mut s = BTreeMap::new();
        s.insert(
            "security.protocol".to_owned(),
            protocol.as_kafka().to_owned(),
        );
        if protocol.sasl() {
            let Some(mechanism) = self.sasl_mechanism else {
                return Err(auth_error(
                    flags::MECHANISM,
                    format!("{} needs a SASL mechanism", protocol.as_kafka()),
                ));
            };
            s.insert("sasl.mechanism".to_owned(), mechanism.as_kafka().to_owned());
            if mechanism == SaslMechanism::OAuthBearer {
                let endpoint = self.oauth_token_endpoint.clone().ok_or_else(|| {
                    auth_error(flags::TOKEN_ENDPOINT, "OAUTHBEARER needs a token endpoint")
                })?;
                let id = self
                    .oauth_client_id
                    .clone()
                    .ok_or_else(|| auth_error(flags::CLIENT_ID, "OAUTHBEARER needs a client id"))?;
                let secret_file = self.oauth_client_secret_file.as_ref().ok_or_else(|| {
                    auth_error(
                        flags::CLIENT_SECRET_FILE,
                        "OAUTHBEARER needs a client secret",
                    )
                })?;
                let secret = read_secret_file(flags::CLIENT_SECRET_FILE, secret_file)?;
                s.insert("sasl.oauthbearer.method".to_owned(), "oidc".to_owned());
                s.insert("sasl.oauthbearer.token.endpoint.url".to_owned(), endpoint);
                s.insert("sasl.oauthbearer.client.id".to_owned(), id);
                s.insert("sasl.oauthbearer.client.secret".to_owned(), secret);
                if let Some(scope) = &self.oauth_scope {
                    s.insert("sasl.oauthbearer.scope".to_owned(), scope.clone());
                }
            } else {
                let jaas = self
                    .sasl_jaas_config_file
                    .as_ref()
                    .map(|f| read_secret_file(flags::JAAS_FILE, f))
                    .transpose()?
                    .map(|j| jaas_credentials(&j))
                    .unwrap_or_default();
                let username = self
                    .username()?
                    .or(jaas.0)
                    .ok_or_else(|| auth_error(flags::USERNAME, "SASL needs a user name"))?;
                let password = match &self.sasl_password_file {
                    Some(f) => read_secret_file(flags::PASSWORD_FILE, f)?,
                    None => jaas.1.ok_or_else(|| {
                        auth_error(flags::PASSWORD_FILE, "SASL needs a password file")
                    })?,
                };
                s.insert("sasl.username".to_owned(), username);
                s.insert("sasl.password".to_owned(), password);
            }
        } else if self.sasl_mechanism.is_some() {
            return Err(auth_error(
                flags::PROTOCOL,
                format!(
                    "a SASL mechanism is set but the protocol is {}: use SASL_SSL",
                    protocol.as_kafka()
                ),
            ));
        }
        if protocol.tls() {
            if let Some(ca) = &self.tls_ca_file {
                s.insert(
                    "ssl.ca.location".to_owned(),
                    existing_file(flags::CA_FILE, ca)?,
                );
            }
            match (&self.tls_cert_file, &self.tls_key_file) {
                (Some(cert), Some(key)) => {
                    s.insert(
                        "ssl.certificate.location".to_owned(),
                        existing_file(flags::CERT_FILE, cert)?,
                    );
                    s.insert(
                        "ssl.key.location".to_owned(),
                        existing_file(flags::KEY_FILE, key)?,
                    );
                }
                (Some(_), None) => {
                    return Err(auth_error(
                        flags::KEY_FILE,
                        "a client certificate needs its key",
                    ));
                }
                (None, Some(_)) => {
                    return Err(auth_error(
                        flags::CERT_FILE,
                        "a client key needs its certificate",
                    ));
                }
                (None, None) => {}
            }
            s.insert(
                "ssl.endpoint.identification.algorithm".to_owned(),
                if self.tls_verify_hostname {
                    "https"
                } else {
                    "none"
                }
                .to_owned(),
            );
        } else if self.tls_ca_file.is_some() || self.tls_cert_file.is_some() {
            return Err(auth_error(
                flags::PROTOCOL,
                format!(
                    "TLS files are set but the protocol is {}: use SSL or SASL_SSL",
                    protocol.as_kafka()
                ),
            ));
        }
        Ok(s)
    }
}

/// The librdkafka settings whose values are secret: never logged, never in a status.
pub const SECRET_SETTINGS: [&str; 4] = [
    "sasl.password",
    "ssl.key.pem",
    "ssl.key.password",
    "sasl.oauthbearer.client.secret",
];

/// `message` with every secret value of `settings` replaced by `<redacted>`: librdkafka's
/// errors may quote a value they refused, and such messages reach status, Events and logs.
pub fn redact(message: &str, settings: &BTreeMap<String, String>) -> String {
    SECRET_SETTINGS
        .iter()
        .filter_map(|k| settings.get(*k))
        .filter(|v| !v.is_empty())
        .fold(message.to_owned(), |m, v| {
            m.replace(v.as_str(), "<redacted>")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-auth-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn strimzi_jaas_lines_give_the_user_and_password() {
        let line = r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="team-a" password="p\"w";"#;
        assert_eq!(
            jaas_credentials(line),
            (Some("team-a".into()), Some("p\"w".into()))
        );
        assert_eq!(jaas_credentials("nothing here"), (None, None));
    }

    #[test]
    fn scram_over_tls_reads_secrets_from_files() {
        let d = tmp();
        let auth = ClientAuth {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_jaas_config_file: Some(file(
                &d,
                "jaas",
                "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"u1\" password=\"from-jaas\";\n",
            )),
            sasl_password_file: Some(file(&d, "password", "s3cret\n")),
            tls_ca_file: Some(file(&d, "ca.crt", "PEM")),
            tls_verify_hostname: true,
            ..ClientAuth::default()
        };
        let s = auth.settings().expect("valid");
        assert_eq!(s["security.protocol"], "SASL_SSL");
        assert_eq!(s["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(s["sasl.username"], "u1", "from the JAAS line");
        assert_eq!(
            s["sasl.password"], "s3cret",
            "the password file wins, trimmed"
        );
        assert_eq!(s["ssl.endpoint.identification.algorithm"], "https");
        assert!(s["ssl.ca.location"].ends_with("ca.crt"));
    }

    #[test]
    fn oauthbearer_needs_an_endpoint_a_client_and_its_secret() {
        let d = tmp();
        let mut auth = ClientAuth {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::OAuthBearer),
            oauth_client_id: Some("weir".into()),
            oauth_client_secret_file: Some(file(&d, "client-secret", "cs")),
            tls_verify_hostname: true,
            ..ClientAuth::default()
        };
        let e = auth.settings().unwrap_err();
        assert_eq!(e.flag, "--kafka-oauth-token-endpoint");
        auth.oauth_token_endpoint = Some("https://idp/token".into());
        let s = auth.settings().expect("valid");
        assert_eq!(s["sasl.oauthbearer.method"], "oidc");
        assert_eq!(s["sasl.oauthbearer.client.secret"], "cs");
        assert_eq!(redact("bad secret cs!", &s), "bad secret <redacted>!");
    }

    #[test]
    fn inconsistent_settings_name_the_flag_to_fix() {
        let sasl_no_mech = ClientAuth {
            security_protocol: SecurityProtocol::SaslSsl,
            ..ClientAuth::default()
        };
        assert_eq!(
            sasl_no_mech.settings().unwrap_err().flag,
            "--kafka-sasl-mechanism"
        );
        let tls_on_plaintext = ClientAuth {
            tls_ca_file: Some("/ca".into()),
            ..ClientAuth::default()
        };
        let e = tls_on_plaintext.settings().unwrap_err();
        assert!(e.to_string().contains("use SSL or SASL_SSL"), "{e}");
        let cert_without_key = ClientAuth {
            security_protocol: SecurityProtocol::Ssl,
            tls_cert_file: Some(file(&tmp(), "c.crt", "x")),
            ..ClientAuth::default()
        };
        assert_eq!(
            cert_without_key.settings().unwrap_err().flag,
            "--kafka-tls-key-file"
        );
        let missing = ClientAuth {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::Plain),
            sasl_username: Some("u".into()),
            sasl_password_file: Some("/nonexistent/password".into()),
            ..ClientAuth::default()
        };
        let e = missing.settings().unwrap_err();
        assert!(
            e.to_string().starts_with("--kafka-sasl-password-file (WEIR_KAFKA_SASL_PASSWORD_FILE): cannot read /nonexistent/password"),
            "{e}"
        );
    }
}
