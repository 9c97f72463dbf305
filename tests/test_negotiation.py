"""Tier 1: the negotiation logic without processes (collx/runtime/negotiation.py), fusion
helpers (collx/runtime/fusion.py) and the timeline writer (collx/runtime/timeline.py).

Each "rank" is a Coordinator fed the same gathered rows and payloads, as the real worker
does after its allgathers; the tests check readiness, the identical cache, fusion grouping,
mismatch reports, eviction and re-announcement, join and the stall report.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from collx.runtime import fusion, timeline
from collx.runtime.negotiation import (FLAG_JOINED, FLAG_NEW, HEADER, Coordinator, Request,
                                       cache_key, encode_key)

pytestmark = pytest.mark.timeout(60)


def req(name: str, shape=(4,), dtype="float32", op="Sum", kind="allreduce", psid=0,
        pre=1.0, post=1.0) -> Request:
    agree = {"dtype": dtype, "shape": list(shape), "op": op, "prescale": pre, "postscale": post}
    return Request(name, kind, psid, agree)


class Sim:
    """N coordinators fed identical gathered data, plus per-rank pending requests."""

    def __init__(self, n: int, capacity: int = 64, fusion_bytes: int = 1 << 20,
                 members=None) -> None:
        self.n = n
        members = members or (lambda psid: list(range(n)) if psid == 0 else None)
        self.coords = [Coordinator(n, capacity, fusion_bytes, members) for _ in range(n)]
        self.bits = [np.zeros(capacity + 64, bool) for _ in range(n)]
        self.pending: list[dict[str, Request]] = [{} for _ in range(n)]
        self.joined = [False] * n
        self.fresh: list[list[Request]] = [[] for _ in range(n)]

    def submit(self, rank: int, r: Request) -> None:
        self.fresh[rank].append(r)

    def cycle(self, now: float = 0.0):
        rows, payloads = [], []
        for rank in range(self.n):
            c = self.coords[rank]
            announce = []
            for r in self.fresh[rank]:
                self.pending[rank][r.name] = r
                slot = c.cache.lookup(r.ckey) if r.cacheable else None
                if slot is not None:
                    r.slot = slot
                    self.bits[rank][slot] = True
                else:
                    r.slot = None
                    announce.append(r.key)
            self.fresh[rank] = []
            payload = json.dumps({"n": announce, "c": []}).encode() if announce else b""
            flags = (FLAG_NEW if payload else 0) | (FLAG_JOINED if self.joined[rank] else 0)
            rows.append(c.row(flags, len(payload), self.bits[rank]))
            payloads.append(payload)
        table = np.stack(rows)
        outs = [c.process(table, payloads, now) for c in self.coords]
        summary = [[(tuple(it.name for it in resp.items), resp.error is not None)
                    for resp in o.responses] for o in outs]
        assert all(s == summary[0] for s in summary), summary       # identical everywhere
        for rank in range(self.n):
            for resp in outs[rank].responses:
                for it in resp.items:
                    r = self.pending[rank].pop(it.name, None)
                    if r is not None and r.slot is not None:
                        self.bits[rank][r.slot] = False
            for r in list(self.pending[rank].values()):
                if r.slot is not None and r.slot in outs[rank].reset_slots:
                    self.bits[rank][r.slot] = False
                    del self.pending[rank][r.name]
                    self.fresh[rank].append(r)
        return outs[0]


def names(outcome) -> list[list[str]]:
    return [[it.name for it in resp.items] for resp in outcome.responses]


def test_ready_only_when_every_rank_announced_any_order() -> None:
    sim = Sim(3)
    sim.submit(0, req("a"))
    sim.submit(1, req("b"))
    assert names(sim.cycle()) == []
    sim.submit(1, req("a"))
    sim.submit(2, req("b"))
    sim.submit(0, req("b"))
    assert names(sim.cycle()) == [["b"]]            # a still lacks rank 2
    sim.submit(2, req("a"))
    assert names(sim.cycle()) == [["a"]]


def test_cache_then_bits_and_fusion_grouping() -> None:
    sim = Sim(2, fusion_bytes=40)
    for rank in range(2):
        for i in range(5):
            sim.submit(rank, req(f"t{i}"))              # 16 bytes each
    out = sim.cycle()
    assert names(out) == [["t0", "t1"], ["t2", "t3"], ["t4"]]   # <= 40 bytes per response
    assert sim.coords[0].cache.nslots == 5
    for rank in (1, 0):
        for i in reversed(range(5)):
            sim.submit(rank, req(f"t{i}"))
    out = sim.cycle()
    assert names(out) == [["t0", "t1"], ["t2", "t3"], ["t4"]]   # cached: slot order
    assert sim.pending == [{}, {}]


def test_fusion_keeps_dtypes_ops_and_scales_apart() -> None:
    sim = Sim(2)
    reqs = [req("f32"), req("f64", dtype="float64"), req("max", op="Max"), req("f32b"),
            req("pre", pre=2.0), req("bc", kind="broadcast")]
    for rank in range(2):
        for r in reqs:
            sim.submit(rank, Request(r.name, r.kind, r.psid, dict(r.agree)))
    assert names(sim.cycle()) == [["f32", "f32b"], ["f64"], ["max"], ["pre"], ["bc"]]


def test_no_fusion_when_threshold_zero() -> None:
    sim = Sim(2, fusion_bytes=0)
    for rank in range(2):
        for i in range(3):
            sim.submit(rank, req(f"t{i}"))
    assert names(sim.cycle()) == [["t0"], ["t1"], ["t2"]]


def test_mismatch_names_tensor_ranks_and_values() -> None:
    sim = Sim(3)
    sim.submit(0, req("w", shape=(4,)))
    sim.submit(1, req("w", shape=(5,)))
    sim.submit(2, req("w", shape=(4,), dtype="float64"))
    out = sim.cycle()
    (resp,) = out.responses
    assert resp.error and "'w'" in resp.error
    for text in ("rank(s) [0]", "rank(s) [1]", "rank(s) [2]", "shape=[5]", "float64"):
        assert text in resp.error, resp.error


def test_changed_shape_of_cached_name_evicts_and_reports() -> None:
    sim = Sim(2)
    for rank in range(2):
        sim.submit(rank, req("x"))
    sim.cycle()
    sim.submit(0, req("x"))                 # cached: a bit
    sim.submit(1, req("x", shape=(9,)))     # new key for a cached name: evicts
    out = sim.cycle()
    assert out.reset_slots == {0} and out.responses == []
    out = sim.cycle()                       # rank 0 re-announced: the table sees both
    (resp,) = out.responses
    assert resp.error and "shape=[9]" in resp.error and "shape=[4]" in resp.error


def test_lru_eviction_identical_and_reannounced() -> None:
    sim = Sim(2, capacity=2)
    for i in range(3):
        for rank in range(2):
            sim.submit(rank, req(f"t{i}"))
        sim.cycle()
    cache = sim.coords[0].cache
    assert sorted(it.name for it in cache.items if it) == ["t1", "t2"]
    assert [it.name for it in cache.items] == [it.name for it in sim.coords[1].cache.items]
    sim.submit(0, req("t1"))                # cached on both
    sim.submit(1, req("t1"))
    assert names(sim.cycle()) == [["t1"]]


def test_noname_not_cached() -> None:
    sim = Sim(2)
    for rank in range(2):
        sim.submit(rank, req("allreduce.noname.0"))
    assert names(sim.cycle()) == [["allreduce.noname.0"]]
    assert sim.coords[0].cache.nslots == 0


def test_join_counts_joined_ranks_present_and_returns_last() -> None:
    sim = Sim(3)
    sim.joined[0] = True
    sim.submit(1, req("g"))
    sim.submit(2, req("g"))
    out = sim.cycle()
    assert names(out) == [["g"]] and out.responses[0].joined == (0,)
    sim.joined[2] = True
    assert sim.cycle().join_last is None
    sim.joined[1] = True
    assert sim.cycle().join_last == 1           # the last flag to appear
    assert not sim.coords[0].joined.any()


def test_joined_rank_blocks_unsupported_kinds_with_error() -> None:
    sim = Sim(2)
    sim.joined[1] = True
    sim.submit(0, req("bc", kind="broadcast"))
    (resp,) = sim.cycle().responses
    assert resp.usage and "joined" in resp.error


def test_process_set_members_only() -> None:
    sets = {0: [0, 1, 2], 1: [0, 2]}
    sim = Sim(3, members=sets.get)
    sim.submit(0, req("s", psid=1))
    assert names(sim.cycle()) == []
    sim.submit(2, req("s", psid=1))
    assert names(sim.cycle()) == [["s"]]
    for rank in (0, 2):                         # cached path: rank 1's missing bit is fine
        sim.submit(rank, req("s", psid=1))
    assert names(sim.cycle()) == [["s"]]


def test_stall_report_names_missing_ranks() -> None:
    sim = Sim(3)
    sim.submit(0, req("late"))
    sim.submit(2, req("late"))
    sim.cycle(now=0.0)
    sim.cycle(now=5.0)
    rows = sim.coords[1].pending(now=7.0)
    assert rows == [("late", 7.0, [0, 2], [1])]
    # cached requests partially pending are reported too
    sim.submit(1, req("late"))
    sim.cycle(now=8.0)
    sim.submit(0, req("late"))
    sim.cycle(now=9.0)
    (row,) = sim.coords[0].pending(now=12.0)
    assert row[0] == "late" and row[2] == [0] and row[3] == [1, 2] and row[1] == 3.0


def test_row_layout() -> None:
    c = Coordinator(2, 128, 0, lambda p: [0, 1])
    bits = np.zeros(192, bool)
    row = c.row(FLAG_NEW, 17, bits)
    assert row.dtype == np.int64 and row.size == HEADER + 1 and row[1] == 17


def test_keys_equal_across_encoding() -> None:
    r = req("k", shape=(2, 3))
    name, kind, psid, agree = json.loads(r.key)
    assert cache_key(name, kind, psid, agree) == r.ckey
    assert encode_key(name, kind, psid, agree) == r.key


def test_fuse_unfuse_scale_and_nice_count() -> None:
    a, b = np.arange(5, dtype=np.float32), np.arange(3, dtype=np.float32) + 10
    buf = fusion.FusionBuffer()
    view = buf.view(fusion.nice_count(8), np.dtype(np.float32))
    fusion.fuse([a, b], view, 8, 2.0)
    assert view[:8].tolist() == (np.concatenate([a, b]) * 2).tolist()
    oa, ob = np.empty_like(a), np.empty_like(b)
    fusion.unfuse(view, [oa, ob], 0.5)
    assert (oa == a).all() and (ob == b).all()
    for n in (0, 1, 16, 17, 1000, 12345):
        m = fusion.nice_count(n)
        assert n <= m <= max(n, n * 1.125 + 1)
    assert len({fusion.nice_count(n) for n in range(1000, 2000)}) <= 9


def test_timeline_is_json(tmp_path) -> None:
    path = tmp_path / "t.json"
    timeline.set_rank(0)
    timeline.start(str(path), mark_cycles=True)
    with timeline.span("model", "BACKWARD"):
        timeline.instant("CYCLE")
    tl = timeline.active()
    tl.complete("w", "ALLREDUCE", 0.0, 1.0, {"algorithm": "ring"})
    timeline.stop()
    events = json.loads(path.read_text())
    assert {"BACKWARD", "CYCLE", "ALLREDUCE", "process_name"} <= {e["name"] for e in events}
    timeline.set_rank(1)
    timeline.start(str(tmp_path / "other.json"))
    assert timeline.active() is None and not (tmp_path / "other.json").exists()
    timeline.set_rank(0)


def test_api_fast_cache_key_matches_the_decoded_one() -> None:
    """collx.api builds allreduce cache keys by hand; a peer decodes them from JSON."""
    import collx
    from collx import api
    collx.init(negotiate=True)
    try:
        for x, pre in ((np.ones((2, 3), np.float32), 1), (np.zeros(5, np.int64), 0.5)):
            checked = api._check_allreduce("allreduce", x, collx.Max, None, None, pre, 2.0)
            r = api._allreduce_request(api._engine, api._comm, 0, "allreduce", "k", collx.Max,
                                       checked, pre, 2.0)
            name, kind, psid, agree = json.loads(r.key)
            assert r.ckey == cache_key(name, kind, psid, agree)
    finally:
        collx.shutdown()


def test_period_tracker_freezes_after_identical_periods() -> None:
    from collx.runtime.frozen import Frozen, PeriodTracker
    from collx.runtime.negotiation import Outcome, Response, _item

    def resp(*names, op="Sum", kind="allreduce"):
        return Response([_item(req(n, op=op, kind=kind).key) for n in names])

    t = PeriodTracker(2)
    assert t.observe(Outcome([resp("a", "b")]), True, False) is None
    assert t.observe(Outcome([resp("c")]), True, False) is None          # period 1: a b c
    sched = t.observe(Outcome([resp("a"), resp("b", "c")]), True, False)  # period 2 ends here
    assert sched is not None and [[it.name for it in g] for g in sched] == [["a"], ["b", "c"]]
    t = PeriodTracker(3)
    for _ in range(2):
        assert t.observe(Outcome([resp("a", "b"), resp("c")]), True, False) is None
    sched = t.observe(Outcome([resp("a"), resp("b", "c")]), True, False)
    assert sched is not None and [[it.name for it in g] for g in sched] == [["a"], ["b", "c"]]
    fz = Frozen(sched)
    assert fz.fits(req("b")) and not fz.fits(req("b", shape=(9,))) and not fz.fits(req("z"))
    # a broadcast (or Min, or another set) in the period: never frozen
    t = PeriodTracker(2)
    for _ in range(4):
        assert t.observe(Outcome([resp("a"), resp("bc", kind="broadcast")]), True, False) is None
    t = PeriodTracker(2)
    for _ in range(4):
        assert t.observe(Outcome([resp("m", op="Min")]), True, False) is None
    # a payload-announced request still in the table blocks freezing
    t = PeriodTracker(2)
    for _ in range(4):
        assert t.observe(Outcome([resp("a")]), False, False) is None


def bc(name: str) -> Request:
    return Request(name, "broadcast", 0, {"dtype": "float32", "shape": [4], "root": 0})


def test_joined_rank_blocks_cached_non_joinable_kinds() -> None:
    """REVIEW 1: a cached broadcast while a rank has joined is the same InvalidUsage as an
    announced one (the joined rank cannot take part in a broadcast)."""
    sim = Sim(2)
    for _ in range(2):                          # the second time through the cache
        for rank in range(2):
            sim.submit(rank, bc("lr"))
        (resp,) = sim.cycle().responses
        assert resp.error is None
    sim.joined[1] = True
    sim.submit(0, bc("lr"))
    (resp,) = sim.cycle().responses
    assert resp.usage and "joined" in resp.error and "'lr'" in resp.error, resp
    # a joined rank that submitted it before joining takes part: no error
    sim.submit(0, bc("lr"))
    sim.submit(1, bc("lr"))
    (resp,) = sim.cycle().responses
    assert resp.error is None and resp.joined == (), resp


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("op,kind", [("Min", "allreduce"), ("Max", "allreduce"),
                                     ("Product", "allreduce"), ("Max", "reducescatter")])
def test_joined_rank_refuses_ops_zeros_would_change(op: str, kind: str, cached: bool) -> None:
    """REVIEW 9: a joined rank's zeros are only neutral for Sum/Average."""
    sim = Sim(2)
    if cached:
        for rank in range(2):
            sim.submit(rank, req("m", op=op, kind=kind))
        assert sim.cycle().responses[0].error is None
    sim.joined[1] = True
    sim.submit(0, req("m", op=op, kind=kind))
    (resp,) = sim.cycle().responses
    assert resp.usage and "joined" in resp.error and "Sum or Average" in resp.error, resp
    sim.submit(0, req("s", op="Average", kind=kind))
    (resp,) = sim.cycle().responses
    assert resp.error is None and resp.joined == (1,), resp


