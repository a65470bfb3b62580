"""Shared test helpers (tests/ is on sys.path via pytest's `pythonpath`)."""
import numpy as np

# Tolerances for "same numbers up to rounding", relative to the largest magnitude involved.
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def make_problem(T, B, I, H, dtype=np.float64, seed=0, scale=0.5, P=None):
    """Random weights, biases, input, initial state and upstream gradients for one layer;
    with ``P``, a projection ``w_hr (P, H)`` too (and h-sized arrays of size P)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    Po = H if P is None else P
    p = dict(x=r(T, B, I), w_ih=r(4 * H, I), w_hh=r(4 * H, Po), b_ih=r(4 * H),
             b_hh=r(4 * H), h0=r(B, Po), c0=r(B, H), dy=r(T, B, Po), dh_n=r(B, Po),
             dc_n=r(B, H))
    if P is not None:
        p["w_hr"] = r(P, H)
    return p


def assert_grads_close(actual, expected, dtype, factor=1.0):
    """Two LSTMGrads: every field close (or both None)."""
    for name in expected._fields:
        a, e = getattr(actual, name), getattr(expected, name)
        if e is None:
            assert a is None, name
        else:
            assert a.dtype == np.dtype(dtype), name
            assert_close(a, e, dtype, factor, "d" + name)


def assert_close(actual, expected, dtype, factor=1.0, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    tol = factor * TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def numeric_gradient(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (perturbed in
    place)."""
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


# The small LSTM most API tests use.
I, H = 3, 4


def make_lstm(dtype=np.float64, **kw):
    import clstm

    return clstm.LSTM(I, H, dtype=dtype, seed=0, **kw)


def reference_run(lstm, x, h0=None, c0=None):
    """The one-layer reference run of ``lstm``'s weights (training cache included)."""
    from clstm import reference as R

    p = lstm.state_dict()
    B = x.shape[1]
    h0 = np.zeros((B, H)) if h0 is None else h0
    c0 = np.zeros((B, H)) if c0 is None else c0
    return R.lstm_forward(x, p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"),
                          p.get("bias_hh_l0"), h0, c0, train=True)


class ArraySubclass(np.ndarray):
    pass


def unaligned(a):
    """A copy of a whose data starts one byte past an aligned address."""
    buf = np.empty(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out
