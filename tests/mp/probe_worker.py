"""Link probe on real ranks: argv[1] maps rank -> emulated host name ("a,b,a"; "-" = the
real host for every rank). Calls collx.init(), gathers the topology, runs
collx.topo.probe.probe_links, checks the communicator still runs an exact allreduce
afterwards, and prints ``PROBE <json>`` then ``OK {...}``."""
import os
import sys

hosts = sys.argv[1] if len(sys.argv) > 1 else "-"
if hosts != "-":
    os.environ["COLLX_HOSTNAME"] = hosts.split(",")[int(os.environ["COLLX_RANK"])]

import numpy as np  # noqa: E402

import worker  # noqa: E402

collx = worker.start()
from collx.topo.exchange import gather_topology  # noqa: E402
from collx.topo.probe import probe_links  # noqa: E402

r, n = collx.rank(), collx.size()
comm = collx.communicator()
topo = gather_topology(comm.store, "collx/probe-test", r, n)
res = probe_links(comm.ccomm, r, n, topo)
worker.say("PROBE " + res.to_json())
check = worker.Checker(r)
x = np.arange(1000, dtype=np.float32) + r
check.equal("allreduce after probe", collx.allreduce(x, op=collx.Sum),
            sum(np.arange(1000, dtype=np.float32) + q for q in range(n)))
collx.shutdown()
check.finish(groups=topo.host_groups())
