"""The native build with its own upstream cluster (envoy/envoy-native-cluster.yaml): the module
is also an `envoy.clusters.dynamic_modules` cluster holding Polaris's instances as hosts, and
the filter hands each pick over as Envoy's override host instead of the upstream header. In the
real Envoy 1.40 and the real Polaris: requests reach exactly the instances Polaris lists
(weights and isolation honoured), through the cluster once its workers hold the hosts; an
instance registered later joins it, a deregistered one stops receiving traffic and leaves it;
`envoy --mode validate` rejects a bad cluster config naming the field."""

from __future__ import annotations

import re
import time

from conftest import REFRESH, plugin_config
from harness.envoy import SHIPPED_NATIVE_CLUSTER, Envoy, render, validate


def cluster_envoy(workdir, polaris) -> Envoy:
    e = Envoy(workdir, plugin_config(), polaris.grpc_port, build="native")
    e.config_text = render(
        plugin_config(), e.listen_port, e.admin_port, polaris.grpc_port,
        template=SHIPPED_NATIVE_CLUSTER, build="native",
    )
    return e


def cluster_hosts(e: Envoy) -> set[str]:
    """The hosts Envoy's admin lists for the module's cluster."""
    _, text = e.admin("GET", "/clusters")
    return set(re.findall(r"^polaris_upstream::([0-9.]+:\d+)::cx_total", text, re.M))


def wait_hosts(e: Envoy, want: set[str], timeout: float = 10.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cluster_hosts(e) != want:
        time.sleep(0.1)
    return cluster_hosts(e)


def test_requests_reach_the_instances_polaris_lists_through_the_module_cluster(
    polaris, service, upstreams, tmp_path
):
    heavy, light, isolated, sick = upstreams("heavy", "light", "isolated", "sick")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", heavy.port, weight=300)
    polaris.register_instance(service, "127.0.0.1", light.port, weight=100)
    polaris.register_instance(service, "127.0.0.1", isolated.port, isolate=True)
    polaris.register_instance(service, "127.0.0.1", sick.port, healthy=False)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 4, service=service)
    listed = {f"127.0.0.1:{u.port}" for u in (heavy, light, isolated, sick)}

    with cluster_envoy(tmp_path / "envoy", polaris) as e:
        client = e.client()
        # The first request discovers the service (held, then resumed): its pick waits in the
        # cluster's load balancer until its worker holds the host.
        status, headers, body = client.request(service)
        assert status == 200, (status, headers, body)
        # The cluster holds every listed instance (isolated and unhealthy too: the filter does
        # not pick them).
        assert wait_hosts(e, listed) == listed
        time.sleep(0.5)  # the host update reaches the workers after the main thread
        cluster_before = e.upstream_requests("polaris_upstream")

        counts = client.counts(service, 400)

        assert set(counts) == {"heavy", "light"}, counts
        assert 2.0 < counts["heavy"] / counts["light"] < 4.5, counts
        # Every one of them went through the module's cluster.
        assert e.upstream_requests("polaris_upstream") - cluster_before == 400
        assert e.counter("native_panics") == 0


def test_a_deregistered_instance_gets_no_traffic_and_leaves_the_cluster(
    polaris, service, upstreams, tmp_path
):
    stays, goes, later = upstreams("stays", "goes", "later")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", stays.port)
    polaris.register_instance(service, "127.0.0.1", goes.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 2, service=service)

    with cluster_envoy(tmp_path / "envoy", polaris) as e:
        client = e.client()
        assert set(client.counts(service, 40)) == {"stays", "goes"}

        polaris.deregister_instance({"service": service, "host": "127.0.0.1", "port": goes.port})
        polaris.register_instance(service, "127.0.0.1", later.port)
        polaris.wait_for(
            lambda r: {i["port"] for i in r.get("instances") or []} == {stays.port, later.port},
            service=service,
        )
        deadline = time.monotonic() + REFRESH * 10
        while f"127.0.0.1:{later.port}" not in cluster_hosts(e):
            assert time.monotonic() < deadline, cluster_hosts(e)
            time.sleep(0.1)
        time.sleep(REFRESH + 0.5)  # the leader refreshed, the workers resynced
        cluster_before = e.upstream_requests("polaris_upstream")

        counts = client.counts(service, 60)

        assert set(counts) == {"stays", "later"}, counts
        assert e.upstream_requests("polaris_upstream") - cluster_before == 60
        # The host itself leaves once no worker's snapshot can name it any more (a grace of 5 s).
        want = {f"127.0.0.1:{stays.port}", f"127.0.0.1:{later.port}"}
        assert wait_hosts(e, want, timeout=12.0) == want


def test_a_client_sent_upstream_header_leads_nowhere(polaris, service, upstreams, tmp_path):
    (up,) = upstreams("only")
    (decoy,) = upstreams("decoy")
    polaris.create_service(service)
    polaris.register_instance(service, "127.0.0.1", up.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == 1, service=service)

    with cluster_envoy(tmp_path / "envoy", polaris) as e:
        counts = e.client().counts(
            service, 10, headers={"x-polaris-upstream": f"127.0.0.1:{decoy.port}"}
        )

    assert counts == {"only": 10}, counts


def test_validate_rejects_a_bad_cluster_config_naming_the_field(tmp_path):
    shipped = render(plugin_config(), 10000, 9901, 8091, template=SHIPPED_NATIVE_CLUSTER,
                     build="native")
    assert validate(shipped, tmp_path).returncode == 0

    name_line = "        cluster_name: polaris\n"
    bad_name = shipped.replace(name_line, "        cluster_name: polaris-typo\n")
    bad_config = shipped.replace(
        name_line,
        name_line + "        cluster_config: "
        '{"@type": type.googleapis.com/google.protobuf.StringValue, value: "refresh: 1s"}\n',
    )

    for bad, field in ((bad_name, "cluster_name: unknown cluster"),
                       (bad_config, "cluster_config: the polaris cluster takes no config")):
        result = validate(bad, tmp_path)
        assert result.returncode != 0
        assert field in result.stdout + result.stderr
