#!/usr/bin/env python
"""Where a layer call's time goes: builds a copy of clstm with timers around the phases of
the driver's forward (the hoisted input projection, the time loop) and backward (the time
loop, packing the rows, the weight gradients, dx), into a temporary directory (the
installed clstm is not touched), and runs it on the given sizes.

    python bench/phase_times.py --threads 1 --sizes 200,256,128,128 50,64,512,512

With --frozen it times the layer's frozen snapshot's inference (the forward's two phases)
instead of a training step.

Prints, per size, the best of --rounds calls of each phase in ms and its GFLOP/s (the
phases' multiply-adds: 2*N*G*I for the projection and dx, 2*N*G*P for each time loop's
products, 2*N*G*(I+P) for the weight gradients). The timers cost nothing measurable; the
numbers are for comparing phases and builds, not for the headline tables (bench_lstm.py).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TIMERS = '''
cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int, timespec*)

cdef double phase_clock[8]
cdef double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(1, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9

def phase_times():
    return [phase_clock[k] for k in range(8)]

def reset_phase_times():
    for k in range(8):
        phase_clock[k] = 0

'''

# (anchor in _recurrent.pyx, text inserted before it)
PATCHES = [
    ("cdef bint forward_impl(", TIMERS),
    ("        par_pgemm(s.n_threads, step_row(off, B, t1) - step_row(off, B, t0), G, d.n_in,",
     "        phase_clock[7] = now()\n"),
    ("        run_time_loop(gates, d, p, s, cell, False, t0, t1, row0)\n",
     "        phase_clock[0] += now() - phase_clock[7]\n        phase_clock[7] = now()\n"),
    ("        t0 = t1\n        if t0 < d.T and watching",
     "        phase_clock[1] += now() - phase_clock[7]\n"),
    ("    run_time_loop(dG, d, p, s, cell, True, 0, d.T, 0)\n",
     "    phase_clock[7] = now()\n"),
    ("    if cell.state_is_output:  # dh0",
     "    phase_clock[2] += now() - phase_clock[7]\n    phase_clock[7] = now()\n"),
    ("    weight_grads(dG, d, p, s, cell, x_rows, h0_rows, h_rows, bs0)\n",
     "    phase_clock[3] += now() - phase_clock[7]\n    phase_clock[7] = now()\n"),
    ("    if p.w_hr != NULL:\n        par_gemm(s.n_threads, True, False, P, d.H, N,",
     "    phase_clock[4] += now() - phase_clock[7]\n    phase_clock[7] = now()\n"),
]
PHASES = ["forward: input projection", "forward: time loop", "backward: time loop",
          "backward: packing x, h", "backward: weight gradients", "backward: dx (and dw_hr)"]

CHILD = r"""
import json, sys, time
import numpy as np
import clstm
from clstm import _recurrent
sizes, threads, rounds, frozen = json.loads(sys.argv[1])
clstm.set_num_threads(threads)
out = []
for T, B, I, H in sizes:
    m = clstm.LSTM(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)
    snapshot = m.freeze()
    best, total = None, None
    for r in range(rounds + 1):
        time.sleep(0.05)
        _recurrent.reset_phase_times()
        t = time.perf_counter()
        if frozen:
            snapshot(x)
        else:
            _, backward = m.forward_train(x)
            backward(dy)
        elapsed = time.perf_counter() - t
        if r and (total is None or elapsed < total):
            total, best = elapsed, _recurrent.phase_times()
    out.append(dict(size=[T, B, I, H], total=total, phases=best))
print(json.dumps(out))
"""


def build(target):
    src = tempfile.mkdtemp(prefix="clstm-phases-src-")
    shutil.copytree(ROOT, src, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("build", ".git", "*.so", "__pycache__"))
    path = os.path.join(src, "src", "clstm", "_recurrent.pyx")
    text = open(path).read()
    for anchor, insert in PATCHES:
        if text.count(anchor) != 1:
            sys.exit(f"phase_times.py: the driver changed; update the anchor {anchor!r}")
        text = text.replace(anchor, insert + anchor)
    # dx's phase ends where backward_impl returns (dx is then done, after the loop or in it)
    anchor = "        return\n    # dx = the sum over the input side's runs"
    if text.count(anchor) != 1:
        sys.exit(f"phase_times.py: the driver changed; update the anchor {anchor!r}")
    text = text.replace(anchor, "        phase_clock[5] += now() - phase_clock[7]\n" + anchor)
    open(path, "w").write(text)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                    src], check=True)
    shutil.rmtree(src)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["200,256,128,128", "50,64,512,512"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frozen", action="store_true",
                    help="time the layer's frozen snapshot's inference instead of training")
    args = ap.parse_args()
    sizes = [[int(v) for v in s.split(",")] for s in args.sizes]
    target = tempfile.mkdtemp(prefix="clstm-phases-")
    try:
        build(target)
        env = dict(os.environ, PYTHONPATH=target)
        res = subprocess.run([sys.executable, "-c", CHILD,
                              json.dumps([sizes, args.threads, args.rounds, args.frozen])],
                             check=True, capture_output=True, text=True, env=env, cwd=target)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    calls = "frozen inference" if args.frozen else "forward_train + backward"
    print(f"threads={args.threads}, best of {args.rounds} {calls} calls; ms (GFLOP/s)")
    for row in json.loads(res.stdout):
        T, B, I, H = row["size"]
        N, G = T * B, 4 * H
        flops = [2 * N * G * I, 2 * N * G * H, 2 * N * G * H, 0, 2 * N * G * (I + H),
                 2 * N * G * I]
        phases = list(row["phases"][:len(PHASES)])
        in_loop = phases[5] < 1e-6  # dx ran in the backward time loop (Schedule.step_dx)
        if in_loop:
            flops[2] += flops[5]
        print(f"\nT={T}, B={B}, I={I}, H={H}: {calls} {row['total'] * 1e3:.1f} ms"
              + ("" if args.frozen else f", backward {sum(phases[2:]) * 1e3:.1f} ms"))
        if args.frozen:
            phases, flops = phases[:2], flops[:2]
        for k, (name, t, f) in enumerate(zip(PHASES, phases, flops)):
            if k == 2:
                name = "backward: time loop" + (" and dx" if in_loop else "")
            if k == 5 and in_loop:
                print(f"  {name:32s} (in the time loop)")
                continue
            rate = f" ({f / t / 1e9:.0f} GFLOP/s)" if f and t > 0 else ""
            print(f"  {name:32s} {t * 1e3:8.1f}{rate}")


if __name__ == "__main__":
    main()
