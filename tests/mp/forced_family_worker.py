"""One collective (argv[1]: allgather, reducescatter, broadcast or reduce) with the algorithm
forced by COLLX_ALGO, on real ranks: exact against numpy on every rank for several dtypes
and awkward sizes (zero rows, fewer rows than ranks, uneven), every root, out of place and
(broadcast) in place; prints the algorithms its plans used so the test can check the
forcing took effect."""
import sys

import numpy as np

import collx

op = sys.argv[1]
collx.init()
r, n = collx.rank(), collx.size()


def data(rank: int, rows: int, dtype, width: int = 3) -> np.ndarray:
    return ((np.arange(rows * width).reshape(rows, width) + 7 * rank) % 5).astype(dtype)


for dtype in (np.float32, np.int64, np.float16):
    for base in (0, 1, 7, 1000, 65537):
        if op == "allgather":
            rows = [(base + 3 * q) % (base + 2) if base else q % 2 for q in range(n)]
            y = collx.allgather(data(r, rows[r], dtype))
            want = np.concatenate([data(q, rows[q], dtype) for q in range(n)])
            assert y.dtype == want.dtype and np.array_equal(y, want), (dtype, base, rows)
        elif op == "reducescatter":
            x = data(r, base, dtype)
            y = collx.reducescatter(x, op=collx.Sum)
            full = sum(data(q, base, dtype) for q in range(n)) if base else x
            lo = sum(len(a) for a in np.array_split(np.arange(base), n)[:r])
            want = full[lo:lo + len(np.array_split(np.arange(base), n)[r])]
            assert np.array_equal(y, want), (dtype, base)
        elif op == "broadcast":
            for root in range(n):
                x = data(r, base, dtype)
                y = collx.broadcast(x, root)
                assert np.array_equal(y, data(root, base, dtype)), (dtype, base, root)
                z = x.copy()
                collx.broadcast_(z, root)
                assert np.array_equal(z, data(root, base, dtype)), (dtype, base, root)
        elif op == "reduce":
            for root in range(n):
                y = collx.reduce(data(r, base, dtype), root, op=collx.Sum)
                if r == root:
                    want = sum(data(q, base, dtype) for q in range(n)) if base else \
                        data(r, base, dtype)
                    assert np.array_equal(y, want), (dtype, base, root)
                else:
                    assert y is None
        else:
            raise SystemExit(f"unknown op {op}")
algo = {p.algo for p in collx.communicator()._plans.values() if p.key[0] == op}
print("OK", r, ",".join(sorted(algo)), flush=True)
collx.shutdown()
