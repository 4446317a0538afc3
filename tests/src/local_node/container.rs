//! A container's volumes, mounted in a mount namespace of its own, and its process.

use super::environment::{environment, field_value};
use super::*;

/// Writes every volume's files under `dir`; returns (volume name, host path).
pub(super) async fn prepare_volumes(
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

pub(super) async fn spawn_container(
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
