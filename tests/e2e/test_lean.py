"""Issue 13: the lean build (`polaris_wasm_lean.wasm`, one VM entry per request) routes like the
full one and refuses, naming the field, every feature that needs the response path it leaves out.
"""

from __future__ import annotations

import pytest

from conftest import REFRESH, plugin_config, traffic_until
from harness.envoy import WASM, WASM_LEAN, Envoy, render, validate
from harness.polaris import free_port
from test_discovery import register_all, served
from test_module import exported


def lean_envoy(tmp_path, polaris, **plugin) -> Envoy:
    config = plugin_config(**plugin)
    listen, admin = free_port(), free_port()
    text = render(config, listen, admin, polaris.grpc_port).replace(str(WASM), str(WASM_LEAN))
    e = Envoy(tmp_path / "lean", config, polaris.grpc_port, 2, config_text=text)
    e.listen_port, e.admin_port = listen, admin
    return e


def test_the_lean_build_leaves_out_the_response_and_stream_end_callbacks():
    full, lean = exported(WASM), exported(WASM_LEAN)

    assert full - lean == {"proxy_on_response_headers", "proxy_on_done"}
    assert lean < full


@pytest.mark.parametrize(
    "plugin, field",
    [
        (plugin_config(circuit_breaker={}), "circuit_breaker"),
        (plugin_config(debug_trace=True), "debug_trace"),
    ],
)
def test_the_lean_build_refuses_what_needs_the_response_naming_the_field(tmp_path, plugin, field):
    text = render(plugin, 10000, 9901, 8091).replace(str(WASM), str(WASM_LEAN))
    result = validate(text, tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert f"field `{field}`: needs the response path" in out, out[-2000:]
    assert validate(render(plugin, 10000, 9901, 8091), tmp_path).returncode == 0


def test_the_lean_build_picks_by_weight_and_follows_isolation(tmp_path, polaris, service, upstreams):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups, weights=[100, 300])
    e = lean_envoy(tmp_path, polaris)
    e.start()
    try:
        client = e.client()
        counts = client.counts(service, 800)
        assert set(counts) == {"a", "b"}, counts
        assert abs(counts["b"] / 800 - 0.75) < 0.06, counts

        polaris.update_instance(ids[1], isolate=True)
        served(polaris, service, lambda insts: any(i.get("isolate") for i in insts))
        traffic_until(client, service, lambda c: set(c) == {"a"}, timeout=2 * REFRESH + 0.5)
    finally:
        e.stop()


def test_the_lean_build_ignores_a_client_sent_upstream_header(tmp_path, polaris, service, upstreams):
    ups = upstreams("a", "b")
    register_all(polaris, service, ups)
    stranger = upstreams("stranger")[0]
    e = lean_envoy(tmp_path, polaris)
    e.start()
    try:
        counts = e.client().counts(
            service, 60, headers={"x-polaris-upstream": f"127.0.0.1:{stranger.port}"})
        assert set(counts) == {"a", "b"}, counts
    finally:
        e.stop()
