"""The NumPy reference is the ground truth, so its gradients are checked against central
finite differences of a scalar loss, for every input and parameter."""
import warnings

import numpy as np
import pytest

from clstm import reference as R
from _helpers import make_problem

INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def loss(p):
    """L = <dy, y> + <dh_n, h_n> + <dc_n, c_n>, so dL/dy = dy etc."""
    y, h_n, c_n, _ = R.lstm_forward(*(p[k] for k in INPUTS))
    return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n) + np.sum(p["dc_n"] * c_n)


def numeric_grad(p, name, eps=1e-6):
    grad = np.zeros_like(p[name])
    flat, gflat = p[name].reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = loss(p)
        flat[k] = old - eps
        down = loss(p)
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (4, 3, 2, 3), (6, 2, 3, 2)])
@pytest.mark.parametrize("upstream", ["all", "y_only", "state_only"])
def test_reference_gradients_match_finite_differences(shape, upstream):
    p = make_problem(*shape, seed=sum(shape), scale=0.8)
    if upstream == "y_only":
        p["dh_n"][...] = 0
        p["dc_n"][...] = 0
    elif upstream == "state_only":
        p["dy"][...] = 0
    _, _, _, cache = R.lstm_forward(*(p[k] for k in INPUTS), train=True)
    grads = R.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    analytic = dict(zip(("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
                        (grads.dx, grads.dh0, grads.dc0, grads.dw_ih, grads.dw_hh,
                         grads.db_ih, grads.db_hh)))
    for name in INPUTS:
        numeric = numeric_grad(p, name)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"d loss / d {name}")


def test_finite_difference_check_detects_a_wrong_gradient():
    """Guard against a check that cannot fail: a slightly wrong gradient must be caught."""
    p = make_problem(3, 2, 2, 2, seed=1)
    _, _, _, cache = R.lstm_forward(*(p[k] for k in INPUTS), train=True)
    grads = R.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    wrong = grads.dw_hh.copy()
    wrong[0, 0] *= 1.001
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong, numeric_grad(p, "w_hh"), rtol=1e-6, atol=1e-8)


def test_backward_without_upstream_gradients_is_zero():
    p = make_problem(3, 2, 2, 2)
    _, _, _, cache = R.lstm_forward(*(p[k] for k in INPUTS), train=True)
    for g in R.lstm_backward(cache):
        assert not np.any(g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_is_stable_for_huge_preactivations(dtype):
    p = make_problem(3, 2, 2, 3, dtype=dtype)
    p["x"][0] = 1e4
    p["x"][1] = -1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, h_n, c_n, cache = R.lstm_forward(*(p[k] for k in INPUTS), train=True)
        grads = R.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    assert y.dtype == dtype
    for a in (y, h_n, c_n, *grads):
        assert np.all(np.isfinite(a))
    assert np.all(np.abs(y) <= 1)


def test_reference_matches_hand_computed_single_step():
    """One step, one unit, by hand: z = x*w_ih + h0*w_hh + b."""
    x, h0, c0 = 0.5, -0.25, 0.75
    w_ih = np.array([[0.1], [0.2], [0.3], [0.4]])
    w_hh = np.array([[-0.5], [0.6], [-0.7], [0.8]])
    b = np.array([0.01, 0.02, 0.03, 0.04])
    z = w_ih[:, 0] * x + w_hh[:, 0] * h0 + b
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(z[0]), sig(z[1]), np.tanh(z[2]), sig(z[3])
    c = f * c0 + i * g
    h = o * np.tanh(c)
    y, h_n, c_n, _ = R.lstm_forward(np.full((1, 1, 1), x), w_ih, w_hh, b, np.zeros(4),
                                    np.full((1, 1), h0), np.full((1, 1), c0))
    np.testing.assert_allclose([y[0, 0, 0], h_n[0, 0], c_n[0, 0]], [h, h, c], rtol=1e-15)
