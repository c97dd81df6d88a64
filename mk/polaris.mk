# mk/polaris.mk -- build the real PolarisMesh server used by the e2e tests.
#
# Included by the top-level Makefile; paths are relative to the repo root
# (run make from there, or with -C). Needs only Go and the Go module proxy:
# polaris-server/ is a tiny wrapper module that pins
# github.com/polarismesh/polaris v1.18.1 (see polaris-server/go.mod, go.sum).
#
#   make polaris-server        -> build/polaris-server (rebuilt only when
#                                 polaris-server/{*.go,go.mod,go.sum} change)
#   make clean-polaris-server  -> remove the binary

GO                 ?= go
POLARIS_SERVER_SRC := polaris-server
POLARIS_SERVER_BIN ?= build/polaris-server
POLARIS_SERVER_DEPS := $(wildcard $(POLARIS_SERVER_SRC)/*.go) \
                       $(POLARIS_SERVER_SRC)/go.mod $(POLARIS_SERVER_SRC)/go.sum

.PHONY: polaris-server clean-polaris-server

polaris-server: $(POLARIS_SERVER_BIN)

# -mod=readonly: go.sum is committed; a build never rewrites go.mod/go.sum.
# -buildvcs=false: don't stamp git state (fails in some sandboxes/clones).
$(POLARIS_SERVER_BIN): $(POLARIS_SERVER_DEPS)
	@mkdir -p $(dir $@)
	cd $(POLARIS_SERVER_SRC) && CGO_ENABLED=0 $(GO) build -mod=readonly \
		-buildvcs=false -trimpath -o $(abspath $@).tmp .
	mv -f $@.tmp $@

clean-polaris-server:
	rm -f $(POLARIS_SERVER_BIN) $(POLARIS_SERVER_BIN).tmp
