"""Issue 2: invalid plugin configs fail `on_configure`, and the log names the field and why.

`envoy --mode validate` loads the wasm module and runs on_configure, so a bad config is caught
before it is ever deployed.
"""

import pytest

from conftest import plugin_config
from harness.envoy import render, validate


@pytest.mark.parametrize(
    "plugin, field, why",
    [
        ({}, "polaris_cluster", "is required"),
        (plugin_config(refresh_interval=2), "refresh_interval", "got a number"),
        (plugin_config(refresh_interval="5ms"), "refresh_interval", "between 100ms and 600s"),
        (plugin_config(upstream_header="X-Upstream"), "upstream_header", "lower-case"),
        (plugin_config(destination={"from": "header"}), "destination.header", "is required"),
        (plugin_config(destination={"from": "cookie"}), "destination.from", "not one of"),
        (plugin_config(refresh_intervall="1s"), "refresh_intervall", "unknown field"),
        (plugin_config(max_services=0), "max_services", "from 1 to"),
        (plugin_config(rate_limit={"limiter": {}}), "rate_limit.limiter", "needs `cluster`"),
        (
            plugin_config(rate_limit={"limiter": {"cluster": "a", "address_cluster": "b"}}),
            "rate_limit.limiter",
            "not both",
        ),
        (
            plugin_config(admission={"allowed_services": ["ok", "bad name"]}),
            "admission.allowed_services[1]",
            "may hold only letters",
        ),
        (
            plugin_config(admission={"new_services_per_second": 0}),
            "admission.new_services_per_second",
            "from 1 to 10000",
        ),
        (
            plugin_config(load_balancer={"policy": "ringHash", "ring_hash": {"vnodes": 0}}),
            "load_balancer.ring_hash.vnodes",
            "from 1 to 1000",
        ),
        (plugin_config(upstream_handover="cluster"), "upstream_handover", "is not \"header\""),
        # The override host is the native module's, for its own cluster.
        (plugin_config(upstream_handover="override_host"), "upstream_handover", "native module"),
        (plugin_config(upstream_handover="load_balancer"), "upstream_handover", "native module"),
    ],
)
def test_invalid_plugin_config_is_rejected_naming_the_field(tmp_path, plugin, field, why):
    result = validate(render(plugin, 10000, 9901, 8091), tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert f"field `{field}`" in out, out[-2000:]
    assert why in out, out[-2000:]


def test_valid_plugin_config_passes_validation(tmp_path):
    result = validate(render(plugin_config(), 10000, 9901, 8091), tmp_path)

    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def _two_plugins(text: str, second_vm_id: str) -> str:
    """The shipped filter twice in one chain, the second with another plugin config and VM id."""
    start = text.index("          - name: envoy.filters.http.wasm")
    end = text.index("          - name: envoy.filters.http.router")
    first = text[start:end]
    second = (first.replace("name: polaris\n", "name: polaris-second\n", 1)
              .replace("value: '{\"polaris_cluster\"", "value: '{\"namespace\": \"second\", \"polaris_cluster\"")
              .replace("vm_id: polaris\n", f"vm_id: {second_vm_id}\n"))
    assert second != first
    return text[:end] + second + text[end:]


SHARED = "vm_config: a second plugin configuration in this VM"


def test_a_second_plugin_configuration_in_one_vm_is_named_in_the_log(tmp_path):
    """A stream does not say which root it belongs to (no context-create callback): new requests
    go to the newest configuration, which is what a listener update wants, and two filters
    with different configurations are told to take a vm_id each."""
    text = _two_plugins(render(plugin_config(), 10000, 9901, 8091), "polaris")
    out = validate(text, tmp_path)

    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-2000:]
    assert SHARED in log, log[-2000:]


def test_two_plugins_with_their_own_vm_ids_are_both_configured_quietly(tmp_path):
    text = _two_plugins(render(plugin_config(), 10000, 9901, 8091), "polaris-second")
    out = validate(text, tmp_path)

    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-2000:]
    assert SHARED not in log and "Failed to configure" not in log, log[-2000:]
