"""collx-bench: the peers' measurement contract (sizes, counts, timing, records) in-process,
and real np=2 runs through collxrun (JSON lines + nccl-tests table, shm and forced tcp)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collx.bench import measure as m
from tests.mp.launch import clean_env

pytestmark = pytest.mark.timeout(120)

REPO = str(Path(__file__).resolve().parent.parent)
CONTRACT = ("peer", "op", "np", "bytes", "dtype", "us", "algbw_GBps", "busbw_GBps", "iters",
            "us_min", "us_max", "batches", "load1", "version", "transport", "algo", "p50_us",
            "p99_us", "wrong")
COLUMNS = ("size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong",
           "out-of-place", "in-place", "p50", "p99", "algo", "transport")


# ---- the contract, in-process ----------------------------------------------------------

def test_default_grid_and_parsing_match_the_peers() -> None:
    assert m.DEFAULT_SIZES[:3] == [8, 16, 64] and m.DEFAULT_SIZES[-1] == 256 << 20
    assert m.parse_sizes(None) == m.DEFAULT_SIZES
    assert m.parse_sizes("8,1M,16M") == [8, 1 << 20, 16 << 20]
    assert m.parse_sizes("1K:64K") == [1024, 4096, 16384, 65536]
    assert m.parse_size("1MiB") == 1 << 20
    assert m.nccl_grid(8, 64, 2) == [8, 16, 32, 64]


def test_counts_and_busbw_like_nccl_tests() -> None:
    assert m.count_for("allreduce", 8, 3) == 2
    assert m.count_for("allgather", 8, 3) == 3          # at least n elements
    assert m.count_for("alltoall", 1024, 3) == 255      # rounded down to a multiple of n
    assert m.count_for("allreduce", 8, 2, itemsize=8) == 1
    assert m.busbw_factor("allreduce", 4) == 1.5
    assert m.busbw_factor("reducescatter", 4) == 0.75
    assert m.busbw_factor("broadcast", 4) == 1.0
    rec = m.record("collx-shm", "allreduce", 2, 1 << 20, "float32", 1e-3, 9e-4, 2e-3, 10, 5)
    assert rec["us"] == 1000.0 and rec["algbw_GBps"] == 1.0486


def test_measure_batches_and_percentiles() -> None:
    calls = []
    med, lo, hi, iters, nb = m.measure(lambda: calls.append(1), lambda: None, list,
                                       budget_s=0.2)
    assert lo <= med <= hi and nb == 10 and iters == len(calls) - 1 - 5  # untimed + warm-up
    assert m.measure_fixed(lambda: None, lambda: None, list, iters=7, warmup=2)[3:] == (7, 1)
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0, 50, 99, 100):
        assert m.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_checks_count_wrong_elements() -> None:
    from collx.bench import cases
    buf = np.empty(100, np.float32)
    per = cases.period(buf.dtype, 3)
    cases.fill(buf, per)
    assert cases.count_wrong(buf, per) == 0
    buf[[0, 50, 99]] = 0
    assert cases.count_wrong(buf, per) == 3
    want = cases.reduced_period(np.dtype(np.int8), "avg", 2)
    assert want.tolist() == [(a + b) // 2 for a, b in zip(cases.period(np.int8, 0).tolist(),
                                                           cases.period(np.int8, 3).tolist())]


def test_memory_sees_an_allocation() -> None:
    from collx.bench.memory import extra_rss
    mib, how = extra_rss(lambda: np.ones(16 << 20, np.uint8))
    if how == "unavailable":
        pytest.skip("no /proc/self/status here")
    assert 15 <= mib <= 40, (mib, how)


# ---- real ranks ------------------------------------------------------------------------

def _bench(*args: str, transport: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLX_")}
    env["PYTHONPATH"] = REPO
    if transport:
        env["COLLX_TRANSPORT"] = transport
    cmd = [sys.executable, "-m", "collx.runner", "-np", "2", "--no-prefix", "--timeout", "90",
           sys.executable, "-m", "collx.bench", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)


def test_np2_json_lines_and_table(tmp_path: Path) -> None:
    out = tmp_path / "collx.jsonl"
    res = _bench("all", "--sizes", "8,64K", "-n", "5", "-w", "1", "--json", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines and all(line.startswith("{") for line in lines), res.stdout[:2000]
    recs = [json.loads(line) for line in lines]
    assert [json.loads(x) for x in out.read_text().splitlines()] == recs
    assert [(r["op"], r["bytes"]) for r in recs] == [(op, b) for op in m.OPS
                                                     for b in (8, 65536)]
    for r in recs:
        missing = [k for k in CONTRACT if k not in r]
        assert not missing, (missing, r)
        assert r["np"] == 2 and r["dtype"] == "float32" and r["wrong"] == 0, r
        assert r["peer"] == f"collx-{r['transport']}" and r["transport"] == "shm"
        assert r["us"] > 0 and r["busbw_GBps"] >= 0 and r["algo"] not in ("", "?")
        assert "error" not in r
        if r["op"] in ("allreduce", "broadcast"):
            assert r["inplace_wrong"] == 0 and r["inplace_us"] > 0
    # with --json the nccl-tests table goes to stderr
    table = res.stderr
    for col in COLUMNS:
        assert col in table, col
    assert "# Out of bounds values : 0 OK" in table
    assert "reduce kernel variant" in table


def test_np2_tcp_memory_and_table_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "tcp.jsonl"
    res = _bench("allreduce", "--sizes", "4K", "-n", "3", "-w", "1", "--memory",
                 "--out", str(out), transport="tcp")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for line in res.stdout.splitlines() if not line.startswith("#")]
    assert rows and rows[0][:5] == ["4096", "1024", "float", "sum", "-1"], res.stdout
    assert rows[0][-1] == "tcp" and rows[0][8] == "0" and rows[0][12] == "0"
    assert "transport tcp" in res.stdout
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["peer"] == "collx-tcp" and rec["wrong"] == 0 and rec["extra_rss_MiB"] >= 0


@pytest.mark.timeout(200)
def test_tune_writes_a_table_selection_then_uses(tmp_path):
    """collx-bench --tune --tune-check on 2 ranks: every algorithm timed, a table written,
    auto then picks the table's fastest (ratios printed), and a new job started with
    COLLX_TUNE_FILE chooses from the table (COLLX_LOG=debug says "tuned")."""
    import json as _json
    table = tmp_path / "tune.json"
    cmd = [sys.executable, "-m", "collx.runner", "-np", "2", "--no-prefix", "--timeout", "150",
           sys.executable, "-m", "collx.bench", "allreduce,broadcast", "--sizes", "8,64K",
           "--tune", str(table), "--tune-check", "--budget", "0.1", "-w", "1"]
    res = subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = _json.loads(table.read_text())
    algos = {(e["op"], e["algo"]) for e in data["entries"]}
    assert {("allreduce", a) for a in ("ring", "pair", "rd", "tree", "hd")} <= algos
    assert {("broadcast", a) for a in ("binomial", "tree", "dbtree")} <= algos
    assert all(e["np"] == 2 and e["hosts"] == 1 and e["us"] > 0 for e in data["entries"])
    assert "worst auto/best" in res.stdout + res.stderr
    code = ("import collx, numpy as np\ncollx.init()\n"
            "collx.allreduce(np.ones(16384, np.float32))\ncollx.shutdown()\n")
    res2 = subprocess.run([sys.executable, "-m", "collx.runner", "-np", "2", "--timeout", "60",
                           sys.executable, "-c", code],
                          env=clean_env(COLLX_TUNE_FILE=str(table), COLLX_LOG="debug"),
                          cwd=str(REPO), capture_output=True, text=True, timeout=90)
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert "tuned: measured fastest at 64 KiB" in res2.stdout + res2.stderr, res2.stderr[-3000:]
    # --check-only: no sweep, the same table checked again (every (op, size) of it, twice)
    before = table.read_text()
    out = tmp_path / "check.jsonl"
    res3 = subprocess.run(cmd[:-7] + ["--tune", str(table), "--check-only", "--check-rounds", "2",
                                      "--budget", "0.1", "-w", "1", "--json", "--out", str(out)],
                          env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                          timeout=180)
    assert res3.returncode == 0, res3.stdout[-3000:] + res3.stderr[-3000:]
    assert table.read_text() == before                  # not rewritten
    recs = [_json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    assert recs and all("tune_check" in r for r in recs)      # no sweep records
    assert {(r["op"], r["bytes"], r["tune_check"], r["check_round"]) for r in recs} == {
        (op, b, which, k) for op in ("allreduce", "broadcast") for b in (8, 65536)
        for which in ("auto", "best-forced") for k in (0, 1)}
    assert "same plan" in res3.stdout + res3.stderr


@pytest.mark.timeout(200)
def test_tune_interleaved_sweep_rounds_keep_the_best_round(tmp_path):
    """--tune --sweep-rounds 3 --candidates: in each round every size is timed with every
    candidate back to back, the order rotated per round; the table holds per (op, size,
    algo) the best of the 3 records, and nothing outside --candidates is swept."""
    import json as _json
    table, out = tmp_path / "tune.json", tmp_path / "sweep.jsonl"
    cmd = [sys.executable, "-m", "collx.runner", "-np", "2", "--no-prefix", "--timeout", "150",
           sys.executable, "-m", "collx.bench", "allreduce", "--sizes", "8,4K",
           "--tune", str(table), "--sweep-rounds", "3", "--candidates", "ring,tree,hd",
           "--budget", "0.05", "-w", "1", "--no-inplace", "--json", "--out", str(out)]
    res = subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = [_json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    assert [(r["sweep_round"], r["bytes"], r["algo"]) for r in recs] == [
        (k, b, a) for k in range(3) for b in (8, 4096)
        for a in (["hd", "ring", "tree"] * 2)[k:k + 3]]
    assert all(r["wrong"] == 0 for r in recs)
    entries = _json.loads(table.read_text())["entries"]
    assert len(entries) == 6
    for e in entries:
        mine = [r["us"] for r in recs if r["bytes"] == e["nbytes"] and r["algo"] == e["algo"]]
        assert len(mine) == 3 and e["us"] == pytest.approx(min(mine), abs=1e-3)


def test_sweep_rounds_need_tune():
    res = subprocess.run([sys.executable, "-m", "collx.bench", "allreduce", "--sweep-rounds",
                          "2"], env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "--sweep-rounds and --candidates go with --tune" in res.stderr


def test_unknown_candidate_is_refused():
    res = subprocess.run([sys.executable, "-m", "collx.bench", "allreduce", "--tune", "t.json",
                          "--candidates", "ring,rnig"], env=clean_env(), cwd=str(REPO),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--candidates: ['rnig'] is not an algorithm of allreduce" \
        in res.stderr, res.stderr
