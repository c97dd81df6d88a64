"""Issue 14, item 4: hostile clients get a clear answer and cannot make Envoy hammer Polaris, grow
without bound, or starve the services it is there for.

(A client-sent upstream header is covered by test_discovery.py, the offline trigger from another
host by test_provider.py.)
"""

from __future__ import annotations

import json
import time
import uuid

from conftest import REFRESH
from harness.load import Steady, Tally, flood, rss_kb
from test_discovery import register_all

BUDGET = 20  # admission.new_services_per_second in these tests


def test_ten_thousand_random_hosts_get_503s_with_bounded_discover_calls_and_memory(
    polaris, service, upstreams, envoy
):
    (up,) = upstreams("legit")
    register_all(polaris, service, [up])
    e = envoy(polaris.grpc_port, admission={"new_services_per_second": BUDGET})
    client = e.client()
    assert client.counts(service, 20) == {"legit": 20}
    # Warm-up: the allocator's and the filter's fixed costs, so the flood measures growth.
    flood(e.listen_port, [f"warm-{i}" for i in range(500)], concurrency=4, limit=60)
    time.sleep(2 * REFRESH)
    rss_before = rss_kb(e.proc.pid)
    discover_before = e.counter("discover_requests")

    run = uuid.uuid4().hex[:6]
    hosts = [f"h{run}-{i}" for i in range(10_000)]
    with Steady(e.listen_port, service, rate=50) as legit:
        start = time.monotonic()
        answers = flood(e.listen_port, hosts, concurrency=8, limit=240)
        took = time.monotonic() - start
        time.sleep(REFRESH)
    time.sleep(1)  # counters flush every tick
    discover = e.counter("discover_requests") - discover_before
    rss_after = rss_kb(e.proc.pid)
    tally = Tally.of(answers).counts
    print(
        f"10,000 random Hosts in {took:.1f}s: {tally}; {discover} Discover calls; "
        f"Envoy RSS {rss_before} -> {rss_after} KiB; legit: {len(legit.answers)} requests, "
        f"{len(legit.failed())} failed"
    )

    assert len(answers) == 10_000
    assert set(tally) <= {(503, "service-not-found"), (503, "discovery-throttled")}, tally
    # At most BUDGET first discoveries (2 calls each) per second, plus the leader's refresh of
    # the legitimate service (2 kinds per interval); without the budget: 20,000 calls.
    seconds = took + 2 * REFRESH + 2
    bound = 2 * BUDGET * seconds + 2 * seconds / REFRESH
    assert discover <= bound, (discover, bound)
    assert legit.answers and legit.failed() == [], legit.failed()[:5]
    # Each worker remembers at most 1,024 names; nothing else grows with the names sent.
    assert rss_after - rss_before < 24 * 1024, (rss_before, rss_after)
    assert client.counts(service, 20) == {"legit": 20}
    assert e.counter("discovery_throttled") >= 10_000 - 2 * BUDGET * seconds


def test_an_allow_listed_gateway_answers_other_names_403_without_asking_polaris(
    polaris, service, upstreams, envoy
):
    (up,) = upstreams("legit")
    register_all(polaris, service, [up])
    e = envoy(polaris.grpc_port, admission={"allowed_services": [service, "shop-*"]})
    client = e.client()
    assert client.counts(service, 10) == {"legit": 10}
    time.sleep(1)
    before = e.counter("discover_requests")

    status, headers, body = client.request(f"other-{service}")
    answers = flood(e.listen_port, [f"x-{i}" for i in range(500)], concurrency=4, limit=60)
    status_ns, headers_ns, _ = client.request(f"{service}.elsewhere")
    shop, shop_headers, _ = client.request(f"shop-{service}")

    assert (status, headers["x-polaris-reason"]) == (403, "service-not-allowed")
    assert f"service other-{service} in namespace default is not in admission" in body
    assert Tally.of(answers).counts == {(403, "service-not-allowed"): 500}
    assert (status_ns, headers_ns["x-polaris-reason"]) == (403, "service-not-allowed")
    assert (shop, shop_headers["x-polaris-reason"]) == (503, "service-not-found"), "a pattern"
    time.sleep(1)
    # Only the leader's refreshes of the allowed service (and the one `shop-*` lookup).
    assert e.counter("discover_requests") - before <= 2 + 2 * 4 / REFRESH
    assert e.counter("not_allowed") == 502
    assert client.counts(service, 10) == {"legit": 10}


def test_a_service_nobody_asks_for_leaves_the_watch_list_so_a_new_one_fits(
    polaris, service, upstreams, envoy
):
    a_up, b_up = upstreams("a", "b")
    register_all(polaris, f"{service}-a", [a_up])
    register_all(polaris, f"{service}-b", [b_up])
    e = envoy(polaris.grpc_port, max_services=1, admission={"idle_timeout": "2s"})
    client = e.client()
    assert client.counts(f"{service}-a", 5) == {"a": 5}

    status, headers, body = client.request(f"{service}-b")
    assert (status, headers["x-polaris-reason"]) == (503, "too-many-services"), body

    # Nobody asks for a any more: within the idle timeout plus the publish and sweep periods, it
    # leaves the watch list, and b fits.
    start = time.monotonic()
    while time.monotonic() - start < 10:
        status, _, body = client.request(f"{service}-b")
        if status == 200:
            break
        time.sleep(0.2)
    took = time.monotonic() - start
    print(f"b served {took:.1f}s after a was last asked for")
    assert (status, body) == (200, "b")
    assert 1.5 <= took <= 6, took
    assert e.counter("services_dropped") >= 1
    assert e.stats("watched_services").get("wasmcustom.polaris_wasm.watched_services") == 1
    # a comes back when asked for once b is idle in turn.
    time.sleep(4)
    assert client.counts(f"{service}-a", 5) == {"a": 5}


def test_the_debug_header_with_trace_off_adds_nothing(polaris, service, upstreams, envoy):
    (up,) = upstreams("legit")
    register_all(polaris, service, [up])
    client = envoy(polaris.grpc_port).client()

    status, headers, body = client.request(service, headers={"x-polaris-debug": "1"})

    assert (status, body) == (200, "legit")
    assert not [h for h in headers if h.startswith("x-polaris-")], headers


def test_oversized_headers_cookies_and_queries_get_a_clear_answer_and_change_nothing(
    polaris, service, upstreams, envoy
):
    (up,) = upstreams("legit")
    register_all(polaris, service, [up])
    e = envoy(polaris.grpc_port)
    client = e.client()
    assert client.counts(service, 5) == {"legit": 5}
    picks = e.wait_counter("picks", lambda n: n == 5)

    big = "v" * (70 * 1024)  # Envoy's default limit on request headers is 60 KiB
    for headers, path in [
        ({"x-big": big}, "/"),
        ({"cookie": f"a=1; big={big}"}, "/"),
        ({}, f"/?q={big}"),
    ]:
        status, _, body = client.request(service, path, headers=headers)
        assert status == 431, (status, body[:200])
    # Under the limit, the same shapes are routed as usual.
    near = "v" * (40 * 1024)
    for headers, path in [
        ({"x-big": near}, "/"),
        ({"cookie": f"a=1; big={near}"}, "/"),
        ({}, f"/?q={near}&z=1"),
    ]:
        status, _, body = client.request(service, path, headers=headers)
        assert (status, body) == (200, "legit")
    status, _, body = client.request(service, "/_headers")
    assert json.loads(body)["x-polaris-upstream"] == up.address
    time.sleep(1)
    assert e.counter("picks") - picks == 4
