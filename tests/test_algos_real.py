"""Every allreduce algorithm (hier/hier_leader on one host: the flat ring; real host groups
are exercised by test_emulated_hosts and test_netns), forced with COLLX_ALGO, on real
processes over shm and tcp:
the schedules the simulator proves must also hold on the real executor and transports."""
import pytest

from tests.mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(120)

CASES = [("ring", 3, "shm"), ("pair", 2, "shm"), ("pair", 2, "tcp"), ("tree", 2, "shm"),
         ("tree", 5, "shm"), ("tree", 3, "tcp"), ("hd", 2, "shm"), ("hd", 5, "shm"),
         ("hd", 3, "tcp"), ("hd", 4, "shm"), ("dbtree", 3, "shm"), ("dbtree", 5, "shm"),
         ("dbtree", 3, "tcp"), ("hier", 4, "shm"), ("hier", 4, "tcp"), ("hier_leader", 5, "shm"),
         ("star", 3, "shm"), ("star", 4, "tcp"), ("rd", 5, "shm"), ("rd", 4, "shm"),
         ("rd", 3, "tcp"),
         # the upper end on one host: 8 ranks (on 2 cores here)
         ("tree", 8, "shm"), ("dbtree", 8, "shm"), ("hd", 8, "shm"), ("rd", 8, "shm"),
         ("star", 8, "shm"), ("ring", 8, "shm")]


@pytest.mark.parametrize("algo,np_,transport", CASES)
def test_forced_allreduce_algorithm_is_exact(algo, np_, transport):
    env = clean_env(COLLX_ALGO=f"allreduce:{algo}",
                    **({"COLLX_TRANSPORT": "tcp"} if transport == "tcp" else {}))
    job = collxrun(np_, "forced_allreduce_worker.py", env=env, timeout=100)
    finals = assert_all_ok(job, np_)
    assert all(line.split()[-1] == algo for line in finals.values()), finals


# Beyond allreduce: the hd, tree and hier families (hier with its default host groups of two
# consecutive ranks: np 3 and 5 give uneven groups, the leader paths), forced per op.
FAMILY_CASES = [
    ("allgather", "hd", 2, "shm"), ("allgather", "hd", 3, "shm"), ("allgather", "hd", 5, "shm"),
    ("allgather", "hd", 4, "tcp"), ("allgather", "hd", 3, "tcp"),
    ("reducescatter", "hd", 4, "shm"), ("reducescatter", "hd", 5, "shm"),
    ("reducescatter", "hd", 3, "tcp"),
    ("broadcast", "tree", 3, "shm"), ("broadcast", "tree", 5, "tcp"),
    ("reduce", "tree", 4, "shm"), ("reduce", "tree", 3, "tcp"),
    ("broadcast", "hier", 4, "shm"), ("broadcast", "hier", 5, "shm"),
    ("broadcast", "hier", 3, "tcp"),
    ("allgather", "hier", 4, "shm"), ("allgather", "hier", 5, "shm"),
    ("allgather", "hier", 4, "tcp"),
    ("reducescatter", "hier", 4, "shm"), ("reducescatter", "hier", 3, "shm"),
    ("reducescatter", "hier", 5, "tcp"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op,algo,np_,transport", FAMILY_CASES)
def test_forced_family_algorithm_is_exact(op, algo, np_, transport):
    env = clean_env(COLLX_ALGO=f"{op}:{algo}",
                    **({"COLLX_TRANSPORT": "tcp"} if transport == "tcp" else {}))
    job = collxrun(np_, "forced_family_worker.py", op, env=env, timeout=100)
    finals = assert_all_ok(job, np_)
    assert all(line.split()[-1] == algo for line in finals.values()), finals
