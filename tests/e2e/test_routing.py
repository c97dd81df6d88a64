"""Issue 3: Polaris routing rules, created as v2 RulePolicy rules in a real Polaris server and
served to the filter as v1 inbounds, applied per request by the real Envoy."""

from __future__ import annotations

import pytest

from conftest import REFRESH, plugin_config, traffic_until
from harness.envoy import Envoy

ANY_SOURCE = {"service": "*", "namespace": "*"}


def arg(kind: str, value: str, match: str = "EXACT", key: str | None = None, value_type: str = "TEXT") -> dict:
    a = {"type": kind, "value": {"type": match, "value": value, "value_type": value_type}}
    if key is not None:
        a["key"] = key
    return a


def rule(name: str, service: str, args: list, groups: list, priority: int = 0, source: dict = ANY_SOURCE) -> dict:
    """One v2 RulePolicy rule; groups are (name, version, priority, weight), where version is a
    value for an EXACT `version` label or a whole MatchString."""
    return {
        "name": name,
        "namespace": "default",
        "enable": True,
        "routing_policy": "RulePolicy",
        "priority": priority,
        "routing_config": {
            "@type": "type.googleapis.com/v1.RuleRoutingConfig",
            "rules": [{
                "name": "s0",
                "sources": [{**source, "arguments": args}],
                "destinations": [
                    {"service": service, "namespace": "default", "name": g,
                     "labels": {"version": version if isinstance(version, dict)
                                else {"type": "EXACT", "value": version}},
                     "priority": p, "weight": w}
                    for g, version, p, w in groups
                ],
            }],
        },
    }


def versioned(polaris, service, upstreams, versions: list[str]) -> list:
    """Starts one upstream per version (named after it) and registers it with that label."""
    ups = upstreams(*versions)
    polaris.create_service(service)
    ids = [
        polaris.register_instance(service, "127.0.0.1", u.port, metadata={"version": v.split("-")[0]})
        for u, v in zip(ups, versions)
    ]
    polaris.wait_for(lambda r: len(r.get("instances") or []) == len(ups), service=service)
    return ids


def with_rules(polaris, service, *rules) -> None:
    polaris.create_routing_v2(list(rules))
    polaris.wait_for(
        lambda r: len((r.get("routing") or {}).get("inbounds") or []) == len(rules),
        service=service, type="ROUTING", timeout=15,
    )


@pytest.fixture(scope="module")
def routed(polaris, tmp_path_factory, build):
    """One Envoy per build: debug trace on; each test routes its own service."""
    e = Envoy(
        tmp_path_factory.mktemp("envoy"), plugin_config(debug_trace=True), polaris.grpc_port,
        build=build,
    )
    e.start()
    yield e
    e.stop()


