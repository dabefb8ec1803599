# Tributary: `make help` lists the targets.
SHELL := /bin/bash
STACK := infra/stack.sh
# The tests find the stack through these (ports overridable with TRIBUTARY_*_PORT).
TEST_ENV = eval "$$($(STACK) env)" &&

.PHONY: help up up-secure down status install build lint fmt test test-unit chaos demo bench bench-quick bench-batch bench-serving clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: ## start the local stack (Tansu, Redis, moto S3); installs what is missing
	@$(STACK) up

up-secure: ## the stack plus its secured services (SASL+TLS Kafka, TLS+ACL Redis, Redis Cluster)
	@$(STACK) up --secure

down: ## stop what `make up`/`make up-secure` started
	@$(STACK) down

status: ## show the stack's services, ports and state dir
	@$(STACK) status

install: ## install the stack's tools without starting them
	@$(STACK) install

build: ## build the three binaries (release)
	cargo build --release --bins

lint: ## rustfmt check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	cargo fmt --all

test: lint up-secure ## lint, bring the secured stack up, run every test of the workspace
	cargo build --workspace --bins
	$(TEST_ENV) cargo test --workspace --no-fail-fast

test-unit: ## unit tests only (no services needed)
	cargo test --workspace --lib --bins

chaos: up ## the fault suite at full size (minutes; TRIBUTARY_CHAOS_SEED=N replays a run)
	cargo build --workspace --bins
	$(TEST_ENV) TRIBUTARY_CHAOS=full cargo test -p integration-tests --test chaos -- --nocapture --test-threads=1

# `make demo SECURE=1`: the demo through the secured services, HTTPS API behind an API key.
DEMO_STACK := $(if $(filter 1,$(SECURE)),up-secure,up)

demo: $(DEMO_STACK) ## the whole platform on generated events, with a dashboard (SECURE=1: secured)
	@$(if $(filter 1,$(SECURE)),SECURE=1 ,SECURE=0 )bash infra/demo.sh

bench: up-secure ## the benchmark harness (full size)
	@bash bench/run.sh

bench-quick: up-secure ## the benchmark harness, a few minutes
	@bash bench/run.sh --quick

bench-batch: up ## the batch-at-scale figures alone (50M-event day: memory budget vs DuckDB, Ballista)
	cargo build --release --bins
	@mkdir -p bench/results && bash bench/batch_scale.sh bench/results/batch_scale.json && cat bench/results/batch_scale.json

bench-serving: up ## the serving figures alone (series at 64 clients: idle, as_of, events arriving; redis-benchmark)
	cargo build --release --bins
	@d=$$(mktemp -d) && bash bench/serving.sh $$d; rc=$$?; rm -rf $$d; exit $$rc

clean: down ## stop the stack and remove its state
	rm -rf .stack
