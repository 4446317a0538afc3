#!/usr/bin/env bash
# Installs the pinned real components Weir's tests and demo run against into .tools/:
#   - Apache Kafka (KRaft broker) from its official jars on Maven Central (tools/kafka/pom.xml)
#   - etcd, built from source through the Go module proxy (tools/etcd/go.mod)
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, built the same way (tools/kubernetes/go.mod)
#   - helm, built the same way (tools/helm/go.mod)
#   - umoci, which writes Weir's image without Docker (tools/umoci/go.mod), built the same way
#   - argocd-health, Argo CD's Lua runtime (gopher-lua) for the health-check tests
#     (tools/argocd-health), built the same way
# Each component is rebuilt only when its pin files change: a second run is a no-op.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${WEIR_TOOLS_DIR:-$root/.tools}
pins=$root/tools
mkdir -p "$dest/bin" "$dest/stamps"

for prerequisite in java mvn go; do
  if ! command -v "$prerequisite" >/dev/null 2>&1; then
    echo "make tools: '$prerequisite' is required but not on PATH (install Java 17, Maven and Go 1.26)" >&2
    exit 1
  fi
done

# Never download a different Go toolchain: build with the machine's Go.
export GOTOOLCHAIN=local GOFLAGS=-trimpath CGO_ENABLED=0

# Go's build cache for Kubernetes grows to about 5 GB and its module cache to 1.3 GB; neither
# is needed once the binaries are built, so they live in a scratch folder removed on exit
# (set WEIR_KEEP_GO_CACHE=1 to build with the usual caches instead and keep them).
if [ "${WEIR_KEEP_GO_CACHE:-0}" != 1 ]; then
  go_scratch=$(mktemp -d "${TMPDIR:-/tmp}/weir-tools-go.XXXXXX")
  export GOCACHE=$go_scratch/build GOMODCACHE=$go_scratch/mod
  # The module cache is written read-only; make it removable first.
  trap 'chmod -R u+w "$go_scratch" 2>/dev/null; rm -rf "$go_scratch"' EXIT
fi

# Versions, read from the pins so there is one place to change them.
# pinned MODULE GO.MOD: the version go.mod requires (single-line or block form).
pinned() {
  awk -v m="$1" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m) { print $2; exit }' "$2"
}
kube_version=$(pinned k8s.io/kubernetes "$pins/kubernetes/go.mod")
etcd_version=$(pinned go.etcd.io/etcd/server/v3 "$pins/etcd/go.mod")
helm_version=$(pinned helm.sh/helm/v4 "$pins/helm/go.mod")
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pins/kafka/pom.xml")
for v in kube_version etcd_version helm_version kafka_version; do
  [ -n "${!v}" ] || { echo "make tools: cannot read $v from tools/" >&2; exit 1; }
done

# up_to_date NAME FILES...: true when NAME was installed from exactly these pin files.
stamp_of() { cat "$0" "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() {
  local name=$1; shift
  [ -f "$dest/stamps/$name" ] && [ "$(cat "$dest/stamps/$name")" = "$(stamp_of "$@")" ]
}
mark_done() {
  local name=$1; shift
  stamp_of "$@" > "$dest/stamps/$name"
}
# check_version WHAT EXPECTED COMMAND...: the installed binary reports the pinned version.
check_version() {
  local what=$1 expected=$2; shift 2
  local got
  got=$("$@" 2>&1 | head -n 5 || true)
  if ! grep -qF -- "$expected" <<<"$got"; then
    echo "make tools: $what should report version $expected but printed: $got" >&2
    exit 1
  fi
  echo "  $what $expected"
}

step() { echo "==> $*"; }

# --- Kafka -------------------------------------------------------------------------------
if ! up_to_date kafka "$pins/kafka/pom.xml" || [ ! -f "$dest/kafka/libs/kafka_2.13-$kafka_version.jar" ]; then
  step "Kafka $kafka_version: fetching the broker's jars from Maven Central"
  rm -rf "$dest/kafka/libs"
  mvn -q -B -f "$pins/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dest/kafka/libs"
  mark_done kafka "$pins/kafka/pom.xml"
