"""``collxrun`` / ``python -m collx.runner``: start N ranks of a command, horovodrun-style.

    collxrun -np 4 python train.py
    collxrun -np 2 -H localhost:2 --timeout 600 python train.py --lr 0.1
    collxrun -np 4 --servers 2 python train.py
    collxrun -np 4 --timeline-filename tl.json --fusion-threshold-mb 32 python train.py

The horovodrun-style flags ``--timeline-filename``, ``--fusion-threshold-mb`` and
``--cycle-time-ms`` only set COLLX_TIMELINE, COLLX_FUSION_THRESHOLD (bytes) and
COLLX_CYCLE_TIME in the ranks' environment (knobs of the negotiated engine).

collxrun makes a fresh job secret, serves the rendezvous store (TCPStoreServer on
127.0.0.1) from its own threads, starts every rank with COLLX_RANK, COLLX_SIZE,
COLLX_LOCAL_RANK, COLLX_LOCAL_SIZE, COLLX_CROSS_RANK, COLLX_CROSS_SIZE, COLLX_STORE_ADDR and
COLLX_SECRET (and COLLX_SERVERS), prefixes their output with
``[rank]<stdout>:``/``[rank]<stderr>:``, and takes the whole job down when any rank fails.
Its exit code is the first failing rank's (128+N for a death by signal N), 124 on
--timeout, 0 when every rank succeeded.

With ``--servers K`` it also starts K summation servers (``python -m collx.server``, or
the command in COLLX_SERVER_COMMAND) with COLLX_SIZE, COLLX_SERVERS, COLLX_SERVER_INDEX,
COLLX_STORE_ADDR and COLLX_SECRET but no COLLX_RANK, output prefixed ``[s<k>]``. A server
exiting non-zero before the ranks finish fails the job (its exit code); after every rank
exited 0 the servers get SIGTERM, their normal end.

Imports only collx.config, collx.errors and collx.rendezvous: it works without collx._C.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys

from .. import config
from ..errors import CollxError
from ..rendezvous import TCPStoreServer
from . import local
from .spec import parse_hosts, plan, plan_servers

_VALUE_OPTS = {"-np", "--num-proc", "-H", "--hosts", "--timeout", "--grace", "--servers",
               "--timeline-filename", "--fusion-threshold-mb", "--cycle-time-ms"}
# horovodrun-style flags that only set a COLLX_* knob in the ranks' environment
_ENV_FLAGS = {"timeline_filename": ("COLLX_TIMELINE", str),
              "fusion_threshold_mb": ("COLLX_FUSION_THRESHOLD", lambda mb: str(int(mb * (1 << 20)))),
              "cycle_time_ms": ("COLLX_CYCLE_TIME", str)}
_FLAG_OPTS = {"--no-prefix", "-h", "--help"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="collxrun", usage="collxrun -np N [options] command [args...]",
        description="Start N ranks of a command for collx (horovodrun-compatible local "
                    "form). Output lines are prefixed [rank]<stdout>: / [rank]<stderr>:.")
    p.add_argument("-np", "--num-proc", dest="np", type=int, required=True,
                   help="number of ranks to start")
    p.add_argument("-H", "--hosts", default=None,
                   help="host:slots,... (only this machine for now, e.g. localhost:4)")
    p.add_argument("--timeout", type=float, default=None,
                   help="wall-clock limit of the whole job in seconds; exit 124 past it")
    p.add_argument("--grace", type=float, default=None,
                   help="seconds between SIGTERM and SIGKILL when tearing the job down "
                        "(default: the COLLX_GRACE knob, 5 s)")
    p.add_argument("--servers", type=int, default=0, metavar="K",
                   help="also start K dedicated summation servers (python -m collx.server, "
                        "or the command line in the COLLX_SERVER_COMMAND environment "
                        "variable, e.g. to run them under a profiler); they get COLLX_SIZE, "
                        "COLLX_SERVERS, COLLX_SERVER_INDEX, COLLX_STORE_ADDR, COLLX_SECRET "
                        "(no COLLX_RANK), output prefixed [s<k>]. A server failing before "
                        "the ranks finish fails the job; once every rank exited 0 the "
                        "servers get SIGTERM (SIGKILL after --grace). Default 0")
    p.add_argument("--timeline-filename", default=None, metavar="PATH",
                   help="negotiated engine: rank 0 writes a Chrome trace of every tensor's "
                        "phases to PATH (sets COLLX_TIMELINE)")
    p.add_argument("--fusion-threshold-mb", type=float, default=None, metavar="MB",
                   help="negotiated engine: fuse ready allreduces up to MB mebibytes; 0 = no "
                        "fusion (sets COLLX_FUSION_THRESHOLD, default 64)")
    p.add_argument("--cycle-time-ms", type=float, default=None, metavar="MS",
                   help="negotiated engine: milliseconds between coordination cycles "
                        "(sets COLLX_CYCLE_TIME, default 1)")
    p.add_argument("--no-prefix", action="store_true",
                   help="pass rank output through unchanged (no [rank] prefix)")
    return p


def split_argv(argv: list[str], value_opts: set[str] | None = None,
               flag_opts: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Split into (collxrun options, command): the command starts at the first token that
    is not an option or an option's value, or after ``--``. Done by hand so that the
    command's own options (``python -u -c ...``) are never taken for collxrun's.
    ``value_opts``/``flag_opts``: another launcher's options (default: collxrun's)."""
    value_opts = _VALUE_OPTS if value_opts is None else value_opts
    flag_opts = _FLAG_OPTS if flag_opts is None else flag_opts
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1:]
        if tok in value_opts:
            i += 2
        elif tok in flag_opts or (tok.startswith("--") and "=" in tok
                                   and tok.split("=", 1)[0] in value_opts):
            i += 1
        elif tok.startswith("-"):
            i += 1  # unknown option: argparse reports it
        else:
            return argv[:i], argv[i:]
    return argv, []


