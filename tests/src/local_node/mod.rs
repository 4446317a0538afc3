//! A local node: what a kubelet does, for the pods the real kube-scheduler binds to it,
//! with local processes instead of containers. Test kit only — never part of the product.
//!
//! It registers a Node (and renews its Lease), watches the pods bound to it and runs each
//! container's command as a process: the image `…/weir:tag` holds the workspace's binaries
//! (`/usr/local/bin/weir-worker` runs `target/…/weir-worker`; the entrypoint is
//! `weir-operator`, as in the Dockerfile), `command`/`args`/`env` come from the pod spec with
//! `$(VAR)` expansion (and nothing of the test's own environment), the apiserver's address
//! in `KUBERNETES_SERVICE_HOST`/`_PORT` as a kubelet gives it, values from ConfigMaps,
//! Secrets and the downward API, and ConfigMap,
//! Secret, emptyDir and projected (ServiceAccount token, ConfigMap, downward API) volumes
//! are mounted at their `mountPath` in a mount namespace of the container's own
//! (`unshare --mount`, which needs root). Each pod gets its own loopback address
//! (127.k.x.y, the second octet claimed per node, see `addresses`) as its IP. Readiness and liveness HTTP probes run on their period; a
//! container that exits is restarted by `restartPolicy` with a growing back-off; a pod
//! being deleted gets SIGTERM, then SIGKILL after its grace period, and is then removed.
//! Each container logs to `<dir>/<namespace>_<pod>_<container>.log`.
//!
//! What it does not do: resource limits, user ids (processes run as the test user),
//! network isolation, image pulls, exec/attach/port-forward.
//!
//! The parts: this module registers the node and watches its pods; `pod` runs one pod
//! (its containers' restarts, probes and status); `environment` builds a container's
//! environment as a kubelet does; `container` mounts its volumes and starts its process;
//! `addresses` gives out the pods' IPs.

mod addresses;
mod container;
mod environment;
mod pod;

use pod::run_pod;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, Pod, Probe, Secret, ServiceAccount, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::process::Supervised;
use crate::{Error, Result};
pub use environment::expand;

/// The node's name.
pub const NODE_NAME: &str = "weir-local-node";

/// Maps an image to the binary that stands in for it.
#[derive(Debug, Clone, Default)]
pub struct Images(Vec<Image>);

/// An image the local node can run: the binaries its filesystem holds, by path.
#[derive(Debug, Clone)]
struct Image {
    /// The repository's last path segment (`weir` for `ghcr.io/weir-dev/weir:0.1.0`).
    name: String,
    /// What runs when a container gives no `command`.
    entrypoint: PathBuf,
    /// Each path in the image (`/usr/local/bin/weir-worker`) and the binary it runs.
    files: Vec<(String, PathBuf)>,
}

/// Where the image puts Weir's binaries (see the Dockerfile).
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";

impl Images {
    /// An image named `name` (the repository's last path segment) holding `binaries` in
    /// [`IMAGE_BIN_DIR`], the first of them its entrypoint.
    pub fn with(mut self, name: &str, binaries: &[PathBuf]) -> Self {
        let files = binaries
            .iter()
            .map(|b| {
                let file = b.file_name().and_then(|f| f.to_str()).unwrap_or_default();
                (format!("{IMAGE_BIN_DIR}/{file}"), b.clone())
            })
            .collect();
        self.0.push(Image {
            name: name.to_owned(),
            entrypoint: binaries.first().cloned().unwrap_or_default(),
            files,
        });
        self
    }

    /// The workspace's own image, `…/weir`: `weir-operator` (its entrypoint), `weir-worker`
    /// and `weir`, as the Dockerfile builds it.
    pub fn workspace() -> Result<Self> {
        let binary = crate::operator::workspace_binary;
        Ok(Self::default().with(
            "weir",
            &[
                binary("weir-operator")?,
                binary("weir-worker")?,
                binary("weir")?,
            ],
        ))
    }

