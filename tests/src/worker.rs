//! `weir-worker` processes for the data-plane suites: started, crashed, frozen and
//! stopped the way Kubernetes and failures would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Result;
use crate::operator::{http_get, workspace_binary};
use crate::process::Supervised;
use crate::tools::free_port;

/// A running `weir-worker run`.
#[derive(Debug)]
pub struct Worker {
    process: Supervised,
    http_port: u16,
    name: String,
}

impl Worker {
    /// Starts a worker named `name` (its pod name) on the YAML `files`, logging into
    /// `dir`. `env` adds or overrides settings (such as `WEIR_COMMIT_INTERVAL`).
    pub fn start(
        dir: &Path,
        bootstrap: &str,
        files: &[PathBuf],
        name: &str,
        env: &[(&str, String)],
    ) -> Result<Self> {
        let http_port = free_port()?;
        let mut all = vec![
            ("WEIR_KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()),
            ("POD_NAME", name.to_owned()),
            ("WEIR_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("WEIR_LOG_FORMAT", "text".to_owned()),
            ("WEIR_SESSION_TIMEOUT", "6s".to_owned()),
            ("RUST_LOG", "info,weir_worker=debug".to_owned()),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k, v.clone()));
        }
        let mut args = vec!["run".to_owned()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let log = dir.join(format!("{name}.log"));
        let process = Supervised::spawn_with_env(
            &format!("weir-worker {name}"),
            &workspace_binary("weir-worker")?,
            &args,
            &all,
            &log,
        )?;
        Ok(Self {
            process,
            http_port,
            name: name.to_owned(),
        })
    }

    /// Waits until `/readyz` answers 200: every assigned task restored and consuming.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let what = format!("worker {}", self.name);
        crate::operator::wait_http_ready(&mut self.process, self.http_port, &what, timeout).await
    }

    /// The sum of the `/metrics` sample lines starting with `prefix` (0 if unreachable).
    pub async fn metric_sum(&self, prefix: &str) -> f64 {
        http_get(self.http_port, "/metrics")
            .await
            .map(|(_, text)| {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// The worker's name (its pod name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The exit code once the process has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.process.exit_code()
    }

    /// Waits up to `timeout` for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if !self.process.is_running() {
                return self.process.exit_code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The end of the worker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Stops the worker gracefully (SIGTERM), as a rolling update does.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the worker at once (SIGKILL), as a crash does.
    pub fn crash(&mut self) {
        self.process.crash();
    }

    /// Freezes the worker (SIGSTOP), as a long GC pause or a stalled node would.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Thaws a frozen worker (SIGCONT).
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, s: Signal) {
        self.process.signal(s);
    }
}
