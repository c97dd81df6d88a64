# mk/oci.mk -- ship the filter the ways Envoy and Istio users consume it.
#
# Included by the top-level Makefile (which defines WASM and the `wasm` target); run make from
# the repo root. No Docker daemon, no root: scripts/oci_image.py (Python stdlib) writes the image.
#
#   make oci        -> build/plugin.wasm + build/plugin.wasm.sha256   (url: https:// or file://)
#                      build/oci/polaris-wasm/       OCI image layout  (skopeo: oci:DIR:TAG)
#                      build/oci/polaris-wasm.tar    the same as one tar (oci-archive:FILE:TAG)
#                      build/oci/polaris-wasm.manifest.sha256  the WasmPlugin `sha256` for oci://
#   make oci-push OCI_REPO=registry.example.com/team/polaris-wasm
#                   -> copies the image to a registry with skopeo (manifest bytes kept as built,
#                      so the digest in polaris-wasm.manifest.sha256 still holds)
#
# The image is the Wasm image spec's *compat* variant (one application/vnd.oci.image.layer.v1.tar+gzip
# layer holding plugin.wasm, manifest annotation module.wasm.image/variant=compat), the variant
# Istio's fetcher tries first; the script's docstring and README.md ("OCI artifact") say why.
# It is reproducible: the same wasm gives the same digests.

OCI_NAME ?= polaris-wasm
OCI_TAG  ?= $(shell awk -F'"' '/^version *=/{print $$2; exit}' Cargo.toml)
OCI_REPO ?=
# e.g. --dest-tls-verify=false for a plain-HTTP registry, --dest-creds user:token
OCI_PUSH_FLAGS ?=

.PHONY: oci oci-tools oci-push

oci: wasm
	python3 scripts/oci_image.py --wasm $(WASM) --out build --name $(OCI_NAME) --tag $(OCI_TAG)

# skopeo: the real OCI tool tests/e2e/test_oci.py checks the image with (and oci-push copies with).
oci-tools:
	@command -v skopeo >/dev/null || (apt-get update -q && apt-get install -y -q skopeo)

ifneq ($(filter oci-push,$(MAKECMDGOALS)),)
ifeq ($(OCI_REPO),)
$(error make oci-push needs OCI_REPO=registry/repository)
endif
endif

oci-push: oci oci-tools
	skopeo copy --preserve-digests $(OCI_PUSH_FLAGS) oci:build/oci/$(OCI_NAME):$(OCI_TAG) docker://$(OCI_REPO):$(OCI_TAG)
