# Tributary: `make help` lists the targets.
SHELL := /bin/bash
STACK := infra/stack.sh
# The tests find the stack through these (ports overridable with TRIBUTARY_*_PORT).
TEST_ENV = eval "$$($(STACK) env)" &&

.PHONY: help up down status install build lint fmt test test-unit chaos demo bench bench-quick clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: ## start the local stack (Tansu, Redis, moto S3); installs what is missing
	@$(STACK) up

down: ## stop what `make up` started
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

test: lint up ## lint, bring the stack up, run every test of the workspace
	cargo build --workspace --bins
	$(TEST_ENV) cargo test --workspace --no-fail-fast

test-unit: ## unit tests only (no services needed)
	cargo test --workspace --lib --bins

chaos: up ## the fault suite at full size (minutes; TRIBUTARY_CHAOS_SEED=N replays a run)
	cargo build --workspace --bins
	$(TEST_ENV) TRIBUTARY_CHAOS=full cargo test -p integration-tests --test chaos -- --nocapture --test-threads=1

demo: up ## the whole platform on generated events, with a dashboard
	@bash infra/demo.sh

bench: up ## the benchmark harness (full size)
	@bash bench/run.sh

bench-quick: up ## the benchmark harness, a few minutes
	@bash bench/run.sh --quick

clean: down ## stop the stack and remove its state
	rm -rf .stack
