"""The parity suite's questions: every case is a service of its own in the shared Polaris server.

Each case lists its instances (metadata, health, isolation, weight, location), its v2 RulePolicy
rules and the requests to ask about. tests/parity/test_parity.py asks polaris-go and the filter
each request and fails on any difference that INTENDED does not list (with the reason).

Conventions: the main profile's caller is `{caller}` with metadata CALLER_META, Envoy and
polaris-go at location HERE (r1/z1/c1); rules gate a request to version v2 ("b") and send
everything else to v1 ("a") through a lower-priority catch-all rule, so a hit and a miss are two
different single instances. Every reachable instance gets >= 10 % of the traffic (see
parity_lib.MAX_REQUESTS).
"""

from __future__ import annotations

from parity_lib import HERE, Case, Inst, Profile, Req, arg, grp, lbl, rule, src

CALLER_META = {"env": "gray", "team": "pay", "want": "v2", "want3": "v3"}

PROFILES = [
    # The caller `{caller}` with metadata, a location, nearby zone -> all at 100 %, failover all.
    Profile("main", caller={"service": "{caller}", "namespace": "default", "metadata": CALLER_META},
            location=HERE, nearby={"match_level": "zone", "max_match_level": "all", "unhealthy_percent": 100}),
    # No caller; nearby campus -> region at 50 %; rules that match nothing leave no instance;
    # 50 ringHash vnodes.
    Profile("alt", location=HERE,
            nearby={"match_level": "campus", "max_match_level": "region", "unhealthy_percent": 50},
            failover="none", vnodes=50),
    # No caller, no location, every default.
    Profile("bare"),
]


def abc(**over) -> list:
    """a: v1, b: v2, c: v3; `over` replaces fields, e.g. b={"healthy": False}."""
    insts = [Inst("a", {"version": "v1"}), Inst("b", {"version": "v2"}), Inst("c", {"version": "v3"})]
    for inst in insts:
        for k, v in over.get(inst.name, {}).items():
            setattr(inst, k, v)
    return insts


TO_V1 = grp("to-v1", {"version": lbl("v1")})
TO_V2 = grp("to-v2", {"version": lbl("v2")})
TO_V3 = grp("to-v3", {"version": lbl("v3")})
REST = rule("rest", [src()], [TO_V1], priority=5)


def gate(*args, source: dict | None = None) -> list:
    """Rules: a request whose source matches `args` goes to v2, every other one to v1."""
    s = source or src(args)
    return [rule("gate", [s], [TO_V2], priority=0), REST]


def hdr(label: str, **headers) -> Req:
    return Req(label, headers={k.replace("_", "-"): v for k, v in headers.items()})


def xk(*values: str) -> list:
    """Requests with header x-k set to each value, plus one without it."""
    return [Req(f"x-k={v}", headers={"x-k": v}) for v in values] + [Req("x-k absent")]


# ------------------------------------------------------------------------------ argument types

