"""collx.topo.select: the COLLX_ALGO grammar with size ranges, selection over the topology
fixtures (capability filter -> cost model -> tune table -> override -> fallback), near-tie
preference, decision logging, and ``collx info`` (collx/cli.py)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collx.algos.costmodel import LinkParams, predict
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule, even_split
from collx.cli import main, render_info
from collx.errors import InvalidUsage
from collx.runtime.communicator import parse_forced_algo
from collx.topo.select import (TIE, AlgoSpec, Selector, default_links, load_tune,
                               parse_algo_spec)
from collx.topo.topology import Topology

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "topo"
K, M = 1 << 10, 1 << 20


def _topo(name: str) -> Topology:
    return Topology.load(FIXTURES / f"{name}.json")


# ---------------------------------------------------------------------------------------
# grammar


def test_spec_without_ranges_means_what_parse_forced_algo_means() -> None:
    for text in ("ring", "pair", "allreduce:ring, broadcast:binomial",
                 "binomial,reduce:binomial", "hier,allreduce:tree", ""):
        spec = parse_algo_spec(text)
        want = parse_forced_algo(text)
        got = {op: spec.forced(op, 0) for op in ALGORITHMS if spec.forced(op, 0)}
        assert got == want, text
        assert all(spec.forced(op, 1 << 40) == name for op, name in want.items())
    assert not parse_algo_spec(None) and isinstance(parse_algo_spec(None), AlgoSpec)


def test_spec_ranges_and_continuation() -> None:
    spec = parse_algo_spec("allreduce:tree:0-64K,hd:64K-4M,ring:4M-, broadcast:dbtree:1M-")
    f = spec.forced
    assert [f("allreduce", n) for n in (0, 8, 64 * K - 1)] == ["tree"] * 3
    assert [f("allreduce", n) for n in (64 * K, M, 4 * M - 1)] == ["hd"] * 3
    assert [f("allreduce", n) for n in (4 * M, 1 << 40)] == ["ring"] * 2
    assert f("broadcast", M - 1) is None and f("broadcast", M) == "dbtree"
    assert f("allgather", M) is None
    # suffixes (1024-based, case-insensitive, optional B/iB), empty lo, open end
    spec = parse_algo_spec("allreduce:pair:-16kib,allreduce:ring:20.5K-2g")
    assert spec.forced("allreduce", 16 * K - 1) == "pair"
    assert spec.forced("allreduce", 16 * K) is None
    assert spec.forced("allreduce", 20992) == "ring"
    assert spec.forced("allreduce", (2 << 30) - 1) == "ring"
    assert spec.forced("allreduce", 2 << 30) is None


def test_spec_later_entries_win() -> None:
    spec = parse_algo_spec("allreduce:ring,allreduce:tree:0-64K")
    assert spec.forced("allreduce", 8) == "tree"
    assert spec.forced("allreduce", 64 * K) == "ring"
    spec = parse_algo_spec("allreduce:tree:0-64K,allreduce:ring")
    assert spec.forced("allreduce", 8) == "ring"


@pytest.mark.parametrize("text, bad, why", [
    ("allreduc:ring", "allreduc:ring", "unknown op"),
    ("nosuchalgo", "nosuchalgo", "no algorithm of any op"),
    ("broadcast:ring", "broadcast:ring", "has no algorithm 'ring'"),
    ("allreduce:", "allreduce:", "no algorithm"),
    ("hd:0-64K", "hd:0-64K", "previous"),                    # nothing to continue
    ("ring,hd:0-64K", "hd:0-64K", "previous"),               # a bare name is no single op
    ("allreduce:ring:64K-8", "allreduce:ring:64K-8", "empty"),
    ("allreduce:ring:64K", "allreduce:ring:64K", "lo-hi"),
    ("allreduce:ring:1X-", "allreduce:ring:1X-", "not a byte count"),
    ("allreduce:ring:0-1:2", "allreduce:ring:0-1:2", "too many"),
    ("allreduce:tree:0-1K,broadcast:0-2K", "broadcast:0-2K", "has no algorithm"),
    ("allreduce:tree:0-1K,dbtree:1K-,binomial:0-", "binomial:0-", "allreduce has no"),
])
def test_spec_errors_name_the_knob_the_entry_and_what_is_known(text: str, bad: str,
                                                              why: str) -> None:
    with pytest.raises(InvalidUsage) as info:
        parse_algo_spec(text)
    msg = str(info.value)
    assert "COLLX_ALGO" in msg and repr(bad) in msg and why in msg, msg
    assert "allreduce: " in msg and all(n in msg for names in ALGORITHMS.values()
                                        for n in names), msg


# ---------------------------------------------------------------------------------------
# selection = the cost model's choice


def _model(topo: Topology, op: str, nbytes: int, links=None, itemsize: int = 4,
           root: int = 0) -> dict[str, float]:
    """Every algorithm's predicted time, computed here independently of the Selector."""
    links = links or default_links()
    n = topo.size
    hosts = [r.host for r in topo.ranks]
    cores = min(len(topo.usable_cpus(h)) for h in set(hosts))
    elems = nbytes // itemsize
    kw = {"count": elems} if op in ("allreduce", "broadcast", "reduce") else \
        {"counts": even_split(elems, n)}
    out = {}
    for name in ALGORITHMS[op]:
        try:
            s = build_schedule(op, n, algo=name, root=root, chunk_count=M // itemsize,
                               groups=topo.host_groups(), **kw)
        except ValueError:
            continue
        out[name] = predict(s, itemsize, topo.link_class, links, hosts=hosts, cores=cores)
    return out


