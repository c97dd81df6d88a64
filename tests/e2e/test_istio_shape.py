"""Issue 4: the filter end to end in the config an Istio sidecar ends up with.

envoy/istio/envoy-istio-shape.yaml mirrors the sidecar's outbound listener for the Polaris port
as Istio generates it from envoy/istio/*.yaml: Istio's cluster names (with `|` in them, also in
the plugin's polaris_cluster), Istio's filter name, no vm_id, our filter where an unset WasmPlugin
phase puts it (before grpc_stats, fault, cors and the router), failure_policy FAIL_RELOAD.
These tests run that file in the real Envoy against the real Polaris and real upstreams.
"""

from __future__ import annotations

import http.client
import json

import pytest
import yaml

from conftest import traffic_until
from istio_shape import FILTER_NAME, POLARIS_CLUSTER, SHAPE, UPSTREAM_CLUSTER, start_shape


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


def register(polaris, service, ups, weights=None):
    polaris.create_service(service)
    ids = [
        polaris.register_instance(service, "127.0.0.1", u.port, weight=w)
        for u, w in zip(ups, weights or [100] * len(ups))
    ]
    polaris.wait_for(lambda r: len(r.get("instances") or []) == len(ups), service=service)
    return ids


def cluster_stat(envoy, cluster: str, stat: str) -> int:
    return envoy.stats(f"cluster.{cluster}.{stat}").get(f"cluster.{cluster}.{stat}", 0)


def test_shape_has_our_filter_before_the_istio_filters_and_the_router():
    config = yaml.safe_load(SHAPE.read_text())
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]

    assert names == [
        FILTER_NAME,
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    assert listener["name"] == "0.0.0.0_18080"
    assert hcm["route_config"]["name"] == "18080"
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    assert "vm_id" not in wasm["vm_config"]  # Istio sets none
    assert wasm["name"] == FILTER_NAME


def test_weighted_picks_through_istio_named_clusters(polaris, service, upstreams, shape):
    ups = upstreams("w1", "w2", "w7")
    register(polaris, service, ups, weights=[1, 2, 7])
    envoy = shape(polaris.grpc_port)
    client = envoy.client()

    n = 1000
    counts = client.counts(service, n)

    assert set(counts) == {"w1", "w2", "w7"}, counts
    # Binomial sd at n=1000 is at most 0.016; 0.05 is over 3 sd for every share.
    for name, expected in [("w1", 0.1), ("w2", 0.2), ("w7", 0.7)]:
        assert abs(counts[name] / n - expected) < 0.05, counts
    # Traffic went out through Istio's ORIGINAL_DST cluster, discovery through Istio's name
    # for the Polaris Service (the `|` survive the plugin config and the gRPC callout).
    assert cluster_stat(envoy, UPSTREAM_CLUSTER, "upstream_rq_200") >= n
    assert cluster_stat(envoy, POLARIS_CLUSTER, "upstream_rq_total") >= 1
    assert envoy.wait_counter("picks", lambda v: v >= n) >= n
    assert "configured: Polaris cluster " + POLARIS_CLUSTER in envoy.log_text()


def test_isolated_instance_leaves_traffic(polaris, service, upstreams, shape):
    ups = upstreams("a", "b")
    ids = register(polaris, service, ups)
    client = shape(polaris.grpc_port).client()
    assert set(client.counts(service, 40)) == {"a", "b"}

    polaris.update_instance(ids[0], isolate=True)
    polaris.wait_for(lambda r: any(i.get("isolate") for i in r.get("instances") or []), service=service)

    # The shipped refresh_interval is 2s: within two intervals, plus slack.
    traffic_until(client, service, lambda c: set(c) == {"b"}, timeout=5.0)
    assert set(client.counts(service, 100)) == {"b"}


def test_client_sent_upstream_header_never_steers_the_pick(polaris, service, upstreams, shape):
    good, rogue = upstreams("registered", "rogue")
    register(polaris, service, [good])
    client = shape(polaris.grpc_port).client()

    hijack = {"x-polaris-upstream": rogue.address}
    counts = client.counts(service, 50, headers=hijack)
    status, _, body = client.request(service, "/_headers", headers=hijack)

    assert counts == {"registered": 50}
    assert status == 200
    assert json.loads(body)["x-polaris-upstream"] == good.address


def test_http_proxy_form_names_the_service(polaris, service, upstreams, shape):
    """`curl -x http://polaris-upstream.local:18080 http://echo/` sends the absolute URI; Envoy
    takes :authority from it, so the service is named without setting Host by hand."""
    (up,) = upstreams("proxied")
    register(polaris, service, [up])
    envoy = shape(polaris.grpc_port)

    conn = http.client.HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
    try:
        conn.request("GET", f"http://{service}/", headers={"Host": service})
        r = conn.getresponse()
        body = r.read().decode()
    finally:
        conn.close()

    assert (r.status, body) == (200, "proxied")


def test_unknown_service_is_answered_by_the_filter(polaris, service, shape):
    client = shape(polaris.grpc_port).client()

    status, headers, body = client.request(service)

    assert status == 503
    assert headers["x-polaris-reason"] == "service-not-found"
    assert f"service {service} not found in Polaris namespace default" in body
