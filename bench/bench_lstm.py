#!/usr/bin/env python
"""Benchmark clstm's LSTM (or, with --model gru, its GRU) against its NumPy reference and
(if installed) torch.nn.LSTM / torch.nn.GRU and ONNX Runtime's LSTM / GRU operator.

    python bench/bench_lstm.py                       # every section (about 15 minutes)
    python bench/bench_lstm.py --quick               # every section, small sizes (< 1 minute)
    python bench/bench_lstm.py --sections grid,cell --threads 1 --json out.json \\
        --markdown out.md --plot out.png
    python bench/bench_lstm.py --model gru --sections grid,threads   # the GRU

--model gru (default lstm) runs the same sections on clstm.GRU against torch.nn.GRU and ONNX's
GRU operator with linear_before_reset=1 (PyTorch's "reset after" GRU), and against
clstm.reference's GRU once it has gru_forward/gru_backward (the first lines say whether it
was compared); the cell section, which times clstm.LSTMCell, is skipped with a note.

Sections (``--sections``, comma-separated; default all):
  grid      float32 inference and training step over streaming, small-batch, medium and
            large sizes (inference also by the layer's frozen snapshot, "frozen": weights
            packed once, as ONNX Runtime's session packs them)
  float64   the same at a few sizes in float64
  lengths   variable-length batches (PyTorch: pack_padded_sequence + pad_packed_sequence;
            ONNX Runtime: sequence_lens)
  bidirectional  float32, one bidirectional layer at streaming to medium batches
  cell      one step at B=1, I=H=128 from Python: LSTMCell and a one-step layer call, live
            and frozen
  threads   1 vs 2 (or --threads) threads for every implementation that has threads
  memory    peak memory of inference vs sequence length, each run in a fresh process
  sgemm     a 2048^3 SGEMM's GFLOP/s (SciPy's BLAS and PyTorch) against clstm's training
            step at T=50, B=64, I=H=512

All implementations run the same layer (weights copied from a clstm layer) on the same
input, in one process, interleaved: every repetition round times each implementation once
(in a rotating order), so machine noise hits all of them alike. Each reports the median over
its repetitions after one untimed warm-up call, whose output is also checked against
clstm's; before the first section every implementation runs untimed for a second (the
first run after a build is otherwise noisy). The first lines say what is measured, against
which peers and how to add the missing ones; the ratio column of each section says what
it divides, and the last lines whether clstm was faster. Every timed call starts after a short pause (SETTLE_SECONDS), so idle threads of
the previous implementation, which spin for a while after each call, do not steal the cores
of the next one. Two timings (--timing): "warm" (the default) calls the implementation once
more, untimed, right before the timed call, which then measures its steady state, as a loop
over batches sees it; "cold" times the first call after the pause, which on a virtual machine
pays for the idle vCPU's wake-up and for caches other guests have evicted (on the machines
here a call of a few microseconds takes 0.1-0.3 ms more, for every implementation). A
training step is forward + backward with dy = ones and all gradients (ONNX Runtime has no
training). Set ``CLSTM_BENCH_NO_TORCH=1`` / ``CLSTM_BENCH_NO_ORT=1`` to
run as if torch / onnxruntime were missing.
"""
import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy
from scipy.linalg import blas as scipy_blas
from threadpoolctl import threadpool_limits

import clstm
import peers
from clstm import _runtime

# clstm's own implementations: the live layer ("clstm") and its frozen snapshot
OWN = ("clstm", "frozen")
SETTLE_SECONDS = 0.05  # ONNX Runtime's and PyTorch's pools spin for more than 5 ms
# x T*B*H*(I+H) per direction: a multiply-add (2 FLOPs) per weight per gate block (LSTM 4,
# GRU 3) for inference; a training step adds the backward's two products of the same size
# (dx/dh and dW), 3x the forward's
FLOPS_PER_CELL = {"lstm": {"inference": 8, "train": 24},
                  "gru": {"inference": 6, "train": 18}}
MODES = ("inference", "train")
SECTIONS = ("grid", "float64", "lengths", "bidirectional", "cell", "threads", "memory",
            "sgemm")

