"""Helpers for the Istio-shape tests: render envoy/istio/envoy-istio-shape.yaml with our ports,
swap its Wasm filter for what Istio would put there in a failure, and a stand-in module that
crashes.

Not a test module; test_failure_policy.py and test_shipped_configs.py import it (tests/istio checks
the shape against what a real istiod generates).
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.envoy import ROOT, WASM, Envoy

SHAPE = ROOT / "envoy" / "istio" / "envoy-istio-shape.yaml"
# Istio's name for the filter (and its ECDS resource) at the version pinned in istio/go.mod.
FILTER_NAME = "extensions.istio.io/trafficextension/istio-system.polaris-wasm~istio-translated-wasmplugin"
UPSTREAM_CLUSTER = "outbound|18080||polaris-upstream.local"
POLARIS_CLUSTER = "outbound|8091||polaris.polaris-system.svc.cluster.local"

_FILTER_START = f"          - name: {FILTER_NAME}\n"
_FILTER_END = "          - name: envoy.filters.http.grpc_stats\n"

# What istio-agent puts in place of a Wasm filter whose module it could not fetch
# (pkg/wasm/convert.go): an RBAC filter under the same name, allowing everything when the
# WasmPlugin says FAIL_OPEN, denying everything otherwise.
ISTIO_FETCH_FAILED_FAIL_OPEN = f"""\
          - name: {FILTER_NAME}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: wasm-default-allow
"""
ISTIO_FETCH_FAILED_FAIL_CLOSE = f"""\
          - name: {FILTER_NAME}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules: {{}}
              rules_stat_prefix: wasm-default-deny
"""


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"expected exactly one {old!r} in {SHAPE.name}")
    return text.replace(old, new)


def render_shape(
    listen_port: int,
    admin_port: int,
    polaris_grpc_port: int,
    *,
    wasm: Path = WASM,
    failure_policy: str | None = None,
    plugin: dict | None = None,
    http_filter: str | None = None,
) -> str:
    """The shipped shape config with our ports and wasm path; optionally another failure policy,
    plugin JSON, or a replacement for the whole Wasm filter entry."""
    text = SHAPE.read_text()
    text = _replace_once(text, "port_value: 15000", f"port_value: {admin_port}")
    text = _replace_once(text, "port_value: 18080", f"port_value: {listen_port}")
    text = _replace_once(text, "port_value: 8091", f"port_value: {polaris_grpc_port}")
    text = _replace_once(
        text, "filename: target/wasm32-wasip1/release/polaris_wasm.wasm", f"filename: {wasm}"
    )
    if failure_policy:
        text = _replace_once(text, "failure_policy: FAIL_RELOAD", f"failure_policy: {failure_policy}")
    if plugin is not None:
        start = text.index("value: '{")
        end = text.index("'\n", start)
        text = text[:start] + "value: '" + json.dumps(plugin).replace("'", "''") + text[end:]
    if http_filter is not None:
        start = text.index(_FILTER_START)
        end = text.index(_FILTER_END, start)
        text = text[:start] + http_filter + text[end:]
    return text


def shape_plugin_config() -> dict:
    text = SHAPE.read_text()
    start = text.index("value: '") + len("value: '")
    return json.loads(text[start : text.index("'\n", start)].replace("''", "'"))


def start_shape(workdir: Path, polaris_grpc_port: int, concurrency: int = 2, **kw) -> Envoy:
    """An Envoy running the shape config (the harness picks the ports, we render with them)."""
    envoy = Envoy(workdir, {}, polaris_grpc_port, concurrency, config_text="(rendered below)")
    envoy.config_text = render_shape(envoy.listen_port, envoy.admin_port, polaris_grpc_port, **kw)
    return envoy.start()


def crashing_module() -> bytes:
    """A minimal proxy-wasm module (ABI 0.2.1) whose on_request_headers traps (`unreachable`):
    a stand-in for our filter crashing, since the real one has no way to be made to panic.

    Exports memory, proxy_abi_version_0_2_1, proxy_on_memory_allocate, proxy_on_context_create,
    proxy_on_vm_start and proxy_on_configure (both return true), proxy_on_request_headers (traps).
    """

    def uleb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def vec(items: list[bytes]) -> bytes:
        return uleb(len(items)) + b"".join(items)

    def section(sid: int, body: bytes) -> bytes:
        return bytes([sid]) + uleb(len(body)) + body

    i32 = 0x7F

    def functype(params: list[int], results: list[int]) -> bytes:
        return b"\x60" + vec([bytes([p]) for p in params]) + vec([bytes([r]) for r in results])

    types = [
        functype([], []),                 # 0: abi marker
        functype([i32], [i32]),           # 1: memory_allocate(size) -> ptr
        functype([i32, i32], []),         # 2: context_create(ctx, parent)
        functype([i32, i32], [i32]),      # 3: vm_start / configure(root, size) -> bool
        functype([i32, i32, i32], [i32]), # 4: request_headers(ctx, n, eos) -> action
    ]
    # (type index, body): locals count 0, instructions, end.
    funcs = [
        (0, b"\x00\x0b"),
        (1, b"\x00\x41\x80\x08\x0b"),  # i32.const 1024
        (2, b"\x00\x0b"),
        (3, b"\x00\x41\x01\x0b"),      # i32.const 1
        (3, b"\x00\x41\x01\x0b"),
        (4, b"\x00\x00\x0b"),          # unreachable
    ]
    exports = [
        ("memory", 2, 0),
        ("proxy_abi_version_0_2_1", 0, 0),
        ("proxy_on_memory_allocate", 0, 1),
        ("proxy_on_context_create", 0, 2),
        ("proxy_on_vm_start", 0, 3),
        ("proxy_on_configure", 0, 4),
        ("proxy_on_request_headers", 0, 5),
    ]
    return (
        b"\0asm\x01\0\0\0"
        + section(1, vec(types))
        + section(3, vec([uleb(t) for t, _ in funcs]))
        + section(5, vec([b"\x00\x02"]))  # one memory, min 2 pages
        + section(7, vec([uleb(len(n)) + n.encode() + bytes([k]) + uleb(i) for n, k, i in exports]))
        + section(10, vec([uleb(len(body)) + body for _, body in funcs]))
    )
