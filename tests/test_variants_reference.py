"""The NumPy reference of the LSTM variants (peepholes, activations, recurrent dropout):
gradients against central finite differences (float64), and the variants against
independent formulations of what they mean."""
import numpy as np
import pytest

from clstm import reference as V
from clstm import reference as R
from _helpers import numeric_gradient

NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def problem(T=4, B=3, I=2, H=3, P=None, seed=0, peephole=True, mask=True, scale=0.8):
    rng = np.random.default_rng(seed)
    Po = P or H
    p = dict(x=rng.standard_normal((T, B, I)),
             w_ih=scale * rng.standard_normal((4 * H, I)),
             w_hh=scale * rng.standard_normal((4 * H, Po)),
             b_ih=scale * rng.standard_normal(4 * H), b_hh=scale * rng.standard_normal(4 * H),
             h0=rng.standard_normal((B, Po)), c0=rng.standard_normal((B, H)),
             dy=rng.standard_normal((T, B, Po)), dh_n=rng.standard_normal((B, Po)),
             dc_n=rng.standard_normal((B, H)))
    if P:
        p["w_hr"] = scale * rng.standard_normal((P, H))
    if peephole:
        p["w_peephole"] = scale * rng.standard_normal((3, H))
    mask_ = V.recurrent_dropout_mask(rng, 0.4, (B, Po), np.float64) if mask else None
    return p, mask_


def run(p, mask, train=False, **kw):
    return V.lstm_forward(*(p[k] for k in NAMES), w_hr=p.get("w_hr"),
                          w_peephole=p.get("w_peephole"), recurrent_mask=mask, train=train,
                          **kw)


def check_gradients(p, mask, **kw):
    def loss():
        y, h_n, c_n, _ = run(p, mask, **kw)
        return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n) + np.sum(p["dc_n"] * c_n)

    _, _, _, cache = run(p, mask, train=True, **kw)
    g = V.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    analytic = dict(x=g.dx, h0=g.dh0, c0=g.dc0, w_ih=g.dw_ih, w_hh=g.dw_hh, b_ih=g.db_ih,
                    b_hh=g.db_hh, w_hr=g.dw_hr, w_peephole=g.dw_peephole)
    worst = 0.0
    for name in [*NAMES, "w_hr", "w_peephole"]:
        if name not in p:
            assert analytic[name] is None
            continue
        numeric = numeric_gradient(loss, p[name])
        # central differences lose digits relative to the loss's size (relu gates grow it)
        atol = 1e-8 * max(1.0, abs(loss()))
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=atol,
                                   err_msg=f"d loss / d {name} ({kw})")
        worst = max(worst, np.max(np.abs(analytic[name] - numeric)))
    return worst


@pytest.mark.parametrize("activation,recurrent_activation", [
    ("tanh", "sigmoid"), ("tanh", "hard_sigmoid"), ("relu", "sigmoid"),
    ("linear", "hard_sigmoid"), ("sigmoid", "tanh"), ("hard_sigmoid", "linear"),
    ("tanh", "relu")])
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("mask", [False, True])
def test_gradients_match_finite_differences(activation, recurrent_activation, peephole, mask):
    p, m = problem(seed=3, peephole=peephole, mask=mask, scale=0.5)
    check_gradients(p, m, activation=activation, recurrent_activation=recurrent_activation)


@pytest.mark.parametrize("P", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_with_projection_lengths_and_reverse(P, reverse):
    p, m = problem(T=5, B=4, H=3, P=P, seed=5)
    check_gradients(p, m, lengths=[5, 0, 2, 1], reverse=reverse,
                    recurrent_activation="hard_sigmoid")


def test_finite_difference_check_catches_a_wrong_peephole_gradient():
    """A check that cannot fail proves nothing: a peephole gradient off by 0.1% (or one that
    forgets o's peephole, which sees the new c_t) must be caught."""
    p, m = problem(seed=2)
    _, _, _, cache = run(p, m, train=True)
    g = V.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])

    def loss():
        y, h_n, c_n, _ = run(p, m)
        return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n) + np.sum(p["dc_n"] * c_n)

    numeric = numeric_gradient(loss, p["w_peephole"])
    np.testing.assert_allclose(g.dw_peephole, numeric, rtol=1e-6, atol=1e-8)
    wrong = g.dw_peephole.copy()
    wrong[2, 0] *= 1.001
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong, numeric, rtol=1e-6, atol=1e-8)


