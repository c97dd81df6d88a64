"""Issue 2: discovery from a real Polaris server, upstream picks in a real Envoy.

Each test registers its own service in the shared Polaris server, starts real upstream processes
and an Envoy with `--concurrency 2` running our filter, and asserts on which upstream answered.
"""

from __future__ import annotations

import json
import time

from conftest import REFRESH, traffic_until
from harness.envoy import SHIPPED_NATIVE, SHIPPED_NATIVE_CLUSTER
from harness.polaris import Polaris

# A change must reach traffic within two refresh intervals of Polaris serving it.
WITHIN = 2 * REFRESH


def register_all(polaris, service, ups, weights=None, **fields):
    polaris.create_service(service)
    ids = [
        polaris.register_instance(service, "127.0.0.1", u.port, weight=w, **fields)
        for u, w in zip(ups, weights or [100] * len(ups))
    ]
    polaris.wait_for(lambda r: len(r.get("instances") or []) == len(ups), service=service)
    return ids


def served(polaris, service, predicate):
    """Waits until Polaris's own Discover shows the change; the filter's clock starts then."""
    polaris.wait_for(lambda r: predicate(r.get("instances") or []), service=service, timeout=15)


def test_weights_1_2_7_shape_traffic_shares(polaris, service, upstreams, envoy):
    ups = upstreams("w1", "w2", "w7")
    register_all(polaris, service, ups, weights=[1, 2, 7])
    client = envoy(polaris.grpc_port).client()

    n = 2000
    counts = client.counts(service, n)

    assert set(counts) == {"w1", "w2", "w7"}, counts
    # Binomial sd at n=2000 is at most 0.011; 0.035 is over 3 sd for every share.
    for name, expected in [("w1", 0.1), ("w2", 0.2), ("w7", 0.7)]:
        assert abs(counts[name] / n - expected) < 0.035, counts


def test_isolated_instance_leaves_traffic_within_two_intervals(polaris, service, upstreams, envoy):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups)
    client = envoy(polaris.grpc_port).client()
    assert set(client.counts(service, 40)) == {"a", "b"}

    polaris.update_instance(ids[0], isolate=True)
    served(polaris, service, lambda insts: any(i.get("isolate") for i in insts))

    took, _ = traffic_until(client, service, lambda c: set(c) == {"b"}, timeout=WITHIN + 0.5)
    assert set(client.counts(service, 200)) == {"b"}
    print(f"isolation reflected in {took:.2f}s")


def test_unhealthy_instance_leaves_traffic_within_two_intervals(polaris, service, upstreams, envoy):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups)
    client = envoy(polaris.grpc_port).client()
    assert set(client.counts(service, 40)) == {"a", "b"}

    polaris.update_instance(ids[1], healthy=False)
    served(polaris, service, lambda insts: any(i.get("healthy") is False for i in insts))

    traffic_until(client, service, lambda c: set(c) == {"a"}, timeout=WITHIN + 0.5)
    assert set(client.counts(service, 200)) == {"a"}


def test_deregistered_instance_leaves_traffic_within_two_intervals(polaris, service, upstreams, envoy):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups)
    client = envoy(polaris.grpc_port).client()
    assert set(client.counts(service, 40)) == {"a", "b"}

    polaris.deregister_instance(ids[0])
    served(polaris, service, lambda insts: len(insts) == 1)

    traffic_until(client, service, lambda c: set(c) == {"b"}, timeout=WITHIN + 0.5)
    assert set(client.counts(service, 200)) == {"b"}


def test_new_instance_joins_traffic_within_two_intervals(polaris, service, upstreams, envoy):
    a, b = upstreams("a", "b")
    register_all(polaris, service, [a])
    client = envoy(polaris.grpc_port).client()
    assert set(client.counts(service, 20)) == {"a"}

    polaris.register_instance(service, "127.0.0.1", b.port)
    served(polaris, service, lambda insts: len(insts) == 2)

    traffic_until(client, service, lambda c: "b" in c, timeout=WITHIN + 0.5)
    assert set(client.counts(service, 100)) == {"a", "b"}


def test_all_unhealthy_still_serves_every_instance(polaris, service, upstreams, envoy):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups, healthy=False)
    e = envoy(polaris.grpc_port)
    client = e.client()

    counts = client.counts(service, 100)

    assert set(counts) == {"a", "b"}, counts
    assert e.wait_counter("recover_all", lambda n: n >= 100) >= 100


