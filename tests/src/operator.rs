//! The operator, run as its real binary against the test stack, and the CRDs it needs.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::process::Supervised;
use crate::tools::free_port;
use crate::{Error, Result, Stack};

/// The namespace the operator's leader Lease lives in during tests.
pub const LEASE_NAMESPACE: &str = "weir-system";

/// A running `weir-operator` process; stopped when dropped.
#[derive(Debug)]
pub struct Operator {
    process: Supervised,
    http_port: u16,
}

/// How a test wants the operator run.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// The replica's identity (pod name).
    pub identity: String,
    /// How often DataStreams are compared with Kafka.
    pub resync_interval: &'static str,
    /// Whether leader election is on.
    pub leader_election: bool,
    /// More environment variables (operator settings) for this run.
    pub env: Vec<(&'static str, String)>,
}

impl OperatorOptions {
    /// The operator on the broker's `SASL_SSL` listener as [`crate::kafka::SASL_USERNAME`]
    /// with SCRAM-SHA-512, its password in a file and the kit's CA: how a production
    /// install connects, and so (by default there) with managed per-Transform principals.
    pub fn on_sasl_ssl(stack: &Stack) -> Result<Self> {
        let password = stack.dir().join("operator-password");
        std::fs::write(&password, format!("{}\n", crate::kafka::SASL_PASSWORD))
            .map_err(|e| Error::io("writing the operator's password file", e))?;
        let kafka = &stack.kafka;
        Ok(Self {
            env: vec![
                (
                    "WEIR_KAFKA_BOOTSTRAP_SERVERS",
                    kafka.sasl_ssl_bootstrap_servers(),
                ),
                ("WEIR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
                ("WEIR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
                (
                    "WEIR_KAFKA_SASL_USERNAME",
                    crate::kafka::SASL_USERNAME.into(),
                ),
                (
                    "WEIR_KAFKA_SASL_PASSWORD_FILE",
                    password.display().to_string(),
                ),
                (
                    "WEIR_KAFKA_TLS_CA_FILE",
                    kafka.pki().ca_path().display().to_string(),
                ),
            ],
            ..Self::default()
        })
    }
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            identity: "weir-operator-0".into(),
            resync_interval: "2s",
            leader_election: true,
            env: Vec::new(),
        }
    }
}

/// Where cargo put a workspace binary: next to the running test's `deps/` directory.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the test binary", e))?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingTool {
            tool: format!("{name} (run `cargo build --workspace --bins`)"),
            path,
        })
    }
}

impl Operator {
    /// Starts the operator binary against `stack` and waits until it serves `/readyz`.
    pub async fn start(stack: &Stack, options: OperatorOptions) -> Result<Self> {
        let http_port = free_port()?;
        let log = stack
            .dir()
            .join(format!("{}-{}.log", options.identity, http_port));
        let env = vec![
            (
                "KUBECONFIG",
                stack.control_plane.kubeconfig_path().display().to_string(),
            ),
            ("WEIR_DEFAULT_REPLICATION_FACTOR", "1".to_owned()),
            ("WEIR_RESYNC_INTERVAL", options.resync_interval.to_owned()),
            // Read the workers' metrics as often as the resync, so that tests see
            // Degraded in seconds.
            (
                "WEIR_WORKER_SAMPLE_INTERVAL",
                options.resync_interval.to_owned(),
            ),
            ("WEIR_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("WEIR_LEADER_ELECTION", options.leader_election.to_string()),
            ("WEIR_LEASE_NAMESPACE", LEASE_NAMESPACE.to_owned()),
            ("POD_NAME", options.identity.clone()),
            ("WEIR_LOG_FORMAT", "text".to_owned()),
            ("RUST_LOG", "info,weir_operator=debug,kube=warn".to_owned()),
        ]
        .into_iter()
        .chain(options.env.iter().cloned())
        .collect::<Vec<_>>();
        // The kit's plaintext door unless the options name another listener.
        let mut env = env;
        if !env
            .iter()
            .any(|(k, _)| *k == "WEIR_KAFKA_BOOTSTRAP_SERVERS")
        {
            env.push(("WEIR_KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()));
        }
        let mut process = Supervised::spawn_with_env(
            "weir-operator",
            &workspace_binary("weir-operator")?,
            &[],
            &env,
            &log,
        )?;
        wait_http_ready(
            &mut process,
            http_port,
            "the operator",
            Duration::from_secs(60),
        )
        .await?;
        Ok(Self { process, http_port })
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        http_get(self.http_port, "/metrics")
            .await
            .map(|(_, body)| body)
            .ok_or_else(|| Error::Timeout("reading /metrics".into()))
    }

    /// The value of a counter or gauge sample line starting with `prefix`, summed.
    pub async fn metric_sum(&self, prefix: &str) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The operator's peak resident memory (`VmHWM`) in KiB, 0 when it cannot be read.
    pub fn peak_rss_kib(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The operator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The end of the operator's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Stops the operator gracefully (SIGTERM).
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Asks the operator to stop (SIGTERM) and waits up to `timeout` for it to exit by
    /// itself; whether it did.
    pub fn stops_within(&mut self, timeout: Duration) -> bool {
        self.process.signal(nix::sys::signal::Signal::SIGTERM);
        self.exits_within(timeout)
    }

    /// Waits up to `timeout` for the operator to exit by itself; whether it did.
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        self.process.exits_within(timeout)
    }

    /// The operator's `/healthz`: its status code and body.
    pub async fn healthz(&self) -> Option<(u16, String)> {
        http_get(self.http_port, "/healthz").await
    }

    /// Kills the operator at once, as a crash or an evicted pod would.
    pub fn crash(&mut self) {
        self.process.crash();
    }
}

/// Waits until `process` (called `what` in errors) answers 200 on `/readyz` at `port`;
/// fails at once if it exits, and with its log's end when `timeout` runs out.
pub(crate) async fn wait_http_ready(
    process: &mut Supervised,
    port: u16,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    let ready = crate::poll_until(
        format!("{what}'s /readyz"),
        timeout,
        Duration::from_millis(100),
        || {
            let alive = process.ensure_running("starting up");
            async move {
                alive?;
                Ok(match http_get(port, "/readyz").await {
                    Some((200, _)) => Ok(()),
                    Some((code, body)) => Err(format!("{code} {body}")),
                    None => Err("no answer".to_owned()),
                })
            }
        },
    )
    .await;
    ready.map_err(|e| match e {
        Error::Timeout(seen) => Error::Timeout(format!(
            "waiting for {seen}; log:\n{}",
            process.log_tail(30)
        )),
        other => other,
    })
}

/// An HTTP GET on 127.0.0.1: `(status, body)`, or `None` if nothing answered within 5 s.
pub(crate) async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    crate::http::get("127.0.0.1", port, path, Duration::from_secs(5)).await
}

/// Installs the generated weir.dev CRDs (server-side apply) and waits until they are
/// established, and creates the Lease namespace.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    let root = crate::tools::workspace_root()
        .join("manifests")
        .join("crds");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["weir.dev_datastreams.yaml", "weir.dev_transforms.yaml"] {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
            .map_err(|e| Error::Kube(format!("parsing {}: {e}", path.display())))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("weir-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| Error::Kube(format!("applying {name}: {e}")))?;
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(crds.clone(), &name, established),
        )
        .await
        .map_err(|_| Error::Timeout(format!("waiting for CRD {name} to be established")))?
        .map_err(|e| Error::Kube(e.to_string()))?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(LEASE_NAMESPACE.into());
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::Kube(format!("creating {LEASE_NAMESPACE}: {e}"))),
    }
    Ok(())
}
