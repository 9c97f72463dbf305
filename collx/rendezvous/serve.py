"""Run a rendezvous store on its own: ``python -m collx.rendezvous.serve --host H --port P``.

For jobs started by hand on several hosts (or network namespaces) before the multi-host
launcher does it for you: start this on one host with COLLX_SECRET set, then start every
rank with COLLX_STORE_ADDR=H:P and the same COLLX_SECRET. It prints the address it
listens on, then serves until it is killed or --lifetime seconds pass.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from .auth import secret_from_env
from .tcp import TCPStoreServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m collx.rendezvous.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--lifetime", type=float, default=None,
                   help="stop after this many seconds (default: run until killed)")
    args = p.parse_args(argv)
    secret = secret_from_env()
    if not secret:
        p.error("COLLX_SECRET must be set: ranks prove they hold it before the store serves them")
    server = TCPStoreServer(host=args.host, port=args.port, secret=secret).start()
    print(server.address, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(args.lifetime)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
