"""collx.topo.probe: the link probe's math, pair choice, fingerprint and cache (no network),
then real ranks (tests/mp/probe_worker.py): every rank gets identical numbers, measured
once and read from the cache the next time, within the time budget; COLLX_PROBE=0 gives
the defaults; emulated hosts (COLLX_HOSTNAME) get both classes measured."""
import json
import math
import os
import time

import numpy as np
import pytest

from collx.algos.costmodel import LinkParams
from collx.errors import InvalidUsage
from collx.topo import probe
from collx.topo.probe import (CLASSES, FIELDS, MAX_REPS, MAX_XFER, MIN_XFER, REC_LEN,
                              ProbeResult, alpha_from_round_trips, beta_from_transfers,
                              cache_dir, cache_path, choose_transfer, decode_plan,
                              default_links, encode_plan, low_quantile, measure_gamma,
                              probe_links, read_cache, representative_pairs,
                              topology_fingerprint, write_cache)
from collx.topo.topology import HostInfo, Nic, RankInfo, Topology
from tests.mp.launch import clean_env, collxrun

pytestmark = pytest.mark.timeout(120)


def topo(names: str, speed: int = 10000) -> Topology:
    """Ranks on hosts named by ``names`` ("a,b,a"), each host with one NIC of ``speed``."""
    order = list(dict.fromkeys(names.split(",")))
    hosts = [HostInfo(host_id=f"id-{h}", hostname=h, kernel_id="boot",
                      cpus=[0, 1], nics=[Nic(name="eth0", speed_mbps=speed),
                                         Nic(name="lo", loopback=True)]) for h in order]
    ranks = [RankInfo(host=order.index(h), pid=100 + r)
             for r, h in enumerate(names.split(","))]
    return Topology(ranks=ranks, hosts=hosts)


def raw_entry(alpha=2e-6, beta=5e9):
    return {"alpha_s": alpha, "beta_Bps": beta, "rtt_min_s": 2 * alpha, "rtt_med_s": 2 * alpha,
            "pings": 10, "nbytes": 1 << 20, "reps": 4, "t_xfer_med_s": 3e-4,
            "t_xfer_min_s": 2e-4, "seconds": 0.01, "pair": [0, 1]}


