"""collx.topo: detection on this machine, the JSON model and its fixtures, the store
exchange (threads as ranks), COLLX_TOPO_FILE/COLLX_TOPO_DUMP, and the interface choice."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import threading
import types
from pathlib import Path

import pytest

from collx.errors import CollxTimeout, InvalidUsage
from collx.rendezvous import InProcessStore
from collx.topo import detect
from collx.topo.exchange import gather_topology, topology_from_env_or_detect
from collx.topo.iface import choose_interface
from collx.topo.topology import (HostInfo, Nic, NicAddress, RankInfo, Topology)

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures" / "topo"


def _fixture(name: str) -> Topology:
    return Topology.load(FIXTURES / name)


# ---------------------------------------------------------------------------------------
# detection on this machine


def test_detect_this_machine_is_sane():
    d = detect.detect()
    assert set(d) == {"host", "pid", "cpus"}
    assert d["pid"] == os.getpid()
    assert d["cpus"] == sorted(os.sched_getaffinity(0))
    host = d["host"]
    assert set(host) == {"host_id", "hostname", "kernel_id", "cpus", "numa", "nics", "rdma",
                         "gpus"}
    assert set(d["cpus"]) <= set(host["cpus"])
    assert len(host["cpus"]) >= 1
    # NUMA nodes partition (a subset of) the online CPUs, and cover ours
    numa_cpus = [c for n in host["numa"] for c in n["cpus"]]
    assert len(numa_cpus) == len(set(numa_cpus))
    assert set(d["cpus"]) <= set(numa_cpus)
    # loopback is there, with 127.0.0.1/8, and every NIC is well formed
    names = [n["name"] for n in host["nics"]]
    assert len(names) == len(set(names))
    lo = [n for n in host["nics"] if n["loopback"]]
    assert lo and {"address": "127.0.0.1", "prefix": 8} in lo[0]["addresses"]
    for nic in host["nics"]:
        assert nic["speed_mbps"] is None or nic["speed_mbps"] > 0
        assert nic["mtu"] is None or nic["mtu"] > 0
        for a in nic["addresses"]:
            socket.inet_aton(a["address"])
            assert 0 <= a["prefix"] <= 32
    if not os.path.isdir("/sys/class/infiniband"):
        assert host["rdma"] == []
    if importlib.util.find_spec("pynvml") is None:
        assert host["gpus"] == []
    json.dumps(d)                                   # plain data
    from collx.transports import host as legacy    # the re-export is the same function
    assert legacy.host_identity is detect.host_identity
    assert legacy.kernel_identity is detect.kernel_identity
    assert host["host_id"] == legacy.host_identity()


def test_detect_default_route_nic_has_an_address():
    """The address we would reach the outside from belongs to one of the detected NICs."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))           # no packet is sent for UDP connect
            mine = s.getsockname()[0]
        except OSError:
            pytest.skip("no IPv4 route on this machine")
    addrs = {a["address"] for n in detect.nics() for a in n["addresses"]}
    assert mine in addrs