    /// What a container of `image` runs: its `command`'s first word (a path in the
    /// image), or the image's entrypoint. An error says what is missing, as a kubelet's
    /// `ErrImagePull` or `CreateContainerError` would.
    fn program(&self, image: &str, command: Option<&str>) -> Result<PathBuf, (String, String)> {
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        let name = repo.rsplit('/').next().unwrap_or(repo);
        let found = self.0.iter().find(|i| i.name == name).ok_or_else(|| {
            (
                "ErrImagePull".to_owned(),
                format!("the local node runs only the workspace's images, not {image:?}"),
            )
        })?;
        match command {
            None => Ok(found.entrypoint.clone()),
            Some(c) => found
                .files
                .iter()
                .find(|(path, _)| path == c)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| {
                    (
                        "CreateContainerError".to_owned(),
                        format!("image {image:?} has no {c:?}"),
                    )
                }),
        }
    }
}

/// The processes of one pod, for tests that crash or freeze them.
#[derive(Debug, Default)]
struct PodProcesses {
    namespace: String,
    name: String,
    pids: BTreeMap<String, u32>,
}

/// A running local node; stops every pod's processes when dropped.
#[derive(Debug)]
pub struct LocalNode {
    stop: CancellationToken,
    pods: Arc<Mutex<HashMap<String, PodProcesses>>>,
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalNode {
    /// Registers the node with the control plane the kubeconfig at `kubeconfig` names and
    /// starts running the pods bound to it. The node runs on a thread and runtime of its
    /// own, so that it outlives the test (and the runtime) that started it.
    pub async fn start(kubeconfig: &Path, dir: &Path, images: Images) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the node's dir", e))?;
        let apiserver = environment::apiserver_address(kubeconfig)?;
        let addresses = Arc::new(addresses::PodAddresses::claim()?);
        let stop = CancellationToken::new();
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (kubeconfig, node_dir, node_pods, node_stop) = (
            kubeconfig.to_owned(),
            dir.to_owned(),
            pods.clone(),
            stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("weir-local-node".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(Error::io("starting the node's runtime", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client =
                        match crate::control_plane::client_from_kubeconfig(&kubeconfig).await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = started_tx.send(Err(e));
                                return;
                            }
                        };
                    if let Err(e) = register(&client).await {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                    let _ = started_tx.send(Ok(()));
                    let node = NodeCtx {
                        client,
                        apiserver,
                        images,
                        dir: node_dir,
                        pods: node_pods,
                        addresses,
                    };
                    run(node, node_stop).await;
                });
            })
            .map_err(|e| Error::io("starting the node's thread", e))?;
        started_rx
            .await
            .map_err(|_| Error::Kube("the local node stopped while starting".into()))??;
        Ok(Self {
            stop,
            pods,
            dir: dir.to_owned(),
            thread: Some(thread),
        })
    }

    /// The main process id of each container of pod `namespace/name`.
    pub fn pids(&self, namespace: &str, name: &str) -> Vec<u32> {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.values()
            .filter(|p| p.namespace == namespace && p.name == name)
            .flat_map(|p| p.pids.values().copied())
            .collect()
    }

    /// Sends `signal` to every container process of pod `namespace/name`; returns how
    /// many processes it reached.
    pub fn signal(&self, namespace: &str, name: &str, signal: Signal) -> usize {
        self.pids(namespace, name)
            .into_iter()
            .filter(|pid| kill(Pid::from_raw(*pid as i32), signal).is_ok())
            .count()
    }

    /// The log file of a container.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.dir.join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// Stops every pod's processes (SIGTERM, then SIGKILL) and stops serving the node.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct NodeCtx {
    client: kube::Client,
    /// The apiserver's address, as a kubelet gives it to every container
    /// (`KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`).
    apiserver: (String, u16),
    images: Images,
    dir: PathBuf,
    pods: Arc<Mutex<HashMap<String, PodProcesses>>>,
    /// The pods' IPs.
    addresses: Arc<addresses::PodAddresses>,
}

