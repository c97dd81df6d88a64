"""Issue 10: circuit breaking from real Polaris CIRCUIT_BREAKER rules, in a real Envoy with
`--concurrency 2`, against real upstream processes that start failing, slow down or die.

Every request here goes on a fresh connection, so Envoy's two workers share the traffic (the
kernel spreads connections over both listeners); the breaker state is one per Envoy, so counts
add up across workers. Upstreams count what they served, which is how "the upstream saw at most
N more requests" is measured.
"""

from __future__ import annotations

import http.client
import time

import pytest

from conftest import REFRESH
from harness.polaris import breaker_rule
from harness.upstream import Upstream

DEBUG = {"x-polaris-debug": "1"}


def fresh(port: int, host: str, path: str = "/", headers: dict | None = None):
    """One request on its own connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        conn.close()


def register(polaris, service, ups):
    polaris.create_service(service)
    for u in ups:
        polaris.register_instance(service, "127.0.0.1", u.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == len(ups), service=service)


def uniq(service: str, name: str) -> str:
    """Rule names are unique in a Polaris namespace: suffix the test's own service id."""
    return f"{name}-{service[-6:]}"


def add_rules(polaris, service, *rules) -> list[str]:
    ids = polaris.create_circuitbreaker(list(rules))
    names = {r["name"] for r in rules}
    polaris.wait_for_circuitbreaker(service, lambda rs: names <= {r["name"] for r in rs})
    return ids


def breaker_trace(envoy, service, path="/") -> str:
    _, headers, _ = fresh(envoy.listen_port, service, path, DEBUG)
    return headers.get("x-polaris-breaker", "")


def wait_rule(envoy, service, expected: str, path="/", timeout=4 * REFRESH + 2) -> float:
    """Waits until the decision trace shows `expected` (e.g. `instance=closed/cb5`)."""
    start = time.monotonic()
    trace = ""
    while time.monotonic() - start < timeout:
        trace = breaker_trace(envoy, service, path)
        if expected in trace:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"trace never showed {expected!r}; last {trace!r}\n{envoy.log_tail(30)}")


def workers_used(envoy) -> int:
    """Envoy workers that accepted connections on the listener."""
    stats = envoy.stats("downstream_cx_total")
    return sum(
        1
        for name, value in stats.items()
        if name.startswith("listener.127.0.0.1_") and ".worker_" in name and value > 0
    )


def burst(envoy, service, n, path="/", max_seconds=None):
    """Up to `n` sequential requests (each on a fresh connection); stops early after
    `max_seconds`. Returns the answers as (status, upstream name or body)."""
    out = []
    start = time.monotonic()
    for _ in range(n):
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
        status, headers, body = fresh(envoy.listen_port, service, path)
        out.append((status, headers.get("x-upstream", body.strip())))
    return out


def test_an_instance_answering_500_gets_at_most_five_more_requests_and_half_open_readmits_it(
    polaris, service, upstreams, envoy
):
    a, b, c = upstreams("a", "b", "c")
    register(polaris, service, [a, b, c])
    cb5 = uniq(service, "cb5")
    add_rules(polaris, service, breaker_rule(cb5, service, consecutive=5, sleep_window=3, probes=2))
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    wait_rule(e, service, f"instance=closed/{cb5}")

    a.misbehave(status=500)
    before = a.served()
    started = time.monotonic()
    answers = burst(e, service, 120, max_seconds=2.5)
    assert time.monotonic() - started < 3.0, "stayed inside the sleep window"
    reached_a = a.served() - before
    print(f"requests a got after it started failing: {reached_a} of {len(answers)}")
    assert reached_a <= 5, answers
    assert [s for s, _ in answers].count(500) == reached_a
    assert {u for s, u in answers if s == 200} == {"b", "c"}
    assert workers_used(e) == 2, "both workers carried the traffic"
    assert e.wait_counter("breaker_instance_open", lambda v: v >= 1) == 1

    # a answers 200 again: after the sleep window, two probes close its breaker.
    a.misbehave()
    time.sleep(3.0)
    deadline = time.monotonic() + 5
    seen_a = 0
    while time.monotonic() < deadline and seen_a < 3:
        seen_a += sum(1 for s, u in burst(e, service, 10) if u == "a")
    assert seen_a >= 3, "a is back in the rotation"
    assert e.wait_counter("breaker_instance_close", lambda v: v >= 1) >= 1
    assert e.counter("breaker_instance_half_open") >= 1


