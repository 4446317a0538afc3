//! A real Apache Kafka broker (KRaft, single node) on free loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::process::Supervised;
use crate::tools::{free_port, kafka_classpath};
use crate::{Error, Result};

/// The SASL/PLAIN user the broker's SASL listener accepts.
pub const SASL_USERNAME: &str = "weir";
/// The SASL/PLAIN password of [`SASL_USERNAME`].
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
        let mut last = None;
        for _ in 0..3 {
            let kafka = Self {
                dir: dir.to_owned(),
                port: free_port()?,
                controller_port: free_port()?,
                sasl_port: free_port()?,
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
        let args = vec![
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
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.process.as_mut() {
                p.ensure_running("starting up")?;
            }
            let c = consumer.clone();
            let ready = tokio::task::spawn_blocking(move || {
                c.fetch_metadata(None, Duration::from_secs(2))
                    .map(|m| !m.brokers().is_empty())
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Start {
                    service: "kafka".into(),
                    reason: format!("not ready after {READY_TIMEOUT:?}"),
                    log_tail: crate::process::tail(&self.log(), 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn write_config(&self) -> Result<()> {
        let config = format!(
            "\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},SASL_PLAINTEXT://127.0.0.1:{sasl}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{user}\" password=\"{password}\" user_{user}=\"{password}\";
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
            auto_create = self.auto_create,
            user = SASL_USERNAME,
            password = SASL_PASSWORD,
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