def result(classes=("shm",), fingerprint="fp") -> ProbeResult:
    raw = {c: raw_entry() for c in classes}
    return ProbeResult(links=probe._links(raw, 2e-11), source="probed", seconds=0.05,
                       raw=raw, gamma_s_per_B=2e-11, fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------
# math


def test_low_quantile():
    assert low_quantile([5.0, 1.0, 4.0, 2.0, 3.0]) == 2.0      # second best of 5
    assert low_quantile([7.0]) == 7.0
    assert low_quantile([3.0, 1.0]) == 1.0
    assert low_quantile(list(range(64, 0, -1))) == 13           # sorted[12]
    with pytest.raises(ValueError):
        low_quantile([])


def test_alpha_is_half_the_round_trip():
    assert alpha_from_round_trips([10e-6] * 5) == pytest.approx(5e-6)
    # the fastest round trip counts: a slow tail (descheduled pair) does not move it
    assert alpha_from_round_trips([2e-6, 10e-6, 10e-6, 10e-6, 10e-6, 900e-6]) == \
        pytest.approx(1e-6)


def test_beta_subtracts_the_round_trip():
    n, rtt, beta = 1 << 20, 20e-6, 2e9
    times = [rtt + n / beta] * 5
    assert beta_from_transfers(n, times, rtt) == pytest.approx(beta, rel=1e-9)
    # latency-bound (the transfer takes barely longer than a round trip): the whole time
    t = 1.05 * rtt
    assert beta_from_transfers(16384, [t], rtt) == pytest.approx(16384 / t)
    assert beta_from_transfers(16384, [0.5 * rtt], rtt) == pytest.approx(16384 / (0.5 * rtt))
    with pytest.raises(ValueError):
        beta_from_transfers(1024, [], rtt)
    with pytest.raises(ValueError):
        beta_from_transfers(0, [1e-3], rtt)


@pytest.mark.parametrize("est,budget,lat", [
    (8e9, 0.05, 0.0), (8e9, 0.05, 5e-6), (1e9, 0.05, 20e-6), (1.25e8, 0.05, 100e-6),
    (1.25e7, 0.05, 1e-3), (1e6, 0.05, 0.0), (1e5, 0.01, 0.0), (1.25e8, 0.015, 0.01),
    (5e9, 0.0, 0.0), (5e9, 1e-6, 1e-5), (5e9, -1.0, 0.0)])
def test_choose_transfer_stays_in_range_and_budget(est, budget, lat):
    n, reps = choose_transfer(est, budget, lat)
    assert MIN_XFER <= n <= MAX_XFER and n & (n - 1) == 0
    assert 1 <= reps <= MAX_REPS
    if reps > 1:
        assert reps * (lat + n / est) <= budget * 1.0001
    if n > MIN_XFER:                  # a bigger N only when each transfer stays short
        assert n / est <= (budget / 5 - lat) * 1.0001


def test_choose_transfer_examples():
    assert choose_transfer(8e9, 0.06, 3e-6) == (MAX_XFER, MAX_REPS)   # shm: 1 MiB x 8
    assert choose_transfer(1.25e8, 0.06) == (MAX_XFER, 7)              # 1 Gbit/s
    assert choose_transfer(1.25e8, 0.06, 2e-3) == (MAX_XFER, 5)        # ... and 2 ms rtt
    assert choose_transfer(1.25e6, 0.06) == (MIN_XFER, 4)              # 10 Mbit/s: 16 KiB
    assert choose_transfer(1.25e8, 0.015, 0.01) == (MIN_XFER, 1)       # latency-bound


def test_plan_code_round_trips():
    for shift in range(14, 21):
        for reps in range(1, MAX_REPS + 1):
            for more in (False, True):
                code = encode_plan(1 << shift, reps, more)
                assert decode_plan(code) == (1 << shift, reps, more)
                assert np.array([code], np.int64)[0] == code      # fits the 8-byte ping


def test_records_round_trip():
    rec = np.zeros(REC_LEN, np.float64)
    raw = {"shm": raw_entry(2e-6, 5e9), "tcp": raw_entry(30e-6, 1e9)}
    for c in CLASSES:
        probe._encode(rec, c, raw[c])
    for c in CLASSES:
        got = probe._decode(rec, c, (0, 1))
        assert got == raw[c]
        assert all(type(got[k]) is int for k in probe._INT_FIELDS)
    assert REC_LEN == 2 + len(CLASSES) * len(FIELDS)


# ---------------------------------------------------------------------------------------
# pairs, fingerprint


@pytest.mark.parametrize("names,want", [
    ("a,a", {"shm": (0, 1)}),
    ("a,b", {"tcp": (0, 1)}),
    ("a,b,a", {"shm": (0, 2), "tcp": (0, 1)}),
    ("a,b,b", {"shm": (1, 2), "tcp": (0, 1)}),
    ("a,a,b,b", {"shm": (0, 1), "tcp": (0, 2)}),
    ("a,b,c", {"tcp": (0, 1)}),
    ("a", {}),
])
def test_representative_pairs(names, want):
    assert representative_pairs(topo(names)) == want


def test_fingerprint(monkeypatch):
    monkeypatch.delenv("COLLX_TRANSPORT", raising=False)
    monkeypatch.delenv("COLLX_SPIN", raising=False)
    base = topology_fingerprint(topo("a,a,b"))
    assert base == topology_fingerprint(topo("a,a,b"))             # stable
    assert len({base, topology_fingerprint(topo("a,a,b", speed=1000)),
                topology_fingerprint(topo("a,b,a")), topology_fingerprint(topo("a,a,b,b")),
                topology_fingerprint(topo("a,a"))}) == 5
    t = topo("a,a,b")
    t.ranks[0].pid = 999                                           # pids do not matter
    assert topology_fingerprint(t) == base
    monkeypatch.setenv("COLLX_TRANSPORT", "tcp")                   # transports do
    assert topology_fingerprint(topo("a,a,b")) != base


# ---------------------------------------------------------------------------------------
# cache


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COLLX_PROBE_CACHE", str(tmp_path / "x"))
    assert cache_dir() == str(tmp_path / "x")
    monkeypatch.delenv("COLLX_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "collx")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "collx")
    assert cache_path("abc", "/d") == "/d/probe-abc.json"


def test_cache_write_then_read(tmp_path):
    path = str(tmp_path / "sub" / "probe-fp.json")
    res = result(("shm", "tcp"))
    assert write_cache(path, res)
    entry = read_cache(path, ["shm", "tcp"])
    assert entry is not None and entry["raw"] == res.raw
    assert entry["gamma_s_per_B"] == res.gamma_s_per_B
    assert read_cache(path, ["shm"]) is not None
    assert not [p for p in os.listdir(tmp_path / "sub") if ".tmp." in p]


def test_cache_rejects_stale_future_corrupt_and_incomplete(tmp_path):
    path = str(tmp_path / "probe-fp.json")
    now = time.time()
    write_cache(path, result(("shm",)), now=now - 8 * 86400)
    assert read_cache(path, ["shm"], now=now) is None                 # older than 7 days
    assert read_cache(path, ["shm"], now=now - 2 * 86400) is not None
    write_cache(path, result(("shm",)), now=now + 3600)
    assert read_cache(path, ["shm"], now=now) is None                 # from the future
    write_cache(path, result(("shm",)), now=now)
    assert read_cache(path, ["shm", "tcp"], now=now) is None          # a class missing
    assert read_cache(str(tmp_path / "none.json"), ["shm"]) is None
    for bad in ("{", "[]", "null", json.dumps({"schema": "collx.probe", "version": 99})):
        with open(path, "w") as f:
            f.write(bad)
        assert read_cache(path, ["shm"]) is None
    res = result(("shm",))
    for k, v in (("alpha_s", -1.0), ("beta_Bps", 0.0), ("beta_Bps", float("inf")),
                 ("alpha_s", "x")):
        res.raw["shm"] = dict(raw_entry(), **{k: v})
        write_cache(path, res)
        assert read_cache(path, ["shm"]) is None, (k, v)


def test_cache_write_failure_is_quiet(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert write_cache(str(blocker / "probe-fp.json"), result()) is False


# ---------------------------------------------------------------------------------------
# defaults, gamma, result


def test_defaults():
    links = default_links()
    assert set(links) == set(CLASSES)
    for p in links.values():
        assert p.alpha_s > 0 and p.beta_Bps > 0 and p.gamma_s_per_B > 0
    assert links["shm"].alpha_s < links["tcp"].alpha_s


def test_probe_disabled_or_single_rank_touches_nothing(monkeypatch):
    monkeypatch.setenv("COLLX_PROBE", "0")
    res = probe_links(None, 0, 2, topo("a,b"))          # no communicator needed
    assert res.source == "defaults" and res.links == default_links() and not res.raw
    monkeypatch.delenv("COLLX_PROBE")
    res = probe_links(None, 0, 1, topo("a"))
    assert res.source == "defaults" and res.links == default_links()
    with pytest.raises(InvalidUsage, match="topology has 3 ranks"):
        probe_links(None, 0, 2, topo("a,b,a"))


def test_measure_gamma_is_quick_and_sane():
    measure_gamma()
    t0 = time.perf_counter()
    g = measure_gamma()
    dt = time.perf_counter() - t0
    assert 0 < g < 1e-8 and math.isfinite(g)            # faster than 100 MB/s
    assert dt < 0.05, dt


def test_result_json_and_links():
    res = result(("tcp",))
    d = json.loads(res.to_json())
    assert d["source"] == "probed" and set(d["links"]) == set(CLASSES)
    assert d["raw"]["tcp"]["alpha_s"] == 2e-6
    # measured classes carry the probe's numbers, the others the defaults; gamma everywhere
    assert res.links["tcp"] == LinkParams(2e-6, 5e9, 2e-11)
    assert res.links["shm"].alpha_s == default_links()["shm"].alpha_s
    assert all(p.gamma_s_per_B == 2e-11 for p in res.links.values())
    assert "tcp alpha 2.00 us" in res.describe()


# ---------------------------------------------------------------------------------------
# real ranks


def run_probe(np_: int, cache: str, hosts: str = "-", **env) -> dict[int, dict]:
    job = collxrun(np_, "probe_worker.py", hosts,
                   env=clean_env(COLLX_PROBE_CACHE=cache, **env), timeout=60)
    assert job.returncode == 0, job.report()
    out = {}
    for r in range(np_):
        lines = job.lines(r, "PROBE")
        assert lines and job.out[r][-1].startswith("OK "), job.report()
        out[r] = json.loads(lines[-1])
    return out


def check_same(res: dict[int, dict]) -> dict:
    first = res[0]
    for r, d in res.items():
        assert d["links"] == first["links"] and d["raw"] == first["raw"], r
        assert d["source"] == first["source"] and d["fingerprint"] == first["fingerprint"]
    return first


def check_measured(d: dict, classes) -> None:
    assert sorted(d["raw"]) == sorted(classes)
    for c in classes:
        p = d["links"][c]
        assert 0 < p["alpha_s"] < 0.1 and math.isfinite(p["alpha_s"]), (c, p)
        assert 1e5 < p["beta_Bps"] < 1e13 and math.isfinite(p["beta_Bps"]), (c, p)
        assert p["gamma_s_per_B"] == d["gamma_s_per_B"] > 0
        raw = d["raw"][c]
        assert raw["pings"] >= 5 and raw["reps"] >= 1 and raw["nbytes"] >= MIN_XFER


@pytest.mark.parametrize("np_", [2, 3])
def test_probe_same_host_then_cache(np_, tmp_path):
    first = run_probe(np_, str(tmp_path))
    d = check_same(first)
    assert d["source"] == "probed"
    check_measured(d, ["shm"])
    assert d["raw"]["shm"]["pair"] == [0, 1]
    assert d["links"]["tcp"] == {**vars(default_links()["tcp"]),
                                 "gamma_s_per_B": d["gamma_s_per_B"]}
    for r, res in first.items():
        assert res["seconds"] < 0.5, (r, res["seconds"])
    print(f"np {np_} probed: " + ", ".join(f"rank {r} {v['seconds'] * 1e3:.1f} ms"
                                            for r, v in first.items()),
          {c: (v["alpha_s"], v["beta_Bps"]) for c, v in d["links"].items()})
    assert [p.name for p in tmp_path.iterdir()] == [f"probe-{d['fingerprint']}.json"]

    second = check_same(run_probe(np_, str(tmp_path)))
    assert second["source"] == "cache"
    assert second["links"] == d["links"] and second["raw"] == d["raw"]   # bit-identical
    assert second["seconds"] < 0.1


def test_probe_disabled_gives_defaults(tmp_path):
    d = check_same(run_probe(2, str(tmp_path), COLLX_PROBE="0"))
    assert d["source"] == "defaults" and d["raw"] == {}
    assert d["links"] == {c: vars(p) for c, p in default_links().items()}
    assert list(tmp_path.iterdir()) == []


def test_probe_emulated_hosts_measures_both_classes(tmp_path):
    first = run_probe(3, str(tmp_path), "a,b,a")
    d = check_same(first)
    assert d["source"] == "probed"
    check_measured(d, ["shm", "tcp"])
    assert d["raw"]["shm"]["pair"] == [0, 2] and d["raw"]["tcp"]["pair"] == [0, 1]
    for r, res in first.items():
        assert res["seconds"] < 0.5, (r, res["seconds"])
    print("a,b,a probed:", {r: round(v["seconds"] * 1e3, 1) for r, v in first.items()},
          {c: (v["alpha_s"], v["beta_Bps"]) for c, v in d["links"].items()})
    second = check_same(run_probe(3, str(tmp_path), "a,b,a"))
    assert second["source"] == "cache" and second["links"] == d["links"]
