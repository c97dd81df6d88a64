"""Keep only the proxy-wasm callbacks the filter implements in a module's export section.

Envoy's wasm host calls a `proxy_on_*` callback only if the module exports it, and the Rust SDK
exports all of them. Every export we drop is one VM entry fewer per request (a plain GET through
the SDK's full set costs seven). Usage:

    python scripts/wasm_exports.py MODULE.wasm --keep proxy_on_request_headers ...   # rewrite
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


def rewrite(data: bytes, drop) -> tuple[bytes, list[str]]:
    out = bytearray(data[:8])
    dropped: list[str] = []
    for sid, raw, body in sections(data):
        if sid != EXPORT_SECTION:
            out += raw
            continue
        kept = []
        for name, entry in exports(body):
            (dropped if drop(name) else kept).append(name if drop(name) else entry)
        new_body = enc_uleb(len(kept)) + b"".join(kept)
        out += bytes([EXPORT_SECTION]) + enc_uleb(len(new_body)) + new_body
    return bytes(out), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path)
    parser.add_argument("--keep", nargs="*", default=[], help="proxy_on_* callbacks to keep")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    data = args.module.read_bytes()
    if args.list:
        for sid, _, body in sections(data):
            if sid == EXPORT_SECTION:
                print("\n".join(name for name, _ in exports(body)))
        return
    keep = set(args.keep)
    new, dropped = rewrite(data, lambda n: n.startswith("proxy_on_") and n not in keep)
    args.module.write_bytes(new)
    print(f"{args.module}: dropped {len(dropped)} unused callbacks: {' '.join(sorted(dropped))}", file=sys.stderr)


if __name__ == "__main__":
    main()
