#!/usr/bin/env python
"""Instructions per call of two clstm builds (before/after a refactor), counted by
valgrind's callgrind: deterministic, so a shared, noisy machine does not blur it (it counts
work, not time: cache misses and thread waits are not in it; it runs the AVX2 kernels, as
valgrind has no AVX-512). One thread, OpenBLAS held to one thread.

    python bench/ab_instructions.py --python /venv-before/bin/python \\
        --python /venv-after/bin/python [--quick]

Each count is (instructions of a process making n + 1 calls) - (one making 1 call), / n.
"""
import argparse
import os
import re
import subprocess
import tempfile

SIZES = [(100, 1, 64, 64), (100, 1, 128, 128), (100, 1, 256, 256), (100, 16, 128, 128),
         (100, 64, 256, 256), (50, 64, 512, 512), (50, 32, 1024, 1024)]

CHILD = r"""
import sys
import numpy as np
import clstm
clstm.set_num_threads(1)
T, B, I, H, n, train = map(int, sys.argv[1:7])
m = clstm.LSTM(I, H, dtype=np.float32, seed=0)
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)


def call():
    if train:
        (y, _), backward = m.forward_train(x)
        backward(np.ones_like(y))
    else:
        m(x)


for _ in range(n + 1):
    call()
"""


def count(python, args, out_dir):
    out = os.path.join(out_dir, "cg.out")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          python, "-c", CHILD, *map(str, args)], capture_output=True,
                         text=True, env=env, cwd="/")
    return int(re.search(r"Collected : (\d+)", res.stderr).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", action="append", required=True)
    ap.add_argument("--quick", action="store_true", help="the two smallest sizes only")
    ap.add_argument("--sizes", help="indices into SIZES, comma-separated (default: all)")
    ap.add_argument("--calls", type=int, default=2)
    args = ap.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    if args.sizes:
        sizes = [SIZES[int(i)] for i in args.sizes.split(",")]
    print("| size | mode | " + " | ".join(f"env {i} (M instr/call)" for i in
                                             range(len(args.python)))
          + " | " + " | ".join(f"ratio {i}/0" for i in range(1, len(args.python))) + " |")
    print("|" + "---|" * (2 + 2 * len(args.python) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for train in (0, 1):
                per_call = []
                for py in args.python:
                    full = count(py, (*size, args.calls, train), tmp)
                    base = count(py, (*size, 0, train), tmp)
                    per_call.append((full - base) / args.calls / 1e6)
                ratios = [v / per_call[0] for v in per_call[1:]]
                print(f"| {','.join(map(str, size))} | {'train' if train else 'inference'} | "
                      + " | ".join(f"{v:.2f}" for v in per_call) + " | "
                      + " | ".join(f"{r:.3f}" for r in ratios) + " |", flush=True)
    for i, py in enumerate(args.python):
        print(f"env {i}: {py}")


if __name__ == "__main__":
    main()