# (T, B, I, H)
SIZES = {
    "grid": ([(100, 1, 64, 64), (100, 1, 128, 128), (100, 1, 256, 256),  # streaming
              (100, 16, 128, 128),                                         # small batch
              (100, 64, 256, 256),                                         # medium
              (50, 64, 512, 512), (50, 32, 1024, 1024),                    # large
              (200, 256, 128, 128),                 # large batch, small hidden (issue 19)
              (25, 32, 1024, 1024)],                # short sequence, large weights
             [(100, 1, 64, 64), (50, 16, 128, 128)]),
    "float64": ([(100, 1, 128, 128), (100, 16, 128, 128), (100, 64, 256, 256)],
                [(50, 8, 64, 64)]),
    "lengths": ([(100, 16, 128, 128), (100, 64, 256, 256), (50, 64, 512, 512)],
                [(50, 8, 64, 64)]),
    "bidirectional": ([(100, 1, 64, 64), (100, 1, 128, 128), (100, 4, 128, 128),
                       (100, 16, 128, 128), (100, 64, 256, 256)],
                      [(20, 2, 32, 32)]),
    "threads": ([(100, 1, 128, 128), (100, 16, 128, 128), (100, 64, 256, 256),
                 (50, 64, 512, 512)],
                [(50, 16, 64, 64)]),
}
CELL_SIZE = (128, 128)                     # I, H at B = 1
MEMORY = ((16, 128, 128), (100, 1000, 10000), (4, 64, 64), (100, 1000))  # B, I, H; Ts
SGEMM_N = (2048, 512)
SGEMM_TRAIN_SIZE = ((50, 64, 512, 512), (20, 16, 128, 128))
# Sections a model skips, and why (printed in their place).
SKIPPED = {"gru": {"cell": "times clstm.LSTMCell one step at a time; clstm has no GRU cell "
                           "class: skipped for --model gru"}}


# ------------------------------------------------------------------ timing
def measure(fns, repeats, budget, before=None, warm=True):
    """Warm up every callable once, then time them round-robin, rotating the order each
    round; ``before[name]()``, if given, runs untimed before each of name's calls, and
    with ``warm`` an untimed call of the same callable directly precedes each timed one. After
    the first round an implementation gets fewer repetitions (at least 3) if ``repeats``
    of them would take more than ``budget`` seconds. Returns ({name: [seconds]},
    {name: warm-up output})."""
    before = before or {}
    outputs = {}
    for name, fn in fns.items():
        before.get(name, lambda: None)()
        outputs[name] = fn()
    names, times, reps = list(fns), {name: [] for name in fns}, dict.fromkeys(fns, repeats)
    gc.disable()
    try:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if r < reps[name]:
                    before.get(name, lambda: None)()
                    time.sleep(SETTLE_SECONDS)
                    if warm:
                        fns[name]()
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t0)
            if r == 0:
                reps = {name: max(3, min(repeats, int(budget / ts[0])))
                        for name, ts in times.items()}
    finally:
        gc.enable()
    return times, outputs


def max_rel_diff(a, b):
    scale = max(1.0, float(np.max(np.abs(b))))
    return float(np.max(np.abs(np.asarray(a) - b))) / scale


def geomean(values):
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


class Bench:
    """Settings and results shared by the sections."""

    def __init__(self, args):
        self.quick = args.quick
        self.threads = args.threads
        self.repeats = args.repeats or (5 if args.quick else 15)
        self.warm = args.timing == "warm"
        self.budget = 1.0 if args.quick else 8.0  # seconds per (size, mode, implementation)
        self.model = args.model
        self.factories = peers.factories(args.threads, args.model)
        self.reference_missing = peers.reference_missing(args.model)
        self.torch = peers.load_torch()
        self.ort = peers.load_onnxruntime()
        self.rows = []
        self.mismatches = 0

    def layer(self, I, H, dtype=np.float32, bidirectional=False):
        """A one-layer clstm.LSTM or clstm.GRU (--model), seeded."""
        return peers.new_layer(self.model, I, H, dtype=dtype, seed=0,
                               bidirectional=bidirectional)

    def flops(self, mode, steps, I, H, directions=1):
        return FLOPS_PER_CELL[self.model][mode] * steps * H * (I + H) * directions

    def sizes(self, section):
        full, quick = SIZES[section]
        return quick if self.quick else full

    def record(self, section, **row):
        row = {"section": section, **row}
        self.rows.append(row)
        return row

    def compare(self, section, T, B, I, H, dtype, lengths=None, extra="", bidirectional=False):
        """Time every implementation on one size, both modes; rows with speed-ups."""
        rnn = self.layer(I, H, dtype, bidirectional)
        x = np.random.default_rng(1).standard_normal((T, B, I)).astype(dtype)
        tol = 1e-3 if dtype == np.float32 else 1e-9
        for mode in MODES:
            fns = {name: make(rnn, x, mode, lengths) for name, make in self.factories.items()}
            fns = {name: fn for name, fn in fns.items() if fn is not None}
            times, outputs = measure(fns, self.repeats, self.budget, warm=self.warm)
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            steps = T * B if lengths is None else int(np.sum(lengths))
            flops = self.flops(mode, steps, I, H, rnn.num_directions)
            for name, ts in times.items():
                diff = max_rel_diff(outputs[name], outputs["clstm"])
                row = self.record(section, size=f"{T},{B},{I},{H}{extra}", mode=mode,
                                  impl=name, reps=len(ts), times_ms=[t * 1e3 for t in ts],
                                  median_ms=medians[name] * 1e3, min_ms=min(ts) * 1e3,
                                  gflops=flops / medians[name] / 1e9,
                                  speedup=medians[name] / medians["clstm"],
                                  max_rel_diff=diff)
                self.print_row(row, diff > tol)

    def print_row(self, row, mismatch=False):
        self.mismatches += mismatch
        print(f"{row['size']:<22} {row['mode']:<9} {row['impl']:<13} {row['reps']:>4} "
              f"{row['median_ms']:>10.3f} {row['min_ms']:>9.3f} {row.get('gflops', 0):>8.2f} "
              f"{row.get('speedup', float('nan')):>8.2f}"
              + (f"  MISMATCH max rel diff {row['max_rel_diff']:.2e}" if mismatch else ""),
              flush=True)


