"""Issue 3: the hash load balancers (ringHash, maglev, hash) in the real Envoy, with the hash key
taken from the request as configured."""

from __future__ import annotations

import time

import pytest

from conftest import REFRESH

N = 5
KEYS = [f"user-{k}" for k in range(200)]


def five(polaris, service, upstreams) -> dict[str, str]:
    ups = upstreams(*[f"i{n}" for n in range(N)])
    polaris.create_service(service)
    ids = {u.name: polaris.register_instance(service, "127.0.0.1", u.port) for u in ups}
    polaris.wait_for(lambda r: len(r.get("instances") or []) == N, service=service)
    return ids


def mapping(client, service, keys=KEYS, header="x-user") -> dict[str, str]:
    out = {}
    for k in keys:
        status, _, body = client.request(service, headers={header: k})
        assert status == 200, body
        out[k] = body
    return out


@pytest.mark.parametrize("policy", ["ringHash", "maglev", "hash"])
def test_same_key_always_lands_on_the_same_instance(polaris, service, upstreams, envoy, policy):
    five(polaris, service, upstreams)
    client = envoy(
        polaris.grpc_port,
        load_balancer={"policy": policy, "hash_key": {"from": "header", "name": "x-user"}},
    ).client()

    first = mapping(client, service)
    again = mapping(client, service)

    assert first == again
    assert len(set(first.values())) == N, "keys should spread over every instance"


@pytest.mark.parametrize("policy, survivor_moves", [("ringHash", 0.0), ("maglev", 0.05)])
def test_removing_one_of_five_instances_remaps_about_a_fifth_of_keys(
    polaris, service, upstreams, envoy, policy, survivor_moves
):
    ids = five(polaris, service, upstreams)
    # 160 ring points per instance: at polaris-go's default of 10 one instance of five can own
    # well over 1.5/N of the keys, which the bound below is not about.
    client = envoy(
        polaris.grpc_port,
        load_balancer={
            "policy": policy,
            "hash_key": {"from": "header", "name": "x-user"},
            "ring_hash": {"vnodes": 160},
        },
    ).client()
    before = mapping(client, service)
    gone = "i0"
    on_gone = [k for k, v in before.items() if v == gone]

    polaris.deregister_instance(ids[gone])
    polaris.wait_for(lambda r: len(r.get("instances") or []) == N - 1, service=service)
    # Wait (bounded) until the filter has dropped the instance: its keys no longer reach it.
    probe = on_gone[:10]
    deadline = time.monotonic() + 2 * REFRESH + 0.5
    while gone in mapping(client, service, probe).values():
        assert time.monotonic() < deadline, "removal not reflected within two refresh intervals"
        time.sleep(0.1)
    after = mapping(client, service)

    moved = [k for k in KEYS if before[k] != after[k]]
    survivors_moved = [k for k in moved if before[k] != gone]
    assert gone not in after.values()
    assert set(on_gone) <= set(moved)
    # Bounds: keys of survivors stay (ring hash: none may move; maglev: a few table slots shift,
    # measured 0.4-0.9 % natively); the gone instance's keys about 1/N, at most 1.5/N (its share
    # of 200 keys varies run to run: the instances' addresses are new each run), plus the
    # survivors' allowance.
    assert len(survivors_moved) <= survivor_moves * len(KEYS), survivors_moved
    assert len(on_gone) <= 1.5 / N * len(KEYS), len(on_gone)
    assert len(moved) <= (1.5 / N + survivor_moves) * len(KEYS), len(moved)


def test_maglev_shares_are_balanced(polaris, service, upstreams, envoy):
    five(polaris, service, upstreams)
    client = envoy(
        polaris.grpc_port,
        load_balancer={"policy": "maglev", "hash_key": {"from": "header", "name": "x-user"}},
    ).client()

    keys = [f"k-{n}" for n in range(1000)]
    counts: dict[str, int] = {}
    for v in mapping(client, service, keys).values():
        counts[v] = counts.get(v, 0) + 1

    # 200 per instance expected; multinomial sd about 12.6, so +-35 % is over 5 sd.
    assert len(counts) == N
    assert all(130 <= c <= 270 for c in counts.values()), counts


@pytest.mark.parametrize(
    "source, request_for",
    [
        ({"from": "cookie", "name": "sid"}, lambda k: {"headers": {"cookie": f"a=1; sid={k}"}}),
        ({"from": "query", "name": "uid"}, lambda k: {"path": f"/?uid={k}"}),
    ],
    ids=["cookie", "query"],
)
def test_hash_key_comes_from_cookie_or_query(polaris, service, upstreams, envoy, source, request_for):
    five(polaris, service, upstreams)
    client = envoy(polaris.grpc_port, load_balancer={"policy": "ringHash", "hash_key": source}).client()

    seen = {}
    for k in KEYS[:60]:
        answers = {client.request(service, **request_for(k))[2] for _ in range(3)}
        assert len(answers) == 1, (k, answers)
        seen[k] = answers.pop()
    assert len(set(seen.values())) > 1


def test_caller_ip_key_pins_one_client_to_one_instance(polaris, service, upstreams, envoy):
    five(polaris, service, upstreams)
    client = envoy(
        polaris.grpc_port, load_balancer={"policy": "maglev", "hash_key": {"from": "caller_ip"}}
    ).client()

    assert len(client.counts(service, 50)) == 1


def test_requests_without_the_key_spread_by_weight(polaris, service, upstreams, envoy):
    five(polaris, service, upstreams)
    client = envoy(
        polaris.grpc_port,
        load_balancer={"policy": "ringHash", "hash_key": {"from": "header", "name": "x-user"}},
    ).client()

    assert len(client.counts(service, 100)) >= 4


def test_per_service_balancer_pins_one_service_while_the_other_spreads(polaris, service, upstreams, envoy):
    pinned, spread = service, f"{service}-wr"
    five(polaris, pinned, upstreams)
    ups = upstreams(*[f"w{n}" for n in range(N)])
    polaris.create_service(spread)
    for u in ups:
        polaris.register_instance(spread, "127.0.0.1", u.port)
    polaris.wait_for(lambda r: len(r.get("instances") or []) == N, service=spread)
    client = envoy(
        polaris.grpc_port,
        load_balancer={
            "hash_key": {"from": "header", "name": "x-user"},
            "services": [{"service": pinned, "policy": "maglev"}],
        },
    ).client()

    # One key: maglev keeps it on one instance of `pinned`; `spread` keeps weighted random.
    assert len(client.counts(pinned, 40, headers={"x-user": "user-7"})) == 1
    assert len(client.counts(spread, 40, headers={"x-user": "user-7"})) > 1
