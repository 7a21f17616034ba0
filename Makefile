# kartflow: the two commands are `make demo` and `make test`; the rest are their parts.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# STACK=external runs the tests against servers you point at with KAFKA_BOOTSTRAP,
# DATABASE_URL and KUBECONFIG instead of starting the local stack and cluster.
STACK ?= local

.PHONY: help build test unit-test fmt fmt-check lint toolchain dev-up dev-down dev-status demo demo-down bench-inventory bench-cdc bench-read-model \
	cluster-build cluster-up cluster-down cluster-env cluster-smoke cluster-e2e crds crds-check chart-check \
	images images-push images-check

# Benchmark size; override e.g. `make bench-inventory BENCH_ORDERS=1000000`.
BENCH_PRODUCTS ?= 100000
BENCH_ORDERS ?= 300000
# `make bench-cdc BENCH_CDC_ROWS=1000000 BENCH_CDC_ROWS_PER_TXN=1`.
BENCH_CDC_ROWS ?= 500000
BENCH_CDC_ROWS_PER_TXN ?= 5
# Read-model benchmark; e.g. `make bench-read-model BENCH_RM_PRODUCTS=200000 BENCH_RM_WS_CLIENTS=100`.
BENCH_RM_PRODUCTS ?= 1000000
BENCH_RM_PARTITIONS ?= 2,6
BENCH_RM_WS_CLIENTS ?= 1000
BENCH_RM_WS_RATE ?= 5000

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

toolchain: ## Check the Rust toolchain has what the build needs
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "clippy missing: rustup component add clippy" >&2; exit 1; }

build: toolchain ## Build every crate and binary
	$(CARGO) build --workspace --all-targets --locked

fmt: ## Format the Rust code
	$(CARGO) fmt --all

fmt-check: toolchain ## Fail if the Rust code is not formatted
	$(CARGO) fmt --all -- --check

lint: toolchain ## clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit-test: toolchain ## Tests that need no running servers
	$(CARGO) test --workspace --locked

# The CRDs live twice: crds/ for kubectl users and charts/kartflow/crds/ for helm.
CRD_DIRS := crds charts/kartflow/crds

crds: ## Regenerate crds/ and charts/kartflow/crds/ from the Rust types in operator/src/crd
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(CARGO) run -q -p kartflow-operator --bin crdgen --locked -- "$$tmp" && \
	  for d in $(CRD_DIRS); do mkdir -p "$$d" && rm -f "$$d"/*.yaml && cp "$$tmp"/*.yaml "$$d"/; done

crds-check: ## Fail if crds/ or charts/kartflow/crds/ differs from what the Rust types generate
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(CARGO) run -q -p kartflow-operator --bin crdgen --locked -- "$$tmp" && \
	  stale= && for d in $(CRD_DIRS); do diff -ru "$$d" "$$tmp" || stale="$$stale $$d/"; done && \
	  if [[ -n "$$stale" ]]; then echo "out of date with operator/src/crd:$$stale; run 'make crds' and commit the result" >&2; exit 1; fi

chart-check: ## Lint and render the Helm chart, check its values schema (helm: make cluster-build)
	hack/chart-check.sh

test: toolchain fmt-check lint crds-check ## Everything: format, lint, unit, integration and end-to-end tests
	# The process node maps kartflow images to target/debug binaries: build them first.
	$(CARGO) build --workspace --locked
ifeq ($(STACK),local)
	hack/cluster/build.sh >/dev/null
	hack/chart-check.sh
	# The chart's alerts: promtool check rules and test rules (promtool from Go modules, cached).
	hack/prometheus/check.sh
	hack/dev.sh up
	# The images: built twice (same digests), pushed to the stack's registry, run in a chroot.
	hack/images/check.sh
	hack/cluster/up.sh
	hack/cluster/smoke.sh
	hack/cluster/e2e.sh
else
	# No cluster build here: chart-check uses the pinned helm if cached, else helm on PATH or $$HELM.
	hack/chart-check.sh
endif
	# The read model's page is tested in headless Chromium (Debian's package, installed once).
	hack/chromium.sh >/dev/null
	$(CARGO) test --workspace --locked --no-fail-fast -- --include-ignored

images: ## Build the kartflow/operator and kartflow/worker OCI archives into target/images (no daemon)
	hack/images/build.sh
	@if hack/registry/registry.sh status >/dev/null 2>&1; then hack/images/push.sh --local; \
	  else echo "the local registry is not running, so nothing was pushed (make dev-up starts it; make images-push REGISTRY=... pushes elsewhere)"; fi

images-push: ## Push the archives of make images to REGISTRY, e.g. make images-push REGISTRY=127.0.0.1:5000
	@[ -n "$(REGISTRY)" ] || { echo "set REGISTRY, e.g. make images-push REGISTRY=127.0.0.1:5000" >&2; exit 1; }
	hack/images/push.sh "$(REGISTRY)"

images-check: ## The images' checks of make test: reproducible, pushable, runnable (root)
	hack/images/check.sh

dev-up: ## Start the local data stack (Kafka KRaft, PostgreSQL, S3 store, image registry); idempotent
	hack/dev.sh up

dev-down: ## Stop the local data stack (only what dev-up started)
	hack/dev.sh down

dev-status: ## Show whether the local data stack runs
	hack/dev.sh status

cluster-build: ## Build the local Kubernetes control plane, etcd and helm from Go modules (cached)
	hack/cluster/build.sh

cluster-up: ## Start the local Kubernetes cluster: control plane and process node (builds on first use; root)
	hack/cluster/up.sh

cluster-down: ## Stop the local Kubernetes cluster and every pod process
	hack/cluster/down.sh

cluster-env: ## Print KUBECONFIG and PATH for the local cluster: eval "$(make -s cluster-env)"
	@hack/cluster/env.sh

cluster-smoke: ## Check a running local cluster (version, RBAC, controllers, helm)
	hack/cluster/smoke.sh

cluster-e2e: ## End-to-end checks of the process node (pods as processes, probes, volumes, RBAC, helm)
	hack/cluster/e2e.sh

bench-inventory: ## Inventory worker vs raw transactional passthrough (results in target/bench/)
	hack/dev.sh up >/dev/null
	$(CARGO) bench -p kartflow-worker --bench inventory --locked -- \
	  --products $(BENCH_PRODUCTS) --orders $(BENCH_ORDERS)

bench-cdc: ## CDC worker vs pg_recvlogical on the same backlog (results in target/bench/)
	hack/dev.sh up >/dev/null
	$(CARGO) bench -p kartflow-worker --bench cdc --locked -- \
	  --rows $(BENCH_CDC_ROWS) --rows-per-txn $(BENCH_CDC_ROWS_PER_TXN)

bench-read-model: ## Read replica restore vs raw consumer, GET latency, WebSocket fan-out (target/bench/)
	hack/dev.sh up >/dev/null
	$(CARGO) bench -p kartflow-worker --bench read_model --locked -- \
	  --products $(BENCH_RM_PRODUCTS) --partitions $(BENCH_RM_PARTITIONS) \
	  --ws-clients $(BENCH_RM_WS_CLIENTS) --ws-rate $(BENCH_RM_WS_RATE)

demo: ## Bring everything up and show the pipeline working (root; see hack/demo/)
	hack/demo/demo.sh up

demo-down: ## Remove what make demo created; the cluster and data stack keep running
	hack/demo/demo.sh down
