# Weir: the one entry point for people and CI. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
export WEIR_TOOLS_DIR ?= $(CURDIR)/.tools
# Test binaries run one at a time; the tests inside each share one local stack.
TEST_THREADS ?= 4

.PHONY: help build test test-build tools dev demo lint fmt manifests image bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

test: tools test-build ## Run every test: unit, property, golden and integration on the real local stack
	$(CARGO) test --workspace --lib --tests -- --test-threads=$(TEST_THREADS)
	$(CARGO) test --workspace --doc

test-build: ## Build what `make test` runs (the binaries the tests start, and the tests), without running it
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --lib --tests --no-run

tools: ## Install the pinned Kafka, etcd, kube-apiserver, kubectl and helm into .tools/
	@bash tools/install.sh

dev: tools ## Start the local stack with the operator and a local node, print how to reach it (Ctrl-C stops it)
	@echo "==> Building Weir (cargo build --workspace --bins; a first build takes several minutes)"
	$(CARGO) build --workspace --bins
	./target/debug/weir-dev up

demo: tools ## Apply the example network with kubectl and show records flowing through worker pods, then stop
	@echo "==> Building Weir (cargo build --workspace --bins; a first build takes several minutes)"
	$(CARGO) build --workspace --bins
	./target/debug/weir-dev demo

# cargo-machete finds dependencies no code uses; installed, pinned, on first `make lint`.
MACHETE_VERSION := 0.9.2
MACHETE := $(WEIR_TOOLS_DIR)/cargo-machete/bin/cargo-machete

lint: ## Check formatting, clippy, rustdoc and unused dependencies, with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet
	@test -x $(MACHETE) || $(CARGO) install cargo-machete --version $(MACHETE_VERSION) --locked --root $(WEIR_TOOLS_DIR)/cargo-machete
	$(MACHETE)

fmt: ## Format the code
	$(CARGO) fmt --all

manifests: tools ## Regenerate the CRDs (manifests/crds, charts/weir/crds) and the plain install (manifests/install)
	$(CARGO) run --quiet -p weir-crds --bin crdgen -- --out manifests/crds --out charts/weir/crds
	bash tools/render-install.sh > manifests/install/weir.yaml
	bash tools/render-argocd-cm.sh > manifests/argocd/argocd-cm.yaml

image: tools ## Build Weir's container image (the Dockerfile's) as an OCI archive, target/weir-image.oci.tar, without Docker
	$(CARGO) build --release --locked -p weir-operator -p weir-worker --bins
	bash tools/build-image.sh target/release target/weir-image.oci.tar

bench: tools ## Run the benchmarks (record results, command and baseline in BENCHMARKS.md)
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p weir-tests --bench data_streams_ready
	$(CARGO) bench -p weir-tests --bench transforms_ready
	$(CARGO) bench -p weir-tests --bench principals_ready
	$(CARGO) bench -p weir-tests --bench worker_throughput
	$(CARGO) bench -p weir-engine --bench nexmark

clean: ## Remove build output (keeps .tools; `rm -rf .tools` removes the installed components)
	$(CARGO) clean
