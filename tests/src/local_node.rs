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
//! (127.1.x.y) as its IP. Readiness and liveness HTTP probes run on their period; a
//! container that exits is restarted by `restartPolicy` with a growing back-off; a pod
//! being deleted gets SIGTERM, then SIGKILL after its grace period, and is then removed.
//! Each container logs to `<dir>/<namespace>_<pod>_<container>.log`.
//!
//! What it does not do: resource limits, user ids (processes run as the test user),
//! network isolation, image pulls, exec/attach/port-forward.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
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
        let apiserver = apiserver_address(kubeconfig)?;
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
                        next_ip: Arc::new(AtomicU32::new(0)),
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
    next_ip: Arc<AtomicU32>,
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

/// One container's process and what the pod status says about it.
struct ContainerRun {
    spec: Container,
    process: Option<Supervised>,
    restarts: i32,
    started_at: Option<String>,
    started: Option<Instant>,
    next_start: Instant,
    ready: bool,
    liveness_failures: i32,
    last_probe: Option<Instant>,
    last_liveness: Option<Instant>,
    last_exit: Option<(i32, String)>,
    waiting: Option<(String, String)>,
    done: bool,
}

async fn run_pod(node: NodeCtx, pod: Pod, stop: CancellationToken) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &ns);
    let n = node.next_ip.fetch_add(1, Ordering::Relaxed) % (250 * 250);
    let ip = format!("127.1.{}.{}", n / 250, n % 250 + 2);
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let start_time = Timestamp::now().to_string();
    node.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(
        uid.clone(),
        PodProcesses {
            namespace: ns.clone(),
            name: name.clone(),
            pids: BTreeMap::new(),
        },
    );
    let mut containers: Vec<ContainerRun> = spec
        .containers
        .iter()
        .map(|c| ContainerRun {
            spec: c.clone(),
            process: None,
            restarts: 0,
            started_at: None,
            started: None,
            next_start: Instant::now(),
            ready: false,
            liveness_failures: 0,
            last_probe: None,
            last_liveness: None,
            last_exit: None,
            waiting: None,
            done: false,
        })
        .collect();
    let mut last_status = serde_json::Value::Null;
    let pod_dir = node.dir.join("pods").join(format!("{ns}_{name}"));
    let mut mounts: Option<Vec<(String, PathBuf)>> = None;
    while !stop.is_cancelled() {
        if mounts.is_none() {
            match prepare_volumes(&node, &pod, &pod_dir, &ip).await {
                Ok(m) => mounts = Some(m),
                Err(e) => {
                    for c in &mut containers {
                        c.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                    }
                }
            }
        }
        if let Some(mounts) = &mounts {
            for c in &mut containers {
                step_container(&node, &pod, &ip, mounts, c, &restart_policy).await;
            }
        }
        {
            let mut pods = node.pods.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = pods.get_mut(&uid) {
                p.pids = containers
                    .iter()
                    .filter_map(|c| Some((c.spec.name.clone(), c.process.as_ref()?.pid()?)))
                    .collect();
            }
        }
        let status = pod_status(&containers, &ip, &start_time, &restart_policy);
        if status != last_status
            && api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .is_ok()
        {
            last_status = status;
        }
        if containers.iter().all(|c| c.done) {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    // Stopping: SIGTERM, then SIGKILL after the grace period.
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .clamp(0, 60) as u64;
    for c in &containers {
        if let Some(pid) = c.process.as_ref().and_then(Supervised::pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(grace);
    while Instant::now() < deadline
        && containers
            .iter_mut()
            .any(|c| c.process.as_mut().is_some_and(Supervised::is_running))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &mut containers {
        if let Some(mut p) = c.process.take() {
            if p.is_running() {
                p.crash();
            }
            drop(p);
        }
    }
    node.pods
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let _ = std::fs::remove_dir_all(&pod_dir);
    // A pod being deleted is removed once its processes are gone, as a kubelet does.
    if let Ok(Some(current)) = api.get_opt(&name).await
        && current.metadata.uid.as_deref() == Some(uid.as_str())
        && current.metadata.deletion_timestamp.is_some()
    {
        let _ = api
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                },
            )
            .await;
    }
}

async fn step_container(
    node: &NodeCtx,
    pod: &Pod,
    ip: &str,
    mounts: &[(String, PathBuf)],
    c: &mut ContainerRun,
    restart_policy: &str,
) {
    if c.done {
        return;
    }
    // Exited?
    if let Some(p) = c.process.as_mut()
        && !p.is_running()
    {
        let code = p.exit_code().unwrap_or(137);
        c.process = None;
        c.ready = false;
        c.last_exit = Some((
            code,
            c.started_at
                .clone()
                .unwrap_or_else(|| Timestamp::now().to_string()),
        ));
        let ran_long = c
            .started
            .is_some_and(|s| s.elapsed() > Duration::from_secs(60));
        if ran_long {
            c.restarts = c.restarts.min(1);
        }
        let restart = match restart_policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            let backoff = Duration::from_secs((1u64 << c.restarts.clamp(0, 5) as u32).min(30));
            c.next_start = Instant::now() + backoff;
            c.restarts += 1;
            c.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {backoff:?} restarting the failed container"),
            ));
        } else {
            c.done = true;
        }
    }
    // Start?
    if c.process.is_none() && !c.done && Instant::now() >= c.next_start {
        match spawn_container(node, pod, ip, mounts, &c.spec).await {
            Ok(p) => {
                c.process = Some(p);
                c.started = Some(Instant::now());
                c.started_at = Some(Timestamp::now().to_string());
                c.waiting = None;
                c.ready = c.spec.readiness_probe.is_none();
                c.liveness_failures = 0;
                c.last_probe = None;
                c.last_liveness = None;
            }
            Err((reason, message)) => {
                c.waiting = Some((reason, message));
                c.next_start = Instant::now() + Duration::from_secs(2);
            }
        }
    }
    let Some(started) = c.started.filter(|_| c.process.is_some()) else {
        return;
    };
    // Probes.
    if let Some(probe) = &c.spec.readiness_probe
        && due(probe, started, c.last_probe)
    {
        c.last_probe = Some(Instant::now());
        c.ready = http_probe(probe, &c.spec, ip).await;
    }
    if let Some(probe) = c.spec.liveness_probe.clone()
        && due(&probe, started, c.last_liveness)
    {
        c.last_liveness = Some(Instant::now());
        if http_probe(&probe, &c.spec, ip).await {
            c.liveness_failures = 0;
        } else {
            c.liveness_failures += 1;
            if c.liveness_failures >= probe.failure_threshold.unwrap_or(3)
                && let Some(pid) = c.process.as_ref().and_then(Supervised::pid)
            {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

fn due(probe: &Probe, started: Instant, last: Option<Instant>) -> bool {
    let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    // Probe often until the first success would be seen, then on the period.
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64)
        .min(Duration::from_secs(2));
    started.elapsed() >= delay && last.is_none_or(|l| l.elapsed() >= period)
}

async fn http_probe(probe: &Probe, container: &Container, ip: &str) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(get) = &probe.http_get else {
        // Only HTTP probes are run; others count as passing.
        return true;
    };
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .unwrap_or(0),
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let answer = crate::http::get(ip, port as u16, &path, timeout).await;
    matches!(answer, Some((code, _)) if (200..400).contains(&code))
}

/// Expands `$(VAR)` references from `vars`, as the kubelet does (`$$` escapes).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = vars.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Pod, ip: &str, path: &str) -> Option<String> {
    let m = &pod.metadata;
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone()?,
        "metadata.uid" => m.uid.clone()?,
        "spec.nodeName" => NODE_NAME.into(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone()?,
        "status.podIP" => ip.into(),
        "status.hostIP" => "127.0.0.1".into(),
        p => {
            let (kind, key) = p.split_once("['")?;
            let key = key.trim_end_matches("']");
            match kind {
                "metadata.labels" => m.labels.as_ref()?.get(key)?.clone(),
                "metadata.annotations" => m.annotations.as_ref()?.get(key)?.clone(),
                _ => return None,
            }
        }
    })
}

