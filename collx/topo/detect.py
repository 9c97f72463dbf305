"""Read the machine: the only module of collx that looks at /proc, /sys, ioctls and NVML.

Every function describes THIS process's view (its network namespace, its CPU affinity) and
returns plain data (str, int, bool, None, lists and dicts of those), ready for JSON. Every
reader tolerates what containers and odd kernels do: a missing file, an unreadable one, a
value of -1 or "unknown" — the answer is then an empty list or None, never an exception.
``collx.topo.topology`` turns these dicts into dataclasses.

Stdlib only; NVML is used when (and only when) ``pynvml`` imports and initializes.
"""
from __future__ import annotations

import array
import fcntl
import glob
import hashlib
import ipaddress
import os
import socket
import struct
from typing import Any

# ioctl request numbers from <linux/sockios.h>
_SIOCGIFCONF = 0x8912
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFMTU = 0x8921
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFREQ_SIZE = 40            # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union
_IFNAMSIZ = 16


# ---------------------------------------------------------------------------------------
# small readers

SYS_ROOT = "/sys"           # tests point this at a fake tree


def _sys(rel: str) -> str:
    return os.path.join(SYS_ROOT, rel)


def _read(path: str) -> str | None:
    """Stripped content of a small text file, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def parse_cpulist(text: str | None) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]; '' or None -> []; malformed parts are
    skipped (a reader must not fail on an odd kernel)."""
    cpus: set[int] = set()
    for part in (text or "").replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                step = 1
                if ":" in hi:                      # '0-15:2' stride form (rare)
                    hi, s = hi.split(":", 1)
                    step = max(1, int(s))
                cpus.update(range(int(lo), int(hi) + 1, step))
            else:
                cpus.add(int(part))
        except ValueError:
            continue
    return sorted(cpus)


# ---------------------------------------------------------------------------------------
# identity


def _ns_inode(kind: str) -> str:
    try:
        return str(os.stat(f"/proc/self/ns/{kind}").st_ino)
    except OSError:
        return "-"


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id") or "-"


def kernel_identity() -> str:
    """Equal for processes on one kernel, hence on the same CPUs (network-namespace "hosts"
    of one machine included): what decides whether busy-polling steals a peer's core."""
    return _boot_id()