ARGUMENT_CASES = [
    Case("arg-header", abc(), gate(arg("HEADER", "x-env", value="gray")),
         reqs=[hdr("gray", x_env="gray"), hdr("blue", x_env="blue"), Req("absent"),
               hdr("upper-case name", **{"X-Env": "gray"})]),
    Case("arg-query", abc(), gate(arg("QUERY", "uid", value="42")),
         reqs=[Req("uid=42", query={"uid": "42"}), Req("uid=7", query={"uid": "7"}), Req("absent"),
               Req("among others", query={"a": "1", "uid": "42", "b": "2"})]),
    Case("arg-cookie", abc(), gate(arg("COOKIE", "session", value="beta9")),
         reqs=[Req("beta9", cookies={"session": "beta9"}), Req("alpha", cookies={"session": "alpha"}),
               Req("absent"), Req("among others", cookies={"a": "1", "session": "beta9"})]),
    Case("arg-method", abc(), gate(arg("METHOD", value="POST")),
         reqs=[Req("POST", method="POST"), Req("GET"), Req("PUT", method="PUT")]),
    Case("arg-path", abc(), gate(arg("PATH", value="/gray")),
         reqs=[Req("/gray", path="/gray"), Req("/other", path="/other"),
               Req("/gray?x=1", path="/gray", query={"x": "1"}), Req("/gray/more", path="/gray/more")]),
    Case("arg-path-regex", abc(), gate(arg("PATH", match="REGEX", value="^/api/v[0-9]+/")),
         reqs=[Req("/api/v2/users", path="/api/v2/users"), Req("/api/x", path="/api/x")]),
    Case("arg-caller-ip-in", abc(), gate(arg("CALLER_IP", match="IN", value="127.0.0.2,10.0.0.1")),
         reqs=[Req("from 127.0.0.2", source_ip="127.0.0.2"), Req("from 127.0.0.1")]),
    Case("arg-caller-ip-exact", abc(), gate(arg("CALLER_IP", value="127.0.0.1")),
         reqs=[Req("from 127.0.0.1"), Req("from 127.0.0.3", source_ip="127.0.0.3")]),
    Case("arg-caller-ip-regex", abc(), gate(arg("CALLER_IP", match="REGEX", value=r"^127\.0\.0\.[2-4]$")),
         reqs=[Req("from 127.0.0.4", source_ip="127.0.0.4"), Req("from 127.0.0.1")]),
    # CUSTOM keys are answered from the caller's metadata (filter: caller.metadata).
    Case("arg-custom-hit", abc(), gate(arg("CUSTOM", "env", value="gray"))),
    Case("arg-custom-miss", abc(), gate(arg("CUSTOM", "env", value="blue"))),
    Case("arg-custom-regex", abc(), gate(arg("CUSTOM", "team", match="REGEX", value="^pa"))),
    Case("arg-custom-bare", abc(), gate(arg("CUSTOM", "env", value="gray")), profile="bare"),
]

# ------------------------------------------------------------------------ source match types

