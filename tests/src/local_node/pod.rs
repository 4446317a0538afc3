//! One pod on the local node: its containers started, probed and restarted as its spec
//! says, and its status written back.

use super::container::{prepare_volumes, spawn_container};
use super::*;

/// One container's process and what the pod status says about it.
pub(super) struct ContainerRun {
    spec: Container,
    process: Option<Supervised>,
    restarts: i32,
    /// Failures in a row since the container last ran long: the back-off grows with them
    /// and resets after a long run, as a kubelet's does, while `restarts` (the pod's
    /// `restartCount`) only ever grows, so a crash loop stays visible.
    failures: u32,
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

pub(super) async fn run_pod(node: NodeCtx, pod: Pod, stop: CancellationToken) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &ns);
    let ip = node.addresses.next();
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
            failures: 0,
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
            c.failures = 0;
        }
        let restart = match restart_policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            let backoff = Duration::from_secs((1u64 << c.failures.min(5)).min(30));
            c.next_start = Instant::now() + backoff;
            c.restarts += 1;
            c.failures += 1;
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
