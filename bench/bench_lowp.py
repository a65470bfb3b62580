"""int8 and bfloat16 inference (`model.freeze(weights=...)`) against the quantised peers.

    python bench/bench_lowp.py [--threads 2 1] [--rounds 5] [--sizes all|quick] [--micro]
                               [--streaming] [--markdown out.md]

Measures one inference call (T, B, I, H; float32 in and out, one layer, zero state) of:
clstm fp32 (frozen), clstm int8, clstm bfloat16, ONNX Runtime's DynamicQuantizeLSTM
(com.microsoft; int8 W/R transposed (I, 4H)/(H, 4H), per-column scales) and PyTorch's
``quantize_dynamic`` qint8, on the same weights and input. Calls are interleaved (one call
of each implementation in turn, ``--rounds`` rounds of ``--inner`` calls each) and the
medians are reported, with each output's max |y - y_fp32| against clstm fp32. A peer that
is not installed is left out (``pip install torch==2.13.0 onnxruntime onnx``).

``--streaming``: one step at B = 1 from Python (a frozen LSTMCell(128, 128), a frozen
2-layer LSTM with H = 512), fp32 / int8 / bf16.

``--micro``: the low-precision GEMM alone against the float32 packed GEMM at the per-step
shapes (n = 1..64 rows, K = H, N = 4H), one thread. The kernel is the process's: on an AMX
machine, ``CLSTM_ISA=vnni512`` times the AVX-512 VNNI kernel instead (and the whole-model
tables likewise), for before/after comparisons on one machine. There the bfloat16
products run on the AMX tiles too unless ``CLSTM_AMX_BF16=0`` (which keeps the vector
kernels' bits, csrc/lowp.h); the machine line says which.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import clstm
from clstm import _packed

SIZES = [(100, 1, 256, 256), (100, 1, 1024, 1024), (100, 16, 128, 128),
         (100, 64, 256, 256), (50, 64, 512, 512), (25, 32, 1024, 1024)]
QUICK = [(20, 1, 64, 64), (10, 8, 32, 64)]


# ---------------------------------------------------------------------------------------------
# Peers

def quantize_columns_int8(w):
    """Symmetric per-column int8 of w (K, N): (q int8, scale float32 (N,))."""
    scale = (np.abs(w).max(axis=0) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8)
    return q, scale


def ort_int8_session(onnx, onnxruntime, lstm, x_shape, threads):
    """An InferenceSession running com.microsoft DynamicQuantizeLSTM with the weights of a
    one-layer ``clstm.LSTM`` (either direction count, no projection): W (D, I, 4H) and
    R (D, H, 4H) int8 with per-column scales and zero points 0 (ONNX Runtime's signed
    weights need them 0), gates in ONNX's order i, o, f, c. Input X (T, B, I); outputs Y
    (T, D, B, H), Y_h, Y_c."""
    from onnx import TensorProto, helper, numpy_helper

    H = lstm.hidden_size
    p = lstm.state_dict()
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 3, 1, 2)])
    sfxs = ("_l0", "_l0_reverse")[:lstm.num_directions]
    arrays = {}
    for name, key in (("W", "weight_ih"), ("R", "weight_hh")):
        qs, scales = zip(*(quantize_columns_int8(np.ascontiguousarray(p[key + s][order].T))
                           for s in sfxs))
        arrays[name] = np.stack(qs)
        arrays[name + "_scale"] = np.stack(scales)
        arrays[name + "_zero_point"] = np.zeros_like(arrays[name + "_scale"], np.int8)
    arrays["B"] = np.stack([np.concatenate([p["bias_ih" + s][order], p["bias_hh" + s][order]])
                            for s in sfxs]).astype(np.float32)
    names = ["X", "W", "R", "B", "", "", "", "", "W_scale", "W_zero_point", "R_scale",
             "R_zero_point"]
    node = helper.make_node("DynamicQuantizeLSTM", names, ["Y", "Y_h", "Y_c"],
                            domain="com.microsoft", hidden_size=H,
                            direction="bidirectional" if lstm.bidirectional else "forward")
    graph = helper.make_graph(
        [node], "qlstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def ort_int8_forward(lstm, x, threads):
    """y (T, B, D*H) from ONNX Runtime's DynamicQuantizeLSTM, as a callable; None without
    onnx/onnxruntime."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    session = ort_int8_session(onnx, onnxruntime, lstm, x.shape, threads)
    T, B = x.shape[:2]
    return lambda: session.run(["Y"], {"X": x})[0].transpose(0, 2, 1, 3).reshape(T, B, -1)


