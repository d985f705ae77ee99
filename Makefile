# daoflow-operator. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install the package with its test tools

.PHONY: binaries
binaries: install ## Build the pinned control-plane binaries into the cache (once)
	$(PY) -m daoflow_operator.localcluster build

.PHONY: cluster
cluster: install node-deps ## Start the local control plane in the background and print how to use it
	$(PY) -m daoflow_operator.localcluster up

.PHONY: cluster-down
cluster-down: install ## Stop the local control plane
	$(PY) -m daoflow_operator.localcluster down

.PHONY: node-deps
node-deps: ## Install what the real node needs (runc, CNI plugins, buildah, debootstrap), if missing
	@bash hack/install-node.sh

.PHONY: run
run: install node-deps ## Run the operator (the local control plane and its real node when KUBECONFIG is unset)
	$(PY) -m daoflow_operator.dev run

.PHONY: crds
crds: install ## Generate manifests/crds/ and the chart's CRD templates from the pydantic models
	$(PY) -m daoflow_operator.api.crdgen

# A non-default set for lint-chart: every optional block of the chart rendered at least once.
LINT_SETS := --set replicas=2 --set podDisruptionBudget.enabled=true --set 'watchNamespaces={shop,billing}' \
	--set crds.enabled=false --set commonLabels.team=storage --set priorityClassName=system-cluster-critical \
	--set 'nodeSelector.kubernetes\.io/os=linux' --set runner.image=registry.example/daoflow-operator:1.0.0

.PHONY: lint-chart
lint-chart: install ## helm lint --strict over the chart's default values and a non-default set (pinned helm)
	@helm=$$($(PY) -c 'from daoflow_operator.localcluster import build; print(build.helm_path())') && \
		$$helm lint --strict helm/daoflow-operator && $$helm lint --strict helm/daoflow-operator $(LINT_SETS)

.PHONY: test-deps
test-deps: ## Install the system packages the tests need (openssl, PostgreSQL, zstd, bsdtar), if missing
	@bash hack/install-storage.sh

.PHONY: test
test: install test-deps node-deps ## Run the whole test suite (starts the local control plane and its real node once)
	$(PY) -m pytest

.PHONY: fuzz
fuzz: install test-deps ## Differential tar corpus, longer: DAOFLOW_FUZZ_EXAMPLES archives (5000), a random seed it prints
	DAOFLOW_FUZZ_EXAMPLES=$${DAOFLOW_FUZZ_EXAMPLES:-5000} DAOFLOW_FUZZ_SEED=$${DAOFLOW_FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')} \
		$(PY) -m pytest -p no:cacheprovider tests/runner/test_runner_differential.py

.PHONY: bench
bench: install ## Latency from applying a BackupRestore to its plan and to its Job (p50/p99)
	$(PY) bench/restore_latency.py

.PHONY: bench-election
bench-election: install ## Leader election: time without a leader after kill -9 (10x) and SIGTERM (10x) of the holder
	$(PY) bench/leader_takeover.py

.PHONY: bench-runner
bench-runner: install ## Runner throughput and peak RSS (both tar readers, with their corpus counts), then the S3 clients
	$(PY) bench/runner_bench.py --readers own,libarchive --repeat 3 --differential
	$(PY) bench/s3_clients.py --repeat 3