def test_gray_header_goes_to_v2_and_everything_else_to_v1(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(
        polaris, service,
        rule("gray", service, [arg("HEADER", "gray", key="x-env")], [("to-v2", "v2", 0, 100)], priority=0),
        rule("rest", service, [], [("to-v1", "v1", 0, 100)], priority=1),
    )
    client = routed.client()

    assert client.counts(service, 50, headers={"x-env": "gray"}) == {"v2": 50}
    assert client.counts(service, 50) == {"v1": 50}
    assert client.counts(service, 50, headers={"x-env": "blue"}) == {"v1": 50}


# (argument kind, key, match type, rule value, request that matches, request that does not)
CASES = [
    ("HEADER", "x-env", "EXACT", "gray", {"headers": {"x-env": "gray"}}, {"headers": {"x-env": "blue"}}),
    ("HEADER", "x-user", "REGEX", "^vip-[0-9]+$", {"headers": {"x-user": "vip-7"}}, {"headers": {"x-user": "vip-x"}}),
    ("HEADER", "x-env", "NOT_EQUALS", "prod", {"headers": {"x-env": "dev"}}, {"headers": {"x-env": "prod"}}),
    ("HEADER", "x-region", "IN", "sh,bj", {"headers": {"x-region": "bj"}}, {"headers": {"x-region": "gz"}}),
    ("HEADER", "x-region", "NOT_IN", "sh,bj", {"headers": {"x-region": "gz"}}, {"headers": {"x-region": "sh"}}),
    ("HEADER", "x-level", "RANGE", "5~10", {"headers": {"x-level": "10"}}, {"headers": {"x-level": "11"}}),
    ("QUERY", "uid", "EXACT", "42", {"path": "/?uid=42"}, {"path": "/?uid=7"}),
    ("COOKIE", "session", "REGEX", "^beta", {"headers": {"cookie": "a=1; session=beta9"}}, {"headers": {"cookie": "session=alpha"}}),
    ("METHOD", None, "EXACT", "POST", {"method": "POST"}, {"method": "GET"}),
    # The server sends `$path`, the key polaris-go (v1.6.1, v1.7.0) reads too.
    ("PATH", None, "EXACT", "/gray", {"path": "/gray"}, {"path": "/other"}),
    ("CALLER_IP", None, "IN", "127.0.0.1,::1", {}, None),
    ("CALLER_IP", None, "NOT_IN", "127.0.0.1", None, {}),
]


@pytest.mark.parametrize(
    "kind, key, match, value, hit, miss", CASES,
    ids=[f"{c[0].lower()}-{c[2].lower()}" for c in CASES],
)
def test_each_argument_and_match_type_routes(polaris, service, upstreams, routed, kind, key, match, value, hit, miss):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(
        polaris, service,
        rule("r", service, [arg(kind, value, match, key)], [("to-v2", "v2", 0, 100)], priority=0),
        rule("rest", service, [], [("to-v1", "v1", 0, 100)], priority=1),
    )
    client = routed.client()

    if hit is not None:
        assert client.counts(service, 20, **hit) == {"v2": 20}
    if miss is not None:
        assert client.counts(service, 20, **miss) == {"v1": 20}


@pytest.mark.parametrize("match", ["NOT_EQUALS", "NOT_IN"])
def test_negative_sources_fail_a_request_without_the_header(polaris, service, upstreams, routed, match):
    """polaris-go's `matchSourceMetadata` fails a source whose key the request lacks."""
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(
        polaris, service,
        rule("not-prod", service, [arg("HEADER", "prod", match, key="x-env")], [("to-v2", "v2", 0, 100)], priority=0),
        rule("rest", service, [], [("to-v1", "v1", 0, 100)], priority=1),
    )
    client = routed.client()

    assert client.counts(service, 20, headers={"x-env": "dev"}) == {"v2": 20}
    assert client.counts(service, 20) == {"v1": 20}


def test_look_ahead_regex_routes_as_polaris_go_regexp2_does(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(
        polaris, service,
        rule("lookahead", service, [arg("HEADER", "^(?!prod).*$", "REGEX", key="x-env")], [("to-v2", "v2", 0, 100)], priority=0),
        rule("rest", service, [], [("to-v1", "v1", 0, 100)], priority=1),
    )
    client = routed.client()

    assert client.counts(service, 20, headers={"x-env": "dev"}) == {"v2": 20}
    assert client.counts(service, 20, headers={"x-env": "prod-1"}) == {"v1": 20}
    assert "rule lookahead" not in routed.log_text()


def test_not_equals_group_of_only_unhealthy_instances_yields_to_the_next_group(polaris, service, upstreams, routed):
    """polaris-go offers NOT_EQUALS only the values healthy instances carry."""
    ids = versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(
        polaris, service,
        rule("avoid-v1", service, [], [
            ("others", {"type": "NOT_EQUALS", "value": "v1"}, 0, 100),
            ("v1", "v1", 1, 100),
        ]),
    )
    client = routed.client()
    assert client.counts(service, 20) == {"v2": 20}

    polaris.update_instance(ids[1], healthy=False)
    polaris.wait_for(
        lambda r: any(i.get("healthy") is False for i in r.get("instances") or []), service=service
    )
    # Before: recover-all inside the NOT_EQUALS group kept sending to the unhealthy v2.
    traffic_until(client, service, lambda c: c == {"v1": 20}, timeout=2 * REFRESH + 0.5)


def test_groups_split_80_20_by_weight(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(polaris, service, rule("split", service, [], [("g80", "v2", 0, 80), ("g20", "v1", 0, 20)]))
    client = routed.client()

    n = 1000
    counts = client.counts(service, n)

    # Binomial sd at n=1000, p=0.2 is 0.0126; 0.05 is about 4 sd.
    assert abs(counts.get("v2", 0) / n - 0.8) < 0.05, counts
    assert counts.get("v2", 0) + counts.get("v1", 0) == n


def test_lower_priority_group_takes_over_when_the_first_is_empty(polaris, service, upstreams, routed):
    ids = versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(polaris, service, rule("prio", service, [], [("first", "v2", 0, 100), ("second", "v1", 1, 100)]))
    client = routed.client()
    assert client.counts(service, 30) == {"v2": 30}

    polaris.update_instance(ids[1], isolate=True)
    polaris.wait_for(lambda r: any(i.get("isolate") for i in r.get("instances") or []), service=service)

    traffic_until(client, service, lambda c: c == {"v1": 20}, timeout=2 * REFRESH + 0.5)


def test_bad_regex_rule_is_skipped_while_the_good_rule_beside_it_routes(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2", "v3"])
    with_rules(
        polaris, service,
        rule("broken", service, [arg("HEADER", "(unclosed", "REGEX", key="x-env")], [("to-v3", "v3", 0, 100)], priority=0),
        rule("good", service, [arg("HEADER", "gray", key="x-env")], [("to-v2", "v2", 0, 100)], priority=1),
        rule("rest", service, [], [("to-v1", "v1", 0, 100)], priority=2),
    )
    client = routed.client()

    assert client.counts(service, 30, headers={"x-env": "gray"}) == {"v2": 30}
    assert client.counts(service, 30) == {"v1": 30}
    log = routed.log_text()
    assert "rule broken" in log and "bad regex" in log, routed.log_tail()


def test_debug_header_traces_rule_group_and_instance(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(polaris, service, rule("gray", service, [arg("HEADER", "gray", key="x-env")], [("to-v2", "v2", 0, 100)]))
    client = routed.client()

    status, headers, body = client.request(service, headers={"x-env": "gray", "x-polaris-debug": "1"})
    _, plain, _ = client.request(service, headers={"x-env": "gray"})

    assert status == 200 and body == "v2"
    assert headers["x-polaris-rule"] == "gray"
    assert headers["x-polaris-group"] == "gray.s0.to-v2"
    assert headers["x-polaris-instance"].startswith("127.0.0.1:")
    assert headers["x-polaris-service"] == f"default/{service}"
    assert "x-polaris-rule" not in plain


def test_no_matching_rule_with_failover_none_is_a_503_naming_rule_routing(polaris, service, upstreams, envoy):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(polaris, service, rule("gray-only", service, [arg("HEADER", "gray", key="x-env")], [("to-v2", "v2", 0, 100)]))
    client = envoy(polaris.grpc_port, routing={"failover": "none"}).client()

    assert client.counts(service, 10, headers={"x-env": "gray"}) == {"v2": 10}
    status, headers, body = client.request(service)
    assert status == 503
    assert headers["x-polaris-reason"] == "rule-routing"
    assert "rule routing left no instance" in body and service in body


def test_no_matching_rule_fails_over_to_all_instances_by_default(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2"])
    with_rules(polaris, service, rule("gray-only", service, [arg("HEADER", "gray", key="x-env")], [("to-v2", "v2", 0, 100)]))
    client = routed.client()

    assert set(client.counts(service, 60)) == {"v1", "v2"}


def parameter(key: str, match: str = "EXACT") -> dict:
    """A destination label whose value the request supplies under `key`."""
    return {"type": match, "value": key, "value_type": "PARAMETER"}


def test_parameter_label_routes_to_the_version_the_request_names(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2", "v3"])
    with_rules(polaris, service, rule("by-header", service, [], [("named", parameter("$header.x-version"), 0, 100)]))
    client = routed.client()

    for v in ["v1", "v2", "v3"]:
        assert client.counts(service, 20, headers={"x-version": v}) == {v: 20}
    # No instance carries v9 and a plain request names none: the rule has no group, and the
    # default failover spreads over every instance.
    assert set(client.counts(service, 60, headers={"x-version": "v9"})) == {"v1", "v2", "v3"}
    assert set(client.counts(service, 60)) == {"v1", "v2", "v3"}


def test_not_equals_parameter_label_avoids_the_version_the_request_names(polaris, service, upstreams, routed):
    versioned(polaris, service, upstreams, ["v1", "v2", "v3"])
    with_rules(
        polaris, service,
        rule("avoid", service, [], [("not-named", parameter("$query.skip", "NOT_EQUALS"), 0, 100)]),
    )
    client = routed.client()

    assert set(client.counts(service, 60, path="/?skip=v1")) == {"v2", "v3"}
    status, headers, _ = client.request(service, path="/?skip=v2", headers={"x-polaris-debug": "1"})
    assert status == 200 and headers["x-polaris-group"] == "avoid.s0.not-named"


def test_inbound_rule_sources_are_matched_against_the_configured_caller(polaris, service, upstreams, envoy):
    versioned(polaris, service, upstreams, ["v1", "v2", "v3"])
    me, other = f"{service}-me", f"{service}-other"
    with_rules(
        polaris, service,
        rule("from-other", service, [], [("g", "v3", 0, 100)], priority=0,
             source={"service": other, "namespace": "default"}),
        rule("from-me", service, [], [("g", "v2", 0, 100)], priority=1,
             source={"service": me, "namespace": "default"}),
        rule("rest", service, [], [("g", "v1", 0, 100)], priority=2),
    )
    client = envoy(polaris.grpc_port, caller={"service": me}).client()

    # `from-other` names another caller, so this Envoy's traffic skips it for `from-me`.
    assert client.counts(service, 30) == {"v2": 30}


def test_variable_values_and_custom_keys_come_from_caller_metadata(polaris, service, upstreams, envoy):
    versioned(polaris, service, upstreams, ["v1", "v2", "v3"])
    with_rules(
        polaris, service,
        rule("var", service, [arg("HEADER", "DEPLOY_ENV", key="x-env", value_type="VARIABLE")],
             [("g", "v2", 0, 100)], priority=0),
        rule("team", service, [arg("CUSTOM", "blue", key="team"), arg("HEADER", "x", key="x-team")],
             [("g", "v3", 0, 100)], priority=1),
        rule("rest", service, [], [("g", "v1", 0, 100)], priority=2),
    )
    client = envoy(
        polaris.grpc_port, caller={"service": f"{service}-me", "metadata": {"DEPLOY_ENV": "gray", "team": "blue"}}
    ).client()

    # VARIABLE DEPLOY_ENV is `gray` in this Envoy's caller metadata.
    assert client.counts(service, 20, headers={"x-env": "gray"}) == {"v2": 20}
    assert client.counts(service, 20, headers={"x-env": "DEPLOY_ENV"}) == {"v1": 20}
    # The custom key `team` is answered by the caller metadata (`blue`).
    assert client.counts(service, 20, headers={"x-team": "x"}) == {"v3": 20}
