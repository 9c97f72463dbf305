"""Worker (run under collxrun): every collective x dtype x count, checked exactly on every rank.

    python -m collx.runner -np 4 python tests/mp/collectives_worker.py \
        [--counts 0,1,7] [--dtypes float32,int8] [--big-dtypes float32] [--seed 7]

Inputs are deterministic functions of (rank, count, dtype, seed), so every rank builds every
other rank's input and the full reference itself, without communicating:

* sum base b[r]  : integers in [-15, 15] (one int8 array per rank and count);
* product base   : values in {-1, 1, 2} on ranks 0..3 and {-1, 1} above, so |product| <= 16;
* in dtype dt    : signed and float dtypes take the base as is; unsigned ones take b + 15
                   (sum base) or |p| (product base).

With at most 8 ranks every partial sum stays within +-240 and every partial product within
16, so any reduction order is exact in float16 and in int8/uint8, and results are compared
element by element for equality (Average: the exact sum divided in the dtype — floats as
numpy divides, integers truncating toward zero).

Prints ``FAIL rank=.. <collective> dtype=.. count=..: ... first bad index i`` on a mismatch
(exit 1, after at most worker.MAX_FAILURES), and finally ``OK {json}`` with the number of
checks, the (count, dtype) pairs run and how many of them each collective covered.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import worker

ALL_DTYPES = ["float16", "float32", "float64", "int8", "uint8", "int32", "int64"]
ALL_COUNTS = [0, 1, 7, 1000, 262147, 4 * 2**20 + 3]
BIG = 1 << 20          # counts from here on are "big" (--big-dtypes thins them)
OFFSET = 15            # unsigned dtypes shift the sum base by this


def even_split(total: int, n: int) -> list[int]:
    """Independent reference of the documented split: first ranks get one row more."""
    q, m = divmod(total, n)
    return [q + 1 if i < m else q for i in range(n)]


def offsets(parts: list[int]) -> list[int]:
    return [int(v) for v in np.concatenate([[0], np.cumsum(parts, dtype=np.int64)])]


class Inputs:
    """Every rank's base inputs for one count, and the int64 references of the reductions."""

    def __init__(self, n: int, count: int, seed: int) -> None:
        self.n, self.count = n, count
        table = np.array([-1, 1, 2], np.int8)
        self.sb, self.pb = [], []
        for r in range(n):
            rng = np.random.default_rng([seed, r, count])
            self.sb.append(rng.integers(-15, 16, count, dtype=np.int8))
            self.pb.append(table[rng.integers(0, 3 if r < 4 else 2, count)])
        stack = np.stack(self.sb)
        self.sum = stack.sum(axis=0, dtype=np.int64)
        self.min = stack.min(axis=0).astype(np.int64)
        self.max = stack.max(axis=0).astype(np.int64)
        self.prod = np.stack(self.pb).prod(axis=0, dtype=np.int64)


def as_dtype(base: np.ndarray, dt: np.dtype, product: bool = False) -> np.ndarray:
    if dt.kind == "u":
        return (np.abs(base) if product else base.astype(np.int64) + OFFSET).astype(dt)
    return base.astype(dt)