def parse_launch(argv: list[str] | None, parser: argparse.ArgumentParser, prog: str,
                 value_opts: set[str] | None = None, flag_opts: set[str] | None = None
                 ) -> tuple[argparse.Namespace, list[str]] | int:
    """A launcher's command line: (its options, the command), or the exit code to return
    (help printed, a bad option, or no command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, command = split_argv(argv, value_opts, flag_opts)
    try:
        args = parser.parse_args(opts)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not command:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{prog}: error: no command given\n")
        return 2
    return args, command


def knob_env(args: argparse.Namespace) -> dict[str, str]:
    """The COLLX_* variables the horovodrun-style flags set (only those given)."""
    env = {}
    for attr, (knob, conv) in _ENV_FLAGS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if attr != "timeline_filename" and value < 0:
            raise CollxError(f"--{attr.replace('_', '-')} must be >= 0")
        env[knob] = conv(value)
    return env


def main(argv: list[str] | None = None) -> int:
    """Entry point of collxrun; returns the process exit code."""
    parsed = parse_launch(argv, _parser(), "collxrun")
    if isinstance(parsed, int):
        return parsed
    args, command = parsed
    try:
        specs = plan(args.np, parse_hosts(args.hosts) if args.hosts else None)
        servers = plan_servers(args.servers, args.np)
        grace = args.grace if args.grace is not None else config.get("COLLX_GRACE")
        if grace < 0 or (args.timeout is not None and args.timeout <= 0):
            raise CollxError("--grace must be >= 0 and --timeout > 0")
        env = knob_env(args)
    except CollxError as exc:
        sys.stderr.write(f"collxrun: error: {exc}\n")
        return 2
    if env:
        os.environ.update(env)       # the ranks inherit this environment
    secret = secrets.token_hex(32)
    server = TCPStoreServer("127.0.0.1", 0, secret=secret.encode()).start()
    try:
        return local.run(specs, command, store_addr=server.address, secret=secret,
                         grace=grace, timeout=args.timeout, prefix=not args.no_prefix,
                         servers=servers)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