HEADER = (f"{'T,B,I,H':<22} {'mode':<9} {'impl':<13} {'reps':>4} {'median ms':>10} "
          f"{'min ms':>9} {'GFLOP/s':>8} {'t/clstm':>8}")
_COMPARE_HEAD = ("# t/clstm = this row's median time / clstm's at the same size and mode: "
                 "above 1, clstm is faster by that factor\n" + HEADER)
# Each section's column heads, with what its ratio column means.
SECTION_HEADS = {
    "grid": _COMPARE_HEAD, "float64": _COMPARE_HEAD, "lengths": _COMPARE_HEAD,
    "bidirectional": _COMPARE_HEAD,
    "cell": "# t/LSTMCell = this row's time per step / clstm.LSTMCell's: above 1, "
            "clstm.LSTMCell is faster by that factor (below 1, this row is faster)\n"
            f"{'B, I, H':<22} {'mode':<9} {'impl':<23} {'reps':>4} {'median/step':>11} "
            f"{'min/step':>11}   t/LSTMCell",
    "threads": "# speed-up = this implementation's time at 1 thread / its time at n\n"
               f"{'T,B,I,H':<22} {'mode':<9} {'impl@threads':<16} {'reps':>4} "
               f"{'median ms':>10} {'min ms':>9}",
    "memory": "# peak extra resident memory of one inference call, in a fresh process",
    "sgemm": HEADER.rsplit(" ", 1)[0].rstrip(),
}
PEERS_INSTALL = "pip install torch==2.13.0 onnxruntime onnx"
MODEL_NAMES = {"lstm": "LSTM", "gru": "GRU"}


# ------------------------------------------------------------------ sections
def section_grid(bench):
    for T, B, I, H in bench.sizes("grid"):
        bench.compare("grid", T, B, I, H, np.float32)


def section_float64(bench):
    for T, B, I, H in bench.sizes("float64"):
        bench.compare("float64", T, B, I, H, np.float64)


