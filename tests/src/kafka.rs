//! A real Apache Kafka broker (KRaft, single node) on free loopback ports, with the
//! listeners a production cluster has:
//!
//! | listener | security | who |
//! |---|---|---|
//! | [`Kafka::bootstrap_servers`] | `PLAINTEXT` | the kit's own door (principal `User:ANONYMOUS`, a super user), for suites that test Weir without security and for the kit's assertions |
//! | [`Kafka::sasl_bootstrap_servers`] | `SASL_PLAINTEXT`, `PLAIN` | [`SASL_USERNAME`] |
//! | [`Kafka::ssl_bootstrap_servers`] | `SSL` with client certificates required (mTLS): the certificate's CN is the principal | certificates from [`KafkaPki::client_cert`] |
//! | [`Kafka::sasl_ssl_bootstrap_servers`] | `SASL_SSL`: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` (validated by Kafka's own OIDC validator against [`TokenIssuer`]'s keys) | SCRAM users, OAuth clients |
//! | [`Kafka::wrong_name_bootstrap_servers`] | `SASL_SSL` whose certificate names another host | hostname-check tests |
//!
//! The broker runs KRaft's `StandardAuthorizer` with `allow.everyone.if.no.acl.found=false`:
//! a principal may do only what an ACL allows. [`SASL_USERNAME`] (Weir's operator; over
//! SCRAM, PLAIN, mTLS or OAUTHBEARER alike) and the kit's plaintext door are the super
//! users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka_pki::KafkaPki;
use crate::process::Supervised;
use crate::token_issuer::{self, TokenIssuer};
use crate::tools::{free_port, kafka_classpath};
use crate::{Error, Result};

/// The operator's principal: a super user, with a SCRAM-SHA-256 and a SCRAM-SHA-512
/// credential, a PLAIN password, an OAuth client of the same id, and the common name of
/// mTLS certificates made for it.
pub const SASL_USERNAME: &str = "weir-operator";
/// The password (and OAuth client secret) of [`SASL_USERNAME`].
pub const SASL_PASSWORD: &str = "weir-test-secret";

/// How long a broker gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running single-node Kafka broker; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Kafka {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    sasl_port: u16,
    ssl_port: u16,
    sasl_ssl_port: u16,
    wrong_name_port: u16,
    pki: KafkaPki,
    issuer: std::sync::Arc<TokenIssuer>,
    /// Whether the broker creates topics a client merely asks about (Kafka's default;
    /// off in the test kit unless a test needs it).
    auto_create: bool,
    process: Option<Supervised>,
}

