# mk/parity.mk -- build the parity suite's oracle: polaris-go answering the questions that
# tests/parity also asks the filter (issue 9).
#
# Included by the top-level Makefile; paths are relative to the repo root. Needs only Go and the
# Go module proxy: tests/parity/oracle/ is a small module that pins
# github.com/polarismesh/polaris-go v1.6.1 (see its go.mod, go.sum).
#
#   make parity-oracle        -> build/parity-oracle (rebuilt only when
#                                tests/parity/oracle/{*.go,go.mod,go.sum} change)
#   make clean-parity-oracle  -> remove the binary

GO                ?= go
PARITY_ORACLE_SRC := tests/parity/oracle
PARITY_ORACLE_BIN ?= build/parity-oracle
PARITY_ORACLE_DEPS := $(wildcard $(PARITY_ORACLE_SRC)/*.go) \
                      $(PARITY_ORACLE_SRC)/go.mod $(PARITY_ORACLE_SRC)/go.sum

.PHONY: parity-oracle clean-parity-oracle

parity-oracle: $(PARITY_ORACLE_BIN)

# -mod=readonly: go.sum is committed; a build never rewrites go.mod/go.sum.
$(PARITY_ORACLE_BIN): $(PARITY_ORACLE_DEPS)
	@mkdir -p $(dir $@)
	cd $(PARITY_ORACLE_SRC) && CGO_ENABLED=0 $(GO) build -mod=readonly \
		-buildvcs=false -trimpath -o $(abspath $@).tmp .
	mv -f $@.tmp $@

clean-parity-oracle:
	rm -f $(PARITY_ORACLE_BIN) $(PARITY_ORACLE_BIN).tmp
