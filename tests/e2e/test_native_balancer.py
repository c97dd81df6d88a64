"""The native build deciding in its own cluster's load balancer (envoy/envoy-native-balancer.yaml,
`upstream_handover: load_balancer`): the HTTP filter is in the chain but disabled, so Envoy runs
no filter per stream, and the cluster's load balancer makes the decision from the request
headers. In the real Envoy 1.40 and the real Polaris: the first request of a service waits while
the leader discovers it, then requests reach exactly the instances Polaris lists (weights and
isolation honoured), all through the module's cluster; a request that cannot be routed gets
Envoy's own 503; what needs the stream is refused at config time naming the field."""

from __future__ import annotations

import time

from conftest import plugin_config
from harness.envoy import SHIPPED_NATIVE_BALANCER, Envoy, render, validate


def balancer_envoy(workdir, polaris) -> Envoy:
    e = Envoy(workdir, plugin_config(), polaris.grpc_port, build="native")
    e.config_text = render(
        plugin_config(), e.listen_port, e.admin_port, polaris.grpc_port,
        template=SHIPPED_NATIVE_BALANCER, build="native",
    )
    return e


def test_the_load_balancer_picks_the_instances_polaris_lists_with_no_filter_per_stream(
    polaris, service, upstreams, tmp_path
):
    heavy, light, isolated, sick = upstreams("heavy", "light", "isolated", "sick")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", heavy.port, weight=300)
    polaris.register_instance(service, "127.0.0.1", light.port, weight=100)
    polaris.register_instance(service, "127.0.0.1", isolated.port, isolate=True)
    polaris.register_instance(service, "127.0.0.1", sick.port, healthy=False)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 4, service=service)

    with balancer_envoy(tmp_path / "envoy", polaris) as e:
        client = e.client()
        # Nobody asked for the service before: the leader discovers it at once and the
        # selection waits for it (well within Envoy's route timeout).
        started = time.monotonic()
        status, headers, body = client.request(service)
        assert status == 200, (status, headers, body)
        assert time.monotonic() - started < 3.0
        before = e.upstream_requests("polaris_upstream")

        counts = client.counts(service, 400)

        assert set(counts) == {"heavy", "light"}, counts
        assert 2.0 < counts["heavy"] / counts["light"] < 4.5, counts
        assert e.upstream_requests("polaris_upstream") - before == 400
        assert e.counter("native_panics") == 0


def test_a_request_that_cannot_be_routed_gets_envoys_own_503(polaris, service, upstreams, tmp_path):
    (up,) = upstreams("only")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", up.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 1, service=service)

    with balancer_envoy(tmp_path / "envoy", polaris) as e:
        client = e.client()
        assert client.counts(service, 5) == {"only": 5}
        # A service Polaris does not know: no host, and Envoy (not the filter) answers.
        status, headers, body = client.request(f"{service}-missing")
        assert status == 503, (status, headers, body)
        assert "no healthy upstream" in body, body
        assert "x-polaris-reason" not in {k.lower() for k in headers}
        # A client-sent upstream header leads nowhere: the load balancer decided.
        counts = client.counts(service, 5, headers={"x-polaris-upstream": "127.0.0.1:9"})
        assert counts == {"only": 5}, counts


def test_validate_refuses_what_needs_the_stream_naming_the_field(tmp_path):
    shipped = render(plugin_config(), 10000, 9901, 8091, template=SHIPPED_NATIVE_BALANCER,
                     build="native")
    assert validate(shipped, tmp_path).returncode == 0

    for extra, field in (({"rate_limit": {"rules_of": "destination"}}, "rate_limit"),
                         ({"circuit_breaker": {}}, "circuit_breaker")):
        bad = render({**plugin_config(), **extra}, 10000, 9901, 8091,
                     template=SHIPPED_NATIVE_BALANCER, build="native")
        result = validate(bad, tmp_path)
        assert result.returncode != 0
        assert f"field `{field}`" in result.stdout + result.stderr, field