impl Kafka {
    /// Formats a fresh log directory and starts a broker in `dir`, waiting until it serves
    /// metadata. Retries on new ports if another process took a port in between.
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, false).await
    }

    /// Like [`Kafka::start`], with `auto.create.topics.enable=true` as Kafka ships it: a
    /// metadata request for a missing topic creates it unless the client says not to.
    pub async fn start_auto_creating(dir: &Path) -> Result<Self> {
        Self::start_with(dir, true).await
    }

    async fn start_with(dir: &Path, auto_create: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating Kafka's dir", e))?;
        let pki = KafkaPki::write(&dir.join("pki"))?;
        let issuer = std::sync::Arc::new(TokenIssuer::start(&dir.join("jwks.json"))?);
        issuer.register(SASL_USERNAME, SASL_PASSWORD);
        let mut last = None;
        for _ in 0..3 {
            let kafka = Self {
                dir: dir.to_owned(),
                port: free_port()?,
                controller_port: free_port()?,
                sasl_port: free_port()?,
                ssl_port: free_port()?,
                sasl_ssl_port: free_port()?,
                wrong_name_port: free_port()?,
                pki: pki.clone(),
                issuer: issuer.clone(),
                auto_create,
                process: None,
            };
            match kafka.first_start().await {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Timeout("starting Kafka".into())))
    }

    async fn first_start(mut self) -> Result<Self> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating Kafka's dir", e))?;
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.write_config()?;
        self.format()?;
        self.resume().await?;
        Ok(self)
    }

    /// The `host:port` clients bootstrap from.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `host:port` of the SASL_PLAINTEXT listener (mechanism PLAIN, user
    /// [`SASL_USERNAME`], password [`SASL_PASSWORD`]).
    pub fn sasl_bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_port)
    }

    /// The `host:port` of the mutual-TLS listener (`SSL`; a client certificate signed by
    /// [`Kafka::pki`] is required, its CN is the principal).
    pub fn ssl_bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.ssl_port)
    }

    /// The `host:port` of the `SASL_SSL` listener (`PLAIN`, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`, `OAUTHBEARER`).
    pub fn sasl_ssl_bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    /// The `host:port` of a `SASL_SSL` listener whose certificate names `kafka.invalid`
    /// only: a client checking host names refuses it.
    pub fn wrong_name_bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.wrong_name_port)
    }

    /// The broker's CA and the client certificates it trusts.
    pub fn pki(&self) -> &KafkaPki {
        &self.pki
    }

    /// The OAuth token issuer the `OAUTHBEARER` mechanism trusts.
    pub fn token_issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// librdkafka settings for the operator's principal on the `SASL_SSL` listener with
    /// `mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`).
    pub fn operator_sasl_ssl_settings(&self, mechanism: &str) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([
            (
                "bootstrap.servers".into(),
                self.sasl_ssl_bootstrap_servers(),
            ),
            ("security.protocol".into(), "SASL_SSL".into()),
            (
                "ssl.ca.location".into(),
                self.pki.ca_path().display().to_string(),
            ),
            ("sasl.mechanism".into(), mechanism.to_owned()),
        ]);
        if mechanism == "OAUTHBEARER" {
            s.insert("sasl.oauthbearer.method".into(), "oidc".into());
            s.insert("sasl.oauthbearer.client.id".into(), SASL_USERNAME.into());
            s.insert(
                "sasl.oauthbearer.client.secret".into(),
                SASL_PASSWORD.into(),
            );
            s.insert(
                "sasl.oauthbearer.token.endpoint.url".into(),
                self.issuer.token_endpoint(),
            );
        } else {
            s.insert("sasl.username".into(), SASL_USERNAME.into());
            s.insert("sasl.password".into(), SASL_PASSWORD.into());
        }
        s
    }

    /// The broker's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Supervised::pid)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Supervised::is_running)
    }

    /// Stops the broker cleanly (as a rolling restart would); its data is kept.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Kills the broker at once (as a crash would); its data is kept.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.crash();
        }
    }

    /// Starts a stopped broker again on the same ports with the same data.
    pub async fn resume(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let java = which("java")?;
        let jwks = self.jwks_url();
        let args = vec![
            // Kafka fetches OAuth keys only from URLs listed here.
            format!("-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={jwks}"),
            "-Xms128m".to_owned(),
            "-Xmx768m".to_owned(),
            "-XX:+UseSerialGC".to_owned(),
            "-XX:TieredStopAtLevel=1".to_owned(),
            "-Djava.awt.headless=true".to_owned(),
            format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ),
            "-cp".to_owned(),
            kafka_classpath()?,
            "kafka.Kafka".to_owned(),
            self.config_path().display().to_string(),
        ];
        let process = Supervised::spawn("kafka", &java, &args, &self.log())?;
        self.process = Some(process);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("log_level", "0")
            .create()
            .map_err(|e| Error::Kafka(format!("creating a metadata client: {e}")))?;
        let consumer = std::sync::Arc::new(consumer);
        let process = &mut self.process;
        let ready = crate::poll_until(
            "the broker's metadata",
            READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                let alive = process
                    .as_mut()
                    .map_or(Ok(()), |p| p.ensure_running("starting up"));
                let c = consumer.clone();
                async move {
                    alive?;
                    let brokers = tokio::task::spawn_blocking(move || {
                        c.fetch_metadata(None, Duration::from_secs(2))
                            .map(|m| m.brokers().len())
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| Error::Kafka(e.to_string()))?;
                    Ok(match brokers {
                        Ok(0) => Err("no broker".to_owned()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    })
                }
            },
        )
        .await;
        ready.map_err(|e| match e {
            Error::Timeout(_) => Error::Start {
                service: "kafka".into(),
                reason: format!("not ready after {READY_TIMEOUT:?}"),
                log_tail: crate::process::tail(&self.log(), 30),
            },
            other => other,
        })
    }

    fn jwks_url(&self) -> String {
        format!("file:{}", self.dir.join("jwks.json").display())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn write_config(&self) -> Result<()> {
        let plain_users = format!("user_{SASL_USERNAME}=\"{SASL_PASSWORD}\"");
        let plain = format!(
            "org.apache.kafka.common.security.plain.PlainLoginModule required \
             username=\"{SASL_USERNAME}\" password=\"{SASL_PASSWORD}\" {plain_users};"
        );
        let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
        let oauth = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;";
        let validator =
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler";
        let mut sasl_ssl = String::new();
        for listener in ["sasl_ssl", "wrong_name"] {
            sasl_ssl.push_str(&format!(
                "\
listener.name.{listener}.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
listener.name.{listener}.plain.sasl.jaas.config={plain}
listener.name.{listener}.scram-sha-256.sasl.jaas.config={scram}
listener.name.{listener}.scram-sha-512.sasl.jaas.config={scram}
listener.name.{listener}.oauthbearer.sasl.jaas.config={oauth}
listener.name.{listener}.oauthbearer.sasl.server.callback.handler.class={validator}
"
            ));
        }
        let config = format!(
            "\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},SASL_PLAINTEXT://127.0.0.1:{sasl},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl_ssl},WRONG_NAME://127.0.0.1:{wrong_name}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl},SSL://127.0.0.1:{ssl},SASL_SSL://127.0.0.1:{sasl_ssl},WRONG_NAME://127.0.0.1:{wrong_name}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,WRONG_NAME:SASL_SSL
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain}
{sasl_ssl_listeners}\
ssl.keystore.type=PEM
ssl.keystore.location={broker_pem}
listener.name.wrong_name.ssl.keystore.type=PEM
listener.name.wrong_name.ssl.keystore.location={wrong_name_pem}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]*).*$/$1/,DEFAULT
sasl.oauthbearer.jwks.endpoint.url={jwks}
sasl.oauthbearer.expected.audience={audience}
sasl.oauthbearer.expected.issuer={issuer}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:{user}
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable={auto_create}
log.cleaner.backoff.ms=1000
log.flush.interval.messages=9223372036854775807
",
            port = self.port,
            controller = self.controller_port,
            sasl = self.sasl_port,
            ssl = self.ssl_port,
            sasl_ssl = self.sasl_ssl_port,
            wrong_name = self.wrong_name_port,
            sasl_ssl_listeners = sasl_ssl,
            broker_pem = self.pki.path("broker.pem").display(),
            wrong_name_pem = self.pki.path("wrong-name.pem").display(),
            ca = self.pki.ca_path().display(),
            jwks = self.jwks_url(),
            audience = token_issuer::AUDIENCE,
            issuer = token_issuer::ISSUER,
            auto_create = self.auto_create,
            user = SASL_USERNAME,
            data = self.data_dir().display(),
        );
        write(&self.config_path(), &config)?;
        write(
            &self.dir.join("log4j2.properties"),
            "\
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
logger.auth.name = org.apache.kafka.common.network.Selector
logger.auth.level = info
logger.oauth.name = org.apache.kafka.common.security.oauthbearer
logger.oauth.level = debug
",
        )
    }

    /// Formats the log directory, as `kafka-storage.sh format` does.
    fn format(&self) -> Result<()> {
        let java = which("java")?;
        let out = std::process::Command::new(java)
            .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
            .arg(kafka_classpath()?)
            .args(["kafka.tools.StorageTool", "format", "--ignore-formatted"])
            .args(["-t", &cluster_id()])
            // The operator's SCRAM credentials exist before the broker first starts.
            .args([
                "--add-scram",
                &format!("SCRAM-SHA-256=[name={SASL_USERNAME},password={SASL_PASSWORD}]"),
            ])
            .args([
                "--add-scram",
                &format!("SCRAM-SHA-512=[name={SASL_USERNAME},password={SASL_PASSWORD}]"),
            ])
            .arg("-c")
            .arg(self.config_path())
            .output()
            .map_err(|e| Error::io("running Kafka's StorageTool", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Start {
                service: "kafka".into(),
                reason: "formatting the log directory failed".into(),
                log_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

/// A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
fn cluster_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().into_bytes())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The full path of a program on `PATH`, or an error naming it.
pub(crate) fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingTool {
            tool: program.to_owned(),
            path: PathBuf::from(program),
        })
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = cluster_id();
        assert_eq!(id.len(), 22);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(id, cluster_id());
    }
}
