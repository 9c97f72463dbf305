"""Reduction kernel throughput: dst = a + b for each kernel variant, beside numpy.

    python perf/bench_reduce.py [--sizes 64K,64M] [--dtypes float32,float16,int8]

GB/s counts the bytes of one array per second (what a reduction step consumes per incoming
buffer); memory traffic is three times that (read a, read b, write dst). dst is separate
from a and b. Each row is the best of several batches of calls (the machine is shared: the
best batch is the one least disturbed); a call includes the Python binding's overhead,
printed first, which matters at small sizes.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import collx._C as C  # noqa: E402  (the checkout's build, run from anywhere)

DTYPES = {"float32": (C.FLOAT32, np.float32), "float16": (C.FLOAT16, np.float16),
          "bfloat16": (C.BFLOAT16, np.uint16), "float64": (C.FLOAT64, np.float64),
          "int8": (C.INT8, np.int8), "uint8": (C.UINT8, np.uint8),
          "int32": (C.INT32, np.int32), "int64": (C.INT64, np.int64)}
VARIANTS = {"scalar": C.VARIANT_SCALAR, "avx2": C.VARIANT_AVX2, "avx512": C.VARIANT_AVX512}


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("IB")
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def timeit(fn, nbytes):
    """Seconds per call, best of several batches of ~20 ms."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, int(0.02 / once))
    samples = []
    for _ in range(7 if nbytes < (32 << 20) else 5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
    return min(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64K,64M", help="bytes per array, comma-separated")
    ap.add_argument("--dtypes", default="float32,float16,int8")
    args = ap.parse_args()
    one = np.zeros(1, np.float32)
    t_call = timeit(lambda: C.reduce_kernel(C.SUM, C.FLOAT32, -1, one, one, one), 4)
    t_np = timeit(lambda: np.add(one, one, out=one), 4)
    print(f"# call overhead (1 element): collx {t_call * 1e6:.2f} us, numpy {t_np * 1e6:.2f} us; "
          f"kernel variant in use: {C.reduce_variant(C.FLOAT32)}")
    print(f"{'dtype':9} {'bytes':>9} {'impl':7} {'us/call':>10} {'GB/s':>7} {'traffic':>8}"
          f" {'vs numpy':>8}")
    for name in args.dtypes.split(","):
        code, dt = DTYPES[name]
        for size in map(parse_size, args.sizes.split(",")):
            n = size // np.dtype(dt).itemsize
            rng = np.random.default_rng(0)
            a = rng.integers(0, 100, n).astype(dt)
            b = rng.integers(0, 100, n).astype(dt)
            dst = np.empty_like(a)
            # numpy has no bfloat16: no baseline row for it
            rows = [] if name == "bfloat16" else [("numpy", lambda: np.add(a, b, out=dst))]
            for vname, v in VARIANTS.items():
                if C.reduce_kernel(C.SUM, code, v, dst, a, b):
                    rows.append((vname, lambda v=v: C.reduce_kernel(C.SUM, code, v, dst, a, b)))
            base = None
            for impl, fn in rows:
                t = timeit(fn, size)
                base = base or (t if impl == "numpy" else None)
                ratio = f"{base / t:7.2f}x" if base else ""
                print(f"{name:9} {size:>9} {impl:7} {t * 1e6:10.2f} {size / t / 1e9:7.2f}"
                      f" {3 * size / t / 1e9:8.2f} {ratio:>8}")


if __name__ == "__main__":
    main()
