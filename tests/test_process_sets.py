"""Process sets (collx/runtime/process_sets.py) on real ranks, plus the table's local logic.

The multi-process test runs tests/mp/process_set_worker.py's ``sets`` scenario at 4 ranks
over shm (and once over tcp): sets {0,1}, {2,3}, {1,2,3}, {3,0}, {2} run every collective
(allreduce Sum/Average/Max with out=, broadcast, allgather, gather, reducescatter, reduce,
scatter, alltoall, barrier, send/recv) checked against numpy on every member; see the
worker's docstring for the registration checks.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from collx import _C
from collx.algos.pack import pack_rank
from collx.algos.registry import build_schedule
from collx.errors import InvalidUsage
from collx.runtime import ops, process_sets
from collx.runtime.communicator import Communicator
from tests.mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_sets_every_collective_np4(transport: str) -> None:
    env = clean_env(COLLX_TRANSPORT=transport) if transport == "tcp" else None
    job = collxrun(4, "process_set_worker.py", "sets", env=env, timeout=200)
    finals = assert_all_ok(job, 4)
    for rank, line in finals.items():
        info = json.loads(line)
        member_of = [s for s in ([0, 1], [2, 3], [1, 2, 3], [0, 3], [2]) if rank in s]
        for s in member_of:
            assert info["covered"].get(f"set{s}"), f"rank {rank} did not run set {s}: {info}"


@pytest.mark.parametrize("algo,hosts", [("hier", "a,b,a,b"), ("hier", "a,a,b,b"),
                                        ("ring", "a,a,b,b")])
def test_sets_on_emulated_hosts(algo: str, hosts: str) -> None:
    """Host groups, local/cross ranks and selection restricted to the set; hierarchical
    allreduce inside sets that span hosts, sit on one host, or are the whole world."""
    job = collxrun(4, "process_set_worker.py", "hosts", hosts,
                   env=clean_env(COLLX_ALGO=f"allreduce:{algo}"), timeout=150)
    finals = assert_all_ok(job, 4)
    for rank, line in finals.items():
        covered = json.loads(line)["covered"]
        assert len(covered) == sum(rank in s for s in ([0, 1], [1, 2, 3], [0, 3], [0, 2],
                                                       [0, 1, 2, 3])), covered


@pytest.mark.parametrize("case", ["allreduce", "allgather", "quantized"])
def test_set_and_world_calls_do_not_match(case: str) -> None:
    """Rank 0 calls on the set {0,1}, rank 1 the same call on the world (same shape): the
    set's fingerprint salt makes that a MismatchError (TransportError for a rank whose peer
    aborted first), within 5 s of a 20 s timeout — never mixed bytes or a hang."""
    job = collxrun(2, "process_set_worker.py", "crossed", case, timeout=45)
    assert job.returncode == 0, job.report()
    infos = {}
    for r in range(2):
        lines = job.lines(r, "RESULT")
        assert lines, job.report()
        infos[r] = json.loads(lines[0])
        assert infos[r]["type"] in ("MismatchError", "TransportError"), infos
        assert infos[r]["elapsed"] < 5.0, infos
    assert any(i["type"] == "MismatchError" for i in infos.values()), infos


def test_process_set_local_validation() -> None:
    for bad in ([], [0, 0], [-1], ["a"], [True], 3):
        with pytest.raises(InvalidUsage):
            process_sets.ProcessSet(bad)
    ps = process_sets.ProcessSet([3, 0, 2])
    assert ps.ranks == [0, 2, 3] and ps.process_set_id is None
    with pytest.raises(InvalidUsage, match="registered"):
        ps.rank()


def test_single_process_table() -> None:
    """One rank: add/remove need no peers; a set's communicator packs world peers and
    never registers into the shared C fast path; removing it keeps the world open."""
    world = Communicator(0, 1)
    table = process_sets.ProcessSetTable(world)
    try:
        g = process_sets.global_process_set
        assert g.ranks == [0] and g.size() == 1 and g.rank() == 0 and g.included()
        ps = table.add([0])
        assert ps.process_set_id == 1 and ps.rank() == 0
        comm = table.comm_for(ps)
        assert comm is not world and comm.ccomm is world.ccomm and comm.peers == [0]
        x = np.arange(5, dtype=np.float32)
        out = np.empty(5, np.float32)
        assert np.array_equal(ops.prepare_allreduce(comm, x, _C.AVERAGE, out, None)(), x)
        assert world.ccomm.allreduce_fast(x, out, _C.AVERAGE) is None   # nothing registered
        with pytest.raises(InvalidUsage, match="already"):
            table.add([0])
        with pytest.raises(InvalidUsage, match="beyond"):
            table.add([0, 1])
        assert table.remove(ps) is True and ps.process_set_id is None
        with pytest.raises(InvalidUsage, match="not registered"):
            table.comm_for(ps)
        assert table.remove(g) is False
        assert np.array_equal(ops.prepare_allreduce(world, x, _C.SUM, None, None)(), x)
        again = table.add(process_sets.ProcessSet([0]))
        assert again.process_set_id == 2
        assert table.get(2) is again and [p.process_set_id for p in table.sets()] == [0, 2]
        with pytest.raises(InvalidUsage):
            table.get(1)
        with pytest.raises(InvalidUsage):
            table.comm_for([0])
    finally:
        table.close()
        world.close()
    assert process_sets.global_process_set.ranks == [] and process_sets.current_table() is None
    assert again.process_set_id is None


def test_pack_rank_maps_peers() -> None:
    """A schedule for a 3-rank set packs its peers through the set's world ranks."""
    import struct
    from collx.algos.pack import STEP_FORMAT, STEP_SIZE
    sched = build_schedule("allreduce", 3, count=10, algo="ring")
    peers = [1, 4, 6]
    for r in range(3):
        plain, _, _ = pack_rank(sched, r, 4)
        mapped, _, _ = pack_rank(sched, r, 4, peers)
        assert len(plain) == len(mapped)
        for i in range(0, len(plain), STEP_SIZE):
            a = struct.unpack(STEP_FORMAT, plain[i:i + STEP_SIZE])
            b = struct.unpack(STEP_FORMAT, mapped[i:i + STEP_SIZE])
            assert b[4] == (peers[a[4]] if a[4] >= 0 else -1)
            assert a[:4] + a[5:] == b[:4] + b[5:]


def test_set_fingerprints_differ_from_world() -> None:
    world = Communicator(0, 1)
    table = process_sets.ProcessSetTable(world)
    try:
        comm = table.comm_for(table.add([0]))
        key = ("allreduce", 4, "ring")
        pw = world.plan(key, 4, lambda: build_schedule("allreduce", 1, count=4, algo="ring"))
        ps_ = comm.plan(key, 4, lambda: build_schedule("allreduce", 1, count=4, algo="ring"))
        assert world._fingerprint(pw, _C.FLOAT32, _C.SUM) != comm._fingerprint(ps_, _C.FLOAT32,
                                                                               _C.SUM)
    finally:
        table.close()
        world.close()