fi

# --- etcd --------------------------------------------------------------------------------
if ! up_to_date etcd "$pins/etcd/go.mod" "$pins/etcd/go.sum" || [ ! -x "$dest/bin/etcd" ]; then
  step "etcd $etcd_version: building from source"
  (cd "$pins/etcd" && go build -ldflags "-s -w" -o "$dest/bin/etcd" go.etcd.io/etcd/server/v3)
  mark_done etcd "$pins/etcd/go.mod" "$pins/etcd/go.sum"
fi

# --- Kubernetes --------------------------------------------------------------------------
kube_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
kube_missing=0
for b in "${kube_bins[@]}"; do [ -x "$dest/bin/$b" ] || kube_missing=1; done
if ! up_to_date kubernetes "$pins/kubernetes/go.mod" "$pins/kubernetes/go.sum" || [ $kube_missing = 1 ]; then
  step "Kubernetes $kube_version: building kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from source"
  minor=$(cut -d. -f2 <<<"$kube_version")
  ldflags="-s -w \
    -X k8s.io/component-base/version.gitVersion=$kube_version \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"
  (cd "$pins/kubernetes" && go build -ldflags "$ldflags" -o "$dest/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  mark_done kubernetes "$pins/kubernetes/go.mod" "$pins/kubernetes/go.sum"
fi

# --- Helm --------------------------------------------------------------------------------
if ! up_to_date helm "$pins/helm/go.mod" "$pins/helm/go.sum" || [ ! -x "$dest/bin/helm" ]; then
  step "Helm $helm_version: building from source"
  (cd "$pins/helm" && go build \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    -o "$dest/bin/helm" helm.sh/helm/v4/cmd/helm)
  mark_done helm "$pins/helm/go.mod" "$pins/helm/go.sum"
fi

# --- Argo CD's Lua health-check runner ---------------------------------------------------
if ! up_to_date argocd-health "$pins/argocd-health/go.mod" "$pins/argocd-health/go.sum" "$pins/argocd-health/main.go" || [ ! -x "$dest/bin/argocd-health" ]; then
  step "argocd-health: building Argo CD's Lua runtime (gopher-lua) for the health-check tests"
  (cd "$pins/argocd-health" && go build -ldflags "-s -w" -o "$dest/bin/argocd-health" .)
  mark_done argocd-health "$pins/argocd-health/go.mod" "$pins/argocd-health/go.sum" "$pins/argocd-health/main.go"
fi

# --- umoci, which writes Weir's image without a Docker engine (make image) ----------------
if ! up_to_date umoci "$pins/umoci/go.mod" "$pins/umoci/go.sum" || [ ! -x "$dest/bin/umoci" ]; then
  step "umoci: building from source"
  (cd "$pins/umoci" && go build -ldflags "-s -w" -o "$dest/bin/umoci" github.com/opencontainers/umoci/cmd/umoci)
  mark_done umoci "$pins/umoci/go.mod" "$pins/umoci/go.sum"
fi

# --- Check what is installed -------------------------------------------------------------
step "Checking installed versions"
check_version kafka "$kafka_version" java -cp "$dest/kafka/libs/*" kafka.Kafka --version
check_version etcd "${etcd_version#v}" "$dest/bin/etcd" --version
check_version kube-apiserver "$kube_version" "$dest/bin/kube-apiserver" --version
check_version kube-controller-manager "$kube_version" "$dest/bin/kube-controller-manager" --version
check_version kube-scheduler "$kube_version" "$dest/bin/kube-scheduler" --version
check_version kubectl "$kube_version" "$dest/bin/kubectl" version --client
check_version helm "$helm_version" "$dest/bin/helm" version --short
check_version umoci "$(pinned github.com/opencontainers/umoci "$pins/umoci/go.mod" | sed 's/^v//')" "$dest/bin/umoci" --version
echo "Tools are installed in $dest"
