"""Checks the Polaris harness against the real server (build/polaris-server).

Everything runs on 127.0.0.1 with free ports; every wait is bounded.
Skipped when the binary has not been built (`make polaris-server`).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.polaris import (  # noqa: E402
    DEFAULT_BINARY,
    REPO_ROOT,
    Polaris,
    PolarisAPIError,
    PolarisError,
    instance_id,
)

BINARY = REPO_ROOT / DEFAULT_BINARY

pytestmark = pytest.mark.skipif(
    not BINARY.exists(), reason=f"{BINARY} not built (run `make polaris-server`)"
)

VISIBLE = 10.0  # generous bound for cache propagation (~1-2 s)


@pytest.fixture(scope="module")
def pol(tmp_path_factory):
    p = Polaris(tmp_path_factory.mktemp("polaris"))
    p.start(timeout=60)
    yield p
    p.stop()


def by_port(resp):
    return {i["port"]: i for i in resp.get("instances") or []}


def test_only_two_loopback_listeners(pol):
    """The server listens on exactly our two 127.0.0.1 ports, nothing else."""
    assert pol.http_port != pol.grpc_port
    with socket.create_connection(("127.0.0.1", pol.grpc_port), timeout=2):
        pass
    assert pol.request("GET", "/naming/v1/namespaces")["code"] == 200000
    proc_fd = Path(f"/proc/{pol.pid}/fd")
    if not Path("/proc/net/tcp").exists() or not proc_fd.exists():
        pytest.skip("needs /proc")
    fds = set()
    for fd in proc_fd.iterdir():
        try:
            fds.add(str(fd.readlink()))
        except OSError:
            pass
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            tcp_listen = table.startswith("/proc/net/tcp") and parts[3] == "0A"
            udp = table.startswith("/proc/net/udp")
            if (tcp_listen or udp) and f"socket:[{parts[9]}]" in fds:
                listening.append((table.rsplit("/", 1)[1], parts[1]))
    assert sorted(listening) == sorted([
        ("tcp", f"0100007F:{pol.http_port:04X}"),
        ("tcp", f"0100007F:{pol.grpc_port:04X}"),
    ]), listening


def test_instance_lifecycle(pol):
    svc, ns = "svc-lifecycle", "default"
    pol.create_service(svc, ns, metadata={"internal-enable-nearby": "true"})
    pol.create_service(svc, ns)  # idempotent

    specs = {
        9101: dict(weight=1, metadata={"version": "v1", "k": "a"},
                   location={"region": "r1", "zone": "z1", "campus": "c1"}),
        9102: dict(weight=2, metadata={"version": "v2", "k": "b"},
                   location={"region": "r1", "zone": "z2", "campus": "c2"}),
        9107: dict(weight=7, metadata={"version": "v3", "k": "c"},
                   location=("r2", "z3", "c3")),
    }
    ids = {}
    for port, spec in specs.items():
        ids[port] = pol.register_instance(svc, "127.0.0.1", port, namespace=ns, **spec)
        assert ids[port] == instance_id(svc, "127.0.0.1", port, ns)

    resp = pol.wait_for(lambda d: len(d.get("instances") or []) == 3, VISIBLE, service=svc)
    assert resp["code"] == 200000
    assert resp["service"]["metadata"] == {"internal-enable-nearby": "true"}
    got = by_port(resp)
    assert {p: i["weight"] for p, i in got.items()} == {9101: 1, 9102: 2, 9107: 7}
    for port, ins in got.items():
        assert ins["healthy"] is True and ins["isolate"] is False
        assert ins["id"] == ids[port]
        assert ins["host"] == "127.0.0.1"
        for k, v in specs[port]["metadata"].items():
            assert ins["metadata"][k] == v
    assert got[9101]["location"] == {"region": "r1", "zone": "z1", "campus": "c1"}
    assert got[9107]["location"] == {"region": "r2", "zone": "z3", "campus": "c3"}
    rev1 = resp["service"]["revision"]

    # unchanged revision -> DataNoChange
    assert pol.discover_instances(svc, ns, revision=rev1)["code"] == 200001

    # isolate one (by id)
    pol.update_instance(ids[9102], isolate=True)
    resp = pol.wait_for(lambda d: by_port(d)[9102]["isolate"], VISIBLE, service=svc)
    got = by_port(resp)
    assert got[9102]["weight"] == 2 and got[9102]["healthy"] is True
    assert got[9102]["location"] == {"region": "r1", "zone": "z2", "campus": "c2"}
    assert got[9102]["metadata"]["version"] == "v2"
    assert resp["service"]["revision"] != rev1

    # mark one unhealthy (by identity tuple), no heartbeat/health check at all
    pol.update_instance((svc, "127.0.0.1", 9107, ns), healthy=False)
    resp = pol.wait_for(lambda d: not by_port(d)[9107]["healthy"], VISIBLE, service=svc)
    got = by_port(resp)
    assert got[9107]["weight"] == 7 and got[9107]["isolate"] is False
    assert got[9107]["location"] == {"region": "r2", "zone": "z3", "campus": "c3"}
    assert got[9107]["metadata"]["k"] == "c"
    # ...and it sticks: nothing health-checks an instance without health check
    time.sleep(3.0)
    got = by_port(pol.discover_instances(svc, ns))
    assert got[9107]["healthy"] is False
    assert got[9101]["healthy"] is True and got[9101]["isolate"] is False

    # the console listing agrees (it hides version/region/zone/campus metadata)
    listed = {i["port"]: i for i in pol.list_instances(svc, ns)}
    assert listed[9107]["healthy"] is False and listed[9102]["isolate"] is True
    assert listed[9101]["metadata"] == {"k": "a"}

    # weight + metadata change; metadata is replaced as a whole
    pol.update_instance({"id": ids[9101]}, weight=5, metadata={"version": "v9"})
    resp = pol.wait_for(lambda d: by_port(d)[9101]["weight"] == 5, VISIBLE, service=svc)
    ins = by_port(resp)[9101]
    assert ins["metadata"].get("version") == "v9" and "k" not in ins["metadata"]
    assert ins["location"] == {"region": "r1", "zone": "z1", "campus": "c1"}

    # no-op update is accepted
    pol.update_instance(ids[9101], weight=5)

    # flip back
    pol.update_instance(ids[9107], healthy=True)
    pol.update_instance(ids[9102], isolate=False)
    pol.wait_for(
        lambda d: by_port(d)[9107]["healthy"] and not by_port(d)[9102]["isolate"],
        VISIBLE, service=svc,
    )

    # deregister one (by dict identity); deregistering twice is fine
    pol.deregister_instance({"service": svc, "namespace": ns, "host": "127.0.0.1", "port": 9102})
    pol.deregister_instance(ids[9102])
    resp = pol.wait_for(lambda d: set(by_port(d)) == {9101, 9107}, VISIBLE, service=svc)
    assert len(pol.instances(svc, ns)) == 2


def test_unknown_service_and_namespace(pol):
    resp = pol.discover_instances("no-such-svc")
    assert resp["code"] == 400202
    assert pol.instances("no-such-svc") == []
    pol.create_namespace("ns-e2e")
    pol.create_namespace("ns-e2e")  # existed is fine
    with pytest.raises(PolarisAPIError) as ei:
        pol.create_namespace("ns-e2e", exist_ok=False)
    assert ei.value.code == 400201
    pol.create_service("svc-ns", "ns-e2e")
    iid = pol.register_instance("svc-ns", "127.0.0.1", 9200, namespace="ns-e2e")
    resp = pol.wait_for(lambda d: len(d.get("instances") or []) == 1, VISIBLE,
                            service="svc-ns", namespace="ns-e2e")
    assert resp["instances"][0]["id"] == iid


def test_heartbeat_health_check(pol):
    """pol.checker self-registration makes heartbeat checks work."""
    svc = "svc-hb"
    ident = (svc, "127.0.0.1", 9300)
    pol.register_instance(svc, "127.0.0.1", 9300, ttl=2)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        pol.heartbeat(ident)
        time.sleep(0.5)
    resp = pol.wait_for(lambda d: by_port(d)[9300]["healthy"], VISIBLE, service=svc)
    assert by_port(resp)[9300]["enableHealthCheck"] is True
    # no more heartbeats: unhealthy after ~3*ttl
    pol.wait_for(lambda d: not by_port(d)[9300]["healthy"], 20.0, service=svc)
    # v1.18.1 accepts (200000) heartbeats for an instance without health
    # check (400140 only comes when the health-check module is off); they
    # change nothing, and nothing marks such an instance unhealthy.
    pol.register_instance(svc, "127.0.0.1", 9301)
    pol.wait_for(lambda d: 9301 in by_port(d), VISIBLE, service=svc)
    pol.heartbeat((svc, "127.0.0.1", 9301))
    time.sleep(2.0)
    ins = by_port(pol.discover_instances(svc))[9301]
    assert ins["healthy"] is True and not ins.get("enableHealthCheck")


def test_rules(pol):
    pol.create_service("svc-rules")
    rid = pol.create_routing_v2([{
        "name": "r1", "namespace": "default", "enable": True,
        "routing_policy": "RulePolicy", "priority": 0,
        "routing_config": {
            "@type": "type.googleapis.com/v1.RuleRoutingConfig",
            "rules": [{
                "name": "s0",
                "sources": [{"service": "*", "namespace": "*", "arguments": [
                    {"type": "HEADER", "key": "x-env",
                     "value": {"type": "EXACT", "value": "gray"}}]}],
                "destinations": [{"service": "svc-rules", "namespace": "default",
                                  "labels": {"version": {"type": "EXACT", "value": "v2"}},
                                  "priority": 0, "weight": 100, "name": "g0"}],
            }],
        },
    }])
    assert len(rid) == 1 and rid[0]
    resp = pol.wait_for(lambda d: d["routing"]["inbounds"], VISIBLE,
                            service="svc-rules", type="ROUTING")
    src = resp["routing"]["inbounds"][0]["sources"][0]
    assert src["metadata"]["$header.x-env"]["value"] == "gray"

    rl = pol.create_ratelimit({
        "name": "rl1", "namespace": "default", "service": "svc-rules",
        "resource": "QPS", "type": "LOCAL", "priority": 0,
        "method": {"type": "EXACT", "value": "/echo"},
        "amounts": [{"maxAmount": 10, "validDuration": "1s"}],
        "action": "REJECT", "disable": False,
    })
    resp = pol.wait_for(lambda d: d["rateLimit"]["rules"], VISIBLE,
                            service="svc-rules", type="RATE_LIMIT")
    assert resp["rateLimit"]["rules"][0]["id"] == rl[0]
    assert resp["rateLimit"]["rules"][0]["amounts"][0]["maxAmount"] == 10

    cb = pol.create_circuitbreaker([{
        "name": "cb1", "namespace": "default", "enable": True, "level": "INSTANCE",
        "rule_matcher": {"source": {"service": "*", "namespace": "*"},
                         "destination": {"service": "svc-rules", "namespace": "default"}},
        "error_conditions": [{"input_type": "RET_CODE",
                              "condition": {"type": "RANGE", "value": "500~599"}}],
        "trigger_condition": [{"trigger_type": "CONSECUTIVE_ERROR", "error_count": 3}],
        "recoverCondition": {"sleep_window": 5, "consecutiveSuccess": 2},
    }])
    resp = pol.wait_for(lambda d: d["circuitBreaker"]["rules"], VISIBLE,
                            service="svc-rules", type="CIRCUIT_BREAKER")
    assert resp["circuitBreaker"]["rules"][0]["id"] == cb[0]

    # only RulePolicy is accepted
    with pytest.raises(PolarisAPIError) as ei:
        pol.create_routing_v2({"name": "bad", "namespace": "default", "enable": True,
                                   "routing_policy": "MetadataPolicy",
                                   "routing_config": {
                                       "@type": "type.googleapis.com/v1.RuleRoutingConfig"}})
    assert ei.value.code == 400701

    pol.delete_ratelimit(rl)
    pol.wait_for(lambda d: not (d.get("rateLimit") or {}).get("rules"), VISIBLE,
                     service="svc-rules", type="RATE_LIMIT")
    pol.delete_routing_v2(rid)
    pol.delete_circuitbreaker(cb)


def test_stop_start_keeps_ports_and_data(tmp_path):
    p = Polaris(tmp_path / "pol")
    with p:
        ports = (p.http_port, p.grpc_port)
        p.create_service("svc-persist")
        iid = p.register_instance("svc-persist", "127.0.0.1", 9400, weight=3,
                                  location={"region": "r", "zone": "z", "campus": "c"})
        p.update_instance(iid, healthy=False)
        p.wait_for(lambda d: not by_port(d)[9400]["healthy"], VISIBLE, service="svc-persist")
        t0 = time.monotonic()
        p.stop()
        stop_secs = time.monotonic() - t0
        assert not p.is_running()
        p.stop()  # second stop is a no-op
        assert stop_secs < 15
        p.start(timeout=60)
        assert (p.http_port, p.grpc_port) == ports
        resp = p.wait_for(lambda d: 9400 in by_port(d), VISIBLE, service="svc-persist")
        ins = by_port(resp)[9400]
        assert ins["id"] == iid and ins["weight"] == 3 and ins["healthy"] is False
        assert ins["location"] == {"region": "r", "zone": "z", "campus": "c"}
    assert not p.is_running()
    p.stop()


def test_start_fails_cleanly_when_port_taken(tmp_path):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        p = Polaris(tmp_path / "pol", http_port=blocker.getsockname()[1])
        t0 = time.monotonic()
        with pytest.raises(PolarisError) as ei:
            p.start(timeout=30)
        assert time.monotonic() - t0 < 30
        assert "polaris-server" in str(ei.value)
        assert not p.is_running()
        p.stop()
    finally:
        blocker.close()