def section_lengths(bench):
    """Row lengths uniform in [T/4, T]: a quarter of the steps are padding on average."""
    for T, B, I, H in bench.sizes("lengths"):
        lengths = np.random.default_rng(2).integers(T // 4, T + 1, B)
        lengths[0] = T
        bench.compare("lengths", T, B, I, H, np.float32, lengths,
                      extra=f" len {lengths.min()}..{T}")


def section_bidirectional(bench):
    for T, B, I, H in bench.sizes("bidirectional"):
        bench.compare("bidirectional", T, B, I, H, np.float32, bidirectional=True)


def section_cell(bench):
    """Streaming: one step at a time with the state fed back, timed over a loop of steps."""
    I, H = CELL_SIZE
    steps = 200 if bench.quick else 2000
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, I)).astype(np.float32)
    lstm = clstm.LSTM(I, H, seed=0)
    cell = clstm.LSTMCell(I, H)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()})
    h0 = np.zeros((1, H), np.float32)

    def clstm_cell():
        h, c = h0, h0
        for _ in range(steps):
            h, c = cell(x, (h, c))
        return h

    x3 = x[None]

    def clstm_layer():
        h, c = h0[None], h0[None]
        for _ in range(steps):
            _, (h, c) = lstm(x3, (h, c))
        return h[0]

    frozen = cell.freeze()

    def clstm_frozen():
        h, c = h0, h0
        for _ in range(steps):
            h, c = frozen(x, (h, c))
        return h

    frozen_layer = lstm.freeze()

    def clstm_frozen_layer():
        h, c = h0[None], h0[None]
        for _ in range(steps):
            _, (h, c) = frozen_layer(x3, (h, c))
        return h[0]

    fns = {"clstm.LSTMCell": clstm_cell, "clstm.LSTMCell.freeze()": clstm_frozen,
           "clstm.LSTM": clstm_layer, "clstm.LSTM.freeze()": clstm_frozen_layer}
    torch = bench.torch
    if torch is not None:
        tcell = torch.nn.LSTMCell(I, H)
        tcell.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict().items()})
        tlstm = torch.nn.LSTM(I, H)
        tlstm.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
        xt, ht = torch.from_numpy(x), torch.from_numpy(h0)

        def torch_cell():
            with torch.no_grad():
                h, c = ht, ht
                for _ in range(steps):
                    h, c = tcell(xt, (h, c))
            return h.numpy()

        def torch_layer():
            with torch.no_grad():
                h, c = ht[None], ht[None]
                for _ in range(steps):
                    _, (h, c) = tlstm(xt[None], (h, c))
            return h[0].numpy()
        fns.update({"torch.LSTMCell": torch_cell, "torch.LSTM": torch_layer})
    if bench.ort is not None:
        session = peers.onnx_session(*bench.ort, lstm, (1, 1, I), bench.threads,
                                     with_state=True)

        def ort_step():
            h, c = h0[None], h0[None]
            for _ in range(steps):
                _, h, c = session.run(None, {"X": x3, "initial_h": h, "initial_c": c})
            return h[0]
        fns["onnxruntime"] = ort_step
    times, outputs = measure(fns, bench.repeats, bench.budget, warm=bench.warm)
    us = {name: statistics.median(ts) / steps * 1e6 for name, ts in times.items()}
    for name, ts in times.items():
        diff = max_rel_diff(outputs[name], outputs["clstm.LSTMCell"])
        row = bench.record("cell", size=f"1,1,{I},{H} x{steps}", mode="step", impl=name,
                           reps=len(ts), median_us=us[name], min_us=min(ts) / steps * 1e6,
                           median_ms=us[name] / 1e3, min_ms=min(ts) / steps * 1e3,
                           speedup=us[name] / us["clstm.LSTMCell"], max_rel_diff=diff)
        print(f"{'B=1, I=H=' + str(H):<22} {'step':<9} {name:<23} {len(ts):>4} "
              f"{us[name]:>8.2f} us {row['min_us']:>8.2f} us   {row['speedup']:>10.2f}" + (f"  MISMATCH {diff:.2e}" if diff > 1e-4 else ""),
              flush=True)
        bench.mismatches += diff > 1e-4


def section_threads(bench):
    """Each implementation at 1 thread and at --threads (at least 2), interleaved."""
    counts = (1, max(2, bench.threads))
    torch = bench.torch
    for T, B, I, H in bench.sizes("threads"):
        rnn = bench.layer(I, H)
        x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
        for mode in MODES:
            fns, before = {}, {}
            for n in counts:
                fns[f"clstm@{n}"] = peers.make_clstm(rnn, x, mode)
                before[f"clstm@{n}"] = lambda n=n: clstm.set_num_threads(n)
                if torch is not None:
                    fns[f"torch@{n}"] = bench.factories["torch"](rnn, x, mode)
                    before[f"torch@{n}"] = lambda n=n: torch.set_num_threads(n)
                if bench.ort is not None and mode == "inference":
                    fns[f"onnxruntime@{n}"] = peers.ort_factory(*bench.ort, n)(rnn, x, mode)
            try:
                times, _ = measure(fns, bench.repeats, bench.budget, before, warm=bench.warm)
            finally:
                clstm.set_num_threads(bench.threads)
                if torch is not None:
                    torch.set_num_threads(bench.threads)
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            for name, ts in times.items():
                impl, n = name.split("@")
                row = bench.record("threads", size=f"{T},{B},{I},{H}", mode=mode, impl=name,
                                   reps=len(ts), median_ms=medians[name] * 1e3,
                                   min_ms=min(ts) * 1e3,
                                   scaling=medians[f"{impl}@1"] / medians[name])
                print(f"{row['size']:<22} {mode:<9} {name:<16} {len(ts):>4} "
                      f"{row['median_ms']:>10.3f} {row['min_ms']:>9.3f}   "
                      f"speed-up over 1 thread {row['scaling']:.2f}", flush=True)


