"""Fixtures: real upstream processes and the real Envoy, all on 127.0.0.1. The real Polaris server
(`polaris`, one per session) comes from tests/conftest.py, shared with the parity suite."""

from __future__ import annotations

import time
from typing import Callable

import pytest

from harness.envoy import BUILDS, Client, Envoy
from harness.fixtures import service, upstreams  # noqa: F401 (fixtures)

REFRESH = 1.0  # seconds; the plugin's refresh_interval in these tests


def plugin_config(**overrides) -> dict:
    config = {"polaris_cluster": "polaris_grpc", "refresh_interval": f"{int(REFRESH * 1000)}ms"}
    config.update(overrides)
    return config


# The behaviour suites: each of their tests runs against both builds (the wasm filter and the
# native dynamic module), so no capability exists in one build only. Config, module-format and
# Istio tests are about the wasm build's packaging and stay wasm-only.
BOTH_BUILDS = {
    "test_balancers",
    "test_breakers",
    "test_discovery",
    "test_failure_policy",
    "test_global_rate_limit",
    "test_metadata",
    "test_nearby",
    "test_provider",
    "test_rate_limit",
    "test_rate_limit_pacing",
    "test_routing",
}


def pytest_generate_tests(metafunc):
    if "build" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        builds = list(BUILDS) if module in BOTH_BUILDS else ["wasm"]
        metafunc.parametrize("build", builds, indirect=True, scope="module")


@pytest.fixture(scope="module")
def build(request) -> str:
    """Which build of the filter this test's Envoy runs: `wasm` or `native`."""
    return getattr(request, "param", "wasm")


@pytest.fixture
def envoy(tmp_path, build) -> Callable[..., Envoy]:
    started: list[Envoy] = []

    def start(polaris_grpc_port: int, concurrency: int = 2, **plugin) -> Envoy:
        e = Envoy(
            tmp_path / "envoy", plugin_config(**plugin), polaris_grpc_port, concurrency, build=build
        )
        started.append(e)
        return e.start()

    yield start
    for e in started:
        e.stop()


def traffic_until(
    client: Client,
    host: str,
    predicate: Callable[[dict], bool],
    timeout: float,
    batch: int = 20,
    **request,
) -> tuple[float, dict]:
    """Sends batches (with `request` options such as headers) until a batch's counts satisfy
    `predicate`; returns (seconds taken, counts)."""
    start = time.monotonic()
    counts: dict = {}
    while time.monotonic() - start < timeout:
        counts = client.counts(host, batch, **request)
        if predicate(counts):
            return time.monotonic() - start, counts
        time.sleep(0.05)
    raise AssertionError(f"traffic did not change within {timeout}s; last batch {counts}")
