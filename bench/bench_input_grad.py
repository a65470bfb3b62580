#!/usr/bin/env python
"""A training step with and without the gradient of the input: clstm's
``forward_train(x, input_grad=False)`` against its step with dx, and against PyTorch's
``nn.LSTM`` with and without ``x.requires_grad`` (what a first layer fed data runs).

    python bench/bench_input_grad.py --threads 1 --repeats 7
    python bench/bench_input_grad.py --sizes 25,32,1024,1024 50,64,512,512 --threads 2

Interleaved, in one process (`bench_lstm.measure`: a rotating order, a pause before every
timed call, medians); every step also checks its dx or dh0 against the other library's.
"""
import argparse
import statistics

import numpy as np

import clstm
import peers
from bench_lstm import SIZES, max_rel_diff, measure
from threadpoolctl import threadpool_limits

MODES = ("train", "train_no_dx")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=None, help="T,B,I,H (default: the grid)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", choices=peers.MODELS, default="lstm")
    args = parser.parse_args()
    sizes = ([tuple(map(int, s.split(","))) for s in args.sizes] if args.sizes
             else SIZES["grid"][0])
    torch = peers.load_torch()
    makers = {"clstm": peers.make_clstm}
    if torch is None:
        print("# PyTorch is not installed: clstm only (pip install torch==2.13.0)")
    else:
        torch.set_num_threads(args.threads)
        makers["torch"] = peers.torch_factory(torch)
    clstm.set_num_threads(args.threads)
    print(f"# {args.threads} thread(s), {args.model}, medians of {args.repeats}; "
          "ratio = the row's median / clstm's step with dx")
    print(f"{'T,B,I,H':<18} {'impl':<6} {'mode':<12} {'median ms':>10} {'ratio':>7}")
    with threadpool_limits(limits=args.threads):
        for T, B, I, H in sizes:
            rnn = peers.new_layer(args.model, I, H, seed=0)
            x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
            fns = {(name, mode): make(rnn, x, mode)
                   for name, make in makers.items() for mode in MODES}
            times, outputs = measure(fns, args.repeats, budget=8.0)
            base = statistics.median(times[("clstm", "train")])
            for (name, mode), ts in times.items():
                if name != "clstm":
                    diff = max_rel_diff(outputs[(name, mode)], outputs[("clstm", mode)])
                    assert diff < 1e-3, f"{name} {mode} differs from clstm by {diff:.2e}"
                print(f"{f'{T},{B},{I},{H}':<18} {name:<6} {mode:<12} "
                      f"{statistics.median(ts) * 1e3:>10.3f} "
                      f"{statistics.median(ts) / base:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