def _peak_memory_child(model, impl, T, B, I, H, queue):
    """In a fresh process: extra resident memory at the peak of one inference call."""
    factories = peers.factories(1, model)
    clstm.set_num_threads(1)
    rnn = peers.new_layer(model, I, H, seed=0)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    fn = factories[impl](rnn, x, "inference", None)
    gc.collect()
    baseline = _resident_kib()
    try:  # reset the peak (VmHWM) to the current resident size (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    y = fn()
    queue.put((_peak_kib() - baseline) / 1024)
    del y


def _resident_kib():
    return _status_kib("VmRSS:")


def _peak_kib():
    return _status_kib("VmHWM:")


def _status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def section_memory(bench):
    """Peak extra resident memory of one inference call (output included) vs T."""
    if not os.path.exists("/proc/self/status"):
        print("# memory: needs Linux's /proc/self/status; skipped")
        return
    B, I, H = MEMORY[2] if bench.quick else MEMORY[0]
    lengths = MEMORY[3] if bench.quick else MEMORY[1]
    ctx = multiprocessing.get_context("spawn")
    for T in lengths:
        output_mib = T * B * H * 4 / 2**20
        for impl in bench.factories:
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_memory_child,
                               args=(bench.model, impl, T, B, I, H, queue))
            proc.start()
            peak = queue.get(timeout=600)
            proc.join()
            row = bench.record("memory", size=f"{T},{B},{I},{H}", mode="inference",
                               impl=impl, T=T, peak_mib=peak, output_mib=output_mib)
            print(f"{row['size']:<22} {'inference':<9} {impl:<13} peak extra "
                  f"{peak:9.2f} MiB (output {output_mib:.2f} MiB)", flush=True)


def section_sgemm(bench):
    """The GEMM ceiling: a square SGEMM's GFLOP/s and clstm's training-step GFLOP/s."""
    n = SGEMM_N[1] if bench.quick else SGEMM_N[0]
    rng = np.random.default_rng(4)
    a, b = (np.asfortranarray(rng.standard_normal((n, n)), np.float32) for _ in range(2))
    fns = {"scipy sgemm": lambda: scipy_blas.sgemm(1.0, a, b)}
    if bench.torch is not None:
        at, bt = bench.torch.from_numpy(np.ascontiguousarray(a)), \
            bench.torch.from_numpy(np.ascontiguousarray(b))
        fns["torch.mm"] = lambda: bench.torch.mm(at, bt)
    times, _ = measure(fns, bench.repeats, bench.budget, warm=bench.warm)
    best = {}
    for name, ts in times.items():
        gflops = 2 * n**3 / statistics.median(ts) / 1e9
        best[name] = gflops
        bench.record("sgemm", size=f"{n}^3", mode="sgemm", impl=name, reps=len(ts),
                     median_ms=statistics.median(ts) * 1e3, min_ms=min(ts) * 1e3,
                     gflops=gflops)
        print(f"{f'{n}^3':<22} {'sgemm':<9} {name:<13} {len(ts):>4} "
              f"{statistics.median(ts) * 1e3:>10.3f} {min(ts) * 1e3:>9.3f} {gflops:>8.2f}",
              flush=True)
    T, B, I, H = SGEMM_TRAIN_SIZE[1] if bench.quick else SGEMM_TRAIN_SIZE[0]
    rnn = bench.layer(I, H)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    times, _ = measure({"clstm": peers.make_clstm(rnn, x, "train")}, bench.repeats,
                       bench.budget, warm=bench.warm)
    gflops = bench.flops("train", T * B, I, H) / statistics.median(times["clstm"]) / 1e9
    fractions = {f"of_{k.split()[0]}": gflops / v for k, v in best.items()}
    bench.record("sgemm", size=f"{T},{B},{I},{H}", mode="train", impl="clstm",
                 reps=len(times["clstm"]), median_ms=statistics.median(times["clstm"]) * 1e3,
                 min_ms=min(times["clstm"]) * 1e3, gflops=gflops, **fractions)
    print(f"{f'{T},{B},{I},{H}':<22} {'train':<9} {'clstm':<13} {gflops:>8.2f} GFLOP/s = "
          + ", ".join(f"{v:.0%} {k[3:]}" for k, v in fractions.items()), flush=True)


