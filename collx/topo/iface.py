"""Which network interface carries data connections to a set of peers (pure function).

The choice is made by subnet, never by name: the NIC one of whose IPv4 networks contains
the peers' addresses is the one the kernel would use without a gateway. Loopback is chosen
only when every peer is on this host. COLLX_IFACE (passed in as ``override``) wins.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from ..errors import InvalidUsage
from .topology import Nic


def _as_nic(nic: Nic | dict[str, Any]) -> Nic:
    return nic if isinstance(nic, Nic) else Nic.from_dict(nic)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise InvalidUsage(f"choose_interface: {text!r} is not an IP address") from exc


def _networks(nic: Nic) -> list[ipaddress.IPv4Network]:
    nets = []
    for a in nic.addresses:
        try:
            nets.append(ipaddress.IPv4Network(f"{a.address}/{a.prefix}", strict=False))
        except ValueError:
            continue
    return nets


def choose_interface(my_nics: Iterable[Nic | dict[str, Any]], peer_addresses: Iterable[str],
                     override: str | None = None) -> Nic | None:
    """The NIC to use for data connections to peers at ``peer_addresses`` (IP strings).

    - ``override`` (COLLX_IFACE) names the interface: returned as is; InvalidUsage naming it
      and the interfaces that exist when there is no such interface.
    - Peers whose address is loopback or one of this host's own addresses are local. When
      every peer is local (or there are none), the loopback NIC.
    - Otherwise, among the non-loopback NICs that are up, the one whose subnets contain the
      most remote peers (all of them, normally); ties go to the faster NIC, then a physical
      one over a virtual one, then interface order.
    - None when no NIC's subnet holds any remote peer (they are behind a router): the
      caller keeps the route's choice.
    """
    nics = [_as_nic(n) for n in my_nics]
    if override:
        for nic in nics:
            if nic.name == override:
                return nic
        have = ", ".join(n.name for n in nics) or "none"
        raise InvalidUsage(f"COLLX_IFACE={override!r}: this host has no interface named "
                           f"{override!r} (it has: {have})")

    peers = [_ip(p) for p in peer_addresses]
    mine = {ipaddress.ip_address(a.address) for n in nics for a in n.addresses
            if _valid(a.address)}
    remote = [p for p in peers if not (p.is_loopback or p in mine)]
    if not remote:
        for nic in nics:
            if nic.loopback:
                return nic
        return None

    best, best_key = None, None
    for pos, nic in enumerate(nics):
        if nic.loopback or not nic.up:
            continue
        nets = _networks(nic)
        covered = sum(1 for p in remote if p.version == 4 and any(p in net for net in nets))
        if covered == 0:
            continue
        key = (covered, nic.speed_mbps or 0, not nic.virtual, -pos)
        if best_key is None or key > best_key:
            best, best_key = nic, key
    return best


def _valid(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