async fn config_value(node: &NodeCtx, ns: &str, cm: &str, key: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(node.client.clone(), ns);
    api.get_opt(cm).await.ok()??.data?.get(key).cloned()
}

async fn secret_value(node: &NodeCtx, ns: &str, secret: &str, key: &str) -> Option<String> {
    let api: Api<Secret> = Api::namespaced(node.client.clone(), ns);
    let s = api.get_opt(secret).await.ok()??;
    s.data
        .and_then(|d| {
            d.get(key)
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
        })
        .or_else(|| s.string_data?.get(key).cloned())
}

/// The host and port of the apiserver a kubeconfig's current cluster names.
fn apiserver_address(kubeconfig: &Path) -> Result<(String, u16)> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Kube(format!("reading {}: {e}", kubeconfig.display())))?;
    let server = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref()?.server.clone())
        .ok_or_else(|| Error::Kube(format!("{} names no server", kubeconfig.display())))?;
    let uri: http::Uri = server
        .parse()
        .map_err(|e| Error::Kube(format!("the server {server:?}: {e}")))?;
    let host = uri
        .host()
        .unwrap_or("127.0.0.1")
        .trim_matches(['[', ']'])
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// The environment of a container, in order, with `$(VAR)` expanded: first what a kubelet
/// gives every container (where to reach the apiserver), then the container's own.
async fn environment(
    node: &NodeCtx,
    pod: &Pod,
    ip: &str,
    c: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let (host, port) = &node.apiserver;
    let mut vars = BTreeMap::from([
        ("KUBERNETES_SERVICE_HOST".to_owned(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.to_string()),
        ("KUBERNETES_PORT".to_owned(), format!("tcp://{host}:{port}")),
    ]);
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let api: Api<ConfigMap> = Api::namespaced(node.client.clone(), &ns);
            if let Ok(Some(cm)) = api.get_opt(&r.name).await {
                for (k, v) in cm.data.unwrap_or_default() {
                    vars.insert(format!("{prefix}{k}"), v);
                }
            } else if r.optional != Some(true) {
                return Err(format!("configmap {:?} not found", r.name));
            }
        }
        if let Some(r) = &from.secret_ref {
            let api: Api<Secret> = Api::namespaced(node.client.clone(), &ns);
            if let Ok(Some(s)) = api.get_opt(&r.name).await {
                for (k, v) in s.data.unwrap_or_default() {
                    vars.insert(
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v.0).to_string(),
                    );
                }
            } else if r.optional != Some(true) {
                return Err(format!("secret {:?} not found", r.name));
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(from) = &e.value_from {
            let found = if let Some(f) = &from.field_ref {
                field_value(pod, ip, &f.field_path)
            } else if let Some(r) = &from.config_map_key_ref {
                let v = config_value(node, &ns, &r.name, &r.key).await;
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!("configmap {:?} has no key {:?}", r.name, r.key));
                }
                v
            } else if let Some(r) = &from.secret_key_ref {
                let v = secret_value(node, &ns, &r.name, &r.key).await;
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!("secret {:?} has no key {:?}", r.name, r.key));
                }
                v
            } else {
                None
            };
            found.unwrap_or_default()
        } else {
            String::new()
        };
        vars.insert(e.name.clone(), value);
    }
    Ok(vars)
}