def host_identity() -> str:
    """A short stable id equal for exactly the ranks that can share memory.

    Hostname alone is not enough: network namespaces on one kernel (our multi-host tests,
    and containers) may share or differ in hostname while being separate "hosts" on the
    network. Two ranks are on one host when they share the kernel (boot id) and the
    network, IPC, PID and UTS namespaces — then POSIX shared memory and process_vm_readv
    reach each other.

    COLLX_HOSTNAME replaces the detection: ranks giving the same name are one host (shm
    between them), different names are different hosts (tcp), e.g. to emulate hosts."""
    from .. import config
    forced = config.get("COLLX_HOSTNAME")
    if forced:
        return "name:" + hashlib.sha256(forced.encode()).hexdigest()[:16]
    parts = [_boot_id(), socket.gethostname()]
    parts += [_ns_inode(k) for k in ("net", "ipc", "pid", "uts")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def hostname() -> str:
    """The name shown in messages: COLLX_HOSTNAME when set, else the UTS hostname."""
    from .. import config
    return config.get("COLLX_HOSTNAME") or socket.gethostname()


# ---------------------------------------------------------------------------------------
# CPUs and NUMA


def affinity() -> list[int]:
    """The CPUs this process may run on (sched_getaffinity), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def online_cpus() -> list[int]:
    """Every online CPU of the machine (not only ours): /sys/devices/system/cpu/online, else
    0..cpu_count-1."""
    cpus = parse_cpulist(_read(_sys("devices/system/cpu/online")))
    return cpus or list(range(os.cpu_count() or 1))


def numa_nodes() -> list[dict[str, Any]]:
    """[{"id": n, "cpus": [...]}] from /sys/devices/system/node/node*/cpulist, sorted by id.
    No NUMA information (containers, non-NUMA kernels): one node 0 holding every online CPU.
    Memory-only nodes (empty cpulist) are kept: they are real (CXL, HBM)."""
    nodes = []
    for path in glob.glob(_sys("devices/system/node/node[0-9]*")):
        try:
            node_id = int(os.path.basename(path)[4:])
        except ValueError:
            continue
        cpus = parse_cpulist(_read(os.path.join(path, "cpulist")))
        nodes.append({"id": node_id, "cpus": cpus})
    if not nodes:
        return [{"id": 0, "cpus": online_cpus()}]
    return sorted(nodes, key=lambda n: n["id"])


# ---------------------------------------------------------------------------------------
# NICs


def _ifreq(name: str) -> bytes:
    return struct.pack(f"{_IFNAMSIZ}s{_IFREQ_SIZE - _IFNAMSIZ}x", name.encode()[:_IFNAMSIZ - 1])


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes | None:
    try:
        return fcntl.ioctl(sock.fileno(), request, _ifreq(name))
    except OSError:
        return None


def _ioctl_ipv4(sock: socket.socket, request: int, name: str) -> str | None:
    res = _ioctl(sock, request, name)
    if res is None:
        return None
    # union starts at byte 16: struct sockaddr_in {family(2), port(2), addr(4), ...}
    return socket.inet_ntoa(res[20:24])


def _ifconf(sock: socket.socket) -> list[tuple[str, str]]:
    """Every IPv4 address of this network namespace as (label, address) via SIOCGIFCONF —
    aliases ('eth0:1') and secondary addresses included, one entry per address."""
    size = 64 * _IFREQ_SIZE
    while True:
        buf = array.array("B", b"\0" * size)
        addr, _ = buf.buffer_info()
        req = struct.pack("iL", size, addr)     # struct ifconf {int len; char *buf;}
        try:
            res = fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, req)
        except OSError:
            return []
        used = struct.unpack("iL", res)[0]
        if used < size - _IFREQ_SIZE or size >= (1 << 20):
            break
        size *= 2                               # maybe truncated: retry with more room
    raw = buf.tobytes()
    out = []
    for off in range(0, used, _IFREQ_SIZE):
        label = raw[off:off + _IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace")
        family = struct.unpack_from("H", raw, off + 16)[0]
        if family == socket.AF_INET:
            out.append((label, socket.inet_ntoa(raw[off + 20:off + 24])))
    return out


def _prefixlen(netmask: str | None, default: int = 32) -> int:
    if not netmask:
        return default
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        return default


def _nic_speed(name: str) -> int | None:
    """Link speed in Mbit/s; None when unknown (virtual links report -1 or EINVAL)."""
    speed = _read_int(_sys(f"class/net/{name}/speed"))
    return speed if speed is not None and speed > 0 else None


def _nic_virtual(name: str) -> bool:
    """True for software devices (lo, veth, bridges, ifb, tun...): their sysfs node lives
    under /sys/devices/virtual, or they have no backing 'device' link."""
    try:
        real = os.path.realpath(_sys(f"class/net/{name}"))
    except OSError:
        return False
    if "/devices/virtual/" in real:
        return True
    return os.path.isdir(_sys(f"class/net/{name}")) and not os.path.exists(
        _sys(f"class/net/{name}/device"))


def _interfaces() -> list[tuple[int, str]]:
    """(index, name) of every interface, in index order (index -1 when only sysfs knows)."""
    try:
        return sorted(socket.if_nameindex())
    except OSError:
        return [(-1, os.path.basename(p)) for p in sorted(glob.glob(_sys("class/net/*")))]


def _nlattrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    attrs = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("HH", buf, off)
        if alen < 4:
            break
        attrs[atype & 0x3FFF] = buf[off + 4:off + alen]
        off += (alen + 3) & ~3
    return attrs


def _netlink_ipv4() -> list[tuple[int, str, int]] | None:
    """Every IPv4 address of this network namespace as (ifindex, address, prefix length),
    from an rtnetlink RTM_GETADDR dump — the one source that gives the right prefix for
    secondary addresses too. None when netlink is unavailable (the ioctls take over)."""
    nlm_f_request, nlm_f_dump = 0x1, 0x300
    nlmsg_error, nlmsg_done = 2, 3
    rtm_newaddr, rtm_getaddr = 20, 22
    ifa_address, ifa_local = 1, 2
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)    # NETLINK_ROUTE
    except (OSError, AttributeError):
        return None
    out: list[tuple[int, str, int]] = []
    try:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        body = struct.pack("BBBBI", socket.AF_INET, 0, 0, 0, 0)         # struct ifaddrmsg
        sock.send(struct.pack("IHHII", 16 + len(body), rtm_getaddr,
                              nlm_f_request | nlm_f_dump, 1, 0) + body)
        while True:
            buf = sock.recv(1 << 16)
            if not buf:
                return None
            off = 0
            while off + 16 <= len(buf):
                mlen, mtype, _, _, _ = struct.unpack_from("IHHII", buf, off)
                if mlen < 16:
                    return None
                if mtype == nlmsg_done:
                    return out
                if mtype == nlmsg_error:
                    return None
                if mtype == rtm_newaddr and mlen >= 24:
                    family, prefix, _, _, index = struct.unpack_from("BBBBI", buf, off + 16)
                    attrs = _nlattrs(buf, off + 24, off + mlen)
                    raw = attrs.get(ifa_local) or attrs.get(ifa_address)
                    if family == socket.AF_INET and raw and len(raw) == 4:
                        out.append((index, socket.inet_ntoa(raw), prefix))
                off += (mlen + 3) & ~3
    except OSError:
        return None
    finally:
        sock.close()


def nics() -> list[dict[str, Any]]:
    """Network interfaces of this process's network namespace, in interface-index order:
    [{"name", "addresses": [{"address": "10.0.0.5", "prefix": 24}], "speed_mbps": int|None,
      "mtu": int|None, "up": bool, "loopback": bool, "virtual": bool}].
    IPv4 only (what our TCP transport binds)."""
    interfaces = _interfaces()
    names = [name for _, name in interfaces]
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        sock = None
    try:
        by_dev: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        netlink = _netlink_ipv4()
        if netlink is not None:
            by_index = dict(interfaces)
            for index, addr, prefix in netlink:
                entry = {"address": addr, "prefix": prefix}
                dev = by_index.get(index)
                if dev is not None and entry not in by_dev[dev]:
                    by_dev[dev].append(entry)
        elif sock is not None:
            for label, addr in _ifconf(sock):
                dev = label.split(":", 1)[0]
                mask = _ioctl_ipv4(sock, _SIOCGIFNETMASK, label)
                entry = {"address": addr, "prefix": _prefixlen(mask)}
                if entry not in by_dev.setdefault(dev, []):
                    by_dev[dev].append(entry)
            for name in names:              # SIOCGIFCONF refused: the primary address
                if not by_dev[name]:
                    addr = _ioctl_ipv4(sock, _SIOCGIFADDR, name)
                    if addr:
                        mask = _ioctl_ipv4(sock, _SIOCGIFNETMASK, name)
                        by_dev[name].append({"address": addr, "prefix": _prefixlen(mask)})
        out = []
        for index, name in interfaces:
            # /sys shows the network namespace it was mounted in (nsenter keeps the old
            # one): trust its speed and device link only when the ifindex agrees
            sys_index = _read_int(_sys(f"class/net/{name}/ifindex"))
            sysfs_ours = sys_index is not None and (index < 0 or sys_index == index)
            flags_raw = _ioctl(sock, _SIOCGIFFLAGS, name) if sock is not None else None
            flags = struct.unpack_from("H", flags_raw, 16)[0] if flags_raw else None
            mtu_raw = _ioctl(sock, _SIOCGIFMTU, name) if sock is not None else None
            mtu = struct.unpack_from("i", mtu_raw, 16)[0] if mtu_raw else \
                _read_int(_sys(f"class/net/{name}/mtu")) if sysfs_ours else None
            if flags is None:
                flags = (_read_int(_sys(f"class/net/{name}/flags")) if sysfs_ours else 0) or 0
            out.append({
                "name": name,
                "addresses": by_dev.get(name, []),
                "speed_mbps": _nic_speed(name) if sysfs_ours else None,
                "mtu": mtu,
                "up": bool(flags & _IFF_UP),
                "loopback": bool(flags & _IFF_LOOPBACK) or name == "lo",
                "virtual": _nic_virtual(name) if sysfs_ours else name == "lo",
            })
        return out
    finally:
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------------------------------
# RDMA


def _rdma_rate_gbps(text: str | None) -> float | None:
    """'100 Gb/sec (4X EDR)' -> 100.0; None when unreadable."""
    if not text:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def rdma_devices() -> list[dict[str, Any]]:
    """RDMA devices from /sys/class/infiniband: [{"name", "node_guid", "netdevs": [...],
    "numa_node": int|None, "ports": [{"port", "state", "rate", "rate_gbps",
    "link_layer"}]}], sorted by name. No RDMA (or no sysfs): []."""
    out = []
    for path in sorted(glob.glob(_sys("class/infiniband/*"))):
        name = os.path.basename(path)
        ports = []
        for ppath in sorted(glob.glob(os.path.join(path, "ports", "*")),
                            key=lambda p: (len(p), p)):
            try:
                port = int(os.path.basename(ppath))
            except ValueError:
                continue
            state = _read(os.path.join(ppath, "state"))       # '4: ACTIVE'
            rate = _read(os.path.join(ppath, "rate"))
            ports.append({
                "port": port,
                "state": state.split(":", 1)[-1].strip() if state else None,
                "rate": rate,
                "rate_gbps": _rdma_rate_gbps(rate),
                "link_layer": _read(os.path.join(ppath, "link_layer")),
            })
        numa = _read_int(os.path.join(path, "device", "numa_node"))
        netdevs = sorted(os.path.basename(p)
                         for p in glob.glob(os.path.join(path, "device", "net", "*")))
        out.append({
            "name": name,
            "node_guid": _read(os.path.join(path, "node_guid")),
            "netdevs": netdevs,
            "numa_node": numa if numa is not None and numa >= 0 else None,
            "ports": ports,
        })
    return out


# ---------------------------------------------------------------------------------------
# GPUs (NVML)


def _nvml_str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _norm_bus(bus: str) -> str:
    """NVML spells bus ids '00000000:07:00.0'; sysfs '0000:07:00.0'. Compare on the last 12."""
    return bus.lower()[-12:]


def gpus() -> list[dict[str, Any]]:
    """GPUs seen by NVML: [{"index", "name", "uuid", "pci_bus_id", "memory_bytes",
    "numa_node", "p2p": [bool per GPU], "nvlink": [links per GPU]}], where p2p[j] says
    whether peer-to-peer access to GPU j works (NVLink or PCIe) and nvlink[j] is the
    number of NVLinks joining them (direct or through NVSwitch; 0: none). The diagonal is
    p2p True, nvlink 0. No pynvml, no driver, no GPU, or any NVML failure: []."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except Exception:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        return _nvml_gpus(pynvml)
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _nvml_gpus(nv: Any) -> list[dict[str, Any]]:
    def attempt(fn, *args, default=None):
        try:
            return fn(*args)
        except Exception:
            return default

    count = nv.nvmlDeviceGetCount()
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    infos = []
    for i, h in enumerate(handles):
        pci = attempt(nv.nvmlDeviceGetPciInfo, h)
        bus = _nvml_str(getattr(pci, "busId", "")) if pci is not None else ""
        mem = attempt(nv.nvmlDeviceGetMemoryInfo, h)
        numa = _read_int(_sys(f"bus/pci/devices/{bus.lower()[-12:]}/numa_node")) if bus else None
        infos.append({
            "index": i,
            "name": _nvml_str(attempt(nv.nvmlDeviceGetName, h, default="")),
            "uuid": _nvml_str(attempt(nv.nvmlDeviceGetUUID, h, default="")),
            "pci_bus_id": bus,
            "memory_bytes": int(mem.total) if mem is not None else None,
            "numa_node": numa if numa is not None and numa >= 0 else None,
        })

    # active NVLinks of each GPU: how many go straight to each peer, how many elsewhere
    # (an NVSwitch, which reaches every GPU on the switch plane)
    max_links = getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)
    bus_to_index = {_norm_bus(g["pci_bus_id"]): g["index"] for g in infos if g["pci_bus_id"]}
    direct = [[0] * count for _ in range(count)]
    switched = [0] * count
    for i, h in enumerate(handles):
        for link in range(max_links):
            if attempt(nv.nvmlDeviceGetNvLinkState, h, link, default=0) != 1:
                continue
            remote = attempt(nv.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
            rbus = _norm_bus(_nvml_str(getattr(remote, "busId", ""))) if remote is not None else ""
            j = bus_to_index.get(rbus)
            if j is not None and j != i:
                direct[i][j] += 1
            else:
                switched[i] += 1

    ok = getattr(nv, "NVML_P2P_STATUS_OK", 0)
    cap_nvlink = getattr(nv, "NVML_P2P_CAPS_INDEX_NVLINK", 2)
    cap_read = getattr(nv, "NVML_P2P_CAPS_INDEX_READ", 0)
    for i, g in enumerate(infos):
        p2p, nvlink = [], []
        for j in range(count):
            if i == j:
                p2p.append(True)
                nvlink.append(0)
                continue
            over_nvlink = attempt(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j],
                                  cap_nvlink) == ok
            readable = attempt(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j],
                               cap_read) == ok
            links = direct[i][j]
            if not links and over_nvlink:
                links = max(1, min(switched[i], switched[j]))
            p2p.append(bool(readable or over_nvlink))
            nvlink.append(links)
        g["p2p"] = p2p
        g["nvlink"] = nvlink
    return infos


# ---------------------------------------------------------------------------------------
# everything


def host_info() -> dict[str, Any]:
    """What every rank on one host sees alike (keys as ``topology.HostInfo``)."""
    return {
        "host_id": host_identity(),
        "hostname": hostname(),
        "kernel_id": kernel_identity(),
        "cpus": online_cpus(),
        "numa": numa_nodes(),
        "nics": nics(),
        "rdma": rdma_devices(),
        "gpus": gpus(),
    }


def detect() -> dict[str, Any]:
    """This process's whole view: {"host": host_info(), "pid": int, "cpus": affinity()}."""
    return {"host": host_info(), "pid": os.getpid(), "cpus": affinity()}