def test_a_killed_upstream_is_ejected_after_at_most_five_client_visible_failures(
    polaris, service, upstreams, envoy
):
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    cb5 = uniq(service, "cb5")
    add_rules(polaris, service, breaker_rule(cb5, service, consecutive=5, sleep_window=30))
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    wait_rule(e, service, f"instance=closed/{cb5}")
    assert {u for _, u in burst(e, service, 20)} == {"a", "b"}

    a.kill()
    answers = burst(e, service, 100)
    failures = [(s, u) for s, u in answers if s != 200]
    print(f"client-visible failures after the kill: {len(failures)} of {len(answers)}")
    assert len(failures) <= 5, failures
    assert all(s == 503 and "connect" in u for s, u in failures), failures
    assert {u for s, u in answers if s == 200} == {"b"}
    assert e.wait_counter("breaker_instance_open", lambda v: v >= 1) == 1


def test_error_rate_needs_the_minimum_and_the_percentage(polaris, upstreams, envoy, service):
    """ERROR_RATE 50 % over 2 s, minimum 10, checked one interval after a failure: 9 failures
    open nothing, 30 % failures open nothing, 80 % opens."""
    rule = dict(error_rate=(50, 2, 10), sleep_window=30)
    cases = {}
    for case, fail in [("min", None), ("thirty", "3/10"), ("eighty", "8/10")]:
        # The whole service name: its id suffix keeps the two builds' runs of this test apart.
        name = f"{service}-{case}"
        (up,) = upstreams(case)
        register(polaris, name, [up])
        add_rules(polaris, name, breaker_rule(uniq(service, f"er-{case}"), name, **rule))
        up.misbehave(status=500, **({"fail": fail} if fail else {}))
        cases[case] = name
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    for case, name in cases.items():
        wait_rule(e, name, f"instance=closed/{uniq(service, f'er-{case}')}")

    def paced(name, n, seconds):
        for _ in range(n):
            fresh(e.listen_port, name)
            time.sleep(seconds / n)

    paced(cases["min"], 8, 1.0)  # with the trace request above: 9 failures in the interval
    paced(cases["thirty"], 60, 2.0)
    paced(cases["eighty"], 30, 1.5)
    time.sleep(2.0)
    assert f"instance=closed/{uniq(service, 'er-min')}" in breaker_trace(e, cases["min"])
    assert f"instance=closed/{uniq(service, 'er-thirty')}" in breaker_trace(e, cases["thirty"])
    assert f"instance=open/{uniq(service, 'er-eighty')}" in breaker_trace(e, cases["eighty"])
    assert e.wait_counter("breaker_instance_open", lambda v: v >= 1) == 1


def test_an_instance_slower_than_the_delay_condition_is_ejected(polaris, service, upstreams, envoy):
    a, b = upstreams("slow", "fast")
    register(polaris, service, [a, b])
    add_rules(
        polaris,
        service,
        breaker_rule(uniq(service, "slow3"), service, ret_code=None, delay_ms=200, consecutive=3, sleep_window=30),
    )
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    wait_rule(e, service, f"instance=closed/{uniq(service, 'slow3')}")
    a.misbehave(delay_ms=400)
    before = a.served()
    answers = burst(e, service, 60)
    assert a.served() - before <= 3
    assert all(s == 200 for s, _ in answers), "slow is not failed: every answer is a 200"
    assert [u for _, u in answers[-20:]] == ["fast"] * 20