/// Writes every volume's files under `dir`; returns (volume name, host path).
async fn prepare_volumes(
    node: &NodeCtx,
    pod: &Pod,
    dir: &Path,
    ip: &str,
) -> Result<Vec<(String, PathBuf)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let path = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(node.client.clone(), &ns);
            match api.get_opt(&cm.name).await.map_err(|e| e.to_string())? {
                Some(found) => files.extend(
                    found
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                ),
                None if cm.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", cm.name)),
            }
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(node.client.clone(), &ns);
            match api.get_opt(&name).await.map_err(|e| e.to_string())? {
                Some(found) => {
                    let data = found.data.unwrap_or_default();
                    match &s.items {
                        // Only the keys named, at their paths, as a kubelet mounts them.
                        Some(items) => files.extend(items.iter().filter_map(|i| {
                            data.get(&i.key).map(|v| (i.path.clone(), v.0.clone()))
                        })),
                        None => files.extend(data.into_iter().map(|(k, v)| (k, v.0))),
                    }
                }
                None if s.optional == Some(true) => {}
                None => return Err(format!("secret {name:?} not found")),
            }
        }
        if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let sa = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into());
                    let api: Api<ServiceAccount> = Api::namespaced(node.client.clone(), &ns);
                    let request: TokenRequest = serde_json::from_value(json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenRequest",
                        "spec": {
                            "audiences": t.audience.iter().collect::<Vec<_>>(),
                            "expirationSeconds": t.expiration_seconds.unwrap_or(3600).max(600),
                            "boundObjectRef": {
                                "apiVersion": "v1", "kind": "Pod",
                                "name": pod.metadata.name, "uid": pod.metadata.uid,
                            },
                        },
                    }))
                    .map_err(|e| e.to_string())?;
                    let token = api
                        .create_token_request(&sa, &PostParams::default(), &request)
                        .await
                        .map_err(|e| format!("requesting a token for {sa}: {e}"))?;
                    let token = token.status.and_then(|s| s.token).unwrap_or_default();
                    files.push((t.path.clone(), token.into_bytes()));
                }
                if let Some(cm) = &source.config_map {
                    let api: Api<ConfigMap> = Api::namespaced(node.client.clone(), &ns);
                    if let Ok(Some(found)) = api.get_opt(&cm.name).await {
                        let data = found.data.unwrap_or_default();
                        match &cm.items {
                            Some(items) => {
                                for i in items {
                                    if let Some(v) = data.get(&i.key) {
                                        files.push((i.path.clone(), v.clone().into_bytes()));
                                    }
                                }
                            }
                            None => {
                                files.extend(data.into_iter().map(|(k, v)| (k, v.into_bytes())))
                            }
                        }
                    }
                }
                if let Some(d) = &source.downward_api {
                    for i in d.items.iter().flatten() {
                        if let Some(f) = &i.field_ref
                            && let Some(v) = field_value(pod, ip, &f.field_path)
                        {
                            files.push((i.path.clone(), v.into_bytes()));
                        }
                    }
                }
            }
        }
        for (name, bytes) in files {
            let file = path.join(&name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
        }
        out.push((v.name.clone(), path));
    }
    Ok(out)
}