def test_parse_cpulist():
    assert detect.parse_cpulist("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert detect.parse_cpulist("") == []
    assert detect.parse_cpulist(None) == []
    assert detect.parse_cpulist("0-6:2\n") == [0, 2, 4, 6]
    assert detect.parse_cpulist("x,1") == [1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_readers_tolerate_a_missing_sysfs(tmp_path, monkeypatch):
    monkeypatch.setattr(detect, "SYS_ROOT", str(tmp_path / "nothing"))
    assert detect.online_cpus() == list(range(os.cpu_count() or 1))
    assert detect.numa_nodes() == [{"id": 0, "cpus": detect.online_cpus()}]
    assert detect.rdma_devices() == []
    assert detect._nic_speed("eth0") is None
    nics = detect.nics()                        # ioctls still work; sysfs extras are absent
    assert any(n["loopback"] for n in nics)


def test_readers_on_a_fake_sysfs(tmp_path, monkeypatch):
    root = tmp_path / "sys"
    _write(root / "devices/system/cpu/online", "0-7\n")
    _write(root / "devices/system/node/node0/cpulist", "0-3\n")
    _write(root / "devices/system/node/node1/cpulist", "4-7\n")
    _write(root / "devices/system/node/node2/cpulist", "\n")          # memory-only node
    _write(root / "devices/system/node/possible", "0-2\n")             # not a node dir
    ib = root / "class/infiniband/mlx5_0"
    _write(ib / "node_guid", "b8ce:f603:0001:0002\n")
    _write(ib / "ports/1/state", "4: ACTIVE\n")
    _write(ib / "ports/1/rate", "200 Gb/sec (4X HDR)\n")
    _write(ib / "ports/1/link_layer", "InfiniBand\n")
    _write(ib / "ports/2/state", "1: DOWN\n")                          # no rate file
    _write(ib / "device/numa_node", "1\n")
    (ib / "device/net/ib0").mkdir(parents=True)
    _write(root / "class/infiniband/mlx5_1/device/numa_node", "-1\n")
    _write(root / "class/net/eth9/speed", "-1\n")
    _write(root / "class/net/eth8/speed", "25000\n")
    monkeypatch.setattr(detect, "SYS_ROOT", str(root))
    assert detect.online_cpus() == list(range(8))
    assert detect.numa_nodes() == [{"id": 0, "cpus": [0, 1, 2, 3]},
                                   {"id": 1, "cpus": [4, 5, 6, 7]}, {"id": 2, "cpus": []}]
    rdma = detect.rdma_devices()
    assert [r["name"] for r in rdma] == ["mlx5_0", "mlx5_1"]
    assert rdma[0] == {"name": "mlx5_0", "node_guid": "b8ce:f603:0001:0002",
                       "netdevs": ["ib0"], "numa_node": 1, "ports": [
                           {"port": 1, "state": "ACTIVE", "rate": "200 Gb/sec (4X HDR)",
                            "rate_gbps": 200.0, "link_layer": "InfiniBand"},
                           {"port": 2, "state": "DOWN", "rate": None, "rate_gbps": None,
                            "link_layer": None}]}
    assert rdma[1]["numa_node"] is None and rdma[1]["ports"] == []
    assert detect._nic_speed("eth9") is None
    assert detect._nic_speed("eth8") == 25000


# ---------------------------------------------------------------------------------------
# GPUs through a stand-in pynvml


def _fake_nvml(n_gpus: int, links: dict[tuple[int, int], int], fail_init: bool = False):
    """A pynvml look-alike: GPU i at bus 0000000i:00:00.0; links[(i, j)] NVLinks i -> j."""
    nv = types.ModuleType("pynvml")
    nv.NVML_P2P_STATUS_OK = 0
    nv.NVML_P2P_CAPS_INDEX_READ = 0
    nv.NVML_P2P_CAPS_INDEX_NVLINK = 2
    nv.NVML_NVLINK_MAX_LINKS = 4

    class Pci:
        def __init__(self, bus):
            self.busId = bus.encode()

    class Mem:
        total = 16 << 30

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def remote_targets(i):
        out = []
        for (a, b), k in sorted(links.items()):
            if a == i:
                out += [b] * k
        return out

    def link_state(h, link):
        if link >= len(remote_targets(h)):
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 1

    def p2p(h1, h2, cap):
        if cap == 2:
            return 0 if links.get((h1, h2)) else 4
        return 0 if abs(h1 - h2) < 2 else 4         # PCIe p2p between neighbours only

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: n_gpus
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"Fake GPU"
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h}"
    nv.nvmlDeviceGetPciInfo = lambda h: Pci(f"0000000{h}:00:00.0")
    nv.nvmlDeviceGetMemoryInfo = lambda h: Mem()
    nv.nvmlDeviceGetNvLinkState = link_state
    nv.nvmlDeviceGetNvLinkRemotePciInfo = \
        lambda h, link: Pci(f"0000000{remote_targets(h)[link]}:00:00.0")
    nv.nvmlDeviceGetP2PStatus = p2p
    return nv


def test_gpus_from_nvml(monkeypatch):
    nv = _fake_nvml(3, {(0, 1): 2, (1, 0): 2})
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    gpus = detect.gpus()
    assert [g["index"] for g in gpus] == [0, 1, 2]
    assert gpus[0]["name"] == "Fake GPU" and gpus[0]["uuid"] == "GPU-fake-0"
    assert gpus[0]["memory_bytes"] == 16 << 30
    assert [g["nvlink"] for g in gpus] == [[0, 2, 0], [2, 0, 0], [0, 0, 0]]
    assert [g["p2p"] for g in gpus] == [[True, True, False], [True, True, True],
                                        [False, True, True]]
    HostInfo.from_dict({"host_id": "x", "hostname": "x", "gpus": gpus})   # fits the model


def test_gpus_without_nvml_are_empty_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2, {}, fail_init=True))
    assert detect.gpus() == []
    monkeypatch.setitem(sys.modules, "pynvml", None)        # import fails
    assert detect.gpus() == []
    broken = _fake_nvml(2, {})
    broken.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(RuntimeError("driver gone"))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert detect.gpus() == []


