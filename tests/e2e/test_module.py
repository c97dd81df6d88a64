"""The built module exports exactly the proxy-wasm callbacks the host layer implements.

`make wasm` drops unused `proxy_on_*` exports so Envoy does not enter the VM for them; a callback
implemented in src/host but missing from the Makefile's WASM_CALLBACKS would silently never run.
"""

import re
import subprocess
import sys
from pathlib import Path

from harness.envoy import ROOT, WASM

# Trait method in src/host -> the ABI export that delivers it.
CALLBACK_EXPORTS = {
    "on_vm_start": ["proxy_on_vm_start"],
    "on_configure": ["proxy_on_configure"],
    "on_tick": ["proxy_on_tick"],
    "create_http_context": ["proxy_on_context_create"],
    "on_http_request_headers": ["proxy_on_request_headers"],
    "on_http_request_body": ["proxy_on_request_body"],
    "on_http_request_trailers": ["proxy_on_request_trailers"],
    "on_http_response_headers": ["proxy_on_response_headers"],
    "on_http_response_body": ["proxy_on_response_body"],
    "on_http_response_trailers": ["proxy_on_response_trailers"],
    "on_log": ["proxy_on_log"],
    "on_done": ["proxy_on_done"],
    "on_grpc_call_response": ["proxy_on_grpc_receive", "proxy_on_grpc_close"],
    "on_http_call_response": ["proxy_on_http_call_response"],
    "on_queue_ready": ["proxy_on_queue_ready"],
}


def exported() -> set[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wasm_exports.py"), str(WASM), "--list"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def implemented() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "host").glob("*.rs"):
        names |= set(re.findall(r"\bfn (on_\w+|create_http_context)\s*\(", path.read_text()))
    return names & set(CALLBACK_EXPORTS)


def test_every_implemented_callback_is_exported():
    exports = exported()
    missing = {
        export
        for method in implemented()
        for export in CALLBACK_EXPORTS[method]
        if export not in exports
    }
    assert not missing, f"add to WASM_CALLBACKS in the Makefile: {sorted(missing)}"


def test_unused_per_request_callbacks_are_not_exported():
    exports = exported()
    used = {e for m in implemented() for e in CALLBACK_EXPORTS[m]}
    for export in ["proxy_on_response_body", "proxy_on_log", "proxy_on_done", "proxy_on_request_body"]:
        if export not in used:
            assert export not in exports, export
    assert {"proxy_on_memory_allocate", "proxy_on_delete"} <= exports