class Case:
    """One (count, dtype): builds inputs and references, runs every collective."""

    def __init__(self, collx, chk: worker.Checker, inp: Inputs, dt: np.dtype, ci: int,
                 di: int, seed: int) -> None:
        self.cx, self.chk, self.inp, self.dt = collx, chk, inp, dt
        self.n, self.r, self.c = collx.size(), collx.rank(), inp.count
        self.ci, self.di, self.seed = ci, di, seed
        self._cache: dict = {}
        self.ops = {"Sum": collx.Sum, "Average": collx.Average, "Min": collx.Min,
                    "Max": collx.Max, "Product": collx.Product}

    # -- inputs and references -------------------------------------------------------
    # Converted once per case and cached read-only (collectives must accept read-only
    # inputs; in-place calls take a fresh() copy).
    def _cached(self, key, make) -> np.ndarray:
        arr = self._cache.get(key)
        if arr is None:
            arr = self._cache[key] = make()
            arr.flags.writeable = False
        return arr

    def x(self, s: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        return self._cached(("x", s), lambda: as_dtype(self.inp.sb[s], self.dt))[lo:hi]

    def p(self, s: int) -> np.ndarray:
        return self._cached(("p", s), lambda: as_dtype(self.inp.pb[s], self.dt, product=True))

    def fresh(self, arr: np.ndarray) -> np.ndarray:
        return arr.copy()

    def arg(self, op: str, s: int) -> np.ndarray:
        return self.p(s) if op == "Product" else self.x(s)

    def ref(self, op: str) -> np.ndarray:
        return self._cached(("ref", op), lambda: self._ref(op))

    def _ref(self, op: str) -> np.ndarray:
        inp, dt, n = self.inp, self.dt, self.n
        shift = n * OFFSET if dt.kind == "u" else 0
        if op == "Sum":
            return (inp.sum + shift).astype(dt)
        if op == "Min":
            return as_dtype(inp.min, dt)
        if op == "Max":
            return as_dtype(inp.max, dt)
        if op == "Product":
            return as_dtype(inp.prod, dt, product=True)
        total = inp.sum + shift
        if dt.kind == "f":
            return (total.astype(dt) / dt.type(n)).astype(dt)
        return (np.sign(total) * (np.abs(total) // n)).astype(dt)  # truncate toward zero

    def root(self, k: int) -> int:
        return (self.ci + self.di + k) % self.n

    def rows(self, s: int) -> int:
        """allgather/gather: first dimension of rank s (differs across ranks, may be 0)."""
        return self.c // (1 + (s + self.ci + self.di) % 3)

    def a2a_splits(self, s: int) -> list[int]:
        """Random rows rank s sends to each rank, summing to count, zeros included."""
        n, c = self.n, self.c
        rng = np.random.default_rng([self.seed, s, c, self.di, 99])
        forced_zero = n > 1 and (s + self.ci + self.di) % 2 == 0
        parts = n - 1 if forced_zero else n
        cuts = np.sort(rng.integers(0, c + 1, parts - 1))
        splits = [int(v) for v in np.diff(np.concatenate([[0], cuts, [c]]))]
        if forced_zero:
            splits.insert(int(rng.integers(0, n)), 0)
        return splits

    def label(self, name: str) -> str:
        return f"{name} dtype={self.dt.name} count={self.c}"

    def check(self, name: str, got, want: np.ndarray) -> None:
        self.chk.equal(self.label(name), got, want)

    def check_none(self, name: str, got) -> None:
        self.chk.true(self.label(name), got is None, f"non-root got {type(got).__name__}, want None")

    def cover(self, *names: str) -> None:
        for name in names:
            self.chk.cover(name)

    # -- the collectives ---------------------------------------------------------------
    def allreduce(self) -> None:
        cx, r = self.cx, self.r
        for op, code in self.ops.items():
            x = self.arg(op, r)
            res = cx.allreduce(x, op=code) if op != "Average" else cx.allreduce(x)  # default op
            self.check(f"allreduce op={op}", res, self.ref(op))
            self.cover(f"allreduce:{op}")
        out = np.full(self.c, 3, self.dt)
        x = self.fresh(self.x(r))                              # a writable input
        got = cx.allreduce(x, op=cx.Sum, out=out)
        self.chk.true(self.label("allreduce out= returns out"), got is out)
        self.check("allreduce out=", out, self.ref("Sum"))
        self.check("allreduce input unchanged", x, as_dtype(self.inp.sb[r], self.dt))
        y = self.fresh(self.p(r))
        got = cx.allreduce_(y, op=cx.Product)
        self.chk.true(self.label("allreduce_ returns x"), got is y or np.shares_memory(got, y))
        self.check("allreduce_ op=Product", y, self.ref("Product"))
        y = self.fresh(self.x(r))
        cx.allreduce(y, op=cx.Max, out=y)                       # in place through out=x
        self.check("allreduce out=x op=Max", y, self.ref("Max"))
        self.cover("allreduce:out", "allreduce_", "allreduce:out=x")
        if self.c == 1000:                                      # a 2-D tensor
            res = cx.allreduce(self.x(r).reshape(25, 40), op=cx.Min)
            self.check("allreduce 2-D op=Min", res, self.ref("Min").reshape(25, 40))
            self.cover("allreduce:2d")

    def broadcast(self) -> None:
        cx, r = self.cx, self.r
        root = self.root(0)
        x = self.fresh(self.x(r))
        self.check(f"broadcast root={root}", cx.broadcast(x, root), self.x(root))
        self.check("broadcast input unchanged", x, self.x(r))
        root = self.root(1)
        y = self.fresh(self.x(r))
        got = cx.broadcast_(y, root)
        self.check(f"broadcast_ root={root}", y, self.x(root))
        self.chk.true(self.label("broadcast_ returns x"), got is y or np.shares_memory(got, y))
        root = self.root(2)
        out = np.full(self.c, 5, self.dt)
        got = cx.broadcast(self.x(r), root, out=out)
        self.chk.true(self.label("broadcast out= returns out"), got is out)
        self.check(f"broadcast out= root={root}", out, self.x(root))
        self.cover("broadcast", "broadcast_", "broadcast:out")

    def allgather_ref(self) -> np.ndarray:
        return self._cached(("allgather",), lambda: np.concatenate(
            [self.x(s, 0, self.rows(s)) for s in range(self.n)]))

    def allgather(self) -> None:
        cx, r = self.cx, self.r
        mine = self.x(r, 0, self.rows(r))
        want = self.allgather_ref()
        self.check("allgather", cx.allgather(mine), want)
        out = np.full(want.shape, 7, self.dt)
        got = cx.allgather(mine, out=out)
        self.chk.true(self.label("allgather out= returns out"), got is out)
        self.check("allgather out=", out, want)
        self.cover("allgather", "allgather:out")
        if self.c == 1000:                                      # rows of 4 elements
            rows4 = [self.rows(s) // 4 for s in range(self.n)]
            got = cx.allgather(self.x(r, 0, 4 * rows4[r]).reshape(-1, 4))
            want = np.concatenate([self.x(s, 0, 4 * rows4[s]).reshape(-1, 4)
                                   for s in range(self.n)])
            self.check("allgather 2-D", got, want)
            self.cover("allgather:2d")

    def gather(self) -> None:
        cx, r = self.cx, self.r
        root = self.root(3)
        got = cx.gather(self.x(r, 0, self.rows(r)), root_rank=root)
        if r == root:
            self.check(f"gather root={root}", got, self.allgather_ref())
        else:
            self.check_none(f"gather root={root}", got)
        self.cover("gather")

    def reducescatter(self) -> None:
        cx, r = self.cx, self.r
        parts = even_split(self.c, self.n)
        lo = offsets(parts)[r]
        for op, code in self.ops.items():
            x = self.arg(op, r)
            res = cx.reducescatter(x, op=code) if op != "Average" else cx.reducescatter(x)
            self.check(f"reducescatter op={op}", res, self.ref(op)[lo:lo + parts[r]])
            self.cover(f"reducescatter:{op}")
        if self.c == 1000:                                      # split along rows of 8
            parts = even_split(125, self.n)
            lo = offsets(parts)[r]
            got = cx.reducescatter(self.x(r).reshape(125, 8), op=cx.Sum)
            self.check("reducescatter 2-D", got, self.ref("Sum").reshape(125, 8)[lo:lo + parts[r]])
            self.cover("reducescatter:2d")

    def reduce(self) -> None:
        cx, r = self.cx, self.r
        for k, (op, code) in enumerate(self.ops.items()):
            root = self.root(k)
            res = cx.reduce(self.arg(op, r), root_rank=root, op=code)
            if r == root:
                self.check(f"reduce op={op} root={root}", res, self.ref(op))
            else:
                self.check_none(f"reduce op={op} root={root}", res)
            self.cover(f"reduce:{op}")
        root = self.root(1)
        out = np.full(self.c, 9, self.dt)
        res = cx.reduce(self.x(r), root_rank=root, op=cx.Sum, out=out)
        if r == root:
            self.chk.true(self.label("reduce out= returns out"), res is out)
            self.check(f"reduce out= root={root}", out, self.ref("Sum"))
        else:
            self.check_none(f"reduce out= root={root}", res)
        self.cover("reduce:out")

    def scatter(self) -> None:
        cx, r = self.cx, self.r
        parts = even_split(self.c, self.n)
        lo = offsets(parts)[r]
        root = self.root(2)
        got = cx.scatter(self.x(r), root_rank=root)     # non-roots pass their own values
        self.check(f"scatter root={root}", got, self.x(root, lo, lo + parts[r]))
        root = self.root(4)
        out = np.full(parts[r], 11, self.dt)
        got = cx.scatter(self.x(r), root_rank=root, out=out)
        self.chk.true(self.label("scatter out= returns out"), got is out)
        self.check(f"scatter out= root={root}", out, self.x(root, lo, lo + parts[r]))
        self.cover("scatter", "scatter:out")

    def alltoall_ref(self) -> tuple[np.ndarray, list[int]]:
        chunks, recv = [], []
        for s in range(self.n):
            sp = self.a2a_splits(s)
            lo = offsets(sp)[self.r]
            chunks.append(self.x(s, lo, lo + sp[self.r]))
            recv.append(sp[self.r])
        return np.concatenate(chunks), recv

    def alltoall(self) -> None:
        cx, r, n = self.cx, self.r, self.n
        splits = self.a2a_splits(r)
        want, want_splits = self.alltoall_ref()
        got, got_splits = cx.alltoall(self.x(r), splits=splits)
        self.check(f"alltoall splits={splits if len(splits) < 9 else '...'}", got, want)
        self.check("alltoall received splits", np.asarray(got_splits), np.asarray(want_splits, np.int64))
        k = self.c // n                                          # even form: splits=None
        got = cx.alltoall(self.x(r, 0, k * n))
        want = np.concatenate([self.x(s, r * k, (r + 1) * k) for s in range(n)])
        self.check("alltoall even", got, want)
        self.cover("alltoall", "alltoall:even")
        if self.c == 1000:                                      # rows of 4, uneven splits
            rows = 250
            sp = [rows // n] * n
            sp[r % n] += rows - sum(sp)                          # every rank sends its rest to itself
            got, got_sp = cx.alltoall(self.x(r).reshape(rows, 4), splits=sp)
            chunks = []
            for s in range(n):
                sps = [rows // n] * n
                sps[s % n] += rows - sum(sps)
                lo = offsets(sps)[r]
                chunks.append(self.x(s).reshape(rows, 4)[lo:lo + sps[r]])
            self.check("alltoall 2-D", got, np.concatenate(chunks))
            self.cover("alltoall:2d")

    def barrier(self) -> None:
        self.cx.barrier()
        self.cover("barrier")

    def point_to_point(self) -> None:
        """A ring: rank 0 sends first, the others receive first (so blocking sends of any
        size cannot deadlock); then the same with the async forms."""
        cx, r, n = self.cx, self.r, self.n
        if n == 1:
            return
        dst, src = (r + 1) % n, (r - 1) % n
        tag = 1000 * self.ci + self.di
        out = np.full(self.c, 13, self.dt)
        if r == 0:
            cx.send(self.x(r), dst, tag=tag)
            cx.recv(out, src, tag=tag)
        else:
            cx.recv(out, src, tag=tag)
            cx.send(self.x(r), dst, tag=tag)
        self.check(f"send/recv from {src}", out, self.x(src))
        out2 = np.full(self.c, 17, self.dt)
        payload = self.x(r)
        if r == 0:
            hs = cx.send_async(payload, dst, tag=tag + 1)
            hr = cx.recv_async(out2, src, tag=tag + 1)
        else:
            hr = cx.recv_async(out2, src, tag=tag + 1)
            hs = cx.send_async(payload, dst, tag=tag + 1)
        self.chk.true(self.label("send_async result"), cx.synchronize(hs) is None)
        got = cx.synchronize(hr)
        self.check(f"recv_async from {src}", got, self.x(src))
        self.chk.true(self.label("recv_async returns out"), got is out2)
        self.cover("send/recv", "send/recv:async")

    def asynchronous(self) -> None:
        """One of each *_async in flight at once, then synchronize in reverse order."""
        cx, r, n = self.cx, self.r, self.n
        parts = even_split(self.c, n)
        lo = offsets(parts)[r]
        sum_out = np.full(self.c, 19, self.dt)
        splits = self.a2a_splits(r)
        a2a_want, a2a_splits = self.alltoall_ref()
        roots = [self.root(k) for k in range(4)]
        pending = [
            ("allreduce_async op=Sum", cx.allreduce_async(self.x(r), op=cx.Sum), self.ref("Sum")),
            ("allreduce_async out= op=Product",
             cx.allreduce_async(self.p(r), op=cx.Product, out=sum_out), self.ref("Product")),
            ("broadcast_async", cx.broadcast_async(self.x(r), roots[0]), self.x(roots[0])),
            ("allgather_async", cx.allgather_async(self.x(r, 0, self.rows(r))), self.allgather_ref()),
            ("reducescatter_async op=Max", cx.reducescatter_async(self.x(r), op=cx.Max),
             self.ref("Max")[lo:lo + parts[r]]),
            ("alltoall_async", cx.alltoall_async(self.x(r), splits=splits), a2a_want),
            ("reduce_async op=Min", cx.reduce_async(self.x(r), roots[1], op=cx.Min),
             self.ref("Min") if r == roots[1] else None),
            ("gather_async", cx.gather_async(self.x(r, 0, self.rows(r)), roots[2]),
             self.allgather_ref() if r == roots[2] else None),
            ("scatter_async", cx.scatter_async(self.x(r), roots[3]),
             self.x(roots[3], lo, lo + parts[r])),
            ("barrier_async", cx.barrier_async(), None),
        ]
        for name, handle, want in reversed(pending):
            got = cx.synchronize(handle, timeout=300)
            self.chk.true(self.label(f"{name} poll after synchronize"), cx.poll(handle))
            if name == "alltoall_async":
                got, got_splits = got
                self.check(name + " splits", np.asarray(got_splits), np.asarray(a2a_splits, np.int64))
            if name.startswith("allreduce_async out="):
                self.chk.true(self.label(name + " returns out"), got is sum_out)
            if want is None:
                self.check_none(name, got)
            else:
                self.check(name, got, want)
            self.cover(name.split()[0])

    def run(self, timing: dict | None = None) -> None:
        for step in (self.allreduce, self.broadcast, self.allgather, self.gather,
                     self.reducescatter, self.reduce, self.scatter, self.alltoall, self.barrier,
                     self.point_to_point, self.asynchronous):
            t0 = time.perf_counter()
            step()
            if timing is not None:
                key = f"{step.__name__}@{self.c}"
                timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default=",".join(map(str, ALL_COUNTS)))
    ap.add_argument("--dtypes", default=",".join(ALL_DTYPES))
    ap.add_argument("--big-dtypes", default=None,
                    help=f"dtypes run at counts >= {BIG} (default: all of --dtypes)")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    dtypes = args.dtypes.split(",")
    big_dtypes = args.big_dtypes.split(",") if args.big_dtypes else dtypes

    cx = worker.start()
    chk = worker.Checker(cx.rank())
    comm = cx.communicator()
    pairs = []
    timing = {} if os.environ.get("COLLX_TEST_TIMING") else None
    for ci, count in enumerate(counts):
        inp = Inputs(cx.size(), count, args.seed)
        for di, name in enumerate(dtypes):
            if count >= BIG and name not in big_dtypes:
                continue
            Case(cx, chk, inp, np.dtype(name), ci, di, args.seed).run(timing)
            pairs.append([count, name])
    if timing is not None:       # COLLX_TEST_TIMING=1: seconds per collective and count
        worker.say("TIMING " + " ".join(f"{k}={v:.2f}" for k, v in sorted(timing.items())))
    chk.finish(size=cx.size(), pairs=pairs,
               transports={str(k): v for k, v in sorted(comm.transports.items())})


if __name__ == "__main__":
    main()
