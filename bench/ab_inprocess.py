#!/usr/bin/env python
"""Compare two clstm builds in one process, call by call: finer than ab_compare.py.

    python bench/ab_inprocess.py --build <site-packages>/clstm --build <other>/clstm \\
        --threads 2 --rounds 21 --sizes 25,32,1024,1024 200,256,128,128

Each --build is an installed clstm package directory (e.g. one venv's, one per build).
Each is copied into a temporary directory under a name of the same length ("clsta",
"clstb": the compiled modules carry their package's name, which is replaced in place), so
both import side by side and share one OpenMP runtime. Every round then times one call of
each build, alternating which goes first, at every size and mode. The core's clock here
drifts by 3-12% over minutes (docs/performance.md), which between processes hides a
change of a few percent; within a round both builds see the same clock, so the median of
the per-round ratios resolves ~1%.

Prints, per size and mode, each build's median time (ms) and the median of the ratios
second/first (below 1: the second is faster).
"""
import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


def alias(src, dest, name):
    """A copy of the package at src importable as `name` (5 letters, as "clstm")."""
    out = os.path.join(dest, name)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
    for f in os.listdir(out):
        p = os.path.join(out, f)
        if f.endswith(".py"):
            with open(p) as fh:
                text = re.sub(r"\bclstm\b", name, fh.read())
            with open(p, "w") as fh:
                fh.write(text)
        elif f.endswith(".so"):
            with open(p, "rb") as fh:
                data = fh.read().replace(b"clstm.", name.encode() + b".")
            with open(p, "wb") as fh:
                fh.write(data)


def calls(pkg, T, B, I, H, dtype):
    """mode -> a function running one call of that mode ("cell": T steps of a frozen
    LSTMCell from Python, the state fed back; "lengths": a training step on rows of
    lengths uniform in [T/4, T], as bench_lstm.py's lengths section; "bidirectional": a
    bidirectional layer's training step)."""
    m = pkg.LSTM(I, H, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(max(1, T // 4), T + 1, B)
    frozen = m.freeze()
    cell = pkg.LSTMCell(I, H, dtype=dtype, seed=0).freeze()
    both = pkg.LSTM(I, H, dtype=dtype, seed=0, bidirectional=True)
    dy = np.ones((T, B, H), dtype)

    def train(model=m, dy=dy, **kw):
        _, backward = model.forward_train(x, **kw)
        backward(dy)

    def steps():
        state = None
        for t in range(T):
            state = cell(x[t], state)
    return {"inference": lambda: m(x), "frozen inference": lambda: frozen(x), "train": train,
            "cell": steps, "lengths": lambda: train(lengths=lengths),
            "bidirectional": lambda: train(both, np.ones((T, B, 2 * H), dtype))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="append", required=True,
                    help="an installed clstm package directory (give two)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--sizes", nargs="+", metavar="T,B,I,H",
                    default=["25,32,1024,1024", "50,64,512,512", "200,256,128,128"])
    ap.add_argument("--modes", nargs="+", default=["inference", "frozen inference", "train"],
                    help="any of inference, 'frozen inference', train, cell, lengths, "
                    "bidirectional")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    if len(args.build) != 2:
        ap.error("give --build twice")
    tmp = tempfile.mkdtemp()
    try:
        names = ["clsta", "clstb"]
        for src, name in zip(args.build, names):
            alias(os.path.abspath(src), tmp, name)
        sys.path.insert(0, tmp)
        pkgs = [importlib.import_module(n) for n in names]
        for pkg in pkgs:
            pkg.set_num_threads(args.threads)
        print(f"{args.dtype}, threads={args.threads}, rounds={args.rounds}; medians (ms), "
              "ratio = median over rounds of second/first")
        print("| size | mode | first | second | ratio |\n|---|---|---:|---:|---:|")
        for size in args.sizes:
            T, B, I, H = (int(v) for v in size.split(","))
            fns = [calls(pkg, T, B, I, H, np.dtype(args.dtype)) for pkg in pkgs]
            for mode in args.modes:
                for f in fns:  # warm: scratch, pools, first-touch pages
                    f[mode]()
                    f[mode]()
                times = [[], []]
                for r in range(args.rounds):
                    for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                        time.sleep(0.02)
                        t = time.perf_counter()
                        fns[k][mode]()
                        times[k].append(time.perf_counter() - t)
                ratio = statistics.median(b / a for a, b in zip(*times))
                print(f"| {size} | {mode} | {statistics.median(times[0]) * 1e3:.2f} | "
                      f"{statistics.median(times[1]) * 1e3:.2f} | {ratio:.3f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for i, src in enumerate(args.build):
        print(f"{['first', 'second'][i]}: {src}")


if __name__ == "__main__":
    main()