def test_polaris_go_default_rule_ejects_after_ten_consecutive_5xx(polaris, service, upstreams, envoy):
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={})
    wait_rule(e, service, "instance=closed/default-polaris-instance-circuit-breaker")
    a.misbehave(status=503)
    before = a.served()
    burst(e, service, 80)
    assert a.served() - before <= 10
    assert e.wait_counter("breaker_instance_open", lambda v: v >= 1) == 1


def test_an_open_service_breaker_answers_with_the_fallback_and_the_upstream_sees_none(
    polaris, service, upstreams, envoy
):
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    name = uniq(service, "svc")
    fallback = {"code": 418, "headers": {"x-fallback": "polaris"}, "body": "try again later"}
    add_rules(
        polaris,
        service,
        breaker_rule(name, service, "SERVICE", consecutive=3, sleep_window=30, fallback=fallback),
    )
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={})
    wait_rule(e, service, f"service=closed/{name}")
    assert "instance=" not in breaker_trace(e, service), "no default rule beside a service rule"

    a.misbehave(status=500)
    b.misbehave(status=500)
    served = a.served() + b.served()
    replies = []
    for _ in range(30):
        replies.append(fresh(e.listen_port, service))
    upstream_saw = a.served() + b.served() - served
    assert upstream_saw == 3, "three failures opened it; the upstream saw nothing after"
    assert [s for s, _, _ in replies[:3]] == [500] * 3
    for status, headers, body in replies[3:]:
        assert (status, body) == (418, "try again later")
        assert headers["x-fallback"] == "polaris"
        assert headers["x-polaris-reason"] == "circuit-open"
    assert e.wait_counter("breaker_fallbacks", lambda v: v >= 27) == 27
    assert e.counter("breaker_service_open") == 1


def test_an_open_method_breaker_answers_503_for_its_path_only(polaris, service, upstreams, envoy):
    (a,) = upstreams("a")
    register(polaris, service, [a])
    name = uniq(service, "pay")
    add_rules(
        polaris,
        service,
        breaker_rule(name, service, "METHOD", method=("EXACT", "/pay"), consecutive=2, sleep_window=30),
    )
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    wait_rule(e, service, f"method=closed/{name}", path="/pay")
    assert breaker_trace(e, service, "/cart") == "-", "no rule for /cart"

    a.misbehave(status=500, path="/pay")
    before = a.served("/pay")
    answers = [fresh(e.listen_port, service, "/pay?id=7") for _ in range(10)]
    assert a.served("/pay") - before == 2
    status, headers, body = answers[-1]
    assert (status, headers["x-polaris-reason"]) == (503, "circuit-open")
    assert f"circuit breaker rule {name} is open for service {service}" in body, body
    assert "method /pay" in body, body
    others = [fresh(e.listen_port, service, "/cart")[0] for _ in range(10)]
    assert others == [200] * 10, "another path is not broken"


def test_a_rule_disabled_or_deleted_in_polaris_stops_applying_within_two_refresh_intervals(
    polaris, service, upstreams, envoy
):
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    name = uniq(service, "cb3")
    ids = add_rules(polaris, service, breaker_rule(name, service, consecutive=3, sleep_window=60))
    e = envoy(polaris.grpc_port, debug_trace=True, circuit_breaker={"default_rule": False})
    wait_rule(e, service, f"instance=closed/{name}")
    a.misbehave(status=500)

    def ejected() -> bool:
        return {u for _, u in burst(e, service, 30)} == {"b"}

    def back(since: float) -> float:
        """Seconds from `since` until a takes traffic again (a still answers 500)."""
        deadline = since + 2 * REFRESH + 3
        while time.monotonic() < deadline:
            if any(u == "a" for _, u in burst(e, service, 10)):
                return time.monotonic() - since
        raise AssertionError("a never came back")

    burst(e, service, 20)  # a's three failures open it
    assert ejected()
    polaris.enable_circuitbreaker(ids, False)
    polaris.wait_for_circuitbreaker(service, lambda rs: not any(r["enable"] for r in rs))
    took = back(time.monotonic())
    print(f"disabled rule stopped applying {took:.2f}s after Polaris served it")
    assert took <= 2 * REFRESH

    polaris.enable_circuitbreaker(ids, True)
    polaris.wait_for_circuitbreaker(service, lambda rs: all(r["enable"] for r in rs))
    wait_rule(e, service, f"instance=closed/{name}")
    # Every worker resyncs within a tick of the other: give both the new rule version.
    deadline = time.monotonic() + 2 * REFRESH
    burst(e, service, 20)
    while not ejected() and time.monotonic() < deadline:
        burst(e, service, 10)
    assert ejected(), "a fresh breaker for the new rule version opens again"

    polaris.delete_circuitbreaker(ids)
    polaris.wait_for_circuitbreaker(service, lambda rs: not rs)
    took = back(time.monotonic())
    print(f"deleted rule stopped applying {took:.2f}s after Polaris served it")
    assert took <= 2 * REFRESH