# ---------------------------------------------------------------------------------------
# COLLX_HOSTNAME


def test_collx_hostname_overrides_identity(monkeypatch):
    monkeypatch.delenv("COLLX_HOSTNAME", raising=False)
    real = detect.host_identity()
    assert detect.hostname() == socket.gethostname()
    monkeypatch.setenv("COLLX_HOSTNAME", "node-a")
    a = detect.host_identity()
    assert a.startswith("name:") and a != real
    assert detect.hostname() == "node-a"
    assert detect.host_info()["host_id"] == a and detect.host_info()["hostname"] == "node-a"
    monkeypatch.setenv("COLLX_HOSTNAME", "node-b")
    assert detect.host_identity() not in (a, real)
    monkeypatch.setenv("COLLX_HOSTNAME", "node-a")
    assert detect.host_identity() == a
    from collx.transports.host import host_identity
    assert host_identity() == a


# ---------------------------------------------------------------------------------------
# the model: JSON round trip, fixtures


def test_json_round_trip_of_this_machine(tmp_path):
    topo = Topology.from_rank_records([detect.detect()])
    text = topo.to_json()
    back = Topology.from_json(text)
    assert back == topo and back.to_json() == text
    assert Topology.from_json(topo.to_json(indent=None)) == topo
    topo.dump(tmp_path / "t.json")
    assert Topology.load(tmp_path / "t.json") == topo
    assert json.loads(text)["version"] == 1 and json.loads(text)["schema"] == "collx.topology"


@pytest.mark.parametrize("name", ["two_nvlink_hosts.json", "pcie_hosts.json",
                                  "one_big_box.json"])
