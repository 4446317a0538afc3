//! weir-tests: the test kit, and the integration suites that use it.
//!
//! The kit starts the real components Weir runs against — an Apache Kafka broker in KRaft
//! mode and a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) —
//! from the pinned builds `make tools` installs into `.tools/`, on free loopback ports, in
//! a fresh directory per [`Stack`]. Every process is stopped when its owner is dropped, and
//! also when the test process dies for any reason, so no suite leaves strays and several
//! suites can run at once.
//!
//! On top of the stack it offers helpers in the style of linkerd's policy-test:
//! [`with_temp_ns`] runs a test body in a fresh namespace, [`await_condition`] waits for a
//! resource to satisfy a predicate with a timeout, and [`records`] produces and consumes.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let stack = weir_tests::Stack::start().await?;
//! let client = stack.kube_client().await?;
//! weir_tests::with_temp_ns(client, |client, ns| async move {
//!     // create resources in `ns` and assert on what the apiserver and broker do
//! #   let _ = (client, ns);
//! })
//! .await;
//! # Ok(()) }
//! ```

pub mod control_plane;
pub mod fixtures;
pub mod http;
pub mod kafka;
pub mod kafka_pki;
pub mod local_node;
pub mod namespace;
pub mod operator;
pub mod process;
pub mod records;
pub mod token_issuer;
pub mod tools;
pub mod wait;
pub mod worker;

use std::path::{Path, PathBuf};

pub use control_plane::ControlPlane;
pub use kafka::Kafka;
pub use local_node::{Images, LocalNode};
pub use namespace::{await_condition, await_deletion, with_temp_ns};
pub use operator::{Operator, OperatorOptions, install_crds};
pub use wait::{poll_until, wait_until};

/// Errors from starting or talking to the local stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A component `make tools` installs is missing.
    #[error("{tool} is not installed at {path}: run `make tools`")]
    MissingTool {
        /// The missing tool.
        tool: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A component failed to start or to become ready.
    #[error("{service} failed to start: {reason}\n--- last lines of its log ---\n{log_tail}")]
    Start {
        /// The component.
        service: String,
        /// What went wrong.
        reason: String,
        /// The end of the component's log.
        log_tail: String,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Generating the control plane's certificates failed.
    #[error("generating certificates: {0}")]
    Pki(String),
    /// A Kubernetes client error.
    #[error("kubernetes: {0}")]
    Kube(String),
    /// A Kafka client error.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Something did not happen in time.
    #[error("timed out {0}")]
    Timeout(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fresh local stack: one Kafka broker and one Kubernetes control plane.
///
/// Dropping it stops every process; its directory (configs, data, logs) is deleted unless
/// the thread is panicking, in which case the path is printed so the logs can be read.
#[derive(Debug)]
pub struct Stack {
    /// The Kafka broker.
    pub kafka: Kafka,
    /// The Kubernetes control plane.
    pub control_plane: ControlPlane,
    dir: Option<tempfile::TempDir>,
    dir_path: Option<PathBuf>,
}

impl Stack {
    /// Starts Kafka and the control plane side by side and waits until both are ready.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("weir-stack-")
            .tempdir()
            .map_err(|e| Error::io("creating the stack's directory", e))?;
        let (kafka_dir, kube_dir) = (dir.path().join("kafka"), dir.path().join("kube"));
        let (kafka, control_plane) =
            tokio::join!(Kafka::start(&kafka_dir), ControlPlane::start(&kube_dir));
        Ok(Self {
            kafka: kafka?,
            control_plane: control_plane?,
            dir: Some(dir),
            dir_path: None,
        })
    }

    /// One stack shared by every test in this test binary, started on first use.
    ///
    /// Tests that share it isolate themselves with [`with_temp_ns`] and unique topic names.
    /// Its processes stop and its directory is deleted when the test binary exits; a test
    /// that stops or crashes a component must start its own [`Stack`] instead.
    pub async fn shared() -> &'static Stack {
        static SHARED: tokio::sync::OnceCell<Stack> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let mut stack = match Stack::start().await {
                    Ok(stack) => stack,
                    Err(e) => panic!("starting the shared test stack: {e}"),
                };
                let dir = stack.keep_dir();
                process::remove_when_owner_exits(&dir);
                stack.dir_path = Some(dir);
                stack
            })
            .await
    }

    /// The process ids of every component, to check that none outlives the stack.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.control_plane.pids();
        pids.extend(self.kafka.pid());
        pids
    }

    /// The directory holding every component's config, data and logs.
    pub fn dir(&self) -> &Path {
        match (&self.dir, &self.dir_path) {
            (Some(d), _) => d.path(),
            (None, Some(p)) => p,
            (None, None) => Path::new("."),
        }
    }

    /// A kube client with admin credentials.
    pub async fn kube_client(&self) -> Result<kube::Client> {
        self.control_plane.client().await
    }

    /// The Kafka bootstrap servers.
    pub fn bootstrap_servers(&self) -> String {
        self.kafka.bootstrap_servers()
    }

    /// Keeps the stack's directory after drop (for `make dev` or debugging) and returns it.
    pub fn keep_dir(&mut self) -> PathBuf {
        let path = match self.dir.take() {
            Some(d) => d.keep(),
            None => self.dir().to_path_buf(),
        };
        self.dir_path = Some(path.clone());
        path
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "weir-tests: the test failed; the stack's logs are kept in {}",
                kept.display()
            );
        }
        // Fields drop after this: the control plane and Kafka stop their processes.
    }
}
