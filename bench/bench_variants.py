"""What the LSTM variants cost: a peephole layer against the plain clstm layer and ONNX
Runtime's LSTM with peepholes (input P), inference and training, and the training cost of
recurrent dropout, at the benchmark grid sizes.

    python bench/bench_variants.py [--threads 1 2] [--rounds 7] [--quick]

Every case runs interleaved (one call of each candidate per round, in turn, so drifts in
the machine's speed hit them alike) and reports the median (and the minimum, steadier on a
shared machine) over the rounds of the mean of ``--repeat`` back-to-back calls, in
milliseconds, and the ratios to the plain layer. float32
(ONNX Runtime 1.32's LSTM runs float32 only). ONNX Runtime is skipped when not installed.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import clstm

SIZES = [(100, 1, 64, 64), (100, 16, 128, 128), (50, 32, 512, 512)]  # T, B, I, H


def ort_session(lstm, threads):
    """ONNX Runtime running `lstm` exported by clstm.onnx (None without onnxruntime)."""
    try:
        import onnxruntime
        import clstm.onnx
    except ImportError:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's workers otherwise spin after each run and take the cores from the clstm calls
    # interleaved with it (measured here: the 2-thread clstm calls ran 2-10x slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = clstm.onnx.export(lstm)
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def candidates(T, B, I, H, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    plain = clstm.LSTM(I, H, seed=1)
    peep = clstm.LSTM(I, H, seed=1, peephole=True)
    rdrop = clstm.LSTM(I, H, seed=1, recurrent_dropout=0.25)

    def train(model):
        def run():
            (_, _), backward = model.forward_train(x)
            backward(dy)
        return run

    cases = {
        "inference": {"plain": lambda: plain(x), "peephole": lambda: peep(x)},
        "training": {"plain": train(plain), "peephole": train(peep),
                     "recurrent_dropout=0.25": train(rdrop)},
    }
    session = ort_session(peep, threads)
    if session is not None:
        cases["inference"]["onnxruntime peephole"] = lambda: session.run(["y"], {"x": x})
    return cases


def measure(fns, rounds, repeat):
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm up: scratch buffers, thread pools, first-touch pages
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            times[name].append((time.perf_counter() - t0) / repeat * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one small size, 2 rounds (a smoke run)")
    args = ap.parse_args(argv)
    sizes = [(10, 2, 8, 8)] if args.quick else SIZES
    rounds, repeat = (2, 1) if args.quick else (args.rounds, args.repeat)
    print(f"# clstm {clstm.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, float32; median of "
          f"{rounds} interleaved rounds of {repeat} calls, ms (ratio to the plain layer)")
    print("| threads | T, B, I, H | mode | candidate | median ms | / plain | min ms | / plain |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for threads in args.threads:
        clstm.set_num_threads(threads)
        for T, B, I, H in sizes:
            for mode, fns in candidates(T, B, I, H, threads).items():
                result = measure(fns, rounds, repeat)
                (med0, min0) = result["plain"]
                for name, (med, low) in result.items():
                    print(f"| {threads} | {T}, {B}, {I}, {H} | {mode} | {name} | {med:.3f} | "
                          f"{med / med0:.2f}x | {low:.3f} | {low / min0:.2f}x |", flush=True)
    clstm.set_num_threads(None)


if __name__ == "__main__":
    main()
