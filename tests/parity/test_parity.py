"""Parity with polaris-go (issue 9): the same questions to polaris-go v1.6.1 (build/parity-oracle)
and to the real Envoy running our filter, about the same services in one real Polaris server.

A test fails on any difference that cases.INTENDED does not list; a listed difference is reported
as xfail with its reason, and a listed case that agrees fails (so the list stays true). The cases
are in cases.py; the machinery in parity_lib.py.
"""

from __future__ import annotations

import random
import warnings

import pytest

from cases import (ALL_CASES, ALL_ROUTE_CASES, BALANCER_CASES, HASH_POLICIES, INTENDED, KEYS, LIVE_CASES,
                   PROFILES)
from parity_lib import Case, Difference, Req, World


@pytest.fixture(scope="module")
def world(polaris, tmp_path_factory):
    w = World(polaris, tmp_path_factory.mktemp("parity"), PROFILES, ALL_CASES)
    try:
        w.start()
    except BaseException:
        w.stop()
        raise
    yield w
    w.stop()


def judge(case_id: str, diffs: list[Difference]) -> None:
    """Fails on a difference INTENDED does not list, or on a listed case that agrees."""
    def reason(d: Difference) -> str | None:
        return d.intended or INTENDED.get(f"{d.case}/{d.question}") or INTENDED.get(d.case)

    unexpected = [d for d in diffs if reason(d) is None]
    if unexpected:
        pytest.fail("polaris-go and the filter differ:\n" + "\n".join(map(str, unexpected)), pytrace=False)
    listed = [k for k in INTENDED if k == case_id or k.startswith(case_id + "/")]
    if listed and not diffs:
        pytest.fail(f"{case_id} is listed in INTENDED ({listed}) but polaris-go and the filter agree",
                    pytrace=False)
    if diffs:
        pytest.xfail("intended: " + "; ".join(sorted({reason(d) for d in diffs})) + "\n"
                     + "\n".join(map(str, diffs)))


ROUTE_CASES = ALL_ROUTE_CASES + [c for c in BALANCER_CASES if c.policy == "weightedRandom"]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: c.id)
def test_route(world: World, case: Case):
    """Where each request can land: the same set of instances (or none) on both sides."""
    judge(case.id, [d for req in case.reqs if (d := world.compare_route(case, req))])


def key_requests(case: Case, extra_headers: dict | None = None) -> dict[str, Req]:
    """One request per hash key, carrying it where the case's filter config reads it."""
    source = (case.hash_key or {}).get("from", "header")
    extra = extra_headers or {}
    if source == "cookie":
        return {k: Req(k, headers=extra, cookies={case.hash_key["name"]: k}) for k in KEYS}
    if source == "query":
        return {k: Req(k, headers=extra, query={case.hash_key["name"]: k}) for k in KEYS}
    if source == "caller_ip":
        ips = [f"127.0.0.{n}" for n in range(10, 60)]
        return {ip: Req(ip, headers=extra, source_ip=ip) for ip in ips}
    return {k: Req(k, headers={"x-hash": k, **extra}) for k in KEYS}


PICK_CASES = [c for c in BALANCER_CASES
              if c.policy in HASH_POLICIES and not c.id.endswith(("-reorder", "-no-key"))]


@pytest.mark.parametrize("case", PICK_CASES, ids=lambda c: c.id)
def test_hash_picks(world: World, case: Case):
    """The exact instance per key, for every key."""
    edges = INTENDED["hash-interval-edges"]
    diffs = world.compare_picks(case, key_requests(case), case.policy, f"{len(key_requests(case))} keys", edges)
    if case.rules:  # the rule sends x-grp: two to the v2 group: the balancer works on that group
        diffs += world.compare_picks(case, key_requests(case, {"x-grp": "two"}), case.policy,
                                     "keys with x-grp: two (routed to the v2 group)", edges)
    judge(case.id, diffs)


