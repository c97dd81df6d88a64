"""Issue 4: every shipped config is checked.

- Every Envoy bootstrap under envoy/ passes `envoy --mode validate` as shipped (which loads our
  module and runs on_configure on its plugin JSON).
- The Istio resources under envoy/istio/ are not Envoy configs. They are parsed, their enums
  checked against the Istio API, the WasmPlugin's pluginConfig is run through the real filter's
  on_configure, and every Envoy fragment they carry (EnvoyFilter patch values, cluster and filter
  names) must appear in envoy-istio-shape.yaml, which itself is validated here and checked against
  what a real istiod generates by tests/istio.
- No shipped config fails open (see test_failure_policy.py for why).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from harness.envoy import ROOT, render, validate
from istio_shape import FILTER_NAME, SHAPE, shape_plugin_config

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
CONFIGS = sorted(ROOT.glob("envoy/**/*.yaml"))
MAX_CLUSTER_NAME = 120  # src/config.rs: the encoded GrpcService uses one-byte lengths


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def is_kubernetes(docs: list) -> bool:
    return all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs)


BOOTSTRAPS = [p for p in CONFIGS if not is_kubernetes(documents(p))]
KUBERNETES = [p for p in CONFIGS if is_kubernetes(documents(p))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def resources(kind: str) -> list[dict]:
    return [d for p in KUBERNETES for d in documents(p) if d["kind"] == kind]


def walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def wasm_filters(config: dict) -> list[dict]:
    return [n for n in walk(config) if isinstance(n, dict) and n.get("@type") == WASM_TYPE]


def is_subset(small, big) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and is_subset(v, big[k]) for k, v in small.items())
    return small == big


def shape() -> dict:
    return yaml.safe_load(SHAPE.read_text())


def shape_clusters() -> dict[str, dict]:
    return {c["name"]: c for c in shape()["static_resources"]["clusters"]}


def shape_hcm() -> dict:
    (listener,) = shape()["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_every_shipped_yaml_is_classified():
    assert {rel(p) for p in BOOTSTRAPS} >= {"envoy/envoy.yaml", "envoy/istio/envoy-istio-shape.yaml"}
    assert {rel(p) for p in KUBERNETES} >= {
        "envoy/istio/wasmplugin.yaml",
        "envoy/istio/envoyfilter.yaml",
        "envoy/istio/serviceentry.yaml",
    }
    assert len(BOOTSTRAPS) + len(KUBERNETES) == len(CONFIGS)


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=rel)
def test_bootstrap_passes_envoy_validate_as_shipped(path, tmp_path):
    result = validate(path.read_text(), tmp_path)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "configured: Polaris cluster" in result.stdout + result.stderr


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=rel)
def test_bootstrap_wasm_filters_never_fail_open(path):
    text = path.read_text()
    filters = wasm_filters(yaml.safe_load(text))

    if "envoy.filters.http.dynamic_modules" in text:
        # The native module has no failure policy to get wrong: a module that does not load, or
        # a plugin JSON it rejects, rejects the whole config.
        assert not filters, rel(path)
        return
    assert filters, f"{rel(path)} has no Wasm filter"
    for f in filters:
        config = f["config"]
        # Set explicitly, and to a policy that never skips the filter.
        assert config.get("failure_policy") in {"FAIL_CLOSED", "FAIL_RELOAD"}, rel(path)
        assert not config.get("fail_open", False), rel(path)


def test_wasmplugin_never_fails_open():
    for plugin in resources("WasmPlugin"):
        assert plugin["spec"].get("failStrategy") in {"FAIL_CLOSE", "FAIL_RELOAD"}


def test_kubernetes_resources_are_the_istio_apis_we_mean():
    expected = {
        "WasmPlugin": "extensions.istio.io/v1alpha1",
        "EnvoyFilter": "networking.istio.io/v1alpha3",
        "ServiceEntry": "networking.istio.io/v1",
    }
    for path in KUBERNETES:
        for doc in documents(path):
            assert expected.get(doc["kind"]) == doc["apiVersion"], (rel(path), doc["kind"])
            assert doc["metadata"]["name"] and doc["metadata"]["namespace"] == "istio-system"


def test_wasmplugin_fields_use_istio_enum_values():
    (plugin,) = resources("WasmPlugin")
    spec = plugin["spec"]

    # istio/api extensions/v1alpha1/wasm.proto
    assert urlparse(spec["url"]).scheme in {"oci", "https", "http", "file"}
    assert spec.get("phase", "UNSPECIFIED_PHASE") in {"UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"}
    assert spec.get("type", "HTTP") in {"HTTP", "UNSPECIFIED_PLUGIN_TYPE"}
    assert spec.get("imagePullPolicy", "UNSPECIFIED_POLICY") in {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"}
    assert spec["failStrategy"] in {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"}
    for m in spec["match"]:
        assert m["mode"] in {"UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"}
    # Confined to the outbound listener of the Polaris port.
    assert [m["mode"] for m in spec["match"]] == ["CLIENT"]


def test_wasmplugin_plugin_config_passes_the_filters_own_validation(tmp_path):
    (plugin,) = resources("WasmPlugin")
    # Istio turns the Struct into JSON and hands it to on_configure as a StringValue.
    result = validate(render(plugin["spec"]["pluginConfig"], 10000, 9901, 8091), tmp_path)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_wasmplugin_is_the_filter_in_the_shape():
    (plugin,) = resources("WasmPlugin")
    spec, meta = plugin["spec"], plugin["metadata"]
    (wasm,) = [f for f in shape_hcm()["http_filters"] if f["name"] == FILTER_NAME]
    config = wasm["typed_config"]["config"]
    istio_policy = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}

    # Istio's names: the filter's is prefixed (extensions.istio.io/<kind>/) and both may carry a
    # suffix of the translation (~istio-translated-wasmplugin at the pinned version).
    assert FILTER_NAME.startswith("extensions.istio.io/") and FILTER_NAME.endswith("/" + config["name"])
    assert config["name"].startswith(f"{meta['namespace']}.{meta['name']}")
    assert config["root_id"] == spec["pluginName"]
    assert config["failure_policy"] == istio_policy[spec["failStrategy"]]
    assert shape_plugin_config() == spec["pluginConfig"]


def test_service_entry_port_and_cluster_names_match_the_shape():
    (entry,) = resources("ServiceEntry")
    (plugin,) = resources("WasmPlugin")
    spec = entry["spec"]
    (host,) = spec["hosts"]
    (port,) = spec["ports"]
    cluster = shape_clusters()[f"outbound|{port['number']}||{host}"]

    assert port["protocol"] == "HTTP"
    assert spec["resolution"] == "NONE"  # Istio makes it ORIGINAL_DST / CLUSTER_PROVIDED
    assert (cluster["type"], cluster["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert [p["number"] for m in plugin["spec"]["match"] for p in m["ports"]] == [port["number"]]
    (listener,) = shape()["static_resources"]["listeners"]
    assert listener["name"] == f"0.0.0.0_{port['number']}"
    assert shape_hcm()["route_config"]["name"] == str(port["number"])


def test_envoyfilter_patches_are_in_the_shape():
    clusters = shape_clusters()
    vhosts = {v["name"]: v for v in shape_hcm()["route_config"]["virtual_hosts"]}
    removed = set()
    for ef in resources("EnvoyFilter"):
        for patch in ef["spec"]["configPatches"]:
            match, op = patch["match"], patch["patch"]["operation"]
            assert match["context"] == "SIDECAR_OUTBOUND"
            if patch["applyTo"] == "CLUSTER":
                assert op == "MERGE"
                assert is_subset(patch["patch"]["value"], clusters[match["cluster"]["name"]]), match
            elif patch["applyTo"] == "VIRTUAL_HOST" and op == "REMOVE":
                removed.add(match["routeConfiguration"]["vhost"]["name"])
                assert match["routeConfiguration"]["vhost"]["name"] not in vhosts
            elif patch["applyTo"] == "VIRTUAL_HOST" and op == "ADD":
                value = patch["patch"]["value"]
                assert str(match["routeConfiguration"]["portNumber"]) == shape_hcm()["route_config"]["name"]
                assert vhosts[value["name"]] == value
            else:
                pytest.fail(f"unexpected patch {patch['applyTo']} {op}")
    # Every catch-all Istio may put on the port's routes is removed.
    assert removed == {"allow_any", "block_all", "allow_any_dynamic_dns"}


def test_polaris_cluster_is_the_istio_cluster_of_the_polaris_service():
    (plugin,) = resources("WasmPlugin")
    name = plugin["spec"]["pluginConfig"]["polaris_cluster"]
    patched = [
        p["match"]["cluster"]["name"]
        for ef in resources("EnvoyFilter")
        for p in ef["spec"]["configPatches"]
        if p["applyTo"] == "CLUSTER"
    ]
    h2 = shape_clusters()[name]["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]

    assert name == "outbound|8091||polaris.polaris-system.svc.cluster.local"
    assert name in patched
    assert name.isascii() and len(name) <= MAX_CLUSTER_NAME
    assert "http2_protocol_options" in h2["explicit_http_config"]


def test_upstream_header_is_the_one_the_cluster_reads():
    (plugin,) = resources("WasmPlugin")
    header = plugin["spec"]["pluginConfig"].get("upstream_header", "x-polaris-upstream")
    readers = [
        c["original_dst_lb_config"]
        for path in BOOTSTRAPS
        for c in yaml.safe_load(path.read_text())["static_resources"]["clusters"]
        if c.get("type") == "ORIGINAL_DST" and c["name"] != "polaris_limiter"
    ]

    assert readers and all(r == {"use_http_header": True, "http_header_name": header} for r in readers)


def test_the_limiter_cluster_is_http2_and_reads_the_limiter_header():
    """`rate_limit.limiter.address_cluster` in the docs: gRPC to the discovered limiter."""
    config = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    (limiter,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "polaris_limiter"]
    assert limiter["original_dst_lb_config"] == {
        "use_http_header": True,
        "http_header_name": "x-polaris-limiter",
    }
    options = limiter["typed_extension_protocol_options"]
    assert "http2_protocol_options" in repr(options)


def test_no_route_leads_to_the_probe_cluster():
    """The probe cluster follows the upstream header like the traffic cluster, but only the
    filter's leader may use it (dispatch_http_call); a route to it would let clients pick hosts."""
    for path in BOOTSTRAPS:
        config = yaml.safe_load(path.read_text())
        routed = set(re.findall(r"'cluster': '([^']+)'", repr(config["static_resources"]["listeners"])))
        probe_clusters = {
            c["name"]
            for c in config["static_resources"]["clusters"]
            if "probe" in c["name"] or "limiter" in c["name"]
        }
        assert not routed & probe_clusters, path


def test_all_istio_resources_select_the_same_workloads():
    selectors = [json.dumps(p["spec"]["selector"]["matchLabels"], sort_keys=True) for p in resources("WasmPlugin")]
    selectors += [json.dumps(e["spec"]["workloadSelector"]["labels"], sort_keys=True) for e in resources("EnvoyFilter")]

    assert len(set(selectors)) == 1, selectors
