# aliasroll: `make demo` shows it working, `make test` proves it. Everything installs itself:
# uv (pinned) into a user-level cache, the Python environment into .venv, the control plane
# (built from source once, then cached) under ~/.cache/aliasroll.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE_DIR   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/aliasroll
UV_VERSION  := 0.13.8
UV          := $(CACHE_DIR)/tools/uv-$(UV_VERSION)/bin/uv
VENV        := .venv
PY          := $(VENV)/bin/python
WORK        := .work
KUBECONFIG_LOCAL := $(CURDIR)/$(WORK)/cluster/kubeconfig
PYTEST      := $(PY) -m pytest

.PHONY: help
help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	@echo "installing uv $(UV_VERSION) into $(CACHE_DIR)/tools"
	python3 -m venv "$(CACHE_DIR)/tools/uv-$(UV_VERSION)"
	"$(CACHE_DIR)/tools/uv-$(UV_VERSION)/bin/pip" install --quiet --require-hashes -r operator/uv-requirements.txt

# Compiled bytecode halves the start of every mlflow process (this machine sets PYTHONDONTWRITEBYTECODE).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## Create .venv with the locked dependencies

# The control plane binaries, built from source on first use (about 10 minutes on 2 cores), then cached
# under $(CACHE_DIR)/bin. Built here rather than inside pytest so the progress shows as it happens.
.PHONY: cluster-binaries
cluster-binaries:
	@localenv/build.sh >/dev/null

.PHONY: node-binaries
node-binaries: ## The real node's binaries from source: containerd, ctr, runc shim, kubelet, kube-proxy, CoreDNS, CNI plugins (cached)
	@localenv/build.sh node >/dev/null

# Prometheus for the canary analysis' integration tests: API only (no web UI assets) and no service
# discovery but static, file and http (cold build about 5 minutes on 2 cores, then cached).
.PHONY: prometheus
prometheus: ## Prometheus from source, API only, for the canary analysis' tests (cached)
	@localenv/build.sh prometheus >/dev/null

# kube-router's network policy controller, NetworkPolicy enforcement for the real node's policy tests
# (opt-in: not part of `all`; cold build about 10 minutes on 2 cores, then cached).
.PHONY: network-policy-binaries
network-policy-binaries: ## kube-router from source, only its NetworkPolicy controller runs on the real node (cached)
	@localenv/build.sh network-policy >/dev/null

.PHONY: node-packages
node-packages: ## The real node's Debian packages (runc, iptables, socat, buildah, ...); needs root when one is missing
	@localenv/node-packages.sh

# The real node's images, built before the tests rather than inside a test fixture (a cold build
# takes minutes, more than a test's timeout on a loaded machine).
.PHONY: node-images
node-images: venv node-packages ## The real node's pause, serving and operator images, with buildah from the project's Dockerfiles (cached)
	@PYTHONPATH=localenv $(PY) -m localkube.images build pause serving operator >/dev/null

.PHONY: test
test: venv cluster-binaries node-binaries network-policy-binaries node-packages prometheus node-images ## Lint, unit, integration (real mlflow server, real Prometheus); beside them end-to-end (real control plane, kwok), real pods and the install tier (the operator image as pods), each in a session of its own
	$(PY) hack/tiers.py

.PHONY: unit
unit: venv ## Unit tests of pure logic (seconds)
	$(PYTEST) tests/unit

.PHONY: integration
integration: venv prometheus ## Integration tests against a real mlflow server (and a real Prometheus)
	$(PYTEST) tests/integration

.PHONY: e2e
e2e: venv cluster-binaries ## End-to-end tests against the local control plane (built on first use)
	$(PYTEST) tests/e2e

.PHONY: e2e-real
e2e-real: venv cluster-binaries node-binaries network-policy-binaries node-packages node-images ## Real pods of the built serving image on a real node (containerd, kubelet, kube-proxy in a network namespace; root)
	ALIASROLL_REQUIRE_REAL_NODE=1 $(PYTEST) tests/e2e_real

.PHONY: e2e-install
e2e-install: venv cluster-binaries node-binaries node-packages node-images ## The install tier: crds/ and `kubectl apply -k manifests/` as users run them, the operator image as pods on a real node (root)
	ALIASROLL_REQUIRE_REAL_NODE=1 $(PYTEST) tests/e2e_install

.PHONY: lint
lint: venv ## ruff (lint + format check), mypy --strict, the layers (lint-imports, .importlinter) and the docs site (mkdocs build --strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

.PHONY: docs
docs: venv ## Build the docs site into site/ (MkDocs, Material; the ModelDeployment reference rendered from crds/)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

.PHONY: docs-serve
docs-serve: venv ## Serve the docs site on http://127.0.0.1:8000, rebuilt as docs/ or crds/ change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

.PHONY: fmt
fmt: venv ## Format and fix what ruff can
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: run
run: venv ## Run the operator locally against the current kubeconfig (registries on loopback allowed)
	ALIASROLL_ALLOWED_DESTINATIONS="$${ALIASROLL_ALLOWED_DESTINATIONS:-*,127.0.0.0/8,::1}" $(PY) -m aliasroll --verbose

.PHONY: demo
demo: venv cluster-binaries node-binaries node-packages node-images ## The whole story on this machine: control plane, MLflow, deploy, move aliases, watch
	$(PY) demo/demo.py