def test_defaults_are_the_plain_reference():
    p, _ = problem(P=2, seed=7, peephole=False, mask=False)
    kw = dict(w_hr=p["w_hr"], lengths=[4, 2, 3], train=True)
    plain = R.lstm_forward(*(p[k] for k in NAMES), **kw)
    variant = V.lstm_forward(*(p[k] for k in NAMES), **kw)
    for a, b in zip(plain[:3], variant[:3]):
        np.testing.assert_array_equal(a, b)
    ga = R.lstm_backward(plain[3], p["dy"], p["dh_n"], p["dc_n"])
    gb = V.lstm_backward(variant[3], p["dy"], p["dh_n"], p["dc_n"])
    for a, b in zip(ga, gb[:8]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    assert gb.dw_peephole is None


def test_a_shared_mask_is_dropping_columns_of_w_hh():
    """The recurrent mask drops units of h_{t-1} for every gate: with the same mask on every
    row it equals zeroing (and scaling) those columns of w_hh, an independent formulation."""
    p, _ = problem(seed=11, peephole=False)
    mask_row = np.array([1 / 0.6, 0.0, 1 / 0.6])
    masked = run(p, np.tile(mask_row, (3, 1)))
    q = dict(p, w_hh=p["w_hh"] * mask_row)
    plain = R.lstm_forward(*(q[k] for k in NAMES))
    # h0 goes through the mask too (it is h_{t-1} of the first step)
    for a, b in zip(masked[:3], plain[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_peephole_step_written_out_in_onnx_order():
    """One step computed by hand from ONNX's equations (P = [p_i, p_o, p_f], gates i, o, f, c)
    against the reference's (3, H) rows i, f, o."""
    rng = np.random.default_rng(4)
    H, I = 2, 3
    x, h, c = rng.standard_normal(I), rng.standard_normal(H), rng.standard_normal(H)
    W, Rw, Wb = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H)), \
        rng.standard_normal(4 * H)
    p_i, p_o, p_f = rng.standard_normal((3, H))
    s = lambda v: 1 / (1 + np.exp(-v))
    blk = lambda a, n: a[n * H:(n + 1) * H]  # ONNX blocks: 0 i, 1 o, 2 f, 3 c
    zi, zo, zf, zc = (blk(W, n) @ x + blk(Rw, n) @ h + blk(Wb, n) for n in range(4))
    i, f = s(zi + p_i * c), s(zf + p_f * c)
    c_t = f * c + i * np.tanh(zc)
    h_t = s(zo + p_o * c_t) * np.tanh(c_t)
    to_torch = np.concatenate([np.arange(H), 2 * H + np.arange(H), 3 * H + np.arange(H),
                               H + np.arange(H)])  # i, f, g, o from ONNX's i, o, f, c
    y, h_n, c_n, _ = V.lstm_forward(x[None, None], W[to_torch], Rw[to_torch], Wb[to_torch],
                                    None, h[None], c[None],
                                    w_peephole=np.stack([p_i, p_f, p_o]))
    np.testing.assert_allclose(h_n[0], h_t, rtol=1e-14)
    np.testing.assert_allclose(c_n[0], c_t, rtol=1e-14)


def test_activations_are_keras_2s():
    z = np.array([-3.0, -2.5, -1.0, 0.0, 1.0, 2.5, 3.0])
    np.testing.assert_allclose(V.activate("hard_sigmoid", z),
                               [0, 0, 0.3, 0.5, 0.7, 1, 1], atol=1e-15)
    np.testing.assert_array_equal(V.activate("relu", z), [0, 0, 0, 0, 1, 2.5, 3])
    np.testing.assert_array_equal(V.activate("linear", z), z)
    np.testing.assert_allclose(V.activate("sigmoid", z), 1 / (1 + np.exp(-z)), rtol=1e-15)
    for name in V.ACTIVATIONS:  # the derivative from the output: against differences
        zz = np.array([-2.0, -0.7, 0.3, 1.9])
        numeric = (V.activate(name, zz + 1e-6) - V.activate(name, zz - 1e-6)) / 2e-6
        np.testing.assert_allclose(V.derivative(name, V.activate(name, zz)), numeric,
                                   rtol=1e-7, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("bad", ["Tanh", "softmax", None, 3])
def test_unknown_activation_is_a_clear_error(bad):
    p, _ = problem()
    with pytest.raises(ValueError, match="activation must be one of 'tanh'"):
        V.lstm_forward(*(p[k] for k in NAMES), activation=bad)
    with pytest.raises(ValueError, match="recurrent_activation must be one of"):
        V.lstm_forward(*(p[k] for k in NAMES), recurrent_activation=bad)


def test_stack_gradients_match_finite_differences():
    rng = np.random.default_rng(8)
    T, B, I, H, P = 4, 3, 2, 3, 2
    params = {}
    for k, d, sfx in R._layer_names(2, True):
        n_in = I if k == 0 else 2 * P
        params[f"weight_ih{sfx}"] = 0.6 * rng.standard_normal((4 * H, n_in))
        params[f"weight_hh{sfx}"] = 0.6 * rng.standard_normal((4 * H, P))
        params[f"bias_ih{sfx}"] = 0.6 * rng.standard_normal(4 * H)
        params[f"bias_hh{sfx}"] = 0.6 * rng.standard_normal(4 * H)
        params[f"weight_hr{sfx}"] = 0.6 * rng.standard_normal((P, H))
        params[f"weight_peephole{sfx}"] = 0.6 * rng.standard_normal((3, H))
    data = dict(x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((4, B, P)),
                c0=rng.standard_normal((4, B, H)), dy=rng.standard_normal((T, B, 2 * P)),
                dh_n=rng.standard_normal((4, B, P)), dc_n=rng.standard_normal((4, B, H)))
    kw = dict(num_layers=2, bidirectional=True, lengths=[4, 1, 2],
              dropout_masks=[V.recurrent_dropout_mask(rng, 0.3, (T, B, 2 * P), float)],
              recurrent_masks=[V.recurrent_dropout_mask(rng, 0.3, (B, P), float)
                               for _ in range(4)],
              activation="relu", recurrent_activation="hard_sigmoid")

    def loss():
        y, h_n, c_n, _ = V.lstm_stack_forward(data["x"], params, data["h0"], data["c0"], **kw)
        return (np.sum(data["dy"] * y) + np.sum(data["dh_n"] * h_n)
                + np.sum(data["dc_n"] * c_n))

    _, _, _, cache = V.lstm_stack_forward(data["x"], params, data["h0"], data["c0"],
                                          train=True, **kw)
    grads = V.lstm_stack_backward(cache, data["dy"], data["dh_n"], data["dc_n"])
    assert set(grads) == set(params) | {"x", "h0", "c0"}
    for name, a in [*params.items(), *((k, data[k]) for k in ("x", "h0", "c0"))]:
        np.testing.assert_allclose(grads[name], numeric_gradient(loss, a), rtol=1e-6,
                                   atol=1e-8, err_msg=f"d loss / d {name}")
