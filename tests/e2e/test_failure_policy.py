"""Issue 4: which failure policy is safe with the ORIGINAL_DST header mechanism.

The upstream cluster connects to whatever ip:port `x-polaris-upstream` holds. Our filter always
overwrites it or answers itself, so the only way a client's value can reach the cluster is the
filter NOT running. That is exactly what a fail-open policy does when the filter fails:
- Envoy `failure_policy: FAIL_OPEN`: a failed VM is skipped;
- Istio `failStrategy: FAIL_OPEN`: also, when istio-agent cannot fetch the module, the filter is
  replaced by an allow-all RBAC filter.
These tests show both, in the shipped Istio-shape config with the real Envoy, and show that the
policies we ship (FAIL_RELOAD, FAIL_CLOSE / FAIL_CLOSED) keep a client-chosen rogue upstream
unreachable. A crash is played by a stand-in module that traps in on_request_headers (our filter
cannot be made to panic from outside).
"""

from __future__ import annotations

import pytest

from harness.polaris import free_port
from istio_shape import (
    ISTIO_FETCH_FAILED_FAIL_CLOSE,
    ISTIO_FETCH_FAILED_FAIL_OPEN,
    crashing_module,
    start_shape,
)

REQUESTS = 20


@pytest.fixture
def shape(tmp_path):
    started = []

    def start(polaris_grpc_port: int, **kw):
        e = start_shape(tmp_path / "envoy", polaris_grpc_port, **kw)
        started.append(e)
        return e

    yield start
    for e in started:
        e.stop()


@pytest.fixture
def crashing_wasm(tmp_path):
    path = tmp_path / "crashing.wasm"
    path.write_bytes(crashing_module())
    return path


def hijack(envoy, rogue, n: int = REQUESTS) -> dict:
    """Requests that carry the rogue upstream's address in x-polaris-upstream."""
    return envoy.client().counts("echo", n, headers={"x-polaris-upstream": rogue.address})


@pytest.mark.parametrize("policy", ["FAIL_CLOSED", "FAIL_RELOAD"])
def test_crashed_filter_failing_closed_never_reaches_a_client_chosen_upstream(
    polaris, upstreams, shape, crashing_wasm, policy
):
    (rogue,) = upstreams("rogue")
    envoy = shape(polaris.grpc_port, wasm=crashing_wasm, failure_policy=policy)

    counts = hijack(envoy, rogue)

    assert counts == {"status:503": REQUESTS}
    assert "proxy_on_request_headers failed" in envoy.log_text()


def test_crashed_filter_failing_open_is_an_open_proxy(polaris, upstreams, shape, crashing_wasm):
    """Why FAIL_OPEN is never shipped: after the crash the filter is skipped and the
    ORIGINAL_DST cluster follows the client's header to any ip:port."""
    (rogue,) = upstreams("rogue")
    envoy = shape(polaris.grpc_port, wasm=crashing_wasm, failure_policy="FAIL_OPEN")

    counts = hijack(envoy, rogue)

    # Each worker's VM (concurrency 2) answers 503 on the request that crashes it.
    assert counts.get("rogue", 0) >= REQUESTS - 2, counts


def test_istio_fetch_failure_with_fail_close_denies(polaris, upstreams, shape):
    (rogue,) = upstreams("rogue")
    envoy = shape(polaris.grpc_port, http_filter=ISTIO_FETCH_FAILED_FAIL_CLOSE)

    assert hijack(envoy, rogue) == {"status:403": REQUESTS}


def test_istio_fetch_failure_with_fail_open_is_an_open_proxy(polaris, upstreams, shape):
    (rogue,) = upstreams("rogue")
    envoy = shape(polaris.grpc_port, http_filter=ISTIO_FETCH_FAILED_FAIL_OPEN)

    assert hijack(envoy, rogue) == {"rogue": REQUESTS}


def test_our_filter_with_polaris_unreachable_answers_itself(tmp_path, upstreams, shape):
    """The real filter with nothing to go on (Polaris down before the first snapshot) still
    never lets the client's header through: it answers 503 discovery-failed."""
    (rogue,) = upstreams("rogue")
    envoy = shape(free_port())  # nothing listens there

    status, headers, body = envoy.client().request(
        "echo", headers={"x-polaris-upstream": rogue.address}
    )

    assert status == 503
    assert headers["x-polaris-reason"] == "discovery-failed"
    assert hijack(envoy, rogue, 5) == {"status:503": 5}