SOURCE_CASES = [
    Case("src-exact", abc(), gate(arg("HEADER", "x-k", value="gray")), reqs=xk("gray", "GRAY", "gray2")),
    Case("src-regex", abc(), gate(arg("HEADER", "x-k", match="REGEX", value="^vip-[0-9]+$")),
         reqs=xk("vip-7", "vip-x", "xvip-7")),
    Case("src-regex-unanchored", abc(), gate(arg("HEADER", "x-k", match="REGEX", value="gray")),
         reqs=xk("a-gray-b", "grey")),
    Case("src-regex-lookahead", abc(), gate(arg("HEADER", "x-k", match="REGEX", value="^(?!prod).*$")),
         reqs=xk("dev", "prod", "production", "preprod")),
    Case("src-regex-backreference", abc(), gate(arg("HEADER", "x-k", match="REGEX", value=r"^(a+)-\1$")),
         reqs=xk("aa-aa", "aa-a")),
    Case("src-regex-digit-class", abc(), gate(arg("HEADER", "x-k", match="REGEX", value=r"^\d+$")),
         reqs=xk("123", "12a")),
    # polaris-go refuses a service's whole routing when one regex in it does not compile (its
    # RoutingAssistant.Validate), and the server serves a rule to its source's routing as well
    # (outbounds): a `*`/`*` source would reach every service in the server. These rules name the
    # caller as their source, so only the case's service and the caller's outbounds carry them.
    Case("src-regex-bad", abc(), gate(source=src([arg("HEADER", "x-k", match="REGEX", value="(unclosed")],
                                                 service="{caller}", namespace="default")),
         reqs=xk("(unclosed", "x")),
    Case("src-regex-star", abc(), gate(source=src([arg("HEADER", "x-k", match="REGEX", value="*")],
                                                  service="{caller}", namespace="default")),
         reqs=xk("anything")),
    # The service's own rules are fine; a rule whose *source* is this service (so an outbound of
    # it, for another destination) has a regex that does not compile.
    Case("src-regex-bad-elsewhere", abc(),
         gate(arg("HEADER", "x-env", value="gray"))
         + [rule("elsewhere", [src([arg("HEADER", "x-k", match="REGEX", value="(unclosed")],
                                   service="{svc}", namespace="default")],
                 [grp("g", {}, service="{svc}-nowhere")])],
         reqs=[hdr("gray", x_env="gray"), Req("absent")]),
    Case("src-not-equals", abc(), gate(arg("HEADER", "x-k", match="NOT_EQUALS", value="prod")),
         reqs=xk("dev", "prod")),
    Case("src-in", abc(), gate(arg("HEADER", "x-k", match="IN", value="sh,bj")),
         reqs=xk("bj", "sh", "gz", "sh,bj")),
    Case("src-not-in", abc(), gate(arg("HEADER", "x-k", match="NOT_IN", value="sh,bj")),
         reqs=xk("gz", "sh", "bj")),
    Case("src-range", abc(), gate(arg("HEADER", "x-k", match="RANGE", value="5~10")),
         reqs=xk("5", "10", "7", "11", "4", "07", "+7", "abc", "7.5")),
    Case("src-range-negative", abc(), gate(arg("HEADER", "x-k", match="RANGE", value="-5~5")),
         reqs=xk("-3", "0", "6", "-6")),
    Case("src-range-bad", abc(), gate(arg("HEADER", "x-k", match="RANGE", value="5-10")),
         reqs=xk("7")),
    Case("src-exact-star", abc(), gate(arg("HEADER", "x-k", value="*")), reqs=xk("anything")),
    Case("src-exact-empty", abc(), gate(arg("HEADER", "x-k", value="")), reqs=xk("anything")),
    # A nested quantifier the filter cannot hand to its linear engine (the lookahead inside):
    # "a" * 18 then "b" costs a backtracking engine ~2^18 steps before (..)+$ fails and the
    # negative lookahead holds.
    Case("src-regex-catastrophic", abc(),
         gate(arg("HEADER", "x-k", match="REGEX", value="^(?!((?=a)a+)+$).*b")),
         reqs=xk("a" * 18 + "b", "ab"), samples=1),
    Case("src-not-equals-star", abc(), gate(arg("HEADER", "x-k", match="NOT_EQUALS", value="*")),
         reqs=xk("anything")),
    Case("src-two-arguments", abc(),
         gate(arg("HEADER", "x-env", value="gray"), arg("QUERY", "uid", match="IN", value="1,2")),
         reqs=[Req("both", headers={"x-env": "gray"}, query={"uid": "2"}),
               Req("header only", headers={"x-env": "gray"}), Req("query only", query={"uid": "1"}),
               Req("neither")]),
    Case("src-two-sources", abc(),
         [rule("gate", [src([arg("HEADER", "x-env", value="gray")]), src([arg("HEADER", "x-user", value="vip")])],
               [TO_V2]), REST],
         reqs=[hdr("first", x_env="gray"), hdr("second", x_user="vip"), hdr("neither", x_env="blue")]),
    Case("src-two-subrules", abc(),
         [rule("split", [], [], subrules=[([src([arg("HEADER", "x-env", value="gray")])], [TO_V2]),
                                          ([src([arg("HEADER", "x-env", value="blue")])], [TO_V3])]), REST],
         reqs=[hdr("gray", x_env="gray"), hdr("blue", x_env="blue"), hdr("green", x_env="green")]),
    Case("src-rule-priority", abc(),
         [rule("low", [src([arg("HEADER", "x-env", value="gray")])], [TO_V3], priority=2),
          rule("high", [src([arg("HEADER", "x-env", match="REGEX", value="^gr")])], [TO_V2], priority=1), REST],
         reqs=[hdr("gray", x_env="gray"), hdr("grey", x_env="grey"), Req("absent")]),
    Case("src-caller-service", abc(), gate(source=src([arg("HEADER", "x-env", value="gray")],
                                                      service="{caller}", namespace="default")),
         reqs=[hdr("gray", x_env="gray"), Req("absent")]),
    Case("src-caller-service-any-namespace", abc(), gate(source=src([], service="{caller}", namespace="*"))),
    Case("src-caller-other-namespace", abc(), gate(source=src([], service="{caller}", namespace="elsewhere"))),
    Case("src-caller-service-bare", abc(), gate(source=src([], service="{caller}", namespace="default")),
         profile="bare"),
    Case("src-other-service", abc(), gate(source=src([], service="someone-else", namespace="default"))),
]

# ------------------------------------------------------------------- PARAMETER and VARIABLE

