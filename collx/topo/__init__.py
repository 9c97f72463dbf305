"""Topology: what the machine(s) of a job look like, and (later) which algorithm fits them.

- ``detect``: the only code reading /proc, /sys, ioctls and NVML; plain data for this process.
- ``topology``: the JSON-dumpable model (HostInfo, Topology).
- ``exchange``: gather every rank's view through the rendezvous Store, or load a file.
- ``iface``: which NIC carries data connections to given peers.
"""
from .detect import host_identity, kernel_identity
from .exchange import gather_topology, topology_from_env_or_detect
from .iface import choose_interface
from .topology import (Gpu, HostInfo, Nic, NicAddress, NumaNode, RankInfo, RdmaDevice,
                       RdmaPort, Topology)

__all__ = ["host_identity", "kernel_identity", "gather_topology",
           "topology_from_env_or_detect", "choose_interface", "Topology", "HostInfo",
           "RankInfo", "Nic", "NicAddress", "NumaNode", "RdmaDevice", "RdmaPort", "Gpu"]
