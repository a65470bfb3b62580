"""From PyTorch to clstm: train in PyTorch, serve from NumPy.

clstm's ``LSTM`` uses ``torch.nn.LSTM``'s parameter names, shapes and gate order
(``weight_ih_l0 (4H, I)``, ``weight_hh_l0 (4H, H)``, ``bias_ih_l0``, ``bias_hh_l0``,
gates i, f, g, o), and ``clstm.Linear`` uses ``nn.Linear``'s, so a trained PyTorch model
moves over with ``load_state_dict`` and nothing else. This example

1. builds a small PyTorch sequence regressor (a 2-layer ``nn.LSTM`` and an ``nn.Linear``
   head on every step) and trains it for a few Adam steps on a toy task (the running
   mean of the input's first feature), so the weights are not just the initialisation;
2. builds the same architecture as ``clstm.Sequential(clstm.LSTM(...), clstm.Linear(...))``
   and loads PyTorch's ``state_dict`` into it: PyTorch calls the submodules ``lstm.`` and
   ``head.``, ``clstm.Sequential`` numbers them ``0.`` and ``1.`` as ``nn.Sequential``
   would, so only the prefixes are renamed;
3. runs both on the same batch and prints the largest absolute difference of the
   predictions and of the LSTM's final states (float32: agreement to ~1e-6 is rounding);
4. times inference of both (median of several runs, alternating between the two so that
   both see the same machine state, each call after a short pause: PyTorch's OpenMP
   threads keep spinning for a while after a call returns and would steal clstm's cores,
   and clstm's would steal PyTorch's) and prints the speed ratio. The timing is a
   glimpse, not a benchmark (``bench/bench_lstm.py`` is): with several threads on a small,
   shared machine, small sizes are noisy, hence the minima beside the medians and the
   ``--threads`` option (``--threads 1`` gives the steadiest comparison).

Without PyTorch it prints a message and exits 0.

    python examples/from_pytorch.py            # T=100, B=32, I=16, H=128
    python examples/from_pytorch.py --quick    # smaller, fewer timing runs
    python examples/from_pytorch.py --threads 1
"""
import argparse
import sys
import time

import numpy as np

import clstm

TOLERANCE = 1e-4  # float32: the two libraries round differently, nothing more
SETTLE_SECONDS = 0.05  # pause before each timed call (as bench/bench_lstm.py)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: each library's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to convert. (pip install torch to run "
              "this example; clstm itself does not need it.)")
        print("RESULT from_pytorch=SKIPPED torch=missing")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
        clstm.set_num_threads(args.threads)
    T, B, I, H, L = (30, 8, 8, 32, 2) if args.quick else (100, 32, 16, 128, 2)
    train_steps, timing_runs = (5, 5) if args.quick else (20, 15)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # 1. A PyTorch model, trained for a few steps.
    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(I, H, num_layers=L, batch_first=True)
            self.head = torch.nn.Linear(H, 1)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.head(y)

    net = Regressor()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(train_steps):
        x = torch.randn(B, T, I)
        target = x[..., :1].cumsum(1) / torch.arange(1, T + 1).reshape(1, T, 1)
        loss = torch.nn.functional.mse_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"PyTorch {torch.__version__}: {net.lstm} + {net.head}, trained {train_steps} Adam "
          f"steps (last loss {loss.item():.4f})")

    # 2. The same model in clstm, loaded from PyTorch's state_dict.
    model = clstm.Sequential(clstm.LSTM(I, H, num_layers=L, batch_first=True),
                             clstm.Linear(H, 1))
    renamed = {name.replace("lstm.", "0.", 1).replace("head.", "1.", 1): tensor
               for name, tensor in net.state_dict().items()}
    model.load_state_dict(renamed)  # strict: a missing or extra name would raise
    print(f"clstm {clstm.__version__}: loaded {len(renamed)} tensors into "
          f"clstm.Sequential(LSTM, Linear) ({', '.join(list(renamed)[:3])}, ...)")

    # 3. Same predictions?
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    with torch.inference_mode():
        x_t = torch.from_numpy(x)
        pred_torch = net(x_t).numpy()
        _, (h_torch, c_torch) = net.lstm(x_t)
    pred = model(x)
    _, (h_n, c_n) = model[0](x)
    diff_pred = float(np.abs(pred - pred_torch).max())
    diff_state = max(float(np.abs(h_n - h_torch.numpy()).max()),
                     float(np.abs(c_n - c_torch.numpy()).max()))
    print(f"predictions {pred.shape}: max |clstm - torch| = {diff_pred:.2e}; "
          f"final states (h_n, c_n): {diff_state:.2e}  (float32; tolerance {TOLERANCE:g})")

    # 4. Inference speed, interleaved.
    def run_torch():
        with torch.inference_mode():
            net(x_t)

    def run_clstm():
        model(x)

    times = {"torch": [], "clstm": []}
    run_torch(), run_clstm()  # warm-up: thread pools, first-call allocations
    order = [("torch", run_torch), ("clstm", run_clstm)]
    for _ in range(timing_runs):
        order.reverse()  # alternate who goes first
        for name, fn in order:
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    low = {name: 1e3 * min(t) for name, t in times.items()}
    print(f"inference of x ({B}, {T}, {I}), median (min) of {timing_runs} runs:")
    print(f"  torch {ms['torch']:8.2f} ms ({low['torch']:.2f})  {torch.get_num_threads()} "
          f"thread(s)")
    print(f"  clstm {ms['clstm']:8.2f} ms ({low['clstm']:.2f})  {clstm.get_num_threads()} "
          f"thread(s)   -> clstm runs at {ms['torch'] / ms['clstm']:.2f}x torch's speed")

    ok = max(diff_pred, diff_state) <= TOLERANCE
    print(f"RESULT from_pytorch={'PASS' if ok else 'FAIL'} max_abs_diff={diff_pred:.3e} "
          f"state_max_abs_diff={diff_state:.3e} torch_ms={ms['torch']:.3f} "
          f"clstm_ms={ms['clstm']:.3f} speedup={ms['torch'] / ms['clstm']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
