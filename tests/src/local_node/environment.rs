//! A container's environment, as a kubelet builds it: `env` with `$(VAR)` expansion,
//! values from ConfigMaps, Secrets and the downward API, and the apiserver's address.

use super::*;

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

pub(super) fn field_value(pod: &Pod, ip: &str, path: &str) -> Option<String> {
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

pub(super) async fn config_value(node: &NodeCtx, ns: &str, cm: &str, key: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(node.client.clone(), ns);
    api.get_opt(cm).await.ok()??.data?.get(key).cloned()
}

pub(super) async fn secret_value(
    node: &NodeCtx,
    ns: &str,
    secret: &str,
    key: &str,
) -> Option<String> {
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
pub(super) fn apiserver_address(kubeconfig: &Path) -> Result<(String, u16)> {
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
pub(super) async fn environment(
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
}
