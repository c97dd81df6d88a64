"""The built module exports exactly the callbacks the filter dispatches itself.

Envoy enters the VM only for exported `proxy_on_*` callbacks, and every entry costs about a
microsecond. The filter implements its callbacks in src/host/dispatch.rs as `polaris_on_*`;
`make wasm` exports each one the Makefile lists under its ABI name and drops the SDK's. A callback
implemented but not listed would silently never run; one listed but not ours would run the SDK's
dispatcher, which knows no root context.
"""

import re
import subprocess
import sys

from harness.envoy import ROOT, WASM

DISPATCH = ROOT / "src" / "host" / "dispatch.rs"


def exported(module=WASM) -> set[str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wasm_exports.py"), str(module), "--list"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def ours() -> set[str]:
    """The ABI names of the callbacks src/host/dispatch.rs implements."""
    return {f"proxy_on_{m}" for m in re.findall(r"\bextern \"C\" fn polaris_on_(\w+)", DISPATCH.read_text())}


def test_every_callback_we_implement_is_exported_under_its_abi_name():
    exports = exported()
    missing = ours() - exports
    assert not missing, f"add to WASM_CALLBACKS in the Makefile: {sorted(missing)}"
    assert not {e for e in exports if e.startswith("polaris_on_")}


def test_no_sdk_dispatch_is_left_but_the_allocator():
    callbacks = {e for e in exported() if e.startswith("proxy_on_")}
    assert callbacks - ours() == {"proxy_on_memory_allocate"}


def test_a_stream_costs_no_context_create_or_delete_entry():
    exports = exported()
    for export in ["proxy_on_context_create", "proxy_on_delete", "proxy_on_log",
                   "proxy_on_request_body", "proxy_on_response_body"]:
        assert export not in exports, export
