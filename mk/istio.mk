# mk/istio.mk -- build a real Istio control plane (istiod) and the stock pilot-agent for tests/istio.
#
# Included by the top-level Makefile; run make from the repo root. Needs only Go and the Go module
# proxy: istio/ is a small wrapper module pinning istio.io/istio at one master pseudo-version (the
# proxy serves no release tags), see istio/go.mod. istio/main.go says why istiod is ours and not the
# stock pilot-discovery; istio/tools.go makes the same go.sum cover pilot-agent.
#
#   make istio        -> build/istiod, build/pilot-agent  (rebuilt only when istio/* change)
#                        build/istio/envoy_bootstrap_tmpl.json  Istio's own Envoy bootstrap
#                        template, from the pinned module (pilot-agent's default path is a
#                        container's /var/lib/istio/envoy/)
#   make clean-istio  -> remove what `make istio` made; the Go caches below stay
#                        (chmod -R u+w build/go-istio && rm -rf build/go-istio removes them)
#
# A cold build takes ~5.5 min and ~2.8 GB RAM on 2 cores. Its module and build caches are kept in
# build/go-istio/ (~3 GB), so a later build on the same machine takes seconds; nothing assumes
# they exist.

GO          ?= go
ISTIO_SRC   := istio
ISTIO_GO    := $(abspath build/go-istio)
ISTIOD_BIN  := build/istiod
PILOT_AGENT_BIN := build/pilot-agent
ISTIO_BOOTSTRAP := build/istio/envoy_bootstrap_tmpl.json
ISTIO_DEPS  := $(wildcard $(ISTIO_SRC)/*.go) $(ISTIO_SRC)/go.mod $(ISTIO_SRC)/go.sum
ISTIO_GOENV := GOMODCACHE=$(ISTIO_GO)/mod GOCACHE=$(ISTIO_GO)/cache GOFLAGS=-modcacherw CGO_ENABLED=0

.PHONY: istio istio-tools clean-istio

# The registry tests/istio pushes our image to (skopeo comes with oci-tools, mk/oci.mk).
istio-tools:
	@command -v docker-registry >/dev/null || (apt-get update -q && apt-get install -y -q docker-registry)

istio: $(ISTIOD_BIN) $(PILOT_AGENT_BIN) $(ISTIO_BOOTSTRAP)

# -mod=readonly: go.sum is committed; a build never rewrites go.mod/go.sum.
$(ISTIOD_BIN): $(ISTIO_DEPS)
	@mkdir -p $(dir $@)
	cd $(ISTIO_SRC) && $(ISTIO_GOENV) $(GO) build -mod=readonly -buildvcs=false -trimpath \
		-o $(abspath $@).tmp .
	mv -f $@.tmp $@

# The stock agent: only the pinned module matters.
$(PILOT_AGENT_BIN): $(ISTIO_SRC)/go.mod $(ISTIO_SRC)/go.sum
	@mkdir -p $(dir $@)
	cd $(ISTIO_SRC) && $(ISTIO_GOENV) $(GO) build -mod=readonly -buildvcs=false -trimpath \
		-o $(abspath $@).tmp istio.io/istio/pilot/cmd/pilot-agent
	mv -f $@.tmp $@

$(ISTIO_BOOTSTRAP): $(ISTIO_SRC)/go.mod
	@mkdir -p $(dir $@)
	cd $(ISTIO_SRC) && $(ISTIO_GOENV) $(GO) mod download istio.io/istio
	cd $(ISTIO_SRC) && install -m 0644 "$$($(ISTIO_GOENV) $(GO) list -mod=readonly -m -f '{{.Dir}}' istio.io/istio)/tools/packaging/common/envoy_bootstrap.json" $(abspath $@)

clean-istio:
	rm -f $(ISTIOD_BIN) $(ISTIOD_BIN).tmp $(PILOT_AGENT_BIN) $(PILOT_AGENT_BIN).tmp
	rm -rf build/istio
