"""Tier 1: the link-class cost model (collx/algos/costmodel.py): bytes per link class,
critical-path prediction with per-class alpha/beta and reduction cost gamma."""
from __future__ import annotations

import pytest

from collx.algos.binomial import binomial_broadcast
from collx.algos.costmodel import LinkParams, bytes_per_link_class, predict, two_level
from collx.algos.hier import hier_allreduce, hier_leader_allreduce
from collx.algos.ring import ring_allgather, ring_allreduce
from collx.algos.simulator import cost
from collx.algos.tree import tree_allreduce

pytestmark = pytest.mark.timeout(60)

FAST = {"link": LinkParams(alpha_s=5e-6, beta_Bps=25e9)}
ONE = lambda a, b: "link"  # noqa: E731


def test_hier_sends_fewer_inter_host_bytes_per_host():
    groups = [[0, 1], [2, 3]]
    cls = two_level(groups)
    count, isz = 1 << 20, 4
    S = count * isz
    flat = bytes_per_link_class(ring_allreduce(4, count), isz, cls)
    hier = bytes_per_link_class(hier_allreduce(groups, count), isz, cls)
    hosts = len(groups)
    assert flat["inter"] / hosts == 1.5 * S        # the numbers: 1.5 S -> S per NIC
    assert hier["inter"] / hosts == S
    assert hier["inter"] < flat["inter"]
    # every byte sent is accounted to some class
    s = hier_allreduce(groups, count)
    assert sum(hier.values()) == cost(s, isz)["total_bytes"]


def test_leader_variant_crosses_hosts_only_from_leaders():
    groups = [[0, 1], [2, 3, 4]]
    s = hier_leader_allreduce(groups, 1000)
    cls = two_level(groups)
    b = bytes_per_link_class(s, 4, cls)
    assert b["inter"] == 2 * 4000          # 2-rank ring allreduce of 1000 floats
    assert b["intra"] > 0


def test_single_class_matches_simulator_cost():
    alpha, beta = 3e-6, 1e-9
    for s in (ring_allreduce(5, 1009, 100), tree_allreduce(6, 777, 64),
              hier_allreduce([[0, 1], [2, 3]], 999, 50)):
        want = cost(s, 4, alpha=alpha, beta=beta)["time"]
        got = predict(s, 4, ONE, {"link": LinkParams(alpha, 1 / beta)})
        assert got == pytest.approx(want, rel=1e-12)


def test_ring_vs_tree_ordering_by_size():
    n = 8
    tiny_ring = predict(ring_allreduce(n, 1), 4, ONE, FAST)
    tiny_tree = predict(tree_allreduce(n, 1), 4, ONE, FAST)
    assert tiny_tree < tiny_ring           # latency-bound: fewer rounds win
    huge = 1 << 24
    huge_ring = predict(ring_allreduce(n, huge), 4, ONE, FAST)
    huge_tree = predict(tree_allreduce(n, huge), 4, ONE, FAST)
    assert huge_ring < huge_tree           # bandwidth-bound: ring moves less per link


def test_slow_inter_host_link_favours_hier_for_large_messages():
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    cls = two_level(groups)
    params = {"intra": LinkParams(2e-6, 200e9), "inter": LinkParams(10e-6, 10e9)}
    count = 1 << 22
    assert predict(hier_allreduce(groups, count), 4, cls, params) < \
        predict(ring_allreduce(8, count), 4, cls, params)


def test_gamma_only_slows_reducing_schedules():
    g0 = {"link": LinkParams(5e-6, 25e9, 0.0)}
    g1 = {"link": LinkParams(5e-6, 25e9, 1e-9)}
    for s in (ring_allreduce(4, 10000), tree_allreduce(4, 10000),
              hier_allreduce([[0, 1], [2, 3]], 10000)):
        assert s.reduces
        assert predict(s, 4, ONE, g1) > predict(s, 4, ONE, g0)
    for s in (ring_allgather([2500] * 4), binomial_broadcast(4, 10000)):
        assert not s.reduces
        assert predict(s, 4, ONE, g1) == predict(s, 4, ONE, g0)


def test_empty_and_missing_class():
    assert predict(ring_allreduce(3, 0), 4, ONE, FAST) == 0.0
    assert bytes_per_link_class(ring_allreduce(3, 0), 4, ONE) == {}
    with pytest.raises(KeyError, match="inter"):
        predict(ring_allreduce(4, 8), 4, two_level([[0, 1], [2, 3]]), {"intra": FAST["link"]})
