"""Issue 13: the native build's FFI layer in the real Envoy 1.40. The library loads (the ABI
version matches, every hook Envoy resolves is exported, every callback we declare exists), a
request is routed to an instance Polaris serves, counters are Envoy stats, and
`envoy --mode validate` runs the module's config check: a bad plugin JSON is rejected naming
the field, the shipped config passes. The behaviour suites run against this build too
(conftest.BOTH_BUILDS)."""

from __future__ import annotations

import pytest

from conftest import plugin_config
from harness.envoy import NATIVE, Envoy, render, validate


def test_module_loads_and_routes_to_the_instances_polaris_serves(
    polaris, service, upstreams, tmp_path
):
    ups = upstreams("n1", "n2")
    polaris.create_service(service)
    for u in ups:
        polaris.register_instance(service, "127.0.0.1", u.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 2, service=service)

    with Envoy(tmp_path / "envoy", plugin_config(), polaris.grpc_port, build="native") as e:
        client = e.client()
        # The first request for an unknown service is held while it is discovered, then resumed.
        status, headers, body = client.request(service)
        assert status == 200, (status, headers, body)
        counts = client.counts(service, 60)

        assert set(counts) == {"n1", "n2"}, counts
        log = e.log_text()
        assert "Dynamic module ABI version v0.2.0 matched" in log
        assert "configured: Polaris cluster polaris_grpc" in log
        assert e.wait_counter("picks", lambda n: n >= 61) >= 61
        assert e.counter("native_panics") == 0


def test_unknown_service_gets_the_same_local_reply_as_wasm(polaris, tmp_path):
    with Envoy(tmp_path / "envoy", plugin_config(), polaris.grpc_port, build="native") as e:
        status, headers, body = e.client().request("no-such-service-native")

    assert status == 503, (status, headers, body)
    assert headers.get("x-polaris-reason") == "service-not-found", headers


def test_client_sent_upstream_header_is_overwritten(polaris, service, upstreams, tmp_path):
    (up,) = upstreams("only")
    (decoy,) = upstreams("decoy")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", up.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 1, service=service)

    with Envoy(tmp_path / "envoy", plugin_config(), polaris.grpc_port, build="native") as e:
        counts = e.client().counts(
            service, 10, headers={"x-polaris-upstream": f"127.0.0.1:{decoy.port}"}
        )

    assert counts == {"only": 10}, counts


@pytest.mark.parametrize(
    "plugin, field, why",
    [
        ({}, "polaris_cluster", "is required"),
        (plugin_config(refresh_interval="soon"), "refresh_interval", "is not a duration"),
        (plugin_config(refresh_intervall="1s"), "refresh_intervall", "unknown field"),
        (
            plugin_config(load_balancer={"policy": "ringHash", "ring_hash": {"vnodes": 0}}),
            "load_balancer.ring_hash.vnodes",
            "from 1 to 1000",
        ),
    ],
)
def test_validate_rejects_a_bad_plugin_config_naming_the_field(tmp_path, plugin, field, why):
    result = validate(render(plugin, 10000, 9901, 8091, build="native"), tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert f"field `{field}`" in out, out[-2000:]
    assert why in out, out[-2000:]


def test_validate_passes_the_shipped_native_config(tmp_path):
    result = validate(render(plugin_config(), 10000, 9901, 8091, build="native"), tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-2000:]
    assert "Dynamic module ABI version v0.2.0 matched" in out, out[-2000:]
    assert NATIVE.exists()


def test_a_panic_in_a_hook_answers_503_is_counted_and_envoy_keeps_serving(
    polaris, service, upstreams, tmp_path
):
    (up,) = upstreams("after")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", up.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 1, service=service)
    e = Envoy(tmp_path / "envoy", plugin_config(), polaris.grpc_port, build="native")
    # Fault injection read at config time: a request with this header panics in its hook.
    e.extra_env = {"POLARIS_NATIVE_PANIC_HEADER": "x-test-panic"}
    with e:
        client = e.client()
        status, headers, body = client.request(service, headers={"x-test-panic": "1"})
        assert status == 503, (status, headers, body)
        assert headers.get("x-polaris-reason") == "internal_error", headers
        assert e.counter("native_panics") == 1

        assert client.counts(service, 20) == {"after": 20}
        assert e.proc.poll() is None
