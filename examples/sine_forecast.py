"""Forecasting a noisy sine wave: the classic first LSTM tutorial, in NumPy with clstm.

The series is ``s[t] = sin(2*pi*t / period) + noise[t]`` with Gaussian noise of standard
deviation ``sigma``. Each training example is a window of ``window`` consecutive values
and the value right after it (``clstm.data.windows``); the model reads the window with an
LSTM (1 -> 50 features, ``batch_first``), ``LastStep`` keeps its output at the window's
last step (Keras's ``return_sequences=False``) and a ``Linear(50, 1)`` maps it to the
forecast. ``clstm.fit`` trains it with Adam on the mean squared error in shuffled
mini-batches, holding out the last 10% of the training windows for validation, as Keras's
``model.fit(..., validation_split=0.1)``; the first 80% of the series trains, the last 20%
tests. The model and its training are four statements, line for line the Keras version's:

    model = clstm.Sequential(clstm.LSTM(1, 50, batch_first=True),   # Sequential([LSTM(50,
                             clstm.LastStep(batch_first=True),       #   input_shape=(10, 1)),
                             clstm.Linear(50, 1))                    #   Dense(1)])
    optimizer = clstm.optim.Adam(model, lr=5e-3)                     # model.compile(Adam(5e-3),
                                                                     #   loss="mse")
    history = clstm.fit(model, clstm.mse_loss, optimizer, x_train, y_train, epochs=10,
                        batch_size=32, validation=0.1)               # model.fit(x_train, y_train,
                                                                     #   epochs=10, batch_size=32,
                                                                     #   validation_split=0.1)
    pred = clstm.predict(model, x_test)                              # model.predict(x_test)

What "good" means here: the next value contains fresh noise that nothing can predict, so
even a perfect model has a test MSE of ``sigma**2``, the noise variance (the irreducible
error). The naive forecast "the next value equals the last one" pays that noise twice
(the last value's and the next one's) plus the sine's change over one step, so its MSE is
about ``2 * sigma**2 + (change)**2``. A model that has learnt the sine lands close to
``sigma**2``, far below the naive forecast. (Not at it: the window itself is noisy, so
the sine's phase is known only approximately. For comparison the script also fits the
best *linear* forecast from the window, by least squares on the training windows.)

Only the last step's output feeds the loss, so ``LastStep``'s backward sends a gradient
into the LSTM at the last step only; backpropagation through time carries it back through
the window.

Writes a plot of the training and validation loss per epoch and of true vs predicted test
values to ``--out`` if matplotlib is installed (otherwise says so and carries on); the
numbers are printed either way.

    python examples/sine_forecast.py                 # 10 epochs
    python examples/sine_forecast.py --quick         # fewer points and epochs
    python examples/sine_forecast.py --out plot.png
"""
import argparse
import sys
import time

import numpy as np

import clstm


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
    x, y = clstm.data.windows(series, args.window)   # x (N, window, 1), y (N, 1)
    n_train = int(0.8 * len(x))
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    print(f"{points} points, period {args.period:g}, noise sigma {args.sigma:g}; windows of "
          f"{args.window} -> next value: {n_train} train (10% of them validate), "
          f"{len(x_test)} test")

    # The model and its training: the Keras version's four statements (see the docstring).
    model = clstm.Sequential(clstm.LSTM(1, args.hidden, batch_first=True, seed=args.seed),
                             clstm.LastStep(batch_first=True),
                             clstm.Linear(args.hidden, 1, seed=args.seed + 1))
    optimizer = clstm.optim.Adam(model, lr=args.lr)
    start = time.perf_counter()
    history = clstm.fit(model, clstm.mse_loss, optimizer, x_train, y_train, epochs=epochs,
                        batch_size=args.batch, validation=0.1, shuffle=rng)
    pred_test = clstm.predict(model, x_test)
    print(f"model: {model!r}\ntrained in {time.perf_counter() - start:.1f} s")

    train_mse = float(np.mean((clstm.predict(model, x_train) - y_train) ** 2))
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
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            print("matplotlib is not installed: skipping the plot")
        else:
            n = min(200, len(y_test))
            fig, (ax_loss, ax) = plt.subplots(1, 2, figsize=(12, 3.5),
                                              gridspec_kw={"width_ratios": [1, 3]})
            epochs_run = np.arange(1, len(history["loss"]) + 1)
            ax_loss.plot(epochs_run, history["loss"], "o-", label="train")
            ax_loss.plot(epochs_run, history["val_loss"], "s-", label="validation")
            ax_loss.axhline(noise_var, color="0.6", ls=":", label="noise variance")
            ax_loss.set_xlabel("epoch")
            ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax_loss.set_ylabel("MSE")
            ax_loss.set_yscale("log")
            ax_loss.legend(fontsize=8)
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
          f"noise_var={noise_var:.6f} val_loss={history['val_loss'][-1]:.6f} "
          f"epochs={len(history.epoch)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
