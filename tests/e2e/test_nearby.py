"""Issue 3: nearby routing with instances in two zones of a real Polaris service, and the
"nearby access, cross-zone failover" scenario."""

from __future__ import annotations

from conftest import REFRESH, plugin_config, traffic_until
from harness.envoy import Envoy

WITHIN = 2 * REFRESH + 0.5


def zoned(polaris, service, upstreams) -> dict[str, str]:
    """Two instances in zone z1, one in z2, one in region r2; service nearby-enabled."""
    layout = {"z1-a": ("r1", "z1"), "z1-b": ("r1", "z1"), "z2-a": ("r1", "z2"), "r2-a": ("r2", "z9")}
    ups = upstreams(*layout)
    polaris.create_service(service, metadata={"internal-enable-nearby": "true"})
    ids = {}
    for u in ups:
        region, zone = layout[u.name]
        ids[u.name] = polaris.register_instance(
            service, "127.0.0.1", u.port, location={"region": region, "zone": zone, "campus": "c1"}
        )
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 4, service=service)
    return ids


def set_healthy(polaris, service, ids, names, healthy: bool) -> None:
    for n in names:
        polaris.update_instance(ids[n], healthy=healthy)
    polaris.wait_for(
        lambda r: sum(1 for i in r.get("instances") or [] if i.get("healthy") is healthy) >= len(names),
        service=service,
    )


def test_zone_outage_fails_over_to_the_region_and_back(polaris, service, upstreams, envoy):
    ids = zoned(polaris, service, upstreams)
    e = envoy(polaris.grpc_port, location={"region": "r1", "zone": "z1"}, debug_trace=True)
    client = e.client()

    assert set(client.counts(service, 60)) == {"z1-a", "z1-b"}
    _, headers, _ = client.request(service, headers={"x-polaris-debug": "1"})
    assert headers["x-polaris-nearby"] == "zone"

    set_healthy(polaris, service, ids, ["z1-a", "z1-b"], False)
    traffic_until(client, service, lambda c: set(c) == {"z2-a"}, timeout=WITHIN)
    _, headers, _ = client.request(service, headers={"x-polaris-debug": "1"})
    assert headers["x-polaris-nearby"] == "region"

    set_healthy(polaris, service, ids, ["z1-a", "z1-b"], True)
    traffic_until(client, service, lambda c: set(c) <= {"z1-a", "z1-b"}, timeout=WITHIN)


def test_region_outage_fails_over_across_regions(polaris, service, upstreams, envoy):
    ids = zoned(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, location={"region": "r1", "zone": "z1"}).client()

    set_healthy(polaris, service, ids, ["z1-a", "z1-b", "z2-a"], False)

    traffic_until(client, service, lambda c: set(c) == {"r2-a"}, timeout=WITHIN)


def test_strict_zone_never_leaves_the_zone(polaris, service, upstreams, envoy):
    ids = zoned(polaris, service, upstreams)
    client = envoy(
        polaris.grpc_port, location={"region": "r1", "zone": "z1"}, nearby={"max_match_level": "zone"}
    ).client()

    set_healthy(polaris, service, ids, ["z1-a", "z1-b"], False)
    polaris.wait_for(lambda r: True, service=service)

    # Unhealthy but in range: recover-all within the zone, never another zone.
    traffic_until(client, service, lambda c: set(c) == {"z1-a", "z1-b"}, timeout=WITHIN, batch=40)


def test_location_defaults_to_envoy_node_locality(polaris, service, upstreams, tmp_path):
    zoned(polaris, service, upstreams)
    e = Envoy(tmp_path / "envoy", plugin_config(), polaris.grpc_port)
    e.config_text = "node:\n  id: polaris-test\n  locality: {region: r1, zone: z2}\n" + e.config_text
    with e:
        assert set(e.client().counts(service, 40)) == {"z2-a"}
        assert "location r1/z2/ from Envoy node locality" in e.log_text()


def test_nearby_is_off_for_services_that_do_not_enable_it(polaris, service, upstreams, envoy):
    ups = upstreams("z1-a", "z2-a")
    polaris.create_service(service)
    for u, zone in zip(ups, ["z1", "z2"]):
        polaris.register_instance(service, "127.0.0.1", u.port, location={"region": "r1", "zone": zone})
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 2, service=service)
    client = envoy(polaris.grpc_port, location={"region": "r1", "zone": "z1"}).client()

    assert set(client.counts(service, 60)) == {"z1-a", "z2-a"}


def test_an_instance_without_a_location_is_near_at_the_zone_level(polaris, service, upstreams, envoy):
    """polaris-go's `matchLocation`: an empty region, zone or campus matches anything."""
    ups = upstreams("z2-a", "nowhere")
    polaris.create_service(service, metadata={"internal-enable-nearby": "true"})
    polaris.register_instance(service, "127.0.0.1", ups[0].port, location={"region": "r1", "zone": "z2"})
    polaris.register_instance(service, "127.0.0.1", ups[1].port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 2, service=service)
    e = envoy(polaris.grpc_port, location={"region": "r1", "zone": "z1"}, debug_trace=True)
    client = e.client()

    assert set(client.counts(service, 40)) == {"nowhere"}
    _, headers, _ = client.request(service, headers={"x-polaris-debug": "1"})
    assert headers["x-polaris-nearby"] == "zone"
