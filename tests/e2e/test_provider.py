"""Issue 12: the provider side. An Envoy in front of a service registers it in the real Polaris,
heartbeats it, registers it again when Polaris forgets it, and takes it out before it stops.

Every Envoy runs with --concurrency 2 (three VMs: two workers and the main thread), so "exactly
once" is a claim about the whole Envoy. TTLs are small (1-2 s) to keep the suite short.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest

from conftest import plugin_config
from harness.envoy import ProviderEnvoy, render_provider, validate
from harness.polaris import Polaris

TTL = 2  # seconds


@pytest.fixture
def provider_envoy(tmp_path) -> Callable[..., ProviderEnvoy]:
    started: list[ProviderEnvoy] = []

    def start(polaris_grpc_port: int, app_port: int, provider: dict, node: str = "", **plugin):
        e = ProviderEnvoy(
            tmp_path / "provider",
            plugin_config(provider=provider, **plugin),
            polaris_grpc_port,
            app_port,
            node=node,
        )
        started.append(e)
        return e.start()

    yield start
    for e in started:
        e.stop()


def listed(polaris: Polaris, service: str) -> list[dict]:
    return polaris.instances(service)


def wait_listed(polaris: Polaris, service: str, predicate, timeout: float) -> tuple[float, list]:
    """Polls Polaris (every 0.25 s) until predicate(instances) holds: (seconds, instances)."""
    start = time.monotonic()
    while True:
        instances = listed(polaris, service)
        if predicate(instances):
            return time.monotonic() - start, instances
        if time.monotonic() - start > timeout:
            raise AssertionError(f"Polaris never showed that within {timeout}s: {instances}")
        time.sleep(0.25)


def test_provider_registers_once_healthy_with_metadata_and_node_locality(
    polaris, service, upstreams, provider_envoy
):
    (app,) = upstreams("app")
    node = "node:\n  id: provider-test\n  locality: {region: r1, zone: z2, sub_zone: c3}\n"
    e = provider_envoy(
        polaris.grpc_port,
        app.port,
        {"service": service, "host": "127.0.0.1", "ttl": f"{TTL}s", "version": "v7",
         "metadata": {"env": "gray"}},
        node=node,
    )

    took, (instance,) = wait_listed(polaris, service, lambda i: len(i) == 1, timeout=10)
    assert instance["host"] == "127.0.0.1"
    assert instance["port"] == e.listen_port
    assert instance["healthy"] is True
    assert instance["metadata"]["env"] == "gray"
    assert instance.get("version") == "v7"
    assert instance["location"] == {"region": "r1", "zone": "z2", "campus": "c3"}
    assert instance["healthCheck"]["heartbeat"]["ttl"] == TTL

    # Heartbeats flow; still one registration and one instance, for three VMs.
    assert e.wait_counter("provider_heartbeats", lambda n: n >= 2, timeout=3 * TTL + 2) >= 2
    assert e.counter("provider_registrations") == 1
    assert e.counter("provider_register_errors") == 0
    assert len(listed(polaris, service)) == 1
    assert e.local("GET", "/")[1] == "app", "other requests reach the local service"
    print(f"registered {took:.2f}s after Envoy was ready")


def test_heartbeats_keep_it_healthy_and_sigkill_makes_it_unhealthy_after_3_ttl(
    polaris, service, upstreams, provider_envoy
):
    (app,) = upstreams("app")
    e = provider_envoy(
        polaris.grpc_port, app.port, {"service": service, "host": "127.0.0.1", "ttl": f"{TTL}s"}
    )
    wait_listed(polaris, service, lambda i: len(i) == 1, timeout=10)

    # Well past 3 x TTL: healthy at every look.
    deadline = time.monotonic() + 5 * TTL
    looks = 0
    while time.monotonic() < deadline:
        (instance,) = listed(polaris, service)
        assert instance["healthy"] is True, f"unhealthy after {looks} looks"
        looks += 1
        time.sleep(0.5)
    beats = e.counter("provider_heartbeats")
    assert beats >= 4, beats

    e.kill()
    took, (instance,) = wait_listed(
        polaris, service, lambda i: len(i) == 1 and not i[0]["healthy"], timeout=6 * TTL + 5
    )
    print(f"SIGKILL -> unhealthy in Polaris after {took:.1f}s (TTL {TTL}s, 3 x TTL = {3 * TTL}s)")
    # Polaris counts 3 x TTL from the last heartbeat, in whole seconds: that beat was up to one
    # TTL before the kill, and the check runs on a time wheel, then the cache (1 s) shows it.
    assert 2 * TTL - 1 <= took <= 3 * TTL + 4, took


def test_polaris_restarted_with_an_empty_store_gets_the_instance_again(
    service, upstreams, provider_envoy, tmp_path
):
    ttl = 1
    own = Polaris(tmp_path / "polaris").start()
    try:
        (app,) = upstreams("app")
        e = provider_envoy(
            own.grpc_port, app.port, {"service": service, "host": "127.0.0.1", "ttl": f"{ttl}s"}
        )
        wait_listed(own, service, lambda i: len(i) == 1, timeout=10)

        own.stop()
        (own.workdir / "polaris.bolt").unlink()
        own.start()
        took, (instance,) = wait_listed(own, service, lambda i: len(i) == 1, timeout=30)
        assert instance["healthy"] is True
        assert e.wait_counter("provider_registrations", lambda n: n == 2) == 2
        assert e.counter("provider_reregistrations") == 1
        assert "Heartbeat answered 400202 NotFoundResource" in e.log_text()
        print(f"registered again {took:.1f}s after Polaris came back empty (TTL {ttl}s)")
    finally:
        own.stop()


@pytest.mark.parametrize(
    "provider, field, why",
    [
        ({"host": "127.0.0.1", "port": 1}, "provider.service", "is required"),
        ({"service": "echo"}, "provider.port", "is required"),
        ({"service": "echo", "port": 1, "ttl": "500ms"}, "provider.ttl", "whole seconds"),
        ({"service": "echo", "port": 1, "weight": -1}, "provider.weight", "from 0 to 10000"),
        ({"service": "echo", "port": 1, "metadata": {"k": 1}}, "provider.metadata.k", "string"),
        ({"service": "echo", "port": 1, "offline_path": "down"}, "provider.offline_path", "absolute"),
        ({"service": "echo", "port": 1, "prot": "http"}, "provider.prot", "unknown field"),
    ],
)
def test_bad_provider_config_is_rejected_naming_the_field(tmp_path, provider, field, why):
    result = validate(render_provider(plugin_config(provider=provider), 10001, 9902, 8091, 8080), tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert f"field `{field}`" in out, out[-2000:]
    assert why in out, out[-2000:]