# ------------------------------------------------------------------ summary and output
def summarise(bench):
    """Geometric means of clstm's speed-ups, per section and peer, plus the targets'
    quantities; printed and returned."""
    lines, summary = [], {}
    rows = bench.rows
    for section in ("grid", "float64", "lengths", "bidirectional"):
        for mode in MODES:
            mine = [r for r in rows if r["section"] == section and r["mode"] == mode]
            for impl in dict.fromkeys(r["impl"] for r in mine if r["impl"] not in OWN):
                ratios = [r["speedup"] for r in mine if r["impl"] == impl]
                summary[f"{section}/{mode}/vs_{impl}"] = geomean(ratios)
                lines.append(f"{section:<8} {mode:<9} vs {impl:<12} {geomean(ratios):6.2f}x "
                             f"(min {min(ratios):.2f}x, {len(ratios)} sizes)")
            # the target: against the faster of PyTorch and ONNX Runtime at each size
            best = {}
            for r in mine:
                if r["impl"] in ("torch", "onnxruntime"):
                    best[r["size"]] = min(best.get(r["size"], math.inf), r["speedup"])
            if best and section == "grid":
                ratios = list(best.values())
                summary[f"{section}/{mode}/vs_fastest_peer"] = geomean(ratios)
                lines.append(f"{section:<8} {mode:<9} vs fastest peer {geomean(ratios):6.2f}x "
                             f"(min {min(ratios):.2f}x)")
                # the frozen snapshot against the same peers (speed-ups are over the live
                # layer's time, so the frozen one's is peer / frozen = theirs / its own)
                frozen = {r["size"]: r["speedup"] for r in mine if r["impl"] == "frozen"}
                ratios = [best[k] / frozen[k] for k in best if k in frozen]
                if ratios:
                    summary[f"{section}/{mode}/frozen_vs_fastest_peer"] = geomean(ratios)
                    lines.append(f"{section:<8} {mode:<9} frozen vs fastest peer "
                                 f"{geomean(ratios):6.2f}x (min {min(ratios):.2f}x)")
    for r in rows:
        if r["section"] == "cell":
            summary[f"cell/{r['impl']}_us"] = r["median_us"]
        if r["section"] == "threads" and not r["impl"].endswith("@1"):
            summary[f"threads/{r['size']}/{r['mode']}/{r['impl']}"] = r["scaling"]
        if r["section"] == "sgemm" and r["impl"] == "clstm":
            summary.update({f"sgemm/train_{k}": v for k, v in r.items() if k.startswith("of_")})
    print("\n# geometric mean of clstm speed-up (time_other / time_clstm)")
    print("\n".join(lines))
    print("\n".join(verdict(bench)))
    return summary


def verdict(bench):
    """Plain lines: against each peer, at how many (size, mode) measurements clstm was
    faster, and where it was not."""
    rows = [r for r in bench.rows
            if r["section"] in ("grid", "float64", "lengths", "bidirectional")]
    lines = []
    for impl in dict.fromkeys(r["impl"] for r in rows if r["impl"] not in OWN):
        mine = [r for r in rows if r["impl"] == impl]
        lost = [f"{r['section']} {r['size']} {r['mode']} ({r['speedup']:.2f}x)" for r in mine
                if r["speedup"] < 1]
        lines.append(f"# verdict: clstm was faster than {impl} in {len(mine) - len(lost)} of "
                     f"{len(mine)} measurements" + (f"; slower in {', '.join(lost)}" if lost
                                                    else ""))
    if bench.torch is None or bench.ort is None:
        lines.append(f"# (not compared with {' and '.join(missing_peers(bench))}; to add "
                     f"the peers: {PEERS_INSTALL})")
    if bench.reference_missing is not None:
        lines.append(f"# (not compared with clstm's NumPy reference: "
                     f"{bench.reference_missing})")
    return lines


def missing_peers(bench):
    return [name for name, found in (("PyTorch", bench.torch), ("ONNX Runtime", bench.ort))
            if found is None]