VALUE_TYPE_CASES = [
    # A source PARAMETER matches any value of a present argument.
    Case("src-parameter", abc(), gate(arg("HEADER", "x-k", value="ignored", vt="PARAMETER")),
         reqs=xk("anything")),
    # A source VARIABLE compares with the variable: the caller's metadata in the filter, polaris-go's
    # global.system.variables (the suite sets the same map on both sides).
    Case("src-variable", abc(), gate(arg("HEADER", "x-k", value="env", vt="VARIABLE")),
         reqs=xk("gray", "blue")),
    Case("src-variable-not-equals", abc(),
         gate(arg("HEADER", "x-k", match="NOT_EQUALS", value="env", vt="VARIABLE")), reqs=xk("gray", "blue")),
    Case("src-variable-undefined", abc(), gate(arg("HEADER", "x-k", value="no_such_variable_1", vt="VARIABLE")),
         reqs=xk("")),
    Case("src-variable-bare", abc(), gate(arg("HEADER", "x-k", value="env", vt="VARIABLE")),
         reqs=xk("gray"), profile="bare"),
    Case("dst-parameter-header", abc(),
         [rule("param", [src()], [grp("by-header", {"version": lbl("$header.x-version", vt="PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)],
         reqs=[hdr("v2", x_version="v2"), hdr("v1", x_version="v1"), hdr("v9", x_version="v9"), Req("absent")]),
    Case("dst-parameter-query", abc(),
         [rule("param", [src()], [grp("by-query", {"version": lbl("$query.ver", vt="PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)],
         reqs=[Req("v1", query={"ver": "v1"}), Req("v9", query={"ver": "v9"}), Req("absent")]),
    Case("dst-parameter-cookie", abc(),
         [rule("param", [src()], [grp("by-cookie", {"version": lbl("$cookie.ver", vt="PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)],
         reqs=[Req("v2", cookies={"ver": "v2"}), Req("absent")]),
    Case("dst-parameter-custom", abc(),
         [rule("param", [src()], [grp("by-caller", {"version": lbl("want", vt="PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)]),
    Case("dst-parameter-custom-bare", abc(),
         [rule("param", [src()], [grp("by-caller", {"version": lbl("want", vt="PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)], profile="bare"),
    Case("dst-parameter-not-equals", abc(),
         [rule("param", [src()], [grp("not-header", {"version": lbl("$header.x-version", "NOT_EQUALS", "PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)],
         reqs=[hdr("v1", x_version="v1"), hdr("v2", x_version="v2"), hdr("v9", x_version="v9"), Req("absent")]),
    Case("dst-parameter-two-groups", abc(),
         [rule("param", [src()], [grp("by-header", {"version": lbl("$header.x-version", vt="PARAMETER")}),
                                  grp("fallback", {"version": lbl("v3")}, priority=1)])],
         reqs=[hdr("v1", x_version="v1"), hdr("v9", x_version="v9"), Req("absent")]),
    Case("dst-variable", abc(),
         [rule("var", [src()], [grp("by-var", {"version": lbl("want3", vt="VARIABLE")})]), REST]),
    Case("dst-parameter-regex", abc(),
         [rule("param", [src()], [grp("by-header", {"version": lbl("$header.x-version", "REGEX", "PARAMETER")})]),
          rule("rest", [src()], [TO_V3], priority=5)],
         reqs=[hdr("^v[12]$", x_version="^v[12]$"), Req("absent")]),
    Case("dst-variable-undefined-two-groups", abc(),
         [rule("var", [src()], [grp("by-var", {"version": lbl("no_such_variable_3", vt="VARIABLE")}),
                                grp("next", {"version": lbl("v3")}, priority=1)]), REST]),
    Case("dst-variable-undefined", abc(),
         [rule("var", [src()], [grp("by-var", {"version": lbl("no_such_variable_2", vt="VARIABLE")})]), REST]),
]

# ---------------------------------------------------------------------- destination matches


def abcd(**over) -> list:
    """abc() plus d, an instance without a version."""
    return abc(**over) + [Inst("d", {"other": "x"})]


def only(name: str, group: dict, insts=None, **kw) -> Case:
    """A single rule for every request to `group`, then the catch-all to v1."""
    return Case(name, insts or abcd(), [rule("only", [src()], [group]), REST], **kw)


DESTINATION_CASES = [
    only("dst-exact", grp("g", {"version": lbl("v2")})),
    only("dst-regex", grp("g", {"version": lbl("^v[23]$", "REGEX")})),
    only("dst-regex-lookahead", grp("g", {"version": lbl("^(?!v1).*$", "REGEX")})),
    only("dst-regex-unanchored", grp("g", {"version": lbl("3", "REGEX")})),
    only("dst-not-equals", grp("g", {"version": lbl("v1", "NOT_EQUALS")})),
    only("dst-in", grp("g", {"version": lbl("v2,v3", "IN")})),
    only("dst-not-in", grp("g", {"version": lbl("v1", "NOT_IN")})),
    only("dst-range", grp("g", {"rank": lbl("2~3", "RANGE")}),
         insts=[Inst("a", {"version": "v1", "rank": "1"}), Inst("b", {"rank": "2"}), Inst("c", {"rank": "3"})]),
    only("dst-star", grp("g", {"version": lbl("*")})),
    only("dst-no-labels", grp("g", {})),
    only("dst-two-labels", grp("g", {"version": lbl("v2"), "tier": lbl("gold")}),
         insts=[Inst("a", {"version": "v1"}), Inst("b", {"version": "v2", "tier": "gold"}),
                Inst("c", {"version": "v2", "tier": "silver"})]),
    only("dst-missing-key", grp("g", {"nokey": lbl("x")})),
    only("dst-empty-value", grp("g", {"version": lbl("")}), insts=abcd() + [Inst("e", {"version": ""})]),
    only("dst-labels-no-common-instance", grp("g", {"version": lbl("v2"), "tier": lbl("gold")}),
         insts=[Inst("a", {"version": "v1"}), Inst("b", {"version": "v2", "tier": "silver"}),
                Inst("c", {"version": "v3", "tier": "gold"})]),
    Case("dst-range-bad-two-groups", abcd(),
         [rule("g", [src()], [grp("bad", {"version": lbl("1-2", "RANGE")}), grp("next", {"version": lbl("v3")}, priority=1)]),
          REST]),
    Case("dst-no-group-failover-all", abcd(), [rule("only", [src()], [grp("g", {"version": lbl("v9")})])]),
    Case("dst-no-rule-matches", abcd(a={"healthy": False}), gate(arg("HEADER", "x-k", value="never"))[:1]),
]

# ----------------------------------------------------------------------- groups and health

GROUP_CASES = [
    Case("grp-priority", abc(), [rule("g", [src()], [grp("first", {"version": lbl("v2")}),
                                                      grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-priority-not-listing-order", abc(),
         [rule("g", [src()], [grp("p2", {"version": lbl("v3")}, priority=2),
                              grp("p0", {"version": lbl("v9")}, priority=0),
                              grp("p1", {"version": lbl("v2")}, priority=1)])]),
    Case("grp-weight-split", abc(), [rule("g", [src()], [grp("w80", {"version": lbl("v2")}, weight=80),
                                                          grp("w20", {"version": lbl("v1")}, weight=20)])]),
    Case("grp-weight-zero", abc(), [rule("g", [src()], [grp("w0", {"version": lbl("v2")}, weight=0),
                                                         grp("next", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-same-priority-one-empty", abc(),
         [rule("g", [src()], [grp("empty", {"version": lbl("v9")}, weight=50),
                              grp("full", {"version": lbl("v2")}, weight=50)])]),
    Case("grp-unhealthy", abc(b={"healthy": False}),
         [rule("g", [src()], [grp("first", {"version": lbl("v2")}), grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-partly-unhealthy", abc() + [Inst("b2", {"version": "v2"}, healthy=False)],
         [rule("g", [src()], [grp("first", {"version": lbl("v2")}), grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-isolated", abc(b={"isolate": True}),
         [rule("g", [src()], [grp("first", {"version": lbl("v2")}), grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-weight-zero-instance", abc(b={"weight": 0}),
         [rule("g", [src()], [grp("first", {"version": lbl("v2")}), grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("grp-split-one-unhealthy", abc(b={"healthy": False}),
         [rule("g", [src()], [grp("w50", {"version": lbl("v2")}, weight=50),
                              grp("w50b", {"version": lbl("v1")}, weight=50)])]),
    # polaris-go leaves unhealthy instances out of NOT_EQUALS candidates (issue 9, item 5).
    Case("dst-not-equals-unhealthy", abc(b={"healthy": False}, c={"healthy": False}),
         [rule("g", [src()], [grp("not-v1", {"version": lbl("v1", "NOT_EQUALS")}),
                              grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("dst-not-equals-partly-unhealthy", abc(b={"healthy": False}),
         [rule("g", [src()], [grp("not-v1", {"version": lbl("v1", "NOT_EQUALS")}),
                              grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("dst-not-equals-unhealthy-no-next", abc(b={"healthy": False}, c={"healthy": False}),
         [rule("g", [src()], [grp("not-v1", {"version": lbl("v1", "NOT_EQUALS")})])]),
    Case("dst-regex-unhealthy", abc(b={"healthy": False}, c={"healthy": False}),
         [rule("g", [src()], [grp("v23", {"version": lbl("^v[23]$", "REGEX")}),
                              grp("second", {"version": lbl("v1")}, priority=1)])]),
    Case("svc-some-unhealthy", abc(a={"healthy": False})),
    Case("svc-all-unhealthy", abc(a={"healthy": False}, b={"healthy": False}, c={"healthy": False})
         + [Inst("iso", healthy=False, isolate=True), Inst("zero", healthy=False, weight=0)]),
    Case("svc-isolated-and-weight-zero", abc(a={"isolate": True}, b={"weight": 0})),
    Case("svc-all-isolated", abc(a={"isolate": True}, b={"isolate": True}, c={"weight": 0})),
    Case("svc-weights", [Inst("a", weight=10), Inst("b", weight=30), Inst("c", weight=60)]),
    Case("svc-no-instances", []),
    Case("rule-failover-none", abc(), gate(arg("HEADER", "x-env", value="gray"))[:1], profile="alt",
         reqs=[hdr("gray", x_env="gray"), Req("absent")]),
    Case("rule-failover-none-no-group", abc(), [rule("g", [src()], [grp("g", {"version": lbl("v9")})])],
         profile="alt"),
]

# ------------------------------------------------------------------------------------ nearby


def near(name: str, zone_loc: tuple, **kw) -> Inst:
    return Inst(name, loc=zone_loc, **kw)


def four(**over) -> list:
    """a, b in r1/z1 (campus c1, c2), c in r1/z2, d in r2/z3."""
    insts = [near("a", ("r1", "z1", "c1")), near("b", ("r1", "z1", "c2")),
             near("c", ("r1", "z2", "c3")), near("d", ("r2", "z3", "c4"))]
    for inst in insts:
        for k, v in over.get(inst.name, {}).items():
            setattr(inst, k, v)
    return insts


DOWN = {"healthy": False}

NEARBY_CASES = [
    Case("near-zone", four(), nearby=True),
    Case("near-zone-outage", four(a=DOWN, b=DOWN), nearby=True),
    Case("near-region-outage", four(a=DOWN, b=DOWN, c=DOWN), nearby=True),
    Case("near-all-unhealthy", four(a=DOWN, b=DOWN, c=DOWN, d=DOWN), nearby=True),
    Case("near-zone-isolated", four(a={"isolate": True}, b={"weight": 0}), nearby=True),
    Case("near-off", four(), nearby=False),
    # The server serves an instance's location as region/zone/campus metadata too.
    Case("near-location-as-label", four(), rules=[rule("g", [src()], [grp("c1", {"campus": lbl("c1")})]), REST]),
    Case("near-off-by-metadata", four(), svc_meta={"internal-enable-nearby": "false"}),
    # polaris-go counts an instance without a location (or without a zone) at every level (item 6).
    Case("near-no-location", four() + [Inst("e")], nearby=True),
    Case("near-no-location-zone-outage", four(a=DOWN, b=DOWN) + [Inst("e")], nearby=True),
    Case("near-region-only", [near("f", ("r1", "", "")), near("c", ("r1", "z2", "c3")), near("d", ("r2", "z3", "c4"))],
         nearby=True),
    Case("near-rule-group", [near("a", ("r1", "z1", "c1"), meta={"version": "v1"}),
                             near("b1", ("r1", "z1", "c1"), meta={"version": "v2"}),
                             near("b2", ("r1", "z2", "c3"), meta={"version": "v2"})],
         rules=[rule("g", [src()], [grp("v2", {"version": lbl("v2")})])], nearby=True),
    Case("near-rule-group-outage", [near("a", ("r1", "z1", "c1"), meta={"version": "v1"}),
                                    near("b1", ("r1", "z1", "c1"), meta={"version": "v2"}, healthy=False),
                                    near("b2", ("r1", "z2", "c3"), meta={"version": "v2"})],
         rules=[rule("g", [src()], [grp("v2", {"version": lbl("v2")})])], nearby=True),
    # alt: campus -> region, 50 %
    Case("near-campus", four(), nearby=True, profile="alt"),
    Case("near-campus-half-down", four() + [near("a2", ("r1", "z1", "c1"), healthy=False)], nearby=True,
         profile="alt"),
    Case("near-campus-third-down", four() + [near("a2", ("r1", "z1", "c1")), near("a3", ("r1", "z1", "c1"), healthy=False)],
         nearby=True, profile="alt"),
    Case("near-beyond-max-level", [near("d", ("r2", "z3", "c4")), near("d2", ("r3", "z4", "c5"))], nearby=True,
         profile="alt"),
    Case("near-max-level-all-down", four(a=DOWN, b=DOWN, c=DOWN), nearby=True, profile="alt"),
    Case("near-no-location-campus", four(a=DOWN) + [Inst("e")], nearby=True, profile="alt"),
    # bare: no location, so nearby routing is off even where the service enables it.
    Case("near-no-own-location", four(), nearby=True, profile="bare"),
]

# Changed while both sides watch it (tests/parity/test_parity.py: a live zone outage).
LIVE_CASES = [Case("near-live", four(), nearby=True, reqs=[Req("all up")])]

ROUTING_CASES = ARGUMENT_CASES + SOURCE_CASES + VALUE_TYPE_CASES + DESTINATION_CASES + GROUP_CASES
ALL_ROUTE_CASES = ROUTING_CASES + NEARBY_CASES

# --------------------------------------------------------------------------------- balancers

HASH_POLICIES = ["ringHash", "maglev", "hash"]
KEYS = [f"user-{k}" for k in range(200)]


def five(weights=(100, 100, 100, 100, 100), **over) -> list:
    insts = [Inst(f"i{n}", weight=w) for n, w in enumerate(weights)]
    for inst in insts:
        for k, v in over.get(inst.name, {}).items():
            setattr(inst, k, v)
    return insts


def lb_cases(policy: str) -> list:
    p = policy
    return [
        Case(f"lb-{p}-equal", five(), policy=p),
        Case(f"lb-{p}-weighted", five((100, 300, 50, 200, 500)), policy=p),
        Case(f"lb-{p}-health", five(i1=DOWN, i2={"isolate": True}, i3={"weight": 0}) + [Inst("i5", weight=200)],
             policy=p),
        Case(f"lb-{p}-all-unhealthy", five(i0=DOWN, i1=DOWN, i2=DOWN, i3=DOWN, i4=DOWN), policy=p),
        Case(f"lb-{p}-routed", [Inst(f"i{n}", {"version": "v2" if n % 2 else "v1"}, weight=100 + 50 * n)
                                for n in range(7)],
             rules=[rule("g", [src([arg("HEADER", "x-grp", value="two")])], [grp("v2", {"version": lbl("v2")})])],
             policy=p),
        Case(f"lb-{p}-reorder", five((100, 200, 100, 300, 100)), policy=p),
        Case(f"lb-{p}-no-key", five((100, 200, 300, 100, 100)), policy=p),
    ]


BALANCER_CASES = [c for p in HASH_POLICIES for c in lb_cases(p)] + [
    Case("lb-ringHash-cookie-key", five(), policy="ringHash", hash_key={"from": "cookie", "name": "uid"}),
    Case("lb-maglev-query-key", five(), policy="maglev", hash_key={"from": "query", "name": "uid"}),
    Case("lb-hash-caller-ip-key", five(), policy="hash", hash_key={"from": "caller_ip"}),
    Case("lb-weightedRandom", five((100, 300, 100, 200, 400), i1=DOWN), policy="weightedRandom"),
    # hash: points exactly on a cumulative weight (half the keys at total weight 2 or 3).
    Case("lb-hash-edges-1-1", [Inst("i0", weight=1), Inst("i1", weight=1)], policy="hash"),
    Case("lb-hash-edges-2-1", [Inst("i0", weight=2), Inst("i1", weight=1)], policy="hash"),
    # ringHash with vnodes other than the default: per service in the filter; polaris-go then
    # answers from a profile with that ringHash.vnodeCount.
    Case("lb-ringHash-vnodes-160", five((100, 300, 50, 200, 500)), policy="ringHash", vnodes=160),
    Case("lb-ringHash-vnodes-500", five(), policy="ringHash", vnodes=500),
    # the alt profile sets load_balancer.ring_hash.vnodes for the whole Envoy (and polaris-go's).
    Case("lb-ringHash-alt-profile", five((100, 200, 100, 300, 100)), policy="ringHash", profile="alt"),
]

ALL_CASES = ALL_ROUTE_CASES + LIVE_CASES + BALANCER_CASES

# ------------------------------------------------------------------------- intended differences
#
# case id, or "case id/request label", -> why the filter answers differently on purpose. A listed
# case that agrees fails too, so this list stays true.

INTENDED: dict[str, str] = {
    "dst-in": "IN on a destination label tests membership in the filter; polaris-go looks the "
              "whole value 'v2,v3' up among the instances' values, so the group is empty there",
    "dst-not-in": "NOT_IN on a destination label tests membership in the filter; polaris-go looks "
                  "'v1' up literally",
    "dst-range": "RANGE on a destination label tests the range in the filter; polaris-go looks "
                 "'2~3' up literally",
    "dst-empty-value": "an empty destination label value admits every instance in the filter, as "
                       "'*' does; polaris-go compares it literally",
    "dst-labels-no-common-instance": "a group whose labels each exist but that no instance carries "
                                     "all of is empty in the filter (the next rule decides); "
                                     "polaris-go selects the group and then has no instance",
    "dst-variable-undefined-two-groups": "a route with a VARIABLE not set in caller.metadata is "
                                         "skipped whole by the filter (logged); polaris-go fails "
                                         "only that group and takes the route's next group",
    "dst-range-bad-two-groups": "a route with a RANGE that is not low~high is skipped whole by the "
                                "filter (logged); polaris-go compares '1-2' literally, fails only "
                                "that group and takes the route's next group",
    "dst-parameter-regex": "a REGEX destination PARAMETER is refused (route skipped, logged): a "
                           "pattern from the request would be compiled per request; polaris-go "
                           "compiles the request's value as a regex",
    "src-regex-catastrophic/x-k=aaaaaaaaaaaaaaaaaab":
        "a backtracking REGEX stops at 10,000 backtracks per test in the filter (counted as no "
        "match); regexp2 has no limit and finds the match after ~2^18 steps",
    # New (not in issue 9): routing.failover none.
    **{c: "routing.failover none answers 503 when no rule matches; polaris-go v1.6.1's "
          "failoverType none builds an empty cluster that the next router of its chain "
          "(nearby/filterOnly) rebuilds from the full instance list "
          "(servicerouter.processServiceRouters passes the cluster key only), so it returns every "
          "instance: the option does nothing there"
       for c in ("rule-failover-none/absent", "rule-failover-none-no-group/plain")},
    # A named rule, not a case: compare_picks marks the keys it applies to.
    "hash-interval-edges": "hash: each instance owns exactly its weight of points (half-open "
                           "intervals); polaris-go's search gives a point on a cumulative weight "
                           "to the instance ending there, so its first instance gets one point "
                           "more and its last one less",

    # New (not in issue 9): a rule that cannot be compiled. The filter skips that rule, logs it
    # and applies the others (README, "Rules as the server serves them"); polaris-go refuses the
    # service's whole Routing when any regex in it, inbound or outbound, does not compile, and
    # routes as if the service had no rules.
    **{c: "a rule whose regex does not compile is skipped by the filter, which applies the "
          "service's other rules; polaris-go drops every rule of the service (inbound and "
          "outbound) when one regex in them does not compile"
       for c in ("src-regex-bad", "src-regex-star", "src-regex-bad-elsewhere")},
    **{f"lb-{p}-no-key": "a request without the hash key is spread by weight (as Envoy's own hash "
                         "balancers do); polaris-go hashes the empty key to one fixed instance"
       for p in HASH_POLICIES},
}