def _assert_model_choice(d, times: dict[str, float], op: str) -> None:
    best = min(times.values())
    assert d.algo in times and d.source == "model", d
    assert d.predicted_s == pytest.approx(times[d.algo], rel=1e-9)
    assert times[d.algo] <= best * (1 + TIE) + 1e-15, (d, times)
    if times[d.algo] > best:        # only a near-tie may beat the fastest: the simpler one
        assert d.algo in (DEFAULT[op], "ring", "binomial"), (d, times)
    assert d.reason.startswith(f"cost model: {d.algo} "), d.reason
    for name, t in times.items():
        assert d.candidates[name] == pytest.approx(t, rel=1e-9)


@pytest.mark.parametrize("fixture, op, nbytes", [
    ("two_nvlink_hosts", "allreduce", 8), ("two_nvlink_hosts", "allreduce", 256 * M),
    ("two_nvlink_hosts", "allgather", 64 * K), ("pcie_hosts", "allreduce", M),
    ("pcie_hosts", "broadcast", 16 * M), ("one_big_box", "reducescatter", 1 * K),
    ("one_big_box", "allreduce", 16 * M),
])
def test_selection_on_fixtures_is_the_cost_models(fixture: str, op: str, nbytes: int) -> None:
    topo = _topo(fixture)
    sel = Selector(topo, default_links())
    elems = nbytes // 4
    kw = {"count": elems} if op in ("allreduce", "broadcast") else \
        {"counts": even_split(elems, topo.size)}
    d = sel.choose(op, itemsize=4, **kw)
    assert d.op == op and d.nbytes == nbytes
    _assert_model_choice(d, _model(topo, op, nbytes), op)


def test_choice_follows_the_links() -> None:
    """Make shm latency dominate and a latency-optimal schedule must win; make bandwidth
    dominate and the ring's (or hier's) volume must."""
    topo = _topo("one_big_box")
    slow_start = {"shm": LinkParams(alpha_s=1e-3, beta_Bps=1e12)}
    d = Selector(topo, slow_start).choose("allreduce", itemsize=4, count=M)
    _assert_model_choice(d, _model(topo, "allreduce", 4 * M, slow_start), "allreduce")
    assert d.algo not in ("ring", "hier")         # 2 (n - 1) rounds cannot win here


def test_decisions_are_cached_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    sel = Selector(_topo("pcie_hosts"), default_links())
    with caplog.at_level(logging.DEBUG, logger="collx.topo"):
        a = sel.choose("allreduce", itemsize=4, count=1000)
        b = sel.choose("allreduce", itemsize=4, count=1000)
        sel.choose("allreduce", itemsize=4, count=1000, in_place=True)
    assert a is b
    msgs = [r.getMessage() for r in caplog.records if r.name == "collx.topo"]
    assert len(msgs) == 2 and a.reason in msgs[0] and a.algo in msgs[0], msgs