def preamble(bench, args):
    """The first lines: what is measured, against what, and how to add missing peers."""
    name = MODEL_NAMES[bench.model]
    peers_found = []
    if bench.reference_missing is None:
        peers_found.append("clstm's NumPy reference (clstm.reference)")
    if bench.model == "lstm":
        peers_found.append("a hoisted-GEMM NumPy LSTM on NumPy's BLAS (numpy; one "
                           "direction, equal lengths)")
    if bench.torch is not None:
        peers_found.append(f"PyTorch {bench.torch.__version__} (torch.nn.{name})")
    if bench.ort is not None:
        peers_found.append(f"ONNX Runtime {bench.ort[1].__version__} (its {name} operator"
                           + (", linear_before_reset=1)" if bench.model == "gru" else ")"))
    lines = [
        f"# Measures: clstm's {name} layer, inference (also by its frozen snapshot, "
        "\"frozen\") and a training step (forward + backward), "
        f"on {args.threads} thread(s), median of {bench.repeats} timed calls per size "
        f"({'--quick: small sizes' if bench.quick else 'full sizes'}); the same weights and "
        "input for every implementation, each output checked against clstm's.",
        "# Against: " + (", ".join(peers_found) if peers_found
                         else "nothing (no peer available: clstm's timings alone)") + ".",
    ]
    missing = missing_peers(bench)
    if missing:
        disabled = [var for var in ("CLSTM_BENCH_NO_TORCH", "CLSTM_BENCH_NO_ORT")
                    if os.environ.get(var, "") not in ("", "0")]
        lines.append(f"# Not compared: {' and '.join(missing)} "
                     + (f"({', '.join(disabled)} set, or not installed)" if disabled
                        else "(not installed)")
                     + f". To add the peers: {PEERS_INSTALL}")
    if bench.reference_missing is not None:
        lines.append(f"# Not compared: clstm's NumPy reference ({bench.reference_missing}).")
    lines.append("# Ratios: t/clstm above 1 means clstm is faster; whether clstm won is "
                 "summed up in the verdict lines at the end.")
    return lines


def warm_up(bench, seconds=1.0):
    """Untimed calls of every implementation before the first section: the first run after
    a build otherwise pays for page faults, lazy imports, thread-pool start-up and a CPU
    still clocking up within its first timings."""
    rnn = bench.layer(32, 32)
    x = np.random.default_rng(0).standard_normal((20, 4, 32)).astype(np.float32)
    fns = [fn for make in bench.factories.values() for mode in MODES
           if (fn := make(rnn, x, mode)) is not None]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for fn in fns:
            fn()


def write_markdown(bench, path):
    """The results as Markdown tables, one per section, for docs/performance.md."""
    out = []
    by_section = {}
    for r in bench.rows:
        by_section.setdefault(r["section"], []).append(r)
    for section, rows in by_section.items():
        out.append(f"\n**{section}**"
                   + (f" ({MODEL_NAMES[bench.model]})\n" if bench.model != "lstm" else "\n"))
        if section in ("grid", "float64", "lengths", "bidirectional"):
            impls = list(dict.fromkeys(r["impl"] for r in rows))
            others = [i for i in impls if i != "clstm"]
            out.append("| T, B, I, H | mode | " + " | ".join(impls) + " | "
                       + " | ".join(f"vs {i}" for i in others) + " |")
            out.append("|---|---|" + "---:|" * (len(impls) + len(others)))
            for key in dict.fromkeys((r["size"], r["mode"]) for r in rows):
                cells = {r["impl"]: r for r in rows if (r["size"], r["mode"]) == key}
                out.append(f"| {key[0]} | {key[1]} | " + " | ".join(
                    f"{cells[i]['median_ms']:.2f} ({cells[i]['min_ms']:.2f})" if i in cells
                    else "—" for i in impls) + " | " + " | ".join(
                    f"{cells[i]['speedup']:.2f}x" if i in cells else "—" for i in others)
                    + " |")
        elif section == "cell":
            out.append("| implementation | µs per step (median) | min | LSTMCell faster by |")
            out.append("|---|---:|---:|---:|")
            out += [f"| {r['impl']} | {r['median_us']:.2f} | {r['min_us']:.2f} | "
                    f"{r['speedup']:.2f}x |" for r in rows]
        elif section == "threads":
            out.append("| T, B, I, H | mode | implementation | ms (median) | speed-up over "
                       "1 thread |")
            out.append("|---|---|---|---:|---:|")
            out += [f"| {r['size']} | {r['mode']} | {r['impl']} | {r['median_ms']:.2f} | "
                    f"{r['scaling']:.2f}x |" for r in rows]
        elif section == "memory":
            out.append("| T, B, I, H | implementation | peak extra MiB | output MiB |")
            out.append("|---|---|---:|---:|")
            out += [f"| {r['size']} | {r['impl']} | {r['peak_mib']:.2f} | "
                    f"{r['output_mib']:.2f} |" for r in rows]
        elif section == "sgemm":
            out.append("| what | ms (median) | GFLOP/s | share of SGEMM |")
            out.append("|---|---:|---:|---|")
            out += [f"| {r['impl']} {r['size']} | {r['median_ms']:.2f} | {r['gflops']:.1f} | "
                    + ", ".join(f"{v:.0%} of {k[3:]}" for k, v in r.items()
                                if k.startswith("of_")) + " |" for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"# wrote {path}")


