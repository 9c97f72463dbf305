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


def test_single_class_never_above_simulator_cost():
    """The simulator's cost charges alpha after both sides are ready; the model lets the
    latency run from the send's start, so it is never slower and equal without latency."""
    alpha, beta = 3e-6, 1e-9
    for s in (ring_allreduce(5, 1009, 100), tree_allreduce(6, 777, 64),
              hier_allreduce([[0, 1], [2, 3]], 999, 50)):
        want = cost(s, 4, alpha=alpha, beta=beta)["time"]
        got = predict(s, 4, ONE, {"link": LinkParams(alpha, 1 / beta)})
        assert want * 0.5 <= got <= want * (1 + 1e-12)
        no_latency = predict(s, 4, ONE, {"link": LinkParams(0.0, 1 / beta)})
        assert no_latency == pytest.approx(cost(s, 4, alpha=0.0, beta=beta)["time"], rel=1e-12)


def test_latency_overlaps_a_busy_receiver():
    """A co-located star owner reduces n - 1 pushes that all left at once: one latency, not
    n - 1 of them (the simulator's round count says n)."""
    from collx.algos.star import star_allreduce
    n, alpha = 8, 1e-3
    s = star_allreduce(n, n)           # one element per shard: latency only
    t = predict(s, 4, ONE, {"link": LinkParams(alpha, 1e12)})
    assert cost(s, 4)["rounds"] == n
    assert t == pytest.approx(2 * alpha, rel=1e-3)      # push, then pull


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


# --- contention (bottleneck terms), cost(), calibration JSON -------------------------------

from collx.algos import Links, cost as algos_cost  # noqa: E402
from collx.algos.star import star_servers_allreduce  # noqa: E402
from collx.algos.costmodel import (bottlenecks, host_link_class, hosts_of_groups,  # noqa: E402
                                   load_params)
from collx.algos.dbtree import dbtree_allreduce  # noqa: E402

SHM = LinkParams(alpha_s=1e-6, beta_Bps=8e9, gamma_s_per_B=1.5e-10)
GBIT = LinkParams(alpha_s=60e-6, beta_Bps=125e6, gamma_s_per_B=1.5e-10)   # 1 Gbit/s
MIB64 = (64 << 20) // 4                                                     # float32 elements
CHUNK = (1 << 20) // 4                                                      # COLLX_CHUNK_BYTES


def test_two_hosts_hier_is_1_5x_faster_than_flat_ring():
    groups = [[0, 1], [2, 3]]
    links = Links.of(SHM, GBIT, hosts=hosts_of_groups(groups))
    ring = algos_cost(ring_allreduce(4, MIB64, CHUNK), links)
    hier = algos_cost(hier_allreduce(groups, MIB64, CHUNK), links)
    S = MIB64 * 4
    assert ring == pytest.approx(1.5 * S / GBIT.beta_Bps, rel=0.03)   # 1.5 S per NIC
    assert hier == pytest.approx(S / GBIT.beta_Bps, rel=0.03)         # S per NIC
    assert ring / hier == pytest.approx(1.5, rel=0.05)
    # the critical path alone lets the 64 chunks of a pipelined ring cross the NIC at once
    cls = two_level(groups)
    params = {"intra": SHM, "inter": GBIT}
    assert predict(ring_allreduce(4, MIB64, CHUNK), 4, cls, params) < ring / 10


def test_dedicated_server_star_is_1_5x_faster_than_worker_ring():
    workers, servers = 4, 4
    star = star_servers_allreduce(workers, servers, MIB64, CHUNK)
    assert star.world_size == workers + servers
    hosts = hosts_of_groups([[r] for r in range(workers)], servers)   # 4 + 4 hosts
    t_star = algos_cost(star, Links.of(SHM, GBIT, hosts=hosts))
    t_ring = algos_cost(ring_allreduce(workers, MIB64, CHUNK),
                        Links.of(SHM, GBIT, hosts=range(workers)))
    # per worker NIC: star pushes S and pulls S, the ring sends 1.5 S and receives 1.5 S
    assert t_ring / t_star == pytest.approx(1.5, rel=0.1)


def test_one_host_np8_trees_beat_ring_when_latency_bound():
    links = Links.of(SHM, hosts=[0] * 8)
    ring = algos_cost(ring_allreduce(8, 2, CHUNK), links)
    assert algos_cost(tree_allreduce(8, 2, CHUNK), links) < ring
    assert algos_cost(dbtree_allreduce(8, 2, CHUNK), links) < ring
    # and the ring still wins when bandwidth-bound
    big = (16 << 20) // 4
    assert algos_cost(ring_allreduce(8, big, CHUNK), links) < \
        algos_cost(tree_allreduce(8, big, CHUNK), links)


def test_contention_never_lowers_the_prediction():
    groups = [[0, 1, 2], [3, 4, 5]]
    hosts = hosts_of_groups(groups)
    params = {"intra": SHM, "inter": GBIT}
    cls = two_level(groups)
    for s in (ring_allreduce(6, 10000, 1000), tree_allreduce(6, 10000, 1000),
              hier_allreduce(groups, 10000, 1000), ring_allgather([5000] * 6)):
        plain = predict(s, 4, cls, params)
        assert predict(s, 4, cls, params, hosts=hosts) >= plain
        assert predict(s, 4, cls, params, hosts=hosts, cores=1) >= \
            predict(s, 4, cls, params, hosts=hosts)