@pytest.mark.parametrize("protocol", ["HTTP", "TCP"])
def test_fault_detection_ejects_a_dead_instance_without_user_traffic_and_readmits_it(
    polaris, service, upstreams, envoy, protocol
):
    """HTTP probes GET /health; a TCP probe is a connect check (the port accepts or refuses)."""
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    name = uniq(service, "fd")
    add_rules(
        polaris,
        service,
        breaker_rule(name, service, consecutive=2, sleep_window=2, probes=1, fault_detect=True),
    )
    polaris.create_faultdetector(
        [
            {
                "name": uniq(service, "hc"),
                "namespace": "default",
                "target_service": {"service": service, "namespace": "default"},
                "interval": 1,
                "timeout": 500,
                "port": 0,
                "protocol": protocol,
                "http_config": {"method": "GET", "url": "/health"},
            }
        ]
    )
    e = envoy(
        polaris.grpc_port,
        debug_trace=True,
        circuit_breaker={"default_rule": False, "probe_cluster": "polaris_probe"},
    )
    wait_rule(e, service, f"instance=closed/{name}")
    deadline = time.monotonic() + 4 * REFRESH + 2
    probe_path = "/health" if protocol == "HTTP" else "/"
    while a.served(probe_path) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a.served(probe_path) > 0 and b.served(probe_path) > 0, "both instances are probed"

    a.kill()
    killed = time.monotonic()
    assert e.wait_counter("breaker_instance_open", lambda v: v >= 1, timeout=8) == 1
    print(f"dead instance ejected by probes {time.monotonic() - killed:.1f}s after the kill")
    assert e.counter("probes_failed") >= 2
    answers = burst(e, service, 30)
    assert answers == [(200, "b")] * 30, "no user request ever reached the dead instance"

    revived = Upstream("a", a.port).start()
    try:
        assert e.wait_counter("breaker_instance_close", lambda v: v >= 1, timeout=8) == 1
        assert any(u == "a" for _, u in burst(e, service, 30)), "re-admitted"
    finally:
        revived.stop()


def test_a_dry_run_rule_ejects_nothing_and_counts_the_would_be_opens(
    polaris, service, upstreams, envoy
):
    """Server v1.18.1 refuses rule metadata, so dry-run rules are named in the plugin config."""
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    name = uniq(service, "watch")
    add_rules(polaris, service, breaker_rule(name, service, consecutive=3, sleep_window=1, probes=1))
    e = envoy(
        polaris.grpc_port,
        debug_trace=True,
        circuit_breaker={"default_rule": False, "dry_run": [name]},
    )
    wait_rule(e, service, f"instance=closed/{name}/dry-run")
    a.misbehave(status=500)
    before = a.served()
    answers = burst(e, service, 60)
    reached_a = a.served() - before
    assert reached_a >= 15, f"a keeps its share: {reached_a} of 60"
    assert [s for s, _ in answers].count(500) == reached_a
    assert e.wait_counter("breaker_dry_run_open", lambda v: v >= 1) >= 1
    assert e.counter("breaker_instance_open") == 0
    assert e.counter("recover_all") == 0
    assert "/dry-run" in breaker_trace(e, service)
