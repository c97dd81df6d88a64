"""Issue 3: metadata routing - a request names wanted instance labels in configured headers."""

from __future__ import annotations

from conftest import REFRESH, traffic_until

HEADER = "x-meta-version"


def labeled(polaris, service, upstreams) -> dict[str, str]:
    """v1 and v2 instances plus one without a version label."""
    ups = upstreams("v1", "v2", "plain")
    polaris.create_service(service)
    ids = {}
    for u in ups:
        metadata = {} if u.name == "plain" else {"version": u.name}
        ids[u.name] = polaris.register_instance(service, "127.0.0.1", u.port, metadata=metadata)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 3, service=service)
    return ids


def routing(failover: str) -> dict:
    return {"metadata_routing": {"headers": {HEADER: "version"}, "failover": failover}, "debug_trace": True}


def traced(client, service, version: str) -> str:
    """The metadata outcome the decision trace reports for a request wanting `version`."""
    status, headers, _ = client.request(service, headers={HEADER: version, "x-polaris-debug": "1"})
    assert status == 200
    return headers["x-polaris-metadata"]


def unhealthy(polaris, service, instance_id) -> None:
    polaris.update_instance(instance_id, healthy=False)
    polaris.wait_for(
        lambda r: any(i.get("healthy") is False for i in r.get("instances") or []), service=service
    )


def test_wanted_label_selects_its_instances_and_no_header_selects_all(polaris, service, upstreams, envoy):
    labeled(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, **routing("none")).client()

    assert client.counts(service, 30, headers={HEADER: "v2"}) == {"v2": 30}
    assert client.counts(service, 30, headers={HEADER: "v1"}) == {"v1": 30}
    assert set(client.counts(service, 60)) == {"v1", "v2", "plain"}


def test_unknown_label_without_failover_is_a_503_naming_it(polaris, service, upstreams, envoy):
    labeled(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, **routing("none")).client()

    status, headers, body = client.request(service, headers={HEADER: "v9"})

    assert status == 503
    assert headers["x-polaris-reason"] == "metadata-routing"
    assert "version=v9" in body and service in body


def test_failover_others_leaves_unhealthy_carriers_for_the_rest(polaris, service, upstreams, envoy):
    ids = labeled(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, **routing("others")).client()
    assert client.counts(service, 20, headers={HEADER: "v2"}) == {"v2": 20}

    unhealthy(polaris, service, ids["v2"])

    traffic_until(
        client, service, lambda c: set(c) == {"v1", "plain"}, timeout=2 * REFRESH + 0.5,
        batch=40, headers={HEADER: "v2"},
    )
    assert traced(client, service, "v2") == "failover-others"


def test_failover_not_contain_key_uses_unlabeled_instances(polaris, service, upstreams, envoy):
    ids = labeled(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, **routing("not_contain_key")).client()

    unhealthy(polaris, service, ids["v2"])

    traffic_until(
        client, service, lambda c: c == {"plain": 20}, timeout=2 * REFRESH + 0.5, headers={HEADER: "v2"}
    )
    assert traced(client, service, "v2") == "failover-not_contain_key"
    assert traced(client, service, "v1") == "matched"


def test_failover_all_uses_every_instance(polaris, service, upstreams, envoy):
    labeled(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, **routing("all")).client()

    assert set(client.counts(service, 60, headers={HEADER: "v9"})) == {"v1", "v2", "plain"}
    assert traced(client, service, "v9") == "failover-all"