def test_bottleneck_terms_by_hand():
    # ring allreduce on 2 hosts x 1 rank: each NIC carries S out and S in (2 messages of S/2)
    count = 1000
    S = count * 4
    hosts = [0, 1]
    terms = bottlenecks(ring_allreduce(2, count), 4, host_link_class(hosts),
                        {"intra": SHM, "inter": GBIT}, hosts)
    assert terms["nic_out[0]"] == pytest.approx(GBIT.alpha_s + S / GBIT.beta_Bps)
    assert terms["nic_in[1]"] == pytest.approx(GBIT.alpha_s + S / GBIT.beta_Bps)
    # rank 0 receives S/2 reduced and S/2 copied: two messages, each with its overhead
    assert terms["rank[0]"] == pytest.approx(2 * GBIT.alpha_s + S / GBIT.beta_Bps
                                             + GBIT.gamma_s_per_B * S / 2)
    explicit = LinkParams(GBIT.alpha_s, GBIT.beta_Bps, GBIT.gamma_s_per_B, overhead_s=0.0)
    t0 = bottlenecks(ring_allreduce(2, count), 4, host_link_class(hosts),
                     {"intra": SHM, "inter": explicit}, hosts)
    assert t0["rank[0]"] == pytest.approx(S / GBIT.beta_Bps + GBIT.gamma_s_per_B * S / 2)
    # a shared memory system: every intra-host byte once, at shared_Bps
    mem = LinkParams(1e-6, 8e9, 0.0, shared_Bps=4e9)
    t = bottlenecks(ring_allreduce(4, count), 4, lambda a, b: "m", {"m": mem}, [0] * 4)
    assert t["mem[0]"] == pytest.approx(4 * 1.5 * S / 4e9)


def test_cost_entry_point_and_host_map_checks():
    s = ring_allreduce(4, 4096, 512)
    one = algos_cost(s, SHM)                 # bare LinkParams: one host, one class
    assert one == algos_cost(s, Links({"intra": SHM}))
    assert one >= predict(s, 4, ONE, {"link": SHM})
    with pytest.raises(ValueError, match="host map covers 3"):
        algos_cost(s, Links.of(SHM, GBIT, hosts=[0, 0, 1]))
    with pytest.raises(KeyError, match="inter"):
        algos_cost(s, Links.of(SHM, hosts=[0, 0, 1, 1]))
    assert algos_cost(ring_allreduce(3, 0), SHM) == 0.0


def test_load_params_reads_calibration_json(tmp_path):
    p = tmp_path / "links.json"
    p.write_text('{"_meta": {"host": "x"}, "shm": {"alpha_s": 1e-6, "beta_Bps": 8e9, '
                 '"gamma_s_per_B": 2e-10}, "tcp": {"alpha_s": 6e-5, "beta_Bps": 1.25e8}}')
    got = load_params(str(p))
    assert set(got) == {"shm", "tcp"}
    assert got["shm"] == LinkParams(1e-6, 8e9, 2e-10)
    assert got["tcp"].gamma_s_per_B == 0.0
    links = Links(got, hosts=(0, 0, 1, 1), intra="shm", inter="tcp")
    assert algos_cost(ring_allreduce(4, 1 << 16), links) > 0


def test_per_message_overhead_counts_messages():
    """At 8 B on one host the receiver's per-message overhead ranks recursive doubling
    (log2 n receives per rank) ahead of the co-located star (2 (n - 1) receives)."""
    from collx.algos.rd import rd_allreduce
    from collx.algos.star import star_allreduce
    hosts = [0] * 8
    p = {"link": LinkParams(2e-6, 4e9)}
    rd = predict(rd_allreduce(8, 2), 4, ONE, p, hosts=hosts)
    star = predict(star_allreduce(8, 2), 4, ONE, p, hosts=hosts)
    assert rd < star


def test_rendezvous_latency_only_above_the_eager_size():
    """rdv_s: a message above eager_bytes pays that much more latency (the shm transport
    pulls it after a handshake); at or below it, nothing changes."""
    plain = {"link": LinkParams(alpha_s=1e-6, beta_Bps=1e10)}
    rdv = {"link": LinkParams(alpha_s=1e-6, beta_Bps=1e10, rdv_s=5e-6, eager_bytes=16384)}
    at = ring_allreduce(2, 2 * 4096)          # per-step messages of exactly 16384 B
    above = ring_allreduce(2, 2 * 4097)       # 16388 B: two rounds above the eager size
    assert predict(at, 4, ONE, rdv) == pytest.approx(predict(at, 4, ONE, plain))
    extra = predict(above, 4, ONE, rdv) - predict(above, 4, ONE, plain)
    assert extra == pytest.approx(2 * 5e-6, rel=1e-6)        # one per dependent round
    hosts = [0, 0]                           # the receiver term pays it per message too
    assert predict(above, 4, ONE, rdv, hosts=hosts) > predict(above, 4, ONE, plain, hosts=hosts)


def test_load_params_reads_the_rendezvous_fields():
    from collx.algos.costmodel import load_params
    p = load_params({"shm": {"alpha_s": 1e-6, "beta_Bps": 1e10, "rdv_s": 3e-6,
                             "eager_bytes": 8192}, "_meta": {}})["shm"]
    assert p.rdv_s == 3e-6 and p.eager_bytes == 8192 and p.rdv(8192) == 0 and p.rdv(8193) == 3e-6
