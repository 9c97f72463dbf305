"""Host groups from real host identities (COLLX_HOSTNAME names the emulated hosts): ranks
on one name share memory, ranks on different names talk tcp, and the hierarchical
allreduces run on those groups, exact on every rank. (Network-namespace hosts: test_netns.)"""
import json

import pytest

from tests.mp.launch import clean_env, collxrun

pytestmark = pytest.mark.timeout(120)


def _infos(job, np_):
    assert job.returncode == 0, job.report()
    infos = {}
    for r in range(np_):
        lines = job.lines(r, "INFO")
        assert lines, job.report()
        infos[r] = json.loads(lines[-1])
    return infos


@pytest.mark.parametrize("algo,hosts", [
    ("hier", "a,a,b,b"), ("hier", "a,b,a,b"), ("hier_leader", "a,a,b,b"),
    ("hier", "a,b,a"),           # uneven groups: hier falls back to leaders
    ("ring", "a,a,b,b")])
def test_hier_on_emulated_hosts(algo, hosts):
    names = hosts.split(",")
    np_ = len(names)
    job = collxrun(np_, "emulated_hosts_worker.py", hosts,
                   env=clean_env(COLLX_ALGO=f"allreduce:{algo}"), timeout=100)
    infos = _infos(job, np_)
    order = list(dict.fromkeys(names))
    groups = [[r for r in range(np_) if names[r] == h] for h in order]
    for r, info in infos.items():
        assert info["groups"] == groups
        for peer, kind in info["transports"].items():
            assert kind == ("shm" if names[int(peer)] == names[r] else "tcp"), info
        mine = groups[order.index(names[r])]
        assert info["local"] == [mine.index(r), len(mine)]
        assert info["cross"] == [order.index(names[r]), len(order)]
        assert info["algos"] == [algo] or (algo == "hier" and info["algos"] == ["hier_leader"])
