#!/usr/bin/env python
"""Benchmark clstm against the NumPy reference and (if installed) torch.nn.LSTM and ONNX
Runtime's LSTM operator.

    python bench/bench_lstm.py             # full size grid (a few minutes)
    python bench/bench_lstm.py --quick     # two small sizes, few repetitions
    python bench/bench_lstm.py --json out.json --threads 1 --dtype float64

All implementations run the same layer (weights copied from the clstm layer) on the same
input, in one process, interleaved: every repetition round times each implementation once
(in a rotating order), so machine noise hits all of them alike. Each reports the median over
its repetitions after one untimed warm-up call, whose output is also checked against
clstm's. Every timed call starts after a short pause (SETTLE_SECONDS), so idle OpenMP
threads of the previous implementation, which spin for a while after each call, do not
steal the cores of the next one. Modes: ``inference`` (forward only) and ``train``
(forward + backward with dy = ones, all gradients; ONNX Runtime has no training).
Set ``CLSTM_BENCH_NO_TORCH=1`` / ``CLSTM_BENCH_NO_ORT=1`` to run as if torch / onnxruntime
were missing.
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import scipy

import clstm
from clstm import reference

FULL_SIZES = [(100, 1, 64, 64), (100, 1, 128, 128), (100, 1, 256, 256),  # streaming
              (100, 16, 128, 128),                                         # small batch
              (100, 64, 256, 256),                                         # medium
              (50, 64, 512, 512), (50, 32, 1024, 1024)]                    # large
QUICK_SIZES = [(100, 1, 64, 64), (50, 16, 128, 128)]
MODES = ("inference", "train")
SETTLE_SECONDS = 0.05  # ONNX Runtime and PyTorch pools spin for more than 5 ms
FLOPS_PER_CELL = {"inference": 8, "train": 24}  # x T*B*H*(I+H)


def load_torch():
    if os.environ.get("CLSTM_BENCH_NO_TORCH", "") not in ("", "0"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def load_onnxruntime():
    if os.environ.get("CLSTM_BENCH_NO_ORT", "") not in ("", "0"):
        return None
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnx, onnxruntime


# ------------------------------------------------------------------ implementations
# Each factory takes (lstm, x, mode) and returns a zero-argument callable that runs one
# inference forward or one training step and returns a NumPy array to check: y for
# inference, dx for a training step.

def make_clstm(lstm, x, mode):
    dy = np.ones((x.shape[0], x.shape[1], lstm.hidden_size), lstm.dtype)
    if mode == "inference":
        return lambda: lstm(x)[0]

    def step():
        (y, _), backward = lstm.forward_train(x)
        return backward(dy)[0]
    return step


def make_reference(lstm, x, mode):
    p = lstm.state_dict()
    weights = (p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    h0 = np.zeros((x.shape[1], lstm.hidden_size), lstm.dtype)
    if mode == "inference":
        return lambda: reference.lstm_forward(x, *weights, h0, h0)[0]

    def step():
        y, _, _, cache = reference.lstm_forward(x, *weights, h0, h0, train=True)
        return reference.lstm_backward(cache, np.ones_like(y)).dx
    return step


def torch_factory(torch):
    def make_torch(lstm, x, mode):
        dtype = torch.float64 if lstm.dtype == np.float64 else torch.float32
        module = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, dtype=dtype)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
        xt = torch.from_numpy(x)
        if mode == "inference":
            def forward():
                with torch.no_grad():
                    return module(xt)[0].numpy()
            return forward
        xt.requires_grad_(True)
        dy = torch.ones(x.shape[0], x.shape[1], lstm.hidden_size, dtype=dtype)

        def step():
            xt.grad = None
            module.zero_grad(set_to_none=True)
            module(xt)[0].backward(dy)
            return xt.grad.numpy()
        return step
    return make_torch


def ort_factory(onnx, onnxruntime, threads):
    """ONNX Runtime's CPU LSTM operator in a one-node model, inference only."""
    from onnx import TensorProto, helper, numpy_helper

    def make_ort(lstm, x, mode):
        if mode != "inference":
            return None
        H = lstm.hidden_size
        p = lstm.state_dict()
        # PyTorch stacks gates i, f, g, o; ONNX wants i, o, f, c.
        order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 3, 1, 2)])
        W = p["weight_ih_l0"][order][None]
        R = p["weight_hh_l0"][order][None]
        Bias = np.concatenate([p["bias_ih_l0"][order], p["bias_hh_l0"][order]])[None]
        elem = TensorProto.DOUBLE if lstm.dtype == np.float64 else TensorProto.FLOAT
        node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
        graph = helper.make_graph(
            [node], "lstm", [helper.make_tensor_value_info("X", elem, list(x.shape))],
            [helper.make_tensor_value_info("Y", elem, None)],
            [numpy_helper.from_array(a, name) for a, name in ((W, "W"), (R, "R"),
                                                              (Bias, "B"))])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"X": x})[0][:, 0]
    return make_ort