REORDER = [c for c in BALANCER_CASES if c.id.endswith("-reorder")]


def test_hash_picks_survive_reregistration_in_other_orders(world: World):
    """Every instance registered again, one call each in another order (three rounds): each round
    is a new revision, which the server answers in an order of its own (its instance map), and
    every balancer must still pick as polaris-go does, and as it did before."""
    rng = random.Random(9)
    n = len(REORDER[0].insts)
    orders = [list(reversed(range(n))), rng.sample(range(n), n), rng.sample(range(n), n)]
    diffs: list[Difference] = []
    first: dict[str, dict] = {}
    seen_orders: dict[str, set] = {c.id: set() for c in REORDER}
    edges = INTENDED["hash-interval-edges"]
    for case in REORDER:
        diffs += world.compare_picks(case, key_requests(case), case.policy, "as first registered", edges)
        first[case.id] = world.filter_picks(case, key_requests(case))
        seen_orders[case.id].add(tuple(world.server_order(case)))
    for round_no, order in enumerate(orders, 1):
        before = {c.id: world.revisions(c)[0] for c in REORDER}
        for case in REORDER:
            world.reregister(case, order, round_no)
        world.settle(REORDER, before)
        for case in REORDER:
            seen_orders[case.id].add(tuple(world.server_order(case)))
            label = f"round {round_no}: registered again in order {order}"
            diffs += world.compare_picks(case, key_requests(case), case.policy, label, edges)
            again = world.filter_picks(case, key_requests(case))
            moved = [k for k in again if again[k] != first[case.id][k]]
            if moved:
                diffs.append(Difference(case.id, label + ", the filter against itself",
                                        "(the same instances, so the same picks as before)",
                                        f"{len(moved)} of {len(again)} keys moved, e.g. {moved[:3]}"))
    failed = [d for d in diffs if not d.intended]
    if failed:
        pytest.fail("\n".join(map(str, failed)), pytrace=False)
    for case in REORDER:
        if len(seen_orders[case.id]) < 2:
            warnings.warn(f"{case.id}: the server answered in one order only: {seen_orders[case.id]}")


NO_KEY = [c for c in BALANCER_CASES if c.id.endswith("-no-key")]


@pytest.mark.parametrize("case", NO_KEY, ids=lambda c: c.id)
def test_hash_balancer_without_a_key(world: World, case: Case):
    """A request that carries no hash key."""
    want, why, _ = world.oracle_picks(case, Req("no key"), [""], case.policy)
    wanted = frozenset([want[""]]) if not why else frozenset()
    got, counts = world.filter_route(case, Req("no key"), wanted)
    diffs = [] if got == wanted else [Difference(case.id, "no key", str(set(wanted)) + (why or ""),
                                                 f"{set(got)} {dict(counts)}")]
    judge(case.id, diffs)


def test_nearby_follows_a_live_zone_outage(world: World):
    """Instances of this zone go down and come back while both sides watch the service."""
    case = LIVE_CASES[0]
    diffs = [world.compare_route(case, case.reqs[0])]
    steps = [("zone down", {0: False, 1: False}), ("region down too", {2: False}),
             ("all back", {0: True, 1: True, 2: True})]
    for label, health in steps:
        before = {case.id: world.revisions(case)[0]}
        for index, healthy in health.items():
            world.update(case, index, healthy=healthy)
        world.settle([case], before)
        d = world.compare_route(case, Req(label))
        diffs.append(d)
    failed = [d for d in diffs if d]
    if failed:
        pytest.fail("\n".join(map(str, failed)), pytrace=False)


def test_zz_polaris_go_cache_notes(world: World):
    """Where polaris-go's own caches answered differently from a fresh polaris-go (its bugs, e.g.
    the NOT_EQUALS metadata cache keyed without the compared value): reported as warnings; the
    suite compares the filter with the fresh answers."""
    for note in world.cached_notes:
        warnings.warn(note)