def test_period_tracker_never_freezes_narrow_integers() -> None:
    """REVIEW 6: the control element (a sum of up to n*n) would wrap in int8/uint8/int16."""
    from collx.runtime.frozen import PeriodTracker
    from collx.runtime.negotiation import Outcome, Response, _item
    for dtype, freezes in (("int8", False), ("uint8", False), ("int16", False),
                           ("int32", True), ("float16", True)):
        t = PeriodTracker(2)
        got = [t.observe(Outcome([Response([_item(req("a", dtype=dtype).key)])]), True, False)
               for _ in range(4)]
        assert any(g is not None for g in got) == freezes, dtype


def test_group_handle_timeout_is_one_deadline() -> None:
    """REVIEW 13: wait(timeout) on a group bounds the whole wait, not each member's."""
    import time

    from collx.errors import CollxTimeout
    from collx.runtime.engine import GroupHandle, Handle
    g = GroupHandle([Handle(f"h{i}") for i in range(5)], "g")
    t0 = time.monotonic()
    with pytest.raises(CollxTimeout):
        g.wait(0.2)
    assert time.monotonic() - t0 < 0.6


def test_auto_names_per_process_set() -> None:
    """REVIEW 5: one counter per (kind, process set): a rank in two sets numbers each set's
    un-named calls alone, as the set's other members do."""
    from collx.runtime.negotiated_engine import NegotiatedEngine
    eng = NegotiatedEngine.__new__(NegotiatedEngine)
    import threading
    eng._cv, eng._counters = threading.Condition(), {}
    assert [eng.name_for("allreduce", None, p) for p in (1, 2, 1, 0)] == [
        "allreduce.ps1.noname.0", "allreduce.ps2.noname.0", "allreduce.ps1.noname.1",
        "allreduce.noname.0"]
    assert eng.name_for("allreduce", "x", 2) == "x"