def torch_qint8_forward(lstm, x, threads):
    """y from torch.ao.quantization.quantize_dynamic(nn.LSTM, qint8), as a callable; None
    without torch."""
    try:
        import warnings

        import torch
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message=".*torchao.*")  # (its deprecation notice)
    torch.set_num_threads(threads)
    m = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers,
                      bidirectional=lstm.bidirectional)
    with torch.no_grad():
        for name, value in lstm.state_dict().items():
            getattr(m, name).copy_(torch.from_numpy(np.asarray(value)))
    # quantize_dynamic swaps submodules only: the LSTM goes in a container
    q = torch.ao.quantization.quantize_dynamic(torch.nn.ModuleDict({"lstm": m}),
                                               {torch.nn.LSTM}, dtype=torch.qint8)["lstm"]
    assert type(q) is not torch.nn.LSTM, "quantize_dynamic left the LSTM in float"
    xt = torch.from_numpy(x)

    def forward():
        with torch.no_grad():
            return q(xt)[0].numpy()
    return forward


# ---------------------------------------------------------------------------------------------
# Measurement

def interleaved(fns, rounds, inner, stat=statistics.median):
    """Median (or ``stat``) ms per call of each callable, calls interleaved round by round."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t) / inner * 1e3)
    return {k: stat(v) for k, v in times.items()}


def inner_calls(T, B, I, H):
    """Calls per timed batch: ~2 ms of float32 work, so batches alternate quickly between
    the implementations (a load spike from another process then hits them alike)."""
    macs = T * B * 4 * H * (I + H)
    return max(1, min(50, int(2e-3 * 5e10 / max(macs, 1))))


def rounds_for(T, B, I, H, rounds, budget=2.0):
    """At least ``rounds`` rounds, more (up to 200) while a size's float32 calls fit
    ``budget`` seconds: medians of many short alternating batches on a shared machine."""
    seconds = inner_calls(T, B, I, H) * T * B * 4 * H * (I + H) / 5e10
    return int(max(rounds, min(200, budget / max(seconds, 1e-6))))


def layer_table(sizes, threads, rounds):
    clstm.set_num_threads(threads)
    rows = []
    for T, B, I, H in sizes:
        rng = np.random.default_rng(0)
        lstm = clstm.LSTM(I, H, seed=0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        fns = {"clstm fp32": (lambda f: lambda: f(x)[0])(lstm.freeze()),
               "clstm int8": (lambda f: lambda: f(x)[0])(lstm.freeze(weights="int8")),
               "clstm bf16": (lambda f: lambda: f(x)[0])(lstm.freeze(weights="bfloat16"))}
        for name, make in (("ORT int8", ort_int8_forward), ("torch qint8", torch_qint8_forward)):
            f = make(lstm, x, threads)
            if f is not None:
                fns[name] = f
        ref = fns["clstm fp32"]()
        err = {k: float(np.abs(f() - ref).max()) for k, f in fns.items()}
        for f in fns.values():  # warm
            f()
        ms = interleaved(fns, rounds_for(T, B, I, H, rounds), inner_calls(T, B, I, H))
        rows.append(((T, B, I, H), ms, err))
        print(format_row((T, B, I, H), ms, err, threads), flush=True)
    return rows


def format_row(size, ms, err, threads):
    cells = [f"{k} {v:.3f} ms (err {err[k]:.1e})" for k, v in ms.items()]
    ratios = []
    for q in ("clstm int8", "clstm bf16"):
        for peer in ("clstm fp32", "ORT int8", "torch qint8"):
            if peer in ms:
                ratios.append(f"{q}/{peer} {ms[peer] / ms[q]:.2f}x")
    return f"T,B,I,H={size} threads={threads}: " + "; ".join(cells) + " | " + ", ".join(ratios)


def markdown(rows, threads):
    names = list(rows[0][1])
    out = [f"| T, B, I, H | " + " | ".join(names) + " | int8 vs fp32 | int8 vs ORT int8 | "
           "bf16 vs fp32 |", "|---" * (len(names) + 4) + "|"]
    for size, ms, err in rows:
        def ratio(a, b):
            return f"{ms[b] / ms[a]:.2f}x" if a in ms and b in ms else "n/a"
        out.append(f"| {', '.join(map(str, size))} | "
                   + " | ".join(f"{ms[k]:.2f}" for k in names)
                   + f" | {ratio('clstm int8', 'clstm fp32')} | {ratio('clstm int8', 'ORT int8')}"
                   f" | {ratio('clstm bf16', 'clstm fp32')} |")
    out += ["", "Max |y - y_fp32| (against clstm fp32, same weights and input):", "",
            "| T, B, I, H | " + " | ".join(n for n in names if n != "clstm fp32") + " |",
            "|---" * len(names) + "|"]
    for size, ms, err in rows:
        out.append(f"| {', '.join(map(str, size))} | "
                   + " | ".join(f"{err[k]:.1e}" for k in names if k != "clstm fp32") + " |")
    return "\n".join(out)


def streaming(rounds):
    """One step from Python at B = 1: a frozen LSTMCell (I = H = 128) and a frozen 2-layer
    LSTM (H = 512, T = 1), fp32 / int8 / bf16 snapshots, one thread."""
    clstm.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("# streaming: one step at B = 1 from Python, one thread, median of interleaved rounds")
    print("| model | fp32 us | int8 us | bf16 us | int8 speed-up | bf16 speed-up |")
    print("|---|---|---|---|---|---|")
    cell = clstm.LSTMCell(128, 128, seed=0)
    x = rng.standard_normal((1, 128)).astype(np.float32)
    state = (np.zeros((1, 128), np.float32), np.zeros((1, 128), np.float32))
    frozen = {w: cell.freeze(weights=w) for w in (None, "int8", "bfloat16")}
    fns = {w: (lambda f: lambda: f(x, state))(f) for w, f in frozen.items()}
    ms = interleaved(fns, rounds, 2000)
    rows = [("LSTMCell(128, 128)", ms)]
    lstm = clstm.LSTM(512, 512, num_layers=2, seed=0)
    x = rng.standard_normal((1, 1, 512)).astype(np.float32)
    frozen = {w: lstm.freeze(weights=w) for w in (None, "int8", "bfloat16")}
    fns = {w: (lambda f: lambda: f(x))(f) for w, f in frozen.items()}
    rows.append(("LSTM(512, 512, num_layers=2), T = 1", interleaved(fns, rounds, 200)))
    for name, ms in rows:
        print(f"| {name} | {ms[None] * 1e3:.2f} | {ms['int8'] * 1e3:.2f} | "
              f"{ms['bfloat16'] * 1e3:.2f} | {ms[None] / ms['int8']:.2f}x | "
              f"{ms[None] / ms['bfloat16']:.2f}x |", flush=True)


def micro(rounds):
    """The low-precision GEMM alone vs the float32 packed GEMM at per-step shapes (the
    minimum over rounds: a kernel's own speed, what another process's load only adds to)."""
    from clstm import _testing
    print(f"# micro: C[n, 4H] += A[n, H] @ W.T, one thread, kernel {_packed.lowp_kernel()}, "
          f"best of {rounds} interleaved rounds")
    print("| H | n | fp32 us | int8 us | bf16 us | int8 speed-up | bf16 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for H in (128, 256, 512, 1024):
        rng = np.random.default_rng(H)
        w = rng.standard_normal((4 * H, H)).astype(np.float32)
        fp = np.zeros(_packed.packed_length(4 * H, H, "float32"), np.float32)
        _testing.pack_matrix(w, False, fp)
        packs = {f: _packed.PackedWeights(4 * H, H, f).pack(w) for f in ("int8", "bfloat16")}
        for n in (1, 2, 4, 8, 16, 32, 64):
            a = rng.standard_normal((n, H)).astype(np.float32)
            c = np.zeros((n, 4 * H), np.float32)
            inner = max(1, int(2e7 / (n * 4 * H * H)))
            fns = {"fp32": lambda: _testing.packed_gemm(a, fp, 4 * H, c),
                   "int8": lambda: _packed.lowp_gemm(packs["int8"], a, c),
                   "bf16": lambda: _packed.lowp_gemm(packs["bfloat16"], a, c)}
            ms = interleaved(fns, rounds, inner, min)
            print(f"| {H} | {n} | {ms['fp32'] * 1e3:.2f} | {ms['int8'] * 1e3:.2f} | "
                  f"{ms['bf16'] * 1e3:.2f} | {ms['fp32'] / ms['int8']:.2f}x | "
                  f"{ms['fp32'] / ms['bf16']:.2f}x |", flush=True)


def amx_bf16():
    """Whether this process runs bfloat16 on AMX tiles (csrc/lowp.h: unless CLSTM_AMX_BF16=0)."""
    return os.environ.get("CLSTM_AMX_BF16") != "0" and _packed.lowp_kernel() == "amx"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", choices=("all", "quick"), default="all")
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--streaming", action="store_true", help="the one-step timings only")
    parser.add_argument("--markdown", help="write the tables here")
    args = parser.parse_args(argv)
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"low-precision kernel {_packed.lowp_kernel()}"
          f"{' (bf16 on AMX too)' if amx_bf16() else ''}; "
          f"python {sys.version.split()[0]}")
    if args.micro:
        micro(args.rounds)
        return
    if args.streaming:
        streaming(args.rounds)
        return
    md = []
    for threads in args.threads:
        rows = layer_table(SIZES if args.sizes == "all" else QUICK, threads, args.rounds)
        md.append(f"### {threads} thread{'s' if threads > 1 else ''}\n\n" + markdown(rows, threads))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