def test_fixtures_load_round_trip_and_match_their_generator(name):
    text = (FIXTURES / name).read_text()
    topo = Topology.from_json(text)
    assert topo.to_json() + "\n" == text
    spec = importlib.util.spec_from_file_location("topo_fixture_gen", FIXTURES / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.FIXTURES[name]() == topo, "fixture out of date: run tests/fixtures/topo/generate.py"


def test_two_nvlink_hosts():
    t = _fixture("two_nvlink_hosts.json")
    assert t.size == 16 and t.hosts_count == 2
    assert t.host_groups() == [list(range(8)), list(range(8, 16))]
    assert t.local_ranks(11) == list(range(8, 16))
    assert t.link_class(0, 7) == "shm" and t.link_class(7, 8) == "tcp"
    for h in t.hosts:
        assert len(h.gpus) == 8 and h.nvlink_all_to_all()
        assert [n.id for n in h.numa] == [0, 1]
        assert len(h.rdma) == 4 and all(p.state == "ACTIVE" for r in h.rdma for p in r.ports)
        assert any(n.speed_mbps == 100000 for n in h.nics)
    assert t.numa_of(0) == [0] and t.numa_of(7) == [1]


def test_pcie_hosts():
    t = _fixture("pcie_hosts.json")
    assert t.size == 16 and t.hosts_count == 4
    assert t.host_groups() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert t.link_class(4, 7) == "shm" and t.link_class(3, 4) == "tcp"
    for h in t.hosts:
        assert len(h.gpus) == 4 and not h.nvlink_all_to_all() and h.rdma == []
        assert all(all(g.p2p) and not any(g.nvlink) for g in h.gpus)
        assert [n.speed_mbps for n in h.nics if not n.loopback and n.up] == [25000]


def test_one_big_box():
    t = _fixture("one_big_box.json")
    assert t.size == 8 and t.hosts_count == 1
    assert t.host_groups() == [list(range(8))]
    assert all(t.link_class(0, r) == "shm" for r in range(8))
    h = t.hosts[0]
    assert len(h.cpus) == 64 and [len(n.cpus) for n in h.numa] == [32, 32] and h.gpus == []
    assert t.usable_cpus(0) == list(range(64))
    assert [t.numa_of(r) for r in range(8)] == [[0]] * 4 + [[1]] * 4


def test_host_groups_first_seen_order_and_bad_input():
    hosts = [HostInfo("b", "b"), HostInfo("a", "a")]
    t = Topology(ranks=[RankInfo(1, 1), RankInfo(0, 2), RankInfo(1, 3), RankInfo(0, 4)],
                 hosts=hosts)
    assert t.host_groups() == [[0, 2], [1, 3]]
    assert t.local_ranks(3) == [1, 3]
    with pytest.raises(InvalidUsage, match="rank 9"):
        t.link_class(0, 9)
    with pytest.raises(InvalidUsage, match="host 5"):
        Topology(ranks=[RankInfo(5, 1)], hosts=hosts)
    d = json.loads(t.to_json())
    d["version"] = 99
    with pytest.raises(InvalidUsage, match="version 99"):
        Topology.from_json(json.dumps(d))
    with pytest.raises(InvalidUsage, match="not a collx topology"):
        Topology.from_json("{}")
    with pytest.raises(InvalidUsage, match="not valid JSON"):
        Topology.from_json("{")


# ---------------------------------------------------------------------------------------
# exchange through a store, threads as ranks


def _record(host: str, pid: int, cpus: list[int]) -> dict:
    return {"host": {"host_id": f"id-{host}", "hostname": host, "kernel_id": "k",
                     "cpus": [0, 1, 2, 3], "numa": [{"id": 0, "cpus": [0, 1, 2, 3]}],
                     "nics": [], "rdma": [], "gpus": []},
            "pid": pid, "cpus": cpus}


def _run_ranks(size, fn):
    results, errors = [None] * size, []

    def body(r):
        try:
            results[r] = fn(r)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((r, exc))

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def test_gather_topology_threads_as_ranks():
    store = InProcessStore()
    hosts = ["a", "b", "a", "b", "c"]
    topos = _run_ranks(5, lambda r: gather_topology(
        store, "job1", r, 5, timeout=10, local=_record(hosts[r], 100 + r, [r % 4])))
    assert all(t == topos[0] for t in topos)
    t = topos[0]
    assert t.host_groups() == [[0, 2], [1, 3], [4]]
    assert [h.hostname for h in t.hosts] == ["a", "b", "c"]
    assert [r.pid for r in t.ranks] == [100, 101, 102, 103, 104]
    assert t.link_class(0, 2) == "shm" and t.link_class(0, 1) == "tcp"
    assert t.usable_cpus(0) == [0, 2]


def test_gather_topology_real_detection():
    store = InProcessStore()
    topos = _run_ranks(3, lambda r: gather_topology(store, "job2", r, 3, timeout=10))
    t = topos[0]
    assert t.hosts_count == 1 and t.host_groups() == [[0, 1, 2]]
    assert t.hosts[0].host_id == detect.host_identity()
    assert Topology.from_json(t.to_json()) == t


def test_gather_topology_times_out_naming_the_missing_rank():
    store = InProcessStore()
    with pytest.raises(CollxTimeout):
        gather_topology(store, "job3", 0, 2, timeout=0.3, local=_record("a", 1, [0]))
    with pytest.raises(InvalidUsage):
        gather_topology(store, "job3", 2, 2, timeout=0.3)


def test_topo_file_and_dump(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLX_TOPO_FILE", str(FIXTURES / "pcie_hosts.json"))
    monkeypatch.setenv("COLLX_TOPO_DUMP", str(tmp_path / "dump.json"))
    t = topology_from_env_or_detect(None, "job4", 3, 16)
    assert t == _fixture("pcie_hosts.json")
    assert not (tmp_path / "dump.json").exists()                # rank 3 does not dump
    assert topology_from_env_or_detect(None, "job4", 0, 16) == t
    assert Topology.load(tmp_path / "dump.json") == t
    with pytest.raises(InvalidUsage, match="describes 16 ranks"):
        topology_from_env_or_detect(None, "job4", 0, 8)


def test_topo_dump_is_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLX_TOPO_FILE", raising=False)
    monkeypatch.setenv("COLLX_TOPO_DUMP", str(tmp_path / "dump.json"))
    store = InProcessStore()
    topos = _run_ranks(2, lambda r: topology_from_env_or_detect(
        store, "job5", r, 2, timeout=10, local=_record("ab"[r], r, [0])))
    assert Topology.load(tmp_path / "dump.json") == topos[1] == topos[0]
    with pytest.raises(InvalidUsage, match="store"):
        topology_from_env_or_detect(None, "job7", 0, 1)


# ---------------------------------------------------------------------------------------
# choose_interface


def test_choose_interface_by_subnet_on_fixtures():
    pcie = _fixture("pcie_hosts.json").hosts[0]
    peers = ["192.168.8.22", "192.168.8.23", "192.168.8.24"]
    assert choose_interface(pcie.nics, peers).name == "ens1f0"
    nvl = _fixture("two_nvlink_hosts.json").hosts[0]
    assert choose_interface(nvl.nics, ["10.10.0.12"]).name == "eth0"
    assert choose_interface(nvl.nics, ["10.20.2.12"]).name == "ib2"
    # /16 of eth0 holds 10.10.x.y only; off-subnet peers (behind a router): no opinion
    assert choose_interface(nvl.nics, ["8.8.8.8"]) is None


def test_choose_interface_prefers_the_nic_reaching_most_peers():
    nics = [Nic("lo", [NicAddress("127.0.0.1", 8)], loopback=True, virtual=True),
            Nic("slow", [NicAddress("10.0.0.1", 24)], speed_mbps=1000),
            Nic("fast", [NicAddress("10.0.1.1", 24), NicAddress("10.0.0.2", 24)],
                speed_mbps=100000),
            Nic("down", [NicAddress("10.0.2.1", 24)], up=False)]
    assert choose_interface(nics, ["10.0.0.9"]).name == "fast"          # tie -> faster
    assert choose_interface(nics, ["10.0.0.9", "10.0.1.9"]).name == "fast"
    assert choose_interface(nics[:2], ["10.0.0.9", "10.0.1.9"]).name == "slow"
    assert choose_interface(nics, ["10.0.2.9"]) is None                 # only a down NIC
    assert choose_interface(nics, ["fe80::1"]) is None                  # IPv6: not ours


def test_choose_interface_loopback_only_when_all_peers_are_local():
    box = _fixture("one_big_box.json").hosts[0]
    assert choose_interface(box.nics, ["127.0.0.1", "10.0.5.7"]).name == "lo"
    assert choose_interface(box.nics, []).name == "lo"
    assert choose_interface(box.nics, ["127.0.0.1", "10.0.5.9"]).name == "eno1"
    as_dicts = [json.loads(json.dumps(n.__dict__, default=lambda o: o.__dict__))
                for n in box.nics]
    assert choose_interface(as_dicts, ["10.0.6.1"]).name == "eno1"     # /22 holds .6.x


def test_choose_interface_override(monkeypatch):
    nics = _fixture("pcie_hosts.json").hosts[0].nics
    assert choose_interface(nics, ["192.168.8.22"], override="docker0").name == "docker0"
    with pytest.raises(InvalidUsage, match="'ib7'.*ens1f0"):
        choose_interface(nics, ["192.168.8.22"], override="ib7")
    with pytest.raises(InvalidUsage, match="not an IP"):
        choose_interface(nics, ["node01"])


def test_choose_interface_on_this_machine():
    nics = [Nic.from_dict(n) for n in detect.nics()]
    mine = [a.address for n in nics for a in n.addresses if not n.loopback]
    assert choose_interface(nics, ["127.0.0.1"]).loopback
    for addr in mine:
        assert choose_interface(nics, [addr]).loopback                  # ourselves: local


def _netns_unavailable(why: str) -> None:
    """Skip where namespaces cannot be made; CI (COLLX_REQUIRE_NETNS=1) fails instead."""
    if os.environ.get("COLLX_REQUIRE_NETNS") == "1":
        pytest.fail(f"netns tests required but {why}")
    pytest.skip(why)


def test_nics_secondary_addresses_in_a_private_netns():
    """Aliases and secondary addresses, each with its own prefix (rtnetlink), seen from a
    fresh network namespace (needs root and iproute2; nothing outside it is touched)."""
    import shutil
    import subprocess
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        _netns_unavailable("needs root, unshare and ip")
    script = ("ip link set lo up && ip link add v0 type veth peer name v1 && "
              "ip link set v0 up && ip addr add 10.9.9.1/24 dev v0 && "
              "ip addr add 10.9.9.2/24 dev v0 && "
              "ip addr add 10.9.8.1/16 dev v0 label v0:1 && ip addr add 10.7.0.1/8 dev v0 && "
              f"exec {sys.executable} -c 'import json; from collx.topo import detect; "
              "print(json.dumps(detect.nics()))'")
    res = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True,
                         text=True, timeout=30, cwd=Path(__file__).parent.parent)
    if res.returncode != 0:
        _netns_unavailable(f"cannot make a network namespace here: {res.stderr.strip()[:200]}")
    nics = {n["name"]: n for n in json.loads(res.stdout.strip().splitlines()[-1])}
    assert set(nics) == {"lo", "v0", "v1"}
    assert sorted((a["address"], a["prefix"]) for a in nics["v0"]["addresses"]) == [
        ("10.7.0.1", 8), ("10.9.8.1", 16), ("10.9.9.1", 24), ("10.9.9.2", 24)]
    assert nics["v0"]["up"] and not nics["v1"]["up"] and nics["v1"]["addresses"] == []
    v0 = [Nic.from_dict(nics["v0"]), Nic.from_dict(nics["lo"])]
    assert choose_interface(v0, ["10.200.1.1"]).name == "v0"          # the /8
    assert choose_interface(v0, ["10.9.9.1"]).loopback                 # ourselves
