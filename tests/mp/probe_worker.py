"""Link probe on real ranks: argv[1] maps rank -> emulated host name ("a,b,a"; "-" = the
real host for every rank). collx.init() gathers the topology and runs
collx.topo.probe.probe_links (the communicator keeps both); the worker prints that result
as ``PROBE <json>``, checks the communicator still runs an exact allreduce afterwards, and
prints ``OK {...}``."""
import os
import sys

hosts = sys.argv[1] if len(sys.argv) > 1 else "-"
if hosts != "-":
    os.environ["COLLX_HOSTNAME"] = hosts.split(",")[int(os.environ["COLLX_RANK"])]

import numpy as np  # noqa: E402

import worker  # noqa: E402

collx = worker.start()
r, n = collx.rank(), collx.size()
comm = collx.communicator()
topo, res = comm.topology, comm.probe
worker.say("PROBE " + res.to_json())
check = worker.Checker(r)
x = np.arange(1000, dtype=np.float32) + r
check.equal("allreduce after probe", collx.allreduce(x, op=collx.Sum),
            sum(np.arange(1000, dtype=np.float32) + q for q in range(n)))
collx.shutdown()
check.finish(groups=topo.host_groups())