def test_sizes_are_decided_once_per_bucket() -> None:
    """The engine's fusion buffers take a new size nearly every cycle: a decision (every
    candidate built and priced, 5-100 ms at 16 ranks) is made once per size bucket (four per
    octave), priced at the bucket's upper end, and shared by every size inside it."""
    from collx.topo.select import BUCKET_EXACT_BYTES, bucket_bytes
    assert bucket_bytes(BUCKET_EXACT_BYTES) == BUCKET_EXACT_BYTES
    assert bucket_bytes(1000) == 1000 and bucket_bytes(M) == M and bucket_bytes(M + 1) == 5 * M // 4
    for n in (4097, 5000, 12345, 3 * M + 7, 100_000_000):
        b = bucket_bytes(n, 4)
        assert n <= b <= n * 1.25 + 4 and b % 4 == 0, (n, b)
    sel = Selector(_topo("pcie_hosts"), default_links())
    a = sel.choose("allreduce", itemsize=4, count=(M + 4) // 4)
    b = sel.choose("allreduce", itemsize=4, count=(5 * M // 4) // 4)
    assert a is b and a.nbytes == 5 * M // 4
    assert sel.choose("allreduce", itemsize=4, count=1000) is not \
        sel.choose("allreduce", itemsize=4, count=1001)     # small sizes: exact
    # every rank prices the same bucket whatever size it asked first
    other = Selector(_topo("pcie_hosts"), default_links())
    assert other.choose("allreduce", itemsize=4, count=(5 * M // 4) // 4).algo == a.algo
    # uneven counts are their own case
    c = sel.choose("allgather", itemsize=4, counts=[M, 1] + [1] * 14)
    assert c.nbytes == (M + 15) * 4


def test_forced_range_boundary_inside_a_bucket_is_exact() -> None:
    sel = Selector(_topo("pcie_hosts"), default_links(), spec="allreduce:tree:0-1100K")
    below = sel.choose("allreduce", itemsize=4, count=1100 * K // 4 - 1)
    above = sel.choose("allreduce", itemsize=4, count=1100 * K // 4 + 1)
    assert below.algo == "tree" and below.source == "forced"
    assert above.source == "model" and above.nbytes == 5 * M // 4


def test_configure_logging_reads_collx_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from collx.topo.select import LOG, configure_logging
    old = LOG.level
    try:
        monkeypatch.setenv("COLLX_LOG", "debug")
        assert configure_logging().level == logging.DEBUG
        monkeypatch.setenv("COLLX_LOG", "info")
        assert configure_logging().level == logging.INFO
        monkeypatch.setenv("COLLX_LOG", "loud")
        with pytest.raises(InvalidUsage, match="COLLX_LOG"):
            configure_logging()
    finally:
        LOG.setLevel(old)


# ---------------------------------------------------------------------------------------
# override and fallback


def test_forced_ranges_are_honoured() -> None:
    sel = Selector(_topo("pcie_hosts"), default_links(),
                   spec="allreduce:tree:0-64K,hd:64K-4M,ring:4M-")
    for nbytes, want in ((8, "tree"), (64 * K - 4, "tree"), (64 * K, "hd"), (M, "hd"),
                         (4 * M, "ring"), (256 * M, "ring")):
        d = sel.choose("allreduce", itemsize=4, count=nbytes // 4)
        assert (d.algo, d.source) == (want, "forced"), (nbytes, d)
        assert d.reason.startswith("forced by COLLX_ALGO"), d.reason
        assert d.predicted_s == d.candidates[want]
    assert sel.choose("broadcast", itemsize=4, count=8).source == "model"


def test_forced_algorithm_that_refuses_falls_back_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    topo = _topo("pcie_hosts")                     # 16 ranks: pair serves 2 only
    model = Selector(topo, default_links()).choose("allreduce", itemsize=4, count=256)
    sel = Selector(topo, default_links(), spec="allreduce:pair")
    with caplog.at_level(logging.WARNING, logger="collx.topo"):
        d = sel.choose("allreduce", itemsize=4, count=256)
    assert d.algo == model.algo and d.source == "fallback"
    assert d.reason.startswith("fallback: forced pair refused: "), d.reason
    assert "exactly 2 ranks" in d.reason and model.reason in d.reason
    assert isinstance(d.candidates["pair"], str)
    assert any("pair" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_pair_three_ranks_and_pairwise_direct_in_place() -> None:
    three = Topology.from_dict({**_topo("one_big_box").to_dict(),
                                "ranks": _topo("one_big_box").to_dict()["ranks"][:3]})
    d = Selector(three, default_links(), spec="pair").choose("allreduce", itemsize=4, count=2)
    assert d.source == "fallback" and d.algo != "pair" and "not 3" in d.reason
    sel = Selector(three, default_links(), spec="alltoall:pairwise_direct")
    sc = [[5] * 3 for _ in range(3)]
    assert sel.choose("alltoall", itemsize=4, send_counts=sc).algo == "pairwise_direct"
    d = sel.choose("alltoall", itemsize=4, send_counts=sc, in_place=True)
    assert d.algo == "pairwise" and d.source == "fallback" and "out of place" in d.reason


def test_two_ranks_consider_pair() -> None:
    two = Topology.from_dict({**_topo("one_big_box").to_dict(),
                              "ranks": _topo("one_big_box").to_dict()["ranks"][:2]})
    d = Selector(two, default_links()).choose("allreduce", itemsize=4, count=2)
    assert isinstance(d.candidates["pair"], float)
    _assert_model_choice(d, _model(two, "allreduce", 8), "allreduce")


# ---------------------------------------------------------------------------------------
# near-ties


def test_near_tie_prefers_the_default_then_ring() -> None:
    sel = Selector(_topo("one_big_box"), default_links())
    choice = sel._model_choice
    assert choice("allreduce", {"hd": 1.0, "ring": 1.015, "tree": 1.5})[0] == "ring"
    assert choice("allreduce", {"hd": 1.0, "ring": 1.03, "tree": 1.5})[0] == "hd"
    assert choice("allreduce", {"hd": 1.0, "tree": 1.01})[0] == "hd"  # neither preferred
    assert choice("broadcast", {"dbtree": 1.0, "binomial": 1.019})[0] == "binomial"
    name, reason, _ = choice("allreduce", {"hd": 1.0, "ring": 1.015})
    assert "within 2% of hd" in reason and "default" in reason


def test_identical_predictions_pick_the_default() -> None:
    """One rank: every algorithm is one COPY, predicted 0: the default wins; one host:
    hier builds the flat ring, predicted the same: ring wins."""
    one = Topology.from_dict({**_topo("one_big_box").to_dict(),
                              "ranks": _topo("one_big_box").to_dict()["ranks"][:1]})
    sel = Selector(one, default_links())
    for op in ("allreduce", "broadcast", "allgather"):
        kw = {"counts": [100]} if op == "allgather" else {"count": 100}
        assert sel.choose(op, itemsize=4, **kw).algo == DEFAULT[op]
    d = Selector(_topo("one_big_box"), default_links()).choose("allgather", itemsize=4,
                                                                counts=even_split(4 * M, 8))
    assert d.candidates["hier"] == d.candidates["ring"] and d.algo != "hier"


# ---------------------------------------------------------------------------------------
# tune table


def _tune_file(tmp_path: Path, entries: list[dict]) -> str:
    p = tmp_path / "tune.json"
    p.write_text(json.dumps({"version": 1, "entries": entries}))
    return str(p)


def test_tune_table_is_preferred_near_its_measurements(tmp_path: Path) -> None:
    topo = _topo("two_nvlink_hosts")                         # np 16, 2 hosts
    model = Selector(topo, default_links())
    want = [a for a in ("tree", "dbtree") if a != model.choose(
        "allreduce", itemsize=4, count=M // 4).algo][0]
    row = {"op": "allreduce", "np": 16, "hosts": 2, "nbytes": M}
    path = _tune_file(tmp_path, [
        {**row, "algo": want, "us": 100.0}, {**row, "algo": "ring", "us": 300.0},
        {**row, "algo": "pair", "us": 1.0},                  # refuses 16 ranks: skipped
        {**row, "nbytes": 16 * M, "algo": "ring", "us": 1.0},  # one algorithm: no comparison
        {**row, "np": 8, "algo": "ring", "us": 1.0},         # another np: not ours
        {**row, "algo": "gone", "us": 1.0},                  # unknown algorithm: ignored
    ])
    sel = Selector(topo, default_links(), tune=path)
    for nbytes in (M, 600 * K, 2 * M):
        d = sel.choose("allreduce", itemsize=4, count=nbytes // 4)
        assert (d.algo, d.source) == (want, "tuned"), (nbytes, d)
        assert d.reason.startswith("tuned: measured fastest at 1 MiB") and path in d.reason
    for nbytes in (4 * M + 4, 16 * M, 8):                    # beyond a factor 2 / one algo
        d = sel.choose("allreduce", itemsize=4, count=nbytes // 4)
        assert d.source == "model" and d.algo == model.choose(
            "allreduce", itemsize=4, count=nbytes // 4).algo
    forced = Selector(topo, default_links(), tune=load_tune(path), spec="allreduce:ring")
    assert forced.choose("allreduce", itemsize=4, count=M // 4).algo == "ring"


@pytest.mark.parametrize("content, why", [
    ("{", "not valid JSON"), ('{"version": 2, "entries": []}', "version"),
    ('{"version": 1, "entries": [{"op": "allreduce"}]}', "needs op, np"),
])
def test_bad_tune_table(tmp_path: Path, content: str, why: str) -> None:
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(InvalidUsage, match=why):
        load_tune(str(p))
    with pytest.raises(InvalidUsage, match="cannot read"):
        load_tune(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------------------
# servers, links


def test_servers_get_their_own_hosts() -> None:
    topo = _topo("one_big_box")
    sel = Selector(topo, default_links(), servers=2)
    assert sel.host_map == [0] * 8 + [1, 2]
    assert sel.link_class(0, 8) == "tcp" and sel.link_class(0, 1) == "shm"
    d = sel.choose("allreduce", itemsize=4, count=M)
    assert isinstance(d.candidates["star"], float)
    with pytest.raises(InvalidUsage, match="tcp"):
        Selector(topo, {"shm": default_links()["shm"]}, servers=1)
    Selector(topo, {"shm": default_links()["shm"]})          # one host: shm is enough


# ---------------------------------------------------------------------------------------
# explain, render_info, collx info


def test_explain_and_render_info_on_two_nvlink_hosts() -> None:
    topo = _topo("two_nvlink_hosts")
    links = default_links()
    sel = Selector(topo, links)
    text = render_info(topo, links, sel, "built-in defaults", transports=["shm", "tcp"])
    for needle in ("dgx-0", "dgx-1", "ranks 0-7", "ranks 8-15", "10.20.0.11/24", "mtu 9000",
                   "mlx5_0", "H100", "numa 1", "built-in defaults", "shm", "tcp",
                   "allreduce (np=16", "broadcast (np=16", "allgather (np=16",
                   "reducescatter (np=16", "256 MiB", "8 B"):
        assert needle in text, needle
    small = sel.choose("allreduce", itemsize=4, count=2)
    big = sel.choose("allreduce", itemsize=4, count=64 * M)
    assert small.algo != big.algo, (small, big)
    rows = {ln.split()[0] + ln.split()[1]: ln.split()[2]
            for ln in sel.explain(["allreduce"]).splitlines()[2:]}
    assert rows["8B"] == small.algo and rows["256MiB"] == big.algo, rows


def test_collx_info_this_machine(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--np", "2"]) == 0
    out = capsys.readouterr().out
    assert "topology: 2 ranks on 1 host" in out and "no probe ran" in out
    assert "allreduce (np=2, 1 host)" in out


def test_collx_info_subprocess_on_a_fixture() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("COLLX_ALGO", None)
    env.pop("COLLX_TUNE_FILE", None)
    res = subprocess.run([sys.executable, "-m", "collx.cli", "info", "--topo",
                          str(FIXTURES / "two_nvlink_hosts.json")], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, res.stderr
    assert "dgx-1" in res.stdout and "reducescatter (np=16, 2 hosts)" in res.stdout
