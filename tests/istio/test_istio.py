"""Issue 15: our WasmPlugin, ServiceEntry and EnvoyFilter as shipped (envoy/istio/*.yaml), read by a
real istiod (Istio's own bootstrap server and WasmPlugin translation, build/istiod), the module
pulled by the stock pilot-agent from a local OCI registry by `oci://` and the manifest `sha256`,
run by the real Envoy that pilot-agent starts from Istio's bootstrap, against the real Polaris and
real upstreams. One chain serves the whole module (conftest.py `chain`); each test names its own
service.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
import yaml

import chain as ch
from istio_shape import ISTIO_FETCH_FAILED_FAIL_CLOSE
from harness.polaris import breaker_rule

REFRESH = 2.0  # the shipped pluginConfig's refresh_interval


def register(polaris, service, ups, weights=None):
    polaris.create_service(service)
    ids = [
        polaris.register_instance(service, "127.0.0.1", u.port, weight=w)
        for u, w in zip(ups, weights or [100] * len(ups))
    ]
    polaris.wait_for(lambda r: len(r.get("instances") or []) == len(ups), service=service)
    return ids


def fresh(host: str, path: str = "/", headers: dict | None = None, target: str | None = None):
    """One request to port 18080 on its own connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", ch.LISTEN_PORT, timeout=10)
    try:
        conn.request("GET", target or path, headers={"Host": host, "Connection": "close", **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
    finally:
        conn.close()


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


def cluster_stat(agent, cluster: str, stat: str) -> int:
    """A cluster counter (Istio's stat tags put a `;` after the cluster name)."""
    prefix = f"cluster.{cluster}"
    return sum(v for k, v in agent.stats(prefix).items() if k.startswith(prefix) and k.endswith("." + stat))


# --- what Istio generated from the shipped resources ---------------------------------------------


def listener_18080(agent) -> dict:
    """Istio's outbound listener for port 18080: `127.0.0.1_18080` here, as a sidecar without
    traffic capture (INTERCEPTION_MODE NONE) binds outbound ports on localhost; `0.0.0.0_18080`
    behind iptables in a pod. The filters and routes are the same."""
    for entry in agent.config_dump("dynamic_listeners"):
        active = (entry.get("active_state") or {}).get("listener") or {}
        if active.get("name") == f"127.0.0.1_{ch.LISTEN_PORT}":
            return active
    raise AssertionError("no listener 127.0.0.1_18080 from istiod")


def http_filters(listener: dict) -> list[dict]:
    (chain,) = [c for c in listener["filter_chains"] if c["filters"][-1]["name"].endswith("http_connection_manager")]
    return chain["filters"][-1]["typed_config"]["http_filters"]


def route_18080(agent) -> dict:
    for entry in agent.config_dump("dynamic_route_configs"):
        rc = entry.get("route_config") or {}
        if rc.get("name") == "18080":
            return rc
    raise AssertionError("no route config 18080 from istiod")


def test_istio_names_our_filter_under_its_extensions_prefix_and_puts_it_before_the_router(chain):
    filters = http_filters(listener_18080(chain.agent))
    names = [f["name"] for f in filters]
    ours = [n for n in names if n.startswith(ch.FILTER_PREFIX)]

    # The name is Istio's, and changes between versions (trafficextension/... at this pin,
    # wasmplugin/... in 1.29): README says to match on the prefix.
    assert len(ours) == 1 and "istio-system.polaris-wasm" in ours[0], names
    # Metadata exchange, ALPN and istio.stats are off for the upstream Envoy (README).
    assert not [n for n in names if n.startswith("istio.")], names
    assert names[-1] == "envoy.filters.http.router"
    after = names[names.index(ours[0]) + 1 :]
    assert set(after) <= {
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    }, names
    # Delivered by ECDS, which pilot-agent rewrote to the module it pulled (a local file).
    (entry,) = [f for f in filters if f["name"] == ours[0]]
    assert "config_discovery" in entry, entry
    status, body = chain.agent.admin("/config_dump?resource=ecds_filters")
    ecds = json.loads(body)["configs"]
    wasm = [e for e in ecds if e["ecds_filter"]["name"] == ours[0]]
    assert wasm, [e["ecds_filter"]["name"] for e in ecds]
    plugin = wasm[0]["ecds_filter"]["typed_config"]["config"]
    assert plugin["root_id"] == "polaris_root"
    assert plugin["failure_policy"] == "FAIL_RELOAD"
    local = plugin["vm_config"]["code"]["local"]["filename"]
    assert local.startswith("/var/lib/istio/data/"), local


def test_route_18080_sends_every_host_to_the_original_dst_cluster_and_keeps_istios_own_vhost(chain):
    vhosts = {v["name"]: v for v in route_18080(chain.agent)["virtual_hosts"]}

    assert "allow_any" not in vhosts and "block_all" not in vhosts, list(vhosts)
    assert vhosts["polaris"]["domains"] == ["*"]
    # Istio's own virtual host for the ServiceEntry's host stays (README says why that is safe:
    # test_port_18080_never_reaches_the_original_dst_cluster_past_the_filter).
    assert set(vhosts) == {"polaris", "polaris-upstream.local:18080"}, list(vhosts)
    for v in vhosts.values():
        assert {r["route"]["cluster"] for r in v["routes"]} == {ch.UPSTREAM_CLUSTER}


def test_the_envoyfilter_settings_reach_the_clusters(chain):
    clusters = {}
    for entry in chain.agent.config_dump("dynamic_active_clusters"):
        c = entry.get("cluster") or {}
        clusters[c.get("name")] = c

    upstream = clusters[ch.UPSTREAM_CLUSTER]
    assert upstream["type"] == "ORIGINAL_DST"
    assert upstream["original_dst_lb_config"] == {
        "use_http_header": True,
        "http_header_name": "x-polaris-upstream",
    }
    polaris = clusters[ch.POLARIS_CLUSTER]
    options = polaris["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def ecds_filter(agent, name: str) -> dict:
    """The filter config Envoy got by ECDS under `name` (after pilot-agent's rewrite)."""
    status, body = agent.admin("/config_dump?resource=ecds_filters")
    assert status == 200, body[:200]
    for entry in json.loads(body).get("configs", []):
        flt = entry.get("ecds_filter") or {}
        if flt.get("name") == name:
            return flt["typed_config"]
    raise AssertionError(f"no ECDS filter {name}")


def ecds_wasm(agent, name: str) -> dict:
    """The Wasm PluginConfig of that filter."""
    return ecds_filter(agent, name)["config"]


def test_the_shape_file_is_what_istio_generates(chain):
    """envoy/istio/envoy-istio-shape.yaml, the fast stand-in the failure-policy tests run, against
    the real thing: the same filters in the same order, virtual hosts, routes, cluster settings and
    plugin configuration."""
    shape = yaml.safe_load((ch.SHIPPED_DIR / "envoy-istio-shape.yaml").read_text())
    (shape_listener,) = shape["static_resources"]["listeners"]
    shape_hcm = shape_listener["filter_chains"][0]["filters"][0]["typed_config"]
    shape_clusters = {c["name"]: c for c in shape["static_resources"]["clusters"]}
    listener = listener_18080(chain.agent)
    filters = http_filters(listener)

    assert listener["address"]["socket_address"]["port_value"] == shape_listener["address"]["socket_address"]["port_value"]
    assert [f["name"] for f in filters] == [f["name"] for f in shape_hcm["http_filters"]]

    shape_wasm = shape_hcm["http_filters"][0]["typed_config"]["config"]
    real_wasm = ecds_wasm(chain.agent, filters[0]["name"])
    for field in ("name", "root_id", "failure_policy"):
        assert real_wasm[field] == shape_wasm[field], field
    assert json.loads(real_wasm["configuration"]["value"]) == json.loads(shape_wasm["configuration"]["value"])

    def vhosts(route_config):
        return {
            v["name"]: (sorted(v["domains"]), [r["route"]["cluster"] for r in v["routes"]])
            for v in route_config["virtual_hosts"]
        }

    route_config = route_18080(chain.agent)
    assert vhosts(route_config) == vhosts(shape_hcm["route_config"])
    assert route_config.get("ignore_port_in_host_matching") == shape_hcm["route_config"].get("ignore_port_in_host_matching")

    clusters = {}
    for entry in chain.agent.config_dump("dynamic_active_clusters"):
        c = entry.get("cluster") or {}
        clusters[c.get("name")] = c
    upstream, shape_upstream = clusters[ch.UPSTREAM_CLUSTER], shape_clusters[ch.UPSTREAM_CLUSTER]
    assert upstream["type"] == shape_upstream["type"]
    assert upstream["original_dst_lb_config"] == shape_upstream["original_dst_lb_config"]
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    real_h2 = clusters[ch.POLARIS_CLUSTER]["typed_extension_protocol_options"][key]["explicit_http_config"]
    shape_h2 = shape_clusters[ch.POLARIS_CLUSTER]["typed_extension_protocol_options"][key]["explicit_http_config"]
    assert set(real_h2) == set(shape_h2) == {"http2_protocol_options"}


# --- traffic through the chain -------------------------------------------------------------------


def test_weighted_picks_through_the_whole_chain(chain, polaris, service, upstreams):
    ups = upstreams("w1", "w2", "w7")
    register(polaris, service, ups, weights=[1, 2, 7])
    client = chain.agent.client()
    before = cluster_stat(chain.agent, ch.UPSTREAM_CLUSTER, "upstream_rq_200")

    n = 1000
    counts = client.counts(service, n)
    client.close()

    assert set(counts) == {"w1", "w2", "w7"}, counts
    # Binomial sd at n=1000 is at most 0.016; 0.05 is over 3 sd for every share.
    for name, expected in [("w1", 0.1), ("w2", 0.2), ("w7", 0.7)]:
        assert abs(counts[name] / n - expected) < 0.05, counts
    # Out through Istio's ORIGINAL_DST cluster; Polaris reached through Istio's cluster name.
    assert cluster_stat(chain.agent, ch.UPSTREAM_CLUSTER, "upstream_rq_200") - before >= n
    assert cluster_stat(chain.agent, ch.POLARIS_CLUSTER, "upstream_rq_total") >= 1
    assert "configured: Polaris cluster " + ch.POLARIS_CLUSTER in chain.agent.log_text()


def test_isolated_instance_leaves_traffic(chain, polaris, service, upstreams):
    ups = upstreams("a", "b")
    ids = register(polaris, service, ups)
    client = chain.agent.client()
    assert set(client.counts(service, 40)) == {"a", "b"}

    polaris.update_instance(ids[0], isolate=True)
    polaris.wait_for(lambda r: any(i.get("isolate") for i in r.get("instances") or []), service=service)

    # The shipped refresh_interval is 2s: within two intervals, plus slack.
    until(lambda: set(client.counts(service, 20)) == {"b"}, 2 * REFRESH + 1.5, "isolation reached traffic")
    assert set(client.counts(service, 100)) == {"b"}
    client.close()


def test_client_sent_upstream_header_never_steers_the_pick(chain, polaris, service, upstreams):
    good, rogue = upstreams("registered", "rogue")
    register(polaris, service, [good])
    client = chain.agent.client()

    hijack = {"x-polaris-upstream": rogue.address}
    counts = client.counts(service, 50, headers=hijack)
    status, _, body = client.request(service, "/_headers", headers=hijack)
    client.close()

    assert counts == {"registered": 50}
    assert status == 200
    assert json.loads(body)["x-polaris-upstream"] == good.address
    assert rogue.served() == 0


@pytest.mark.parametrize(
    "host",
    ["polaris-upstream.local:18080", "polaris-upstream.local", "127.0.0.1:18080", "anything.example", "ROGUE"],
)
def test_port_18080_never_reaches_the_original_dst_cluster_past_the_filter(chain, upstreams, host):
    """Istio's own virtual host `polaris-upstream.local:18080` routes to the same ORIGINAL_DST
    cluster as ours, but the filter is on the listener, before routing: whatever virtual host a
    request matches, it passes the filter, which overwrites (or answers instead of) a client's
    upstream header. Nothing the client names is reached, not even as an absolute URI (ROGUE:
    `GET http://<rogue ip:port>/`, the HTTP-proxy form)."""
    (rogue,) = upstreams("rogue")
    hijack = {"x-polaris-upstream": rogue.address}

    if host == "ROGUE":
        status, headers, body = fresh(rogue.address, headers=hijack, target=f"http://{rogue.address}/")
    else:
        status, headers, body = fresh(host, headers=hijack)

    assert rogue.served() == 0
    assert status == 503, (status, body)
    assert headers["x-polaris-reason"] == "service-not-found", headers


def test_a_connect_tunnel_on_port_18080_reaches_nothing(chain, upstreams):
    """The other proxy form, CONNECT host:port, gets no tunnel: nothing the client names is
    reached, not even by a request sent down the would-be tunnel."""
    (rogue,) = upstreams("rogue")

    with socket.create_connection(("127.0.0.1", ch.LISTEN_PORT), timeout=10) as s:
        s.sendall(
            f"CONNECT {rogue.address} HTTP/1.1\r\nHost: {rogue.address}\r\n"
            f"x-polaris-upstream: {rogue.address}\r\n\r\n".encode()
        )
        head = s.recv(4096).decode(errors="replace")
        try:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {rogue.address}\r\n\r\n".encode())
            s.recv(4096)
        except OSError:
            pass  # Envoy closed the connection: no tunnel

    # The filter's own answer: "127.0.0.1" is no Polaris service.
    assert head.startswith("HTTP/1.1 503"), head
    assert "x-polaris-reason: service-not-found" in head.lower(), head
    assert rogue.served() == 0


def test_http_proxy_form_names_the_service(chain, polaris, service, upstreams):
    """`curl -x http://polaris-upstream.local:18080 http://echo/`: the absolute URI names the
    service."""
    (up,) = upstreams("proxied")
    register(polaris, service, [up])

    status, _, body = fresh(service, target=f"http://{service}/")

    assert (status, body) == (200, "proxied")


def test_unknown_service_is_answered_by_the_filter(chain, service):
    status, headers, body = fresh(service)

    assert status == 503
    assert headers["x-polaris-reason"] == "service-not-found"
    assert f"service {service} not found in Polaris namespace default" in body


def test_a_polaris_breaker_rule_ejects_an_instance_answering_500(chain, polaris, service, upstreams):
    """The shipped pluginConfig turns circuit breaking on; a 5-in-a-row rule from Polaris (not the
    default rule's 10) ejects the failing instance."""
    a, b = upstreams("a", "b")
    register(polaris, service, [a, b])
    rule = f"cb5-{service[-6:]}"
    polaris.create_circuitbreaker([breaker_rule(rule, service, consecutive=5, sleep_window=30)])
    polaris.wait_for_circuitbreaker(service, lambda rs: rule in {r["name"] for r in rs})
    opened = chain.agent.counter("breaker_instance_open")
    # The first request starts watching the service; its rules arrive with a following refresh
    # (without them polaris-go's default rule would allow 10, not 5).
    assert fresh(service)[0] == 200
    time.sleep(2 * REFRESH + 1.0)

    a.misbehave(status=500)
    before = a.served()
    answers = [fresh(service) for _ in range(60)]
    reached_a = a.served() - before

    assert reached_a <= 5, answers
    assert [s for s, _, _ in answers].count(500) == reached_a
    assert {body for s, _, body in answers if s == 200} == {"b"}
    assert chain.agent.wait_counter("breaker_instance_open", lambda v: v > opened) == opened + 1


def test_a_polaris_local_qps_rule_answers_429(chain, polaris, service, upstreams):
    """The shipped pluginConfig enforces the destination's RATE_LIMIT rules."""
    (up,) = upstreams("limited")
    register(polaris, service, [up])
    rule = {
        "name": f"one-per-minute-{service[-6:]}",
        "namespace": "default",
        "service": service,
        "resource": "QPS",
        "type": "LOCAL",
        "priority": 0,
        "amounts": [{"maxAmount": 1, "validDuration": "60s"}],
        "action": "REJECT",
        "disable": False,
    }
    polaris.create_ratelimit([rule])
    polaris.wait_for(
        lambda r: len((r.get("rateLimit") or {}).get("rules") or []) == 1, service=service, type="RATE_LIMIT"
    )
    limited = chain.agent.counter("rate_limited")

    first = fresh(service)
    status, headers, body = fresh(service)

    assert first[0] == 200, first
    assert status == 429
    assert headers["x-polaris-reason"] == "rate-limited"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert rule["name"] in body
    assert chain.agent.wait_counter("rate_limited", lambda v: v > limited) > limited


# Last: it swaps the module out and back in.
def test_the_modules_own_digest_is_refused_and_the_manifest_digest_loads(chain, polaris, service, upstreams):
    """For oci:// Istio checks `sha256` against the image manifest: the module's own digest is a
    mismatch, pilot-agent refuses the module and Envoy gets Istio's deny-all filter instead (403,
    never the upstream, never an open proxy)."""
    (up,) = upstreams("behind")
    register(polaris, service, [up])
    assert fresh(service)[0] == 200

    module_sha = ch.MODULE_SHA256.read_text().split()[0]
    assert module_sha != chain.manifest_sha256
    chain.apply_shipped(sha256=module_sha)
    try:
        until(lambda: fresh(service)[0] == 403, 30, "a 403 from the deny-all filter")
        served = up.served()
        hijack = {"x-polaris-upstream": up.address}
        assert [fresh(service, headers=hijack)[0] for _ in range(10)] == [403] * 10
        assert up.served() == served
        assert "checksum" in chain.agent.log_text().lower()
        # Exactly the stand-in tests/e2e/test_failure_policy.py runs in the shape.
        (name,) = [f["name"] for f in http_filters(listener_18080(chain.agent)) if f["name"].startswith(ch.FILTER_PREFIX)]
        (stand_in,) = yaml.safe_load(ISTIO_FETCH_FAILED_FAIL_CLOSE)
        assert ecds_filter(chain.agent, name) == stand_in["typed_config"]
    finally:
        chain.apply_shipped()
        chain.agent.wait_for_filter()
    assert fresh(service)[2] == "behind"
