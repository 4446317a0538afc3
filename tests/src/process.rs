//! Child processes that never outlive the test that started them.
//!
//! Each service (a Kafka broker, etcd, kube-apiserver) runs under a tiny shell watchdog
//! that stops it when the owning test process goes away, however that happens: a normal
//! drop, a failed assertion, a panic, or a SIGKILL of the test binary. Dropping a
//! [`Supervised`] stops the service at once (SIGTERM, then SIGKILL after a grace period).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// The watchdog: runs the command in the background, records its pid, and stops it when
/// the owner process (`$1`) exits. A TERM to the watchdog is passed on to the child.
const WATCHDOG: &str = r#"
owner="$1"; pidfile="$2"; shift 2
"$@" &
child=$!
echo "$child" > "$pidfile"
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT HUP
while kill -0 "$owner" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
if kill -0 "$child" 2>/dev/null; then
  kill -TERM "$child" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.1; done
  kill -KILL "$child" 2>/dev/null
fi
wait "$child"
"#;

/// How long a service gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A service process run under the watchdog; stopped when dropped.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    watchdog: Child,
    pid: Option<Pid>,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// Like [`Supervised::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Self> {
        Self::start(name, program, args, env, false, log)
    }

    /// Like [`Supervised::spawn`], with only the environment `env` (and a standard
    /// `PATH`), as a container starts: nothing of the test's own environment leaks in.
    pub fn spawn_isolated(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Self> {
        Self::start(name, program, args, env, true, log)
    }

    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        isolated: bool,
        log: &Path,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log handle", e))?;
        let pidfile = log.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("weir-watchdog")
            .arg(std::process::id().to_string())
            .arg(&pidfile)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if isolated {
            cmd.env_clear().env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Own process group: a Ctrl-C in the terminal reaches the test kit, which then stops
        // every service in order, rather than killing them all at once behind its back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let watchdog = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {name} ({})", program.display()), e))?;
        let mut this = Self {
            name: name.to_owned(),
            watchdog,
            pid: None,
            log: log.to_owned(),
        };
        // The watchdog writes the child's pid straight away.
        let deadline = Instant::now() + Duration::from_secs(5);
        while this.pid.is_none() && Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                this.pid = Some(Pid::from_raw(pid));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if this.pid.is_none() {
            return Err(Error::Start {
                service: name.to_owned(),
                reason: "the watchdog did not report the process id".into(),
                log_tail: this.log_tail(20),
            });
        }
        Ok(this)
    }

    /// The service's name, as used in errors and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The service's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw() as u32)
    }

    /// The exit code once the service has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.watchdog
            .try_wait()
            .ok()
            .flatten()
            .and_then(|s| s.code())
    }

    /// Whether the service is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the service's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Stops the service: SIGTERM, then SIGKILL after a grace period. Idempotent.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !self.is_running() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.is_running() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }

    /// Sends the service a signal (SIGSTOP freezes it, SIGCONT thaws it, SIGTERM asks it to
    /// stop without waiting); nothing happens if it has exited.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, signal);
        }
    }

    /// Waits up to `timeout` for the service to exit by itself; whether it did.
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Kills the service at once with SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = self.watchdog.wait();
    }

    /// Returns an error naming the service, with its log tail, if it has exited.
    pub fn ensure_running(&mut self, what: &str) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            Err(Error::Start {
                service: self.name.clone(),
                reason: format!("exited while {what}"),
                log_tail: self.log_tail(30),
            })
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes `dir` once this process has exited (for state that lives in a `static`, which
/// is never dropped), unless `WEIR_KEEP_STACK` is set (to read the logs of a failed run).
pub fn remove_when_owner_exits(dir: &Path) {
    if std::env::var_os("WEIR_KEEP_STACK").is_some() {
        eprintln!("keeping the stack's directory {}", dir.display());
        return;
    }
    let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; rm -rf "$2""#;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg("weir-cleanup")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot arrange to delete a directory");
    }
}

/// The last `lines` lines of a file, or a note that it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}