def test_isolated_instances_stay_out_even_when_all_are_unhealthy(polaris, service, upstreams, envoy):
    ups = upstreams("a", "b")
    ids = register_all(polaris, service, ups, healthy=False)
    polaris.update_instance(ids[0], isolate=True)
    served(polaris, service, lambda insts: any(i.get("isolate") for i in insts))
    client = envoy(polaris.grpc_port).client()

    assert set(client.counts(service, 100)) == {"b"}


def test_client_sent_upstream_header_is_ignored(polaris, service, upstreams, envoy, build):
    good, rogue = upstreams("registered", "rogue")
    register_all(polaris, service, [good])
    client = envoy(polaris.grpc_port).client()

    hijack = {"x-polaris-upstream": rogue.address}
    counts = client.counts(service, 50, headers=hijack)
    status, _, body = client.request(service, "/_headers", headers=hijack)

    assert counts == {"registered": 50}
    assert status == 200
    # The own-cluster config (POLARIS_NATIVE_CONFIG) hands the pick over without the header,
    # and strips a client's.
    own_cluster = build == "native" and SHIPPED_NATIVE == SHIPPED_NATIVE_CLUSTER
    assert json.loads(body).get("x-polaris-upstream") == (None if own_cluster else good.address)


def test_unknown_service_gets_503_naming_service_and_namespace(polaris, service, envoy):
    client = envoy(polaris.grpc_port).client()

    status, headers, body = client.request(f"{service}.default")

    assert status == 503
    assert headers["x-polaris-reason"] == "service-not-found"
    assert f"service {service} not found in Polaris namespace default" in body


def test_request_without_a_usable_destination_is_a_400(polaris, envoy):
    client = envoy(polaris.grpc_port).client()

    # Valid HTTP, but no Polaris service name: a trailing dot leaves the namespace empty.
    status, headers, body = client.request("echo.")

    assert status == 400
    assert headers["x-polaris-reason"] == "no-destination"
    assert ":authority" in body


def test_one_discover_per_service_per_interval_across_workers(polaris, service, upstreams, envoy):
    ups = upstreams("a")
    register_all(polaris, service, ups)
    e = envoy(polaris.grpc_port, concurrency=2)
    client = e.client()
    client.counts(service, 20)  # lazily loads, then the leader refreshes it
    time.sleep(2 * REFRESH)

    before = e.counter("discover_requests")
    window = 8 * REFRESH
    time.sleep(window)
    sent = e.counter("discover_requests") - before

    # One Discover per interval per kind (INSTANCE and ROUTING) for the one service: about 16.
    # Three VMs (2 workers + main) each refreshing would send about 48.
    assert 12 <= sent <= 22, sent
    assert e.counter("refresh_unchanged") >= 12


def test_polaris_stopped_after_start_keeps_serving_last_snapshot(tmp_path, service, upstreams, envoy):
    own = Polaris(tmp_path / "polaris").start()
    try:
        ups = upstreams("a", "b")
        register_all(own, service, ups)
        e = envoy(own.grpc_port)
        client = e.client()
        assert set(client.counts(service, 20)) == {"a", "b"}

        own.stop()
        deadline = time.monotonic() + 5 * REFRESH
        while time.monotonic() < deadline:
            counts = client.counts(service, 20)
            assert set(counts) <= {"a", "b"}, counts

        assert e.counter("refresh_errors") >= 2
    finally:
        own.stop()


def test_polaris_down_at_start_gives_503_then_recovers_without_restart(
    tmp_path, service, upstreams, envoy
):
    own = Polaris(tmp_path / "polaris")  # ports chosen, server not started
    try:
        e = envoy(own.grpc_port)
        client = e.client()

        status, headers, body = client.request(service)
        assert status == 503
        assert headers["x-polaris-reason"] == "discovery-failed"
        assert "Polaris unreachable" in body and service in body

        own.start()
        (up,) = upstreams("late")
        register_all(own, service, [up])
        took, counts = traffic_until(client, service, lambda c: c == {"late": 20}, timeout=10)
        print(f"recovered {took:.2f}s after the service was served")
    finally:
        own.stop()