def test_cached_hits_grouped_like_fuse() -> None:
    """The numpy grouping of cached hits (Coordinator._group_slots) gives _fuse's responses:
    one per fuse key in order of first appearance, split by the threshold when needed."""
    specs = [("a", "float32", "Sum"), ("b", "float64", "Sum"), ("c", "float32", "Sum"),
             ("d", "float32", "Max"), ("e", "float64", "Sum"), ("bc", None, None)]

    def submit_all(sim):
        for rank in range(2):
            for name, dt, op in specs:
                sim.submit(rank, bc(name) if dt is None else req(name, dtype=dt, op=op))

    for fusion_bytes in (1 << 20, 40, 0, 1 << 20):
        if fusion_bytes == 0:
            specs.pop()                         # no broadcast: the numpy path proper
        sim = Sim(2, fusion_bytes=fusion_bytes)
        submit_all(sim)
        first = names(sim.cycle())
        submit_all(sim)
        coord = sim.coords[0]
        cached = names(sim.cycle())
        want = [[it.name for it in r.items] for r in coord._fuse(
            [coord.cache.items[coord.cache.by_name[n]] for n, _, _ in specs])]
        assert cached == want, (fusion_bytes, cached, want)
        if fusion_bytes == 1 << 20:
            assert cached[:3] == [["a", "c"], ["b", "e"], ["d"]], cached
        assert sorted(map(sorted, first)) == sorted(map(sorted, cached)) or fusion_bytes < 64
