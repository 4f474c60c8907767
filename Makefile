# gpve entry points. Quick start on a fresh Debian 12 machine, as root:
#   make run     install dependencies, build, initialise ./.gpve-data once, serve on :8006
#   make test    what CI runs: fmt, clippy, the fdb feature check, all tests
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Build outputs live outside the clone so fresh clones (and CI) reuse them.
CARGO_TARGET_DIR ?= /var/tmp/gpve-target
export CARGO_TARGET_DIR
# rustup installs into ~/.cargo/bin, which non-login shells may not have on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

DATA_DIR ?= $(CURDIR)/.gpve-data
LISTEN ?= 0.0.0.0:8006
PORT := $(lastword $(subst :, ,$(LISTEN)))
RELEASE_BIN := $(CARGO_TARGET_DIR)/release

.PHONY: help deps build run test bench fmt clippy

help: ## Show this help.
	@echo "gpve make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 16
	@echo
	@echo "Variables: CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) DATA_DIR=$(DATA_DIR) LISTEN=$(LISTEN)"
	@echo "           GPVE_ROOT_PASSWORD (first 'make run' only; generated and printed if unset)"

deps: ## Install system packages (idempotent, skips apt when all are present).
	@bash scripts/install-deps.sh

build: deps ## Build release gpve-server and gpvectl.
	cargo build --release -p gpve-api --bin gpve-server --bin gpvectl

run: build ## Build, initialise ./.gpve-data on first run, serve the API on :8006.
	@if [[ ! -f "$(DATA_DIR)/config.json" ]]; then \
		generated=""; \
		if [[ -z "$${GPVE_ROOT_PASSWORD:-}" ]]; then \
			GPVE_ROOT_PASSWORD=$$(head -c 18 /dev/urandom | base64 | tr -d '/+='); generated=1; \
		fi; \
		GPVE_ROOT_PASSWORD="$$GPVE_ROOT_PASSWORD" "$(RELEASE_BIN)/gpve-server" init --data-dir "$(DATA_DIR)"; \
		if [[ -n "$$generated" ]]; then \
			echo; echo "root@pam password (shown only this once): $$GPVE_ROOT_PASSWORD"; echo; \
		fi; \
	fi
	@fp=$$("$(RELEASE_BIN)/gpvectl" fingerprint --cert "$(DATA_DIR)/cert.pem"); \
	echo "gpve API: https://$$(hostname):$(PORT)/api2/json  (also https://127.0.0.1:$(PORT))"; \
	echo "certificate fingerprint (SHA-256): $$fp"; \
	echo "log in from another shell:"; \
	echo "  $(RELEASE_BIN)/gpvectl login --server https://127.0.0.1:$(PORT) --user root@pam --fingerprint $$fp"; \
	echo "  $(RELEASE_BIN)/gpvectl get nodes"; \
	echo
	exec "$(RELEASE_BIN)/gpve-server" run --data-dir "$(DATA_DIR)" --listen "$(LISTEN)"

fmt: ## Check formatting.
	cargo fmt --all --check

clippy: ## Lint every crate and target, warnings denied.
	cargo clippy --workspace --all-targets -- -D warnings

test: deps fmt clippy ## What CI runs: deps, fmt, clippy, fdb type-check, all tests (debug).
	cargo check -p gpve-store --features fdb
	cargo test --workspace

bench: deps ## Run the benchmarks (release); figures go to docs/benchmarks.md.
	cargo bench --workspace
	cargo test -p gpve-supervisor --release --test bench -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_join bench_heartbeat_round_trip -- --ignored --nocapture
	cargo test -p gpve-api --release --test vm_disks bench_ -- --ignored --nocapture
	cargo test -p gpve-api --release --test tenancy bench_ -- --ignored --nocapture
	cargo test -p gpve-transport --release --test store_contract bench_remote_transactions -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_agents bench_forwarded_status -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_sessions bench_remote_tree -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_bench -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_ha -- --nocapture
	cargo test -p gpve-actors --release --lib -- scheduler::tests::placement_time --nocapture --test-threads 1
	cargo test -p gpve-hypervisor --release --test qemu_migration bench_live_migration_256mib -- --ignored --nocapture
	cargo test -p gpve-api --release --test cluster_migrate bench_agent_migration -- --ignored --nocapture
	VC_BENCH_N=1000 cargo test -p gpve-api --release --test vcluster_bench -- --ignored --nocapture
	cargo test -p gpve-api --release --test watch_bench -- --ignored --nocapture
	cargo build --release -p gpve-simulation
	$(RELEASE_BIN)/gpve-simulation --seed 1 --nodes 3 --vms 50 --duration 600s --faults default
	$(RELEASE_BIN)/gpve-simulation --seeds 0..10 --nodes 3 --vms 50 --duration 600s --check-determinism
