#!/usr/bin/env bash
# Renders manifests/argocd/argocd-cm.yaml — Weir's Argo CD health checks as keys of the
# argocd-cm ConfigMap — from manifests/argocd/resource_customizations/*/*/health.lua, to
# stdout. `make manifests` writes it; a test fails when it and the Lua files drift apart.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cat <<'HEADER'
# Weir's health checks for Argo CD, generated from manifests/argocd/resource_customizations
# by `make manifests`; do not edit. Merge into Argo CD's configuration, e.g.
#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
HEADER
for script in "$root"/manifests/argocd/resource_customizations/*/*/health.lua; do
  kind=$(basename "$(dirname "$script")")
  group=$(basename "$(dirname "$(dirname "$script")")")
  echo "  resource.customizations.health.${group}_${kind}: |"
  sed 's/^\(.\)/    \1/' "$script"
done