def write_plot(bench, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed: no plot written (pip install matplotlib)")
        return
    panels = [s for s in ("grid", "float64", "lengths", "threads", "memory")
              if any(r["section"] == s for r in bench.rows)]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, section in zip(axes[:, 0], panels):
        rows = [r for r in bench.rows if r["section"] == section]
        if section == "memory":
            for impl in dict.fromkeys(r["impl"] for r in rows):
                pts = [(r["T"], r["peak_mib"]) for r in rows if r["impl"] == impl]
                ax.plot(*zip(*pts), marker="o", label=impl)
            ax.set(xscale="log", yscale="log", xlabel="T", ylabel="peak extra MiB",
                   title="memory: one inference call")
        else:
            value = "scaling" if section == "threads" else "speedup"
            # bars: speed-ups against each peer, or each implementation's own scaling
            rows = [r for r in rows if r["impl"] != "clstm" and not r["impl"].endswith("@1")]
            keys = list(dict.fromkeys(f"{r['size']}\n{r['mode']}" for r in rows))
            impls = list(dict.fromkeys(r["impl"] for r in rows))
            width = 0.8 / max(1, len(impls))
            for k, impl in enumerate(impls):
                vals = {f"{r['size']}\n{r['mode']}": r[value] for r in rows
                        if r["impl"] == impl}
                ax.bar([i + k * width for i, key in enumerate(keys) if key in vals],
                       [vals[key] for key in keys if key in vals], width, label=impl)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys, fontsize=6)
            ax.set(yscale="log", title=section, ylabel="speed-up over 1 thread"
                   if section == "threads" else "clstm faster by (x)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"# wrote {path}")


def machine_info(bench):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": bench.threads,
            "timing": "warm" if bench.warm else "cold",
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "clstm": clstm.__version__,
            "openmp": clstm.openmp_enabled(), "kernel": _runtime.kernel_isa(),
            "torch": bench.torch.__version__ if bench.torch else None,
            "onnxruntime": bench.ort[1].__version__ if bench.ort else None}


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def section_list(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown sections {unknown}; choose from "
                                         f"{', '.join(SECTIONS)}")
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--model", choices=peers.MODELS, default="lstm",
                    help="the layer to benchmark: clstm.LSTM (default) or clstm.GRU")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    ap.add_argument("--sections", type=section_list, default=list(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=positive, default=clstm.get_num_threads())
    ap.add_argument("--repeats", type=positive, help="timed repetitions (default 15, quick 5)")
    ap.add_argument("--timing", choices=("warm", "cold"), default="warm",
                    help="warm: time a call that directly follows one of the same kind "
                         "(default); cold: the first call after a pause")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--markdown", metavar="PATH", help="also write Markdown tables")
    ap.add_argument("--plot", metavar="PATH", help="also draw a PNG chart (needs matplotlib)")
    args = ap.parse_args()

    bench = Bench(args)
    clstm.set_num_threads(args.threads)
    # The reference's matmuls and SciPy's SGEMM get the same number of BLAS threads
    # (threadpoolctl is a dependency of clstm's: a missing one fails here, not silently).
    threadpool_limits(limits=args.threads, user_api="blas")
    if bench.torch is not None:
        bench.torch.set_num_threads(args.threads)
    info = machine_info(bench)
    print("\n".join(preamble(bench, args)))
    print("# machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    warm_up(bench)
    for name in args.sections:
        skipped = SKIPPED.get(args.model, {}).get(name)
        if skipped:
            print(f"\n## {name}\n# {name}: {skipped}", flush=True)
            continue
        print(f"\n## {name}\n{SECTION_HEADS[name]}", flush=True)
        globals()[f"section_{name}"](bench)
        gc.collect()
    summary = summarise(bench)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": bench.rows,
                       "summary": summary}, f, indent=1)
        print(f"# wrote {args.json}")
    if args.markdown:
        write_markdown(bench, args.markdown)
    if args.plot:
        write_plot(bench, args.plot)
    if bench.mismatches:
        print(f"# {bench.mismatches} outputs disagreed with clstm's", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
