#!/usr/bin/env python
"""Compare clstm builds installed in two (or more) Python environments, interleaved: a
refactor's before/after measurement.

    python bench/ab_compare.py --python /path/to/venv-before/bin/python \\
        --python /path/to/venv-after/bin/python --threads 2 --rounds 7

Each round runs one child process per environment, in a rotating order, and each child
times every size once (inference, training step, and one streaming step of LSTMCell and of
a T=1 LSTM call) after a warm-up; the report gives each size's median over the rounds and
the ratio after/before. Machine noise then hits every build alike (a whole-suite run of one
build, then the other, does not give that). Only clstm runs here: no peers, no reference.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

# (T, B, I, H): bench_lstm.py's grid
SIZES = [(100, 1, 64, 64), (100, 1, 128, 128), (100, 1, 256, 256), (100, 16, 128, 128),
         (100, 64, 256, 256), (50, 64, 512, 512), (50, 32, 1024, 1024), (200, 256, 128, 128),
         (25, 32, 1024, 1024)]

CHILD = r"""
import json, sys, time
import numpy as np
import clstm
sizes, threads, repeats = json.loads(sys.argv[1])
clstm.set_num_threads(threads)


def timed(fn, n):
    fn()
    best = []
    for _ in range(n):
        time.sleep(0.02)  # let other pools settle, as bench_lstm.py
        fn()  # warm: the timed call follows an untimed one (bench_lstm.py's default)
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return sorted(best)[len(best) // 2]


out = {}
for T, B, I, H in sizes:
    m = clstm.LSTM(I, H, dtype=np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)

    def train():
        (y, _), backward = m.forward_train(x)
        backward(np.ones_like(y))

    out[f"{T},{B},{I},{H} inference"] = timed(lambda: m(x), repeats)
    if hasattr(m, "freeze"):
        frozen_m = m.freeze()
        out[f"{T},{B},{I},{H} frozen inference"] = timed(lambda: frozen_m(x), repeats)
    out[f"{T},{B},{I},{H} train"] = timed(train, repeats)
cell = clstm.LSTMCell(128, 128, dtype=np.float32, seed=0)
frozen = cell.freeze()
x1 = np.zeros((1, 128), np.float32)
state = (np.zeros((1, 128), np.float32), np.zeros((1, 128), np.float32))
layer = clstm.LSTM(128, 128, dtype=np.float32, seed=0)
xs = np.zeros((1, 1, 128), np.float32)
s1 = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))


def loop(fn, n=2000):
    def run():
        for _ in range(n):
            fn()
    return lambda: run()


n = 2000
out["cell step B=1 H=128 (us)"] = timed(loop(lambda: cell(x1, state), n), 3) / n
out["frozen cell step B=1 H=128 (us)"] = timed(loop(lambda: frozen(x1, state), n), 3) / n
out["LSTM T=1 call B=1 H=128 (us)"] = timed(loop(lambda: layer(xs, s1), n), 3) / n
two = clstm.LSTM(128, 128, num_layers=2, dtype=np.float32, seed=0)
s2 = (np.zeros((2, 1, 128), np.float32), np.zeros((2, 1, 128), np.float32))
out["2-layer LSTM T=1 call B=1 H=128 (us)"] = timed(loop(lambda: two(xs, s2), n), 3) / n
if hasattr(two, "freeze"):
    two_frozen = two.freeze()
    out["2-layer frozen LSTM T=1 call B=1 H=128 (us)"] = timed(
        loop(lambda: two_frozen(xs, s2), n), 3) / n
big = clstm.LSTMCell(512, 512, dtype=np.float32, seed=0)
xb = np.zeros((256, 512), np.float32)
sb = (np.zeros((256, 512), np.float32), np.zeros((256, 512), np.float32))
out["cell step B=256 H=512"] = timed(lambda: big(xb, sb), repeats)
big_frozen = big.freeze()
out["frozen cell step B=256 H=512"] = timed(lambda: big_frozen(xb, sb), repeats)
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", action="append", required=True,
                    help="interpreter of an environment with clstm installed (repeat)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per size per child")
    ap.add_argument("--quick", action="store_true", help="the two smallest sizes only")
    ap.add_argument("--sizes", nargs="+", metavar="T,B,I,H",
                    help="these sizes instead of the grid")
    args = ap.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    payload = json.dumps([sizes, args.threads, args.repeats])
    runs = {py: [] for py in args.python}
    for r in range(args.rounds):
        order = args.python[r % len(args.python):] + args.python[:r % len(args.python)]
        for py in order:
            time.sleep(0.2)
            res = subprocess.run([py, "-c", CHILD, payload], capture_output=True, text=True,
                                 cwd="/", check=True)
            runs[py].append(json.loads(res.stdout))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = args.python[0]
    keys = [k for k in runs[base][0] if all(k in run for py in args.python for run in runs[py])]
    med = {py: {k: statistics.median(run[k] for run in runs[py]) for k in keys}
           for py in args.python}
    print(f"threads={args.threads}, rounds={args.rounds}; medians (ms; us for the steps), "
          "ratio = this / first")
    header = "| size | " + " | ".join(f"env {i}" for i in range(len(args.python))) + " | " \
        + " | ".join(f"ratio {i}/0" for i in range(1, len(args.python))) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(args.python) - 1))
    for k in keys:
        scale = 1e6 if "(us)" in k else 1e3
        vals = [med[py][k] * scale for py in args.python]
        ratios = [v / vals[0] for v in vals[1:]]
        print(f"| {k} | " + " | ".join(f"{v:.3g}" for v in vals) + " | "
              + " | ".join(f"{r:.3f}" for r in ratios) + " |")
    for i, py in enumerate(args.python):
        print(f"env {i}: {py}")


if __name__ == "__main__":
    main()
