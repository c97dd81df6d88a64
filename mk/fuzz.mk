# mk/fuzz.mk -- coverage-guided fuzzing of every untrusted input (cargo-fuzz, libFuzzer).
#
# Included by the top-level Makefile (which defines TOOLS); run make from the repo root.
# The fuzz crate is fuzz/ (its own workspace and Cargo.lock: the filter's build never sees it).
#
#   make fuzz          every target for FUZZ_SECONDS (default 120) each, one after the other;
#                      prints executions, rate, coverage (cov/ft) and corpus per target, and the total
#   make fuzz-smoke    every target for FUZZ_SMOKE_SECONDS (default 3) each from the committed
#                      seeds, built without optimizations (quick to build, slow to run): part of
#                      `make test`, so the targets cannot rot
#   make fuzz-seeds    records real Polaris answers as discover_response seeds (scripts/fuzz_seeds.py)
#
# On a fresh machine these install the nightly toolchain (rustup, minimal profile) and cargo-fuzz
# (into .tools/). Seeds are committed in fuzz/corpus/<target>/ and only read; what the fuzzer finds
# goes to fuzz/work/<target>/ and crashing inputs to fuzz/artifacts/<target>/ (both git-ignored).

FUZZ_SECONDS       ?= 120
FUZZ_SMOKE_SECONDS ?= 3
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ         := $(TOOLS)/bin/cargo-fuzz

.PHONY: fuzz fuzz-smoke fuzz-tools fuzz-seeds clean-fuzz

fuzz-tools: $(CARGO_FUZZ)
	@rustup toolchain list | grep -q '^nightly-' || rustup toolchain install nightly --profile minimal

$(CARGO_FUZZ):
	cargo install -q cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(TOOLS)

fuzz: fuzz-tools
	python3 scripts/fuzz_run.py --seconds $(FUZZ_SECONDS) --cargo-fuzz $(CARGO_FUZZ)

# Unoptimized (its build is what a fresh clone, as CI uses, pays on every `make test`), and from
# the committed seeds alone (so its cost does not grow with what `make fuzz` found).
fuzz-smoke: fuzz-tools
	python3 scripts/fuzz_run.py --dev --seeds-only --seconds $(FUZZ_SMOKE_SECONDS) \
		--cargo-fuzz $(CARGO_FUZZ)

fuzz-seeds: polaris-server
	python3 scripts/fuzz_seeds.py

clean-fuzz:
	rm -rf fuzz/target fuzz/work fuzz/artifacts
