"""Export exactly the proxy-wasm callbacks the filter implements, and export ours, not the SDK's.

Envoy's wasm host calls a `proxy_on_*` callback only if the module exports it, and the Rust SDK
exports all of them. Every export we drop is one VM entry fewer per request (a plain GET through
the SDK's full set costs seven). The filter dispatches callbacks itself (src/host/dispatch.rs,
exported as `polaris_on_*`, since the SDK's symbols take the ABI names): for each kept callback
with a `polaris_on_*` of ours, ours is exported under the ABI name and the SDK's is dropped.
Usage:

    python scripts/wasm_exports.py MODULE.wasm --keep proxy_on_request_headers ...   # rewrite
    python scripts/wasm_exports.py MODULE.wasm --lean --keep ...      # and mark it the lean build
    python scripts/wasm_exports.py MODULE.wasm --list                                # show
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXPORT_SECTION = 7


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def enc_uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sections(data: bytes):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, body = uleb(data, pos + 1)
        yield sid, data[pos:body + size], data[body:body + size]
        pos = body + size


def exports(body: bytes) -> list[tuple[str, bytes]]:
    count, pos = uleb(body, 0)
    out = []
    for _ in range(count):
        start = pos
        n, pos = uleb(body, pos)
        name = body[pos:pos + n].decode()
        pos += n + 1  # kind
        _, pos = uleb(body, pos)  # index
        out.append((name, body[start:pos]))
    return out


FULL = b"polaris-flavor:full"
LEAN = b"polaris-flavor:lean"
OURS = "polaris_on_"
ABI = "proxy_on_"


def renamed(entry: bytes, name: str) -> bytes:
    """The export entry under another name (same kind and index)."""
    n, pos = uleb(entry, 0)
    return enc_uleb(len(name)) + name.encode() + entry[pos + n:]


def rewrite(data: bytes, keep: set[str]) -> tuple[bytes, list[str]]:
    out = bytearray(data[:8])
    dropped: list[str] = []
    for sid, raw, body in sections(data):
        if sid != EXPORT_SECTION:
            out += raw
            continue
        entries = exports(body)
        ours = {ABI + name[len(OURS):] for name, _ in entries if name.startswith(OURS)}
        kept = []
        for name, entry in entries:
            if name.startswith(OURS) and ABI + name[len(OURS):] in keep:
                kept.append(renamed(entry, ABI + name[len(OURS):]))
            elif name.startswith(OURS) or (name.startswith(ABI) and (name not in keep or name in ours)):
                dropped.append(name)
            else:
                kept.append(entry)
        new_body = enc_uleb(len(kept)) + b"".join(kept)
        out += bytes([EXPORT_SECTION]) + enc_uleb(len(new_body)) + new_body
    return bytes(out), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path)
    parser.add_argument("--keep", nargs="*", default=[], help="proxy_on_* callbacks to keep")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--lean", action="store_true",
                        help="mark the module as the lean build (src/host/dispatch.rs FLAVOR)")
    args = parser.parse_args()
    data = args.module.read_bytes()
    if args.list:
        for sid, _, body in sections(data):
            if sid == EXPORT_SECTION:
                print("\n".join(name for name, _ in exports(body)))
        return
    new, _ = rewrite(data, set(args.keep))
    if args.lean:
        if new.count(FULL) != 1:
            sys.exit(f"{args.module}: expected one {FULL!r} marker, found {new.count(FULL)}")
        new = new.replace(FULL, LEAN)
    args.module.write_bytes(new)
    kept = sorted(n for n in args.keep if n.startswith(ABI))
    flavor = "lean" if args.lean else "full"
    print(f"{args.module}: {flavor}, exports {' '.join(kept)}", file=sys.stderr)


if __name__ == "__main__":
    main()