/// The mount script: binds each volume at its mountPath in the container's own mount
/// namespace, then runs the program.
const MOUNT: &str = r#"
while [ "$1" != "--" ]; do
  mkdir -p "$2" && mount --bind "$1" "$2" || exit 111
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 111; fi
  shift 3
done
shift
exec "$@"
"#;

async fn spawn_container(
    node: &NodeCtx,
    pod: &Pod,
    ip: &str,
    mounts: &[(String, PathBuf)],
    c: &Container,
) -> Result<Supervised, (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let command = c.command.clone().unwrap_or_default();
    // `command` replaces the image's entrypoint; `args` follow it.
    let program = node
        .images
        .program(&image, command.first().map(String::as_str))?;
    let vars = environment(node, pod, ip, c)
        .await
        .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
    let mut argv: Vec<String> = Vec::new();
    argv.extend(command.iter().skip(1).map(|a| expand(a, &vars)));
    argv.extend(c.args.iter().flatten().map(|a| expand(a, &vars)));
    let mut script_args = vec![
        "--mount".to_owned(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        MOUNT.into(),
        "weir-container".into(),
    ];
    for m in c.volume_mounts.iter().flatten() {
        if let Some((_, host)) = mounts.iter().find(|(n, _)| n == &m.name) {
            let source = match &m.sub_path {
                Some(sub) if !sub.is_empty() => host.join(sub),
                _ => host.clone(),
            };
            script_args.push(source.display().to_string());
            script_args.push(m.mount_path.clone());
            script_args.push(
                if m.read_only == Some(true) {
                    "ro"
                } else {
                    "rw"
                }
                .into(),
            );
        }
    }
    script_args.push("--".into());
    script_args.push(program.display().to_string());
    script_args.extend(argv);
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let log = node.dir.join(format!("{ns}_{name}_{}.log", c.name));
    let env: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    Supervised::spawn_isolated(
        &format!("pod {ns}/{name} container {}", c.name),
        Path::new("unshare"),
        &script_args,
        &env,
        &log,
    )
    .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))
}

