"""Gradient check: are the compiled LSTM's gradients right?

Backpropagation through time is easy to get subtly wrong, so the classic from-scratch LSTM
tutorials end with a *gradient check*: compare the analytic gradient of a scalar loss with
a numerical one from central finite differences,

    dL/dw  ~  (L(w + eps) - L(w - eps)) / (2 * eps)        (error O(eps**2)),

one entry at a time, and report the relative error |a - n| / max(|a| + |n|, floor) with
``a`` the analytic and ``n`` the numerical value. In float64 with eps = 1e-5 a correct
gradient agrees to ~1e-7 or better; a wrong one (a missing term, a transposed weight, an
off-by-one in time) is off by 1e-2 or more. The difference quotient itself is only good
to ~1e-10 absolute (rounding: ~1e-16 * |L| / eps; truncation: ~eps**2), so for entries
that are nearly zero the relative error would measure that noise, not the gradient: the
``floor`` (1e-3) compares those against 1e-3 instead of against themselves.

Here the analytic gradients come from clstm's compiled kernels (``forward_train`` then
``backward``) for a float64 ``clstm.LSTM`` with 2 layers, both directions, a random initial
state and variable sequence lengths (one row shorter, one empty), so every path is
exercised: packing, the reverse direction starting at each row's own end, the layer
stacking and the final states. The scalar loss reads every output:

    L = sum(y * Wy) + sum(h_n * Wh) + sum(c_n * Wc)      (Wy, Wh, Wc fixed random)

so ``backward(dy=Wy, dstate=(Wh, Wc))`` gives dL/d(every parameter, x, h0, c0).

Prints the worst relative error for each parameter and for x, h0 and c0, and exits with
status 1 if any exceeds ``--tol``.

    python examples/gradient_check.py            # 2 layers, bidirectional, H=5
    python examples/gradient_check.py --quick    # a smaller network, same checks
"""
import argparse
import sys
import time

import numpy as np

import clstm


def relative_error(analytic, numeric, floor=1e-3):
    """Worst element-wise |a - n| / max(|a| + |n|, floor): the classic tutorials' measure,
    with a floor so that entries that are (nearly) zero, such as the gradient of padding
    past a row's end, are not judged by the finite difference's rounding noise."""
    return float(np.max(np.abs(analytic - numeric)
                        / np.maximum(np.abs(analytic) + np.abs(numeric), floor)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller network (seconds)")
    parser.add_argument("--tol", type=float, default=1e-6,
                        help="largest acceptable relative error (default 1e-6)")
    parser.add_argument("--eps", type=float, default=1e-5, help="finite-difference step")
    parser.add_argument("--proj-size", type=int, default=0,
                        help="also check an LSTM with projections (proj_size < hidden)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    T, B, I, H, L = (5, 3, 2, 3, 2) if args.quick else (7, 4, 3, 5, 2)
    lstm = clstm.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=args.proj_size,
                      dtype=np.float64, seed=args.seed)
    D, P = 2, lstm.output_size
    rng = np.random.default_rng(args.seed + 1)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, P))
    c0 = rng.standard_normal((L * D, B, H))
    lengths = np.array([T, T - 2, 0] + [T - 1] * (B - 3))  # full, shorter, empty, ...
    Wy = rng.standard_normal((T, B, D * P))
    Wh = rng.standard_normal(h0.shape)
    Wc = rng.standard_normal(c0.shape)

    def loss():
        y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
        return np.sum(y * Wy) + np.sum(h_n * Wh) + np.sum(c_n * Wc)

    # Analytic: one forward_train + backward (the compiled BPTT kernels).
    lstm.zero_grad()
    _, backward = lstm.forward_train(x, (h0, c0), lengths=lengths)
    dx, (dh0, dc0) = backward(dy=Wy, dstate=(Wh, Wc))
    analytic = dict(lstm.grads, x=dx, h0=dh0, c0=dc0)
    # The arrays to perturb: the live parameters, and the inputs (the closure reads them).
    targets = dict(lstm.params, x=x, h0=h0, c0=c0)

    print(f"{lstm!r}, T={T}, B={B}, lengths={lengths.tolist()}, eps={args.eps:g}")
    print(f"{'array':<22}{'shape':>12}{'max |grad|':>12}{'max abs. error':>16}"
          f"{'worst rel. error':>18}")
    start = time.perf_counter()
    worst, n_checked = 0.0, 0
    for name, a in targets.items():
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            saved = a[idx]
            a[idx] = saved + args.eps
            plus = loss()
            a[idx] = saved - args.eps
            minus = loss()
            a[idx] = saved
            numeric[idx] = (plus - minus) / (2 * args.eps)
        err = relative_error(analytic[name], numeric)
        worst = max(worst, err)
        n_checked += a.size
        flag = "" if err <= args.tol else "   <-- FAIL"
        print(f"{name:<22}{str(a.shape):>12}{np.abs(numeric).max():>12.3g}"
              f"{np.abs(analytic[name] - numeric).max():>16.2e}{err:>18.2e}{flag}")
    elapsed = time.perf_counter() - start

    ok = worst <= args.tol
    print(f"{n_checked} gradient entries checked by central differences in {elapsed:.1f} s: "
          f"worst relative error {worst:.2e} ({'<=' if ok else '>'} tol {args.tol:g})")
    print(f"RESULT gradient_check={'PASS' if ok else 'FAIL'} worst_rel_error={worst:.3e} "
          f"tol={args.tol:g} entries={n_checked}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
