#!/usr/bin/env python3
"""Package the filter as a Wasm OCI image that Istio's WasmPlugin (`url: oci://...`) pulls.

    python3 scripts/oci_image.py            # what `make oci` runs (defaults below)

Writes, from target/wasm32-wasip1/release/polaris_wasm.wasm (the output of `make wasm`):

    build/plugin.wasm                       the module, for `url: https://...` / `file://...`
    build/plugin.wasm.sha256                `<hex>  plugin.wasm` (sha256sum -c format; the
                                            WasmPlugin `sha256` for https:// and file:// URLs)
    build/oci/polaris-wasm/                 OCI image layout (oci-layout, index.json, blobs/)
    build/oci/polaris-wasm.tar              the same layout as one tar (skopeo's oci-archive:)
    build/oci/polaris-wasm.manifest.sha256  manifest digest: the WasmPlugin `sha256` for oci://
                                            URLs (Istio checks the manifest digest, not the
                                            module's) and the @sha256: to pin an image by

Format: the *compat* variant of the Wasm image spec (solo-io/wasm, spec-compat.md), which is what
Istio's image fetcher tries first (pkg/wasm/imagefetcher.go): a standard OCI image manifest whose
one layer is `application/vnd.oci.image.layer.v1.tar+gzip` holding a single file `plugin.wasm`,
and the manifest annotation `module.wasm.image/variant: compat` the spec asks for with that layer
type. Why compat and not the *oci* variant (`application/vnd.module.wasm.content.layer.v1+wasm`):
Istio accepts the oci variant only with exactly two layers (a runtime-config layer plus the raw
module), so it cannot be "one layer holding plugin.wasm"; and compat uses only standard media
types, so every registry and every OCI tool (skopeo, crane, docker, podman, oras) can push, copy
and inspect it. Istio reads the layer with gzip, so it must be tar+gzip, not plain tar.

Why a stdlib script instead of umoci/buildah: the image is three small JSON documents and a
one-file tar, and writing them directly gives exactly the media types and annotation above with
byte-for-byte reproducible output (fixed tar metadata, gzip header without name or time, no
creation timestamps), with no Docker daemon, no root, and nothing to install. The check is done by
an independent real OCI tool: tests/e2e/test_oci.py inspects and copies the result with skopeo.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
PLUGIN_FILE = "plugin.wasm"
WASM_MAGIC = b"\0asm"


def cargo_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not m:
        raise SystemExit("no version in Cargo.toml")
    return m.group(1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def single_file_tar(name: str, data: bytes, mtime: int = 0) -> bytes:
    """A tar with one regular file; every metadata field fixed so the bytes are reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of the build's path and time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def tar_directory(src: Path, dest: Path) -> None:
    """The layout directory as a tar (oci-archive), sorted, with fixed metadata."""
    with tarfile.open(dest, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))


def write_blob(layout: Path, data: bytes) -> dict:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build(wasm: Path, out: Path, name: str, tag: str) -> dict:
    module = wasm.read_bytes()
    if not module.startswith(WASM_MAGIC):
        raise SystemExit(f"{wasm} is not a wasm module (no \\0asm header)")

    # The module itself, for https:// and file:// URLs.
    out.mkdir(parents=True, exist_ok=True)
    (out / PLUGIN_FILE).write_bytes(module)
    module_digest = sha256(module)
    (out / f"{PLUGIN_FILE}.sha256").write_text(f"{module_digest}  {PLUGIN_FILE}\n")

    oci = out / "oci"
    oci.mkdir(exist_ok=True)
    layout = oci / name
    staging = oci / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))

    layer_tar = single_file_tar(PLUGIN_FILE, module)
    layer = write_blob(staging, gzip_bytes(layer_tar))
    config = write_blob(
        staging,
        canonical_json(
            {
                # GOARCH/GOOS values for WebAssembly + WASI preview 1, as the CNCF Wasm OCI
                # artifact spec uses them; nothing pulls this image by platform.
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer_tar)}"]},
                "history": [{"created_by": "scripts/oci_image.py (make oci)"}],
            }
        ),
    )
    manifest_doc = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, **config},
            "layers": [{"mediaType": MT_LAYER, **layer}],
            "annotations": {
                VARIANT_ANNOTATION: "compat",
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": tag,
                "org.opencontainers.image.description": "PolarisMesh service discovery for Envoy "
                "as a proxy-wasm HTTP filter (plugin.wasm)",
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        }
    )
    manifest = write_blob(staging, manifest_doc)
    (staging / "index.json").write_bytes(
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [
                    {
                        "mediaType": MT_MANIFEST,
                        **manifest,
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )

    shutil.rmtree(layout, ignore_errors=True)
    os.replace(staging, layout)
    archive = oci / f"{name}.tar"
    tmp_archive = oci / f".{name}.tar.tmp"
    tar_directory(layout, tmp_archive)
    os.replace(tmp_archive, archive)
    manifest_hex = manifest["digest"].removeprefix("sha256:")
    (oci / f"{name}.manifest.sha256").write_text(f"{manifest_hex}\n")

    return {
        "plugin": str(out / PLUGIN_FILE),
        "plugin_sha256": module_digest,
        "layout": str(layout),
        "archive": str(archive),
        "reference": f"oci:{layout}:{tag}",
        "manifest_digest": manifest["digest"],
        "layer_digest": layer["digest"],
        "layer_media_type": MT_LAYER,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/polaris_wasm.wasm")
    p.add_argument("--out", type=Path, default=ROOT / "build")
    p.add_argument("--name", default="polaris-wasm")
    p.add_argument("--tag", default=None, help="image tag (default: the Cargo.toml version)")
    args = p.parse_args(argv)
    result = build(args.wasm, args.out, args.name, args.tag or cargo_version())
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