fn pod_status(
    containers: &[ContainerRun],
    ip: &str,
    start_time: &str,
    restart_policy: &str,
) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = containers
        .iter()
        .map(|c| {
            let state = if let (Some(_), Some(at)) = (&c.process, &c.started_at) {
                json!({ "running": { "startedAt": at } })
            } else if let Some((reason, message)) = &c.waiting {
                json!({ "waiting": { "reason": reason, "message": message } })
            } else if let Some((code, at)) = &c.last_exit {
                json!({ "terminated": { "exitCode": code, "startedAt": at,
                    "finishedAt": Timestamp::now().to_string(),
                    "reason": if *code == 0 { "Completed" } else { "Error" } } })
            } else {
                json!({ "waiting": { "reason": "ContainerCreating" } })
            };
            let last_state = match &c.last_exit {
                Some((code, at)) if c.process.is_some() || c.waiting.is_some() => {
                    json!({ "terminated": { "exitCode": code, "startedAt": at,
                        "finishedAt": at, "reason": if *code == 0 { "Completed" } else { "Error" } } })
                }
                _ => json!({}),
            };
            json!({
                "name": c.spec.name,
                "image": c.spec.image,
                "imageID": "",
                "containerID": format!("local-process://{}", c.process.as_ref().and_then(Supervised::pid).unwrap_or(0)),
                "ready": c.ready && c.process.is_some(),
                "started": c.process.is_some(),
                "restartCount": c.restarts,
                "state": state,
                "lastState": last_state,
            })
        })
        .collect();
    let all_ready = containers.iter().all(|c| c.ready && c.process.is_some());
    let done = containers.iter().all(|c| c.done);
    let phase = if done {
        if containers
            .iter()
            .all(|c| matches!(c.last_exit, Some((0, _))))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if containers
        .iter()
        .any(|c| c.process.is_some() || c.last_exit.is_some())
    {
        "Running"
    } else {
        "Pending"
    };
    let _ = restart_policy;
    let cond = |t: &str, ok: bool| {
        json!({ "type": t, "status": if ok { "True" } else { "False" },
                "lastTransitionTime": start_time })
    };
    json!({
        "status": {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [ { "ip": "127.0.0.1" } ],
            "podIP": ip,
            "podIPs": [ { "ip": ip } ],
            "startTime": start_time,
            "conditions": [
                cond("PodScheduled", true),
                cond("Initialized", true),
                cond("ContainersReady", all_ready),
                cond("Ready", all_ready),
            ],
            "containerStatuses": statuses,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_the_kubelet() {
        let vars = BTreeMap::from([("POD_IP".to_owned(), "127.0.1.2".to_owned())]);
        assert_eq!(expand("$(POD_IP):9090", &vars), "127.0.1.2:9090");
        assert_eq!(expand("$$(POD_IP)", &vars), "$(POD_IP)");
        assert_eq!(expand("$(NOPE) $", &vars), "$(NOPE) $");
    }

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