.PHONY: demo-down
demo-down: venv ## Stop what the demo left running (operator, MLflow server, local control plane)
	$(PY) demo/demo.py down

.PHONY: bench
bench: bench-planner bench-rollout bench-ha bench-scale bench-serving bench-canary bench-hostile ## Every benchmark: planner (about 1 minute), rollout (about 12 minutes), failover (about 3), scale, serving, canary (6 to 12 minutes), hostile tenants (about 4)

.PHONY: bench-planner
bench-planner: venv ## A pass's planning (planner.plan, three resources), this tree against a git ref (AGAINST=HEAD), side by side: microseconds and ratio
	$(PY) bench/planner.py --against $(or $(AGAINST),HEAD)

.PHONY: bench-rollout
bench-rollout: venv ## Alias move -> pod template and rollout complete, p50/p95/max: polled (vs the interval) and pushed by a webhook; on the real node, version mode (spec.rollback): back to a warm version, a warm canary promoted, a failing bake, the warm pods held and their memory
	$(PY) bench/rollout_latency.py

.PHONY: bench-ha
bench-ha: venv cluster-binaries node-binaries node-packages node-images ## Failover of two replicas: kill -9 the leader process (6 times), delete the leader pod (3 times, real node, root), then move an alias; p50/max to leading and to applied
	$(PY) bench/failover.py

.PHONY: bench-scale
bench-scale: venv cluster-binaries ## 1,000 ModelDeployments (50 models, 10 namespaces) on one operator vs the control plane's own floor: Ready, RSS, registry calls, moves, restart
	$(PY) bench/scale.py

.PHONY: bench-serving
bench-serving: venv ## The model server against `mlflow models serve` and MLServer: cold start, req/s, p50/p99 at c=1/8/32; cold start of a model needing packages
	$(PY) bench/serving.py
	$(PY) bench/dependencies.py

.PHONY: bench-canary
bench-canary: venv cluster-binaries node-binaries node-packages ## @canary set -> promoted by the watched canary on real pods, vs the sum of its steps (root)
	$(PY) bench/canary_promotion.py

.PHONY: bench-hostile
bench-hostile: venv cluster-binaries ## One operator shared by a hostile tenant and an ordinary one: the ordinary one's alias move -> Ready before and beside the hostile one (p50, ratio), operator peak RSS, no restart
	$(PY) bench/hostile_tenants.py

.PHONY: serving-requirements
serving-requirements: $(UV) ## Re-pin serving-image/requirements.txt (and gate-requirements.txt) from their .in files, with the sha256 of every file
	$(UV) pip compile --quiet --python-version 3.11 --no-header --generate-hashes serving-image/requirements.in \
	  -o serving-image/requirements.txt
	$(UV) pip compile --quiet --python-version 3.11 --no-header --generate-hashes serving-image/gate-requirements.in \
	  -c serving-image/requirements.txt \
	  $$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' serving-image/requirements.txt) \
	  -o serving-image/gate-requirements.txt

# With a Docker daemon: docker build. Without one: buildah builds them on a base made from Debian's
# packages, nothing pulled from a registry, and exports OCI archives (plus the node's pause image) to
# $(CACHE_DIR)/images, keyed by their inputs (cold 3 to 5 minutes, then under a second; needs root).
.PHONY: images
images: ## Build the operator and serving images (Docker if a daemon answers, else buildah)
	@if docker info >/dev/null 2>&1; then \
	  version=$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/aliasroll/__init__.py); \
	  docker build -f operator/Dockerfile -t ghcr.io/aliasroll/operator:$$version .; \
	  docker build -f serving-image/Dockerfile -t ghcr.io/aliasroll/serving:$$version .; \
	else \
	  $(MAKE) --no-print-directory node-packages venv; \
	  PYTHONPATH=localenv $(PY) -m localkube.images build; \
	fi

.PHONY: crd
crd: venv ## Regenerate spec.serving of the CRD from Kubernetes' own schemas (hack/crdgen)
	$(MAKE) -C hack crd PY=$(CURDIR)/$(PY)

.PHONY: manifests
manifests: venv ## Render the install bundle (CRD + operator) to dist/install.yaml
	@mkdir -p dist
	@kubectl=$$($(PY) localenv/localcluster.py kubectl-path); \
	  { cat crds/*.yaml; echo "---"; $$kubectl kustomize manifests/; } > dist/install.yaml
	@echo "wrote dist/install.yaml"

.PHONY: deploy
deploy: ## Install the CRD and the operator into the current kubeconfig's cluster
	kubectl apply --server-side -f crds/
	kubectl apply -k manifests/

.PHONY: cluster-up
cluster-up: venv ## Start the local control plane (etcd, apiserver, controllers, kwok) and write its kubeconfig (REAL_NODE=1: also a real node)
	$(PY) localenv/localcluster.py up $(if $(REAL_NODE),--real-node)

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane
	$(PY) localenv/localcluster.py down

.PHONY: clean
clean: ## Remove .venv, .work and caches inside the clone (not the user-level binary cache)
	-$(PY) localenv/localcluster.py down 2>/dev/null
	rm -rf $(VENV) $(WORK) dist .pytest_cache .mypy_cache .ruff_cache