# ------------------------------------------------------------------ timing
def measure(fns, repeats, budget):
    """Warm up every callable once, then time them round-robin, rotating the order each
    round. After the first round an implementation gets fewer repetitions (at least 3) if
    ``repeats`` of them would take more than ``budget`` seconds. Returns
    ({name: [seconds]}, {name: warm-up output})."""
    outputs = {name: fn() for name, fn in fns.items()}
    names, times, reps = list(fns), {name: [] for name in fns}, dict.fromkeys(fns, repeats)
    gc.disable()
    try:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if r < reps[name]:
                    time.sleep(SETTLE_SECONDS)
                    t0 = time.perf_counter()
                    fns[name]()
                    times[name].append(time.perf_counter() - t0)
            if r == 0:
                reps = {name: max(3, min(repeats, int(budget / ts[0])))
                        for name, ts in times.items()}
    finally:
        gc.enable()
    return times, outputs


def machine_info(threads, torch):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "torch": torch.__version__ if torch else None,
            "clstm": clstm.__version__, "openmp": clstm.openmp_enabled()}


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small sizes, few repetitions")
    ap.add_argument("--threads", type=positive, default=clstm.get_num_threads())
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeats", type=positive, help="timed repetitions (default 15, quick 5)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 15)
    budget = 1.0 if args.quick else 8.0  # seconds per (size, mode, implementation)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    dtype = np.dtype(args.dtype)

    torch = load_torch()
    clstm.set_num_threads(args.threads)
    try:  # the reference's matmuls get the same number of BLAS threads
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    except ImportError:
        pass
    factories = {"clstm": make_clstm, "reference": make_reference}
    if torch is not None:
        torch.set_num_threads(args.threads)
        factories["torch"] = torch_factory(torch)
    ort = load_onnxruntime()
    if ort is not None:
        factories["onnxruntime"] = ort_factory(*ort, args.threads)

    info = machine_info(args.threads, torch)
    info["onnxruntime"] = ort[1].__version__ if ort else None
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if torch is None:
        print("# torch not found (or CLSTM_BENCH_NO_TORCH set): comparing with the reference only")
    tol = 1e-3 if dtype == np.float32 else 1e-9
    fmt = "{:<18} {:<9} {:<11} {:>4} {:>10} {:>9} {:>8} {:>8}"
    print(fmt.format("T,B,I,H", "mode", "impl", "reps", "median ms", "min ms", "GFLOP/s",
                     "clstm x"))
    results = []
    for T, B, I, H in sizes:
        lstm = clstm.LSTM(I, H, dtype=dtype, seed=0)
        x = np.random.default_rng(1).standard_normal((T, B, I)).astype(dtype)
        for mode in MODES:
            fns = {name: make(lstm, x, mode) for name, make in factories.items()}
            fns = {name: fn for name, fn in fns.items() if fn is not None}
            times, outputs = measure(fns, repeats, budget)
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            flops = FLOPS_PER_CELL[mode] * T * B * H * (I + H)
            for name, ts in times.items():
                scale = max(1.0, float(np.max(np.abs(outputs["clstm"]))))
                diff = float(np.max(np.abs(outputs[name] - outputs["clstm"]))) / scale
                row = {"T": T, "B": B, "I": I, "H": H, "mode": mode, "impl": name,
                       "reps": len(ts), "times_ms": [t * 1e3 for t in ts],
                       "median_ms": medians[name] * 1e3, "min_ms": min(ts) * 1e3,
                       "gflops": flops / medians[name] / 1e9,
                       "speedup": medians[name] / medians["clstm"], "max_rel_diff": diff}
                results.append(row)
                print(fmt.format(f"{T},{B},{I},{H}", mode, name, row["reps"],
                                 f"{row['median_ms']:.2f}", f"{row['min_ms']:.2f}",
                                 f"{row['gflops']:.2f}", f"{row['speedup']:.2f}")
                      + (f"  MISMATCH max rel diff {diff:.2e}" if diff > tol else ""),
                      flush=True)
            gc.collect()

    print("\n# geometric mean of clstm speed-up (time_other / time_clstm)")
    summary = {}
    for mode in MODES:
        for name in factories:
            if name != "clstm":
                ratios = [r["speedup"] for r in results
                          if r["mode"] == mode and r["impl"] == name]
                if ratios:
                    summary[f"{mode}/vs_{name}"] = geomean(ratios)
                    print(f"{mode:<9} vs {name:<11} {geomean(ratios):6.2f}x  over "
                          f"{len(ratios)} sizes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results,
                       "geomean_speedup": summary}, f, indent=1)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
