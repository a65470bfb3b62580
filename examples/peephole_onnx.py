"""A peephole LSTM trained with clstm, exported to ONNX and run in ONNX Runtime.

Peephole connections (Gers & Schmidhuber; ONNX's ``LSTM`` input ``P``) let the gates see
the cell state: ``i`` and ``f`` look at ``c_{t-1}``, ``o`` at the new ``c_t``, through one
weight per unit and gate (``weight_peephole_l0``, shape ``(3, H)``, rows i, f, o). PyTorch's
``nn.LSTM`` has none; clstm runs them on its compiled core, trains them (their gradients are
in ``grads``) and exports them to ONNX, whose runtime then gives the same numbers.

The task: from a noisy sequence, predict the running mean of its first feature at every
step (the cell state has to count). Recurrent dropout (Gal & Ghahramani: one mask per
sequence on ``h_{t-1}``) regularises training. Then the model goes through
``clstm.onnx.export`` to ONNX Runtime (if ``onnx`` and ``onnxruntime`` are installed; else
the example says so and stops there) and back through ``clstm.onnx.load``.

    python examples/peephole_onnx.py            # H=32, 150 Adam steps
    python examples/peephole_onnx.py --quick    # H=16, 40 steps

Prints the loss before and after training, the largest difference between clstm and ONNX
Runtime, and a ``RESULT`` line.
"""
import argparse
import io
import sys

import numpy as np

import clstm


def batch(rng, B, T, I):
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    target = np.cumsum(x[..., :1], axis=1) / np.arange(1, T + 1, dtype=np.float32)[:, None]
    return x, target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model, fewer steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    H, steps = (16, 40) if args.quick else (32, 150)
    T, B, I = 20, 16, 3
    rng = np.random.default_rng(args.seed)

    model = clstm.Sequential(
        clstm.LSTM(I, H, batch_first=True, peephole=True, recurrent_dropout=0.1,
                   seed=args.seed),
        clstm.Linear(H, 1, seed=args.seed + 1))
    optimiser = clstm.optim.Adam(model, lr=1e-2)
    x_val, t_val = batch(np.random.default_rng(args.seed + 100), 64, T, I)
    before = clstm.mse_loss(model(x_val), t_val)[0]
    for step in range(steps):
        x, target = batch(rng, B, T, I)
        y, backward = model.forward_train(x)
        loss, dy = clstm.mse_loss(y, target)
        model.zero_grad()
        backward(dy)
        optimiser.step()
    after = clstm.mse_loss(model(x_val), t_val)[0]
    peep = model[0].weight_peephole_l0
    print(f"{model[0]!r} + {model[1]!r}: validation MSE {before:.4f} -> {after:.4f} after "
          f"{steps} Adam steps; peephole weights moved to |p| max {np.abs(peep).max():.3f}")

    try:
        import onnxruntime
        from clstm import onnx as clstm_onnx
    except ImportError:
        print("onnx / onnxruntime are not installed: the ONNX round trip is skipped "
              "(pip install \"clstm-cpu[onnx]\").")
        print(f"RESULT peephole_onnx=SKIPPED mse_before={before:.5f} mse_after={after:.5f}")
        return 0

    buffer = io.BytesIO()
    clstm_onnx.export(model, buffer, lengths=True)
    session = onnxruntime.InferenceSession(buffer.getvalue(),
                                           providers=["CPUExecutionProvider"])
    lengths = np.array([T, 7, 13, 1] * 16, np.int32)
    ours = model(x_val, lengths=lengths)
    theirs = session.run(["y"], {"x": x_val, "lengths": lengths})[0]
    diff = float(np.abs(ours - theirs).max())
    again = clstm_onnx.load(io.BytesIO(buffer.getvalue()))
    reloaded = float(np.abs(again(x_val, lengths=lengths) - ours).max())
    print(f"ONNX Runtime {onnxruntime.__version__} runs the exported model (LSTM node with "
          f"input P, sequence_lens): max |clstm - ORT| = {diff:.2e}; loaded back: "
          f"{again[0]!r}, max difference {reloaded:.1e}")
    ok = after < 0.5 * before and diff < 2e-5 and reloaded == 0.0
    print(f"RESULT peephole_onnx={'PASS' if ok else 'FAIL'} mse_before={before:.5f} "
          f"mse_after={after:.5f} ort_max_abs_diff={diff:.3e} reload_max_abs_diff={reloaded:.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
