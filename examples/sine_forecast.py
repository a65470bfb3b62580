"""Forecasting a noisy sine wave: the classic first LSTM tutorial, in NumPy with clstm.

The series is ``s[t] = sin(2*pi*t / period) + noise[t]`` with Gaussian noise of standard
deviation ``sigma``. Each training example is a window of ``window`` consecutive values
and the value right after it; the model reads the window with an LSTM (1 -> 50 features,
``batch_first``) and a ``Linear(50, 1)`` maps the LSTM's output at the window's *last*
step to the forecast. Training is Adam on the mean squared error, in mini-batches, for a
few epochs; the first 80% of the series trains, the last 20% tests.

What "good" means here: the next value contains fresh noise that nothing can predict, so
even a perfect model has a test MSE of ``sigma**2``, the noise variance (the irreducible
error). The naive forecast "the next value equals the last one" pays that noise twice
(the last value's and the next one's) plus the sine's change over one step, so its MSE is
about ``2 * sigma**2 + (change)**2``. A model that has learnt the sine lands close to
``sigma**2``, far below the naive forecast. (Not at it: the window itself is noisy, so
the sine's phase is known only approximately. For comparison the script also fits the
best *linear* forecast from the window, by least squares on the training windows.)

Only the last step's output feeds the loss, so the gradient sent back into the LSTM is
zero at every step but the last: ``dy = zeros_like(y); dy[:, -1] = d(last output)``.
Backpropagation through time then carries it back through the window.

Writes a plot of true vs predicted test values to ``--out`` if matplotlib is installed
(otherwise says so and carries on); the numbers are printed either way.

    python examples/sine_forecast.py                 # 10 epochs
    python examples/sine_forecast.py --quick         # fewer points and epochs
    python examples/sine_forecast.py --out plot.png
"""
import argparse
import sys
import time

import numpy as np

import clstm


def make_windows(series, window):
    """All ``(series[i:i+window], series[i+window])`` pairs: x ``(N, window, 1)``, y ``(N, 1)``."""
    n = len(series) - window
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return series[idx][..., None], series[window:][:, None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (quick: 3)")
    parser.add_argument("--points", type=int, default=None,
                        help="length of the series (default 20000; quick: 2000)")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--period", type=float, default=40.0, help="sine period in steps")
    parser.add_argument("--sigma", type=float, default=0.1, help="noise standard deviation")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--out", default="sine_forecast.png", help="plot file (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 10)
    points = args.points or (2000 if args.quick else 20000)

    # The data: a noisy sine, cut into (window -> next value) examples, split in time.
    rng = np.random.default_rng(args.seed)
    t = np.arange(points)
    noise = args.sigma * rng.standard_normal(points)
    series = (np.sin(2 * np.pi * t / args.period) + noise).astype(np.float32)
    x, y = make_windows(series, args.window)
    n_train = int(0.8 * len(x))
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    # The model: LSTM over the window, Linear on the last step's output.
    lstm = clstm.LSTM(1, args.hidden, batch_first=True, seed=args.seed)
    head = clstm.Linear(args.hidden, 1, seed=args.seed + 1)
    opt = clstm.optim.Adam([lstm, head], lr=args.lr)

    def predict(x):
        out, _ = lstm(x)
        return head(out[:, -1])

    print(f"{points} points, period {args.period:g}, noise sigma {args.sigma:g}; windows of "
          f"{args.window} -> next value: {len(x_train)} train, {len(x_test)} test")
    print(f"model: {lstm!r} -> last step -> {head!r}; Adam lr {args.lr:g}, batch {args.batch}")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n_train)
        total = 0.0
        for i in range(0, n_train, args.batch):
            batch = order[i:i + args.batch]
            opt.zero_grad()
            (out, _), lstm_backward = lstm.forward_train(x_train[batch])
            pred, head_backward = head.forward_train(out[:, -1])
            loss, dpred = clstm.mse_loss(pred, y_train[batch])
            dout = np.zeros_like(out)          # only the last step feeds the loss
            dout[:, -1] = head_backward(dpred)
            lstm_backward(dout)
            opt.step()
            total += loss * len(batch)
        print(f"epoch {epoch:2d}/{epochs}: train MSE {total / n_train:.5f}  "
              f"({time.perf_counter() - start:.1f} s)")

    train_mse = float(np.mean((predict(x_train) - y_train) ** 2))
    pred_test = predict(x_test)
    test_mse = float(np.mean((pred_test - y_test) ** 2))
    naive_mse = float(np.mean((x_test[:, -1] - y_test) ** 2))   # next = last value
    # Best linear forecast y ~ window @ w + b, fitted on the training windows.
    design = np.c_[x_train[..., 0], np.ones(n_train)]
    w = np.linalg.lstsq(design, y_train[:, 0], rcond=None)[0]
    linear_mse = float(np.mean((x_test[..., 0] @ w[:-1] + w[-1] - y_test[:, 0]) ** 2))
    noise_var = args.sigma ** 2
    test_noise = float(np.mean(noise[args.window:][n_train:] ** 2))  # this test set's noise
    print(f"train MSE {train_mse:.5f}   test MSE {test_mse:.5f}")
    print(f"noise variance sigma^2 = {noise_var:.5f} (the irreducible error; this test set's "
          f"noise: {test_noise:.5f})")
    print(f"naive last-value forecast: test MSE {naive_mse:.5f};  best linear forecast "
          f"from the window: test MSE {linear_mse:.5f}")
    print(f"test MSE / noise variance = {test_mse / noise_var:.2f} (1 is perfect);  "
          f"test MSE / naive = {test_mse / naive_mse:.2f}")

    if args.out:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: skipping the plot")
        else:
            n = min(200, len(y_test))
            fig, ax = plt.subplots(figsize=(9, 3.5))
            ax.plot(y_test[:n, 0], ".", color="0.6", label="true (noisy) next value")
            ax.plot(np.sin(2 * np.pi * t[args.window + n_train:][:n] / args.period), "k-",
                    lw=0.8, label="noise-free sine")
            ax.plot(pred_test[:n, 0], "C1-", label=f"LSTM forecast (MSE {test_mse:.4f})")
            ax.set_xlabel("test step")
            ax.set_ylim(-1.5, 1.7)
            ax.legend(loc="upper center", ncol=3, fontsize=8)
            fig.tight_layout()
            fig.savefig(args.out, dpi=100)
            plt.close(fig)
            print(f"plot written to {args.out}")

    ok = test_mse < naive_mse
    print(f"RESULT sine_forecast={'PASS' if ok else 'FAIL'} train_mse={train_mse:.6f} "
          f"test_mse={test_mse:.6f} naive_mse={naive_mse:.6f} linear_mse={linear_mse:.6f} "
          f"noise_var={noise_var:.6f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
