"""Doorbells between the negotiated engines' workers: a rank with new work wakes the others.

The negotiated engine coordinates in cycles, and a coordination collective needs every rank.
A rank whose worker is asleep between cycles (nothing submitted locally) would make a rank
that just submitted wait for the rest of its sleep: up to one cycle time (and 4x that after
an idle spell), which on a model whose backward takes a millisecond is the whole step.

Each worker therefore sleeps on a ``Doorbell``: one UDP socket bound to the address the
rank's data listener uses (``comm.host_addr``), plus a local socketpair. A local submit rings
the local end (``ring_local``); the worker that starts a cycle because of new local work
rings every peer (``ring_peers``: one 1-byte datagram each, non-blocking, to the addresses
exchanged through the store at start). A sleeping worker wakes at once and joins the cycle,
so negotiation latency is a datagram plus the coordination collective instead of a cycle.

The bell carries no data and is never trusted: a stray, duplicated or lost datagram costs
at most one empty cycle or one cycle time of latency (the timeout still bounds every sleep),
so it needs no authentication. Ranks on one host reach each other over loopback; ranks in
other network namespaces through their listener address, like the data connections.
"""
from __future__ import annotations

import select
import socket
from typing import Any

__all__ = ["Doorbell"]


class Doorbell:
    """One rank's bell. ``open`` binds it; ``exchange`` learns the peers' addresses."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        self.udp.setblocking(False)
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)
        self.peers: list[tuple[str, int]] = []

    @property
    def address(self) -> str:
        host, port = self.udp.getsockname()[:2]
        return f"{host}:{port}"

    def exchange(self, store: Any, prefix: str, rank: int, size: int, timeout: float) -> None:
        """Publish this bell's address and read every other rank's (store keys under
        ``prefix``, which must be unique to this generation of the job)."""
        store.set(f"{prefix}/bell/{rank}", self.address.encode())
        peers = []
        for r in range(size):
            if r == rank:
                continue
            host, port = store.get(f"{prefix}/bell/{r}", timeout=timeout).decode().rsplit(":", 1)
            peers.append((host, int(port)))
        self.peers = peers

    def ring_local(self) -> None:
        """Wake this rank's worker (any thread may call it)."""
        try:
            self._tx.send(b"L")
        except (BlockingIOError, OSError):      # already rung (buffer full) or closed
            pass

    def ring_peers(self) -> None:
        """Wake every peer's worker; never blocks, never fails."""
        for addr in self.peers:
            try:
                self.udp.sendto(b"P", addr)
            except OSError:                     # full buffer, peer gone: the timeout covers it
                pass

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds passed; True when rung. Drains the bell."""
        try:
            ready, _, _ = select.select([self.udp, self._rx], [], [], max(0.0, timeout))
        except (OSError, ValueError):           # closed under us: behave like a timeout
            return False
        for sock in ready:
            try:
                while sock.recv(64):
                    pass
            except (BlockingIOError, OSError):
                pass
        return bool(ready)

    def close(self) -> None:
        for sock in (self.udp, self._rx, self._tx):
            try:
                sock.close()
            except OSError:
                pass