async fn register(client: &kube::Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        },
        "spec": {},
    }))
    .map_err(|e| Error::Kube(e.to_string()))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::Kube(format!("registering the node: {e}"))),
    }
    heartbeat(client).await?;
    // The apiserver taints a new node not-ready; the node lifecycle controller (not run
    // here) lifts the taint once the node reports Ready, as it now does.
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "taints": null } })),
        )
        .await
        .map_err(|e| Error::Kube(format!("untainting the node: {e}")))?;
    Ok(())
}

/// Reports the node Ready and renews its Lease.
async fn heartbeat(client: &kube::Client) -> Result<()> {
    let now = Timestamp::now().to_string();
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({
        "status": {
            "capacity": { "cpu": "16", "memory": "64Gi", "pods": "250" },
            "allocatable": { "cpu": "16", "memory": "64Gi", "pods": "250" },
            "addresses": [ { "type": "InternalIP", "address": "127.0.0.1" },
                           { "type": "Hostname", "address": NODE_NAME } ],
            "conditions": [ {
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the weir test kit's local node runs pods as local processes",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            } ],
            "nodeInfo": {
                "machineID": "weir", "systemUUID": "weir", "bootID": "weir",
                "kernelVersion": "", "osImage": "weir local node",
                "containerRuntimeVersion": "local-process://0", "kubeletVersion": "v0.0.0",
                "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
            },
        }
    });
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| Error::Kube(format!("reporting the node's status: {e}")))?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": NODE_NAME, "namespace": "kube-node-lease" },
        "spec": {
            "holderIdentity": NODE_NAME,
            "leaseDurationSeconds": 40,
            "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    });
    // The namespace appears once the apiserver's bootstrap controller made it.
    let _ = leases
        .patch(
            NODE_NAME,
            &PatchParams::apply("weir-local-node").force(),
            &Patch::Apply(&lease),
        )
        .await;
    Ok(())
}

async fn run(node: NodeCtx, stop: CancellationToken) {
    let pods: Api<Pod> = Api::all(node.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut running: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut beat = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = beat.tick() => {
                let _ = heartbeat(&node.client).await;
                running.retain(|_, (_, task)| !task.is_finished());
            }
            event = events.next() => {
                let Some(Ok(event)) = event else { continue };
                let pods = match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                    watcher::Event::Delete(p) => {
                        if let Some(uid) = p.metadata.uid.as_ref()
                            && let Some((token, _)) = running.get(uid)
                        {
                            token.cancel();
                        }
                        vec![]
                    }
                    _ => vec![],
                };
                for pod in pods {
                    let Some(uid) = pod.metadata.uid.clone() else { continue };
                    if let Some((token, _)) = running.get(&uid) {
                        if pod.metadata.deletion_timestamp.is_some() {
                            token.cancel();
                        }
                        continue;
                    }
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if matches!(phase, Some("Succeeded") | Some("Failed")) {
                        continue;
                    }
                    let token = CancellationToken::new();
                    if pod.metadata.deletion_timestamp.is_some() {
                        token.cancel();
                    }
                    let task = tokio::spawn(run_pod(node.clone(), pod, token.clone()));
                    running.insert(uid, (token, task));
                }
            }
        }
    }
    for (token, _) in running.values() {
        token.cancel();
    }
    for (_, (_, task)) in running {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_run_their_entrypoint_or_the_command_they_hold() {
        let images =
            Images::default().with("weir", &[PathBuf::from("/t/op"), PathBuf::from("/t/w")]);
        assert_eq!(
            images.program("ghcr.io/weir-dev/weir:0.1.0", None),
            Ok(PathBuf::from("/t/op"))
        );
        assert_eq!(
            images.program("localhost:5000/weir", Some("/usr/local/bin/w")),
            Ok(PathBuf::from("/t/w"))
        );
        assert_eq!(
            images
                .program("weir@sha256:abc", Some("/bin/sh"))
                .unwrap_err()
                .0,
            "CreateContainerError"
        );
        assert_eq!(
            images.program("nginx:1.27", None).unwrap_err().0,
            "ErrImagePull"
        );
        assert!(
            images
                .program("ghcr.io/weir-dev/weir-worker:0.1.0", None)
                .is_err()
        );
    }
}
