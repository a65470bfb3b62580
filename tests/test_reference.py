"""The NumPy reference is the ground truth, so its gradients are checked against central
finite differences of a scalar loss, for every input and parameter."""
import warnings

import numpy as np
import pytest

from clstm import reference as R
from _helpers import make_problem, numeric_gradient

INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def loss(p):
    """L = <dy, y> + <dh_n, h_n> + <dc_n, c_n>, so dL/dy = dy etc."""
    y, h_n, c_n, _ = R.lstm_forward(*(p[k] for k in INPUTS))
    return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n) + np.sum(p["dc_n"] * c_n)


def numeric_grad(p, name):
    return numeric_gradient(lambda: loss(p), p[name])


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
    grads = R.lstm_backward(cache)
    assert grads.dw_hr is None
    for g in grads[:-1]:
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
    for a in (y, h_n, c_n, *grads[:-2]):  # dw_hr, dw_peephole are None: no projection, peephole
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


# ------------------------------------------------------------------ projection, lengths, reverse

@pytest.mark.parametrize("P", [None, 2])
@pytest.mark.parametrize("lengths", [None, [4, 0, 2, 1]])
@pytest.mark.parametrize("reverse", [False, True])
def test_projection_lengths_reverse_gradients_match_finite_differences(P, lengths, reverse):
    p = make_problem(4, 4, 2, 3, seed=5, scale=0.8, P=P)
    names = INPUTS + (("w_hr",) if P else ())
    kw = dict(lengths=lengths, reverse=reverse)

    def forward(train=False):
        return R.lstm_forward(*(p[k] for k in INPUTS), w_hr=p.get("w_hr"), train=train, **kw)

    def loss_():
        y, h_n, c_n, _ = forward()
        return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n) + np.sum(p["dc_n"] * c_n)

    y, _, _, cache = forward(train=True)
    g = R.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    analytic = dict(x=g.dx, h0=g.dh0, c0=g.dc0, w_ih=g.dw_ih, w_hh=g.dw_hh, b_ih=g.db_ih,
                    b_hh=g.db_hh, w_hr=g.dw_hr)
    for name in names:
        np.testing.assert_allclose(analytic[name], numeric_gradient(loss_, p[name]),
                                   rtol=1e-6, atol=1e-8, err_msg=f"d loss / d {name}")
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert not np.any(y[n:, b]) and not np.any(g.dx[n:, b])


def run_row_alone(p, b, n, reverse):
    args = [p["x"][:n, b:b + 1], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
            p["h0"][b:b + 1], p["c0"][b:b + 1]]
    return R.lstm_forward(*args, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_row_of_length_n_is_that_row_run_alone(reverse):
    p = make_problem(5, 4, 2, 3, seed=6)
    lengths = [5, 3, 0, 1]
    y, h_n, c_n, _ = R.lstm_forward(*(p[k] for k in INPUTS), lengths=lengths, reverse=reverse)
    for b, n in enumerate(lengths):
        if n == 0:
            np.testing.assert_array_equal(h_n[b], p["h0"][b])
            np.testing.assert_array_equal(c_n[b], p["c0"][b])
            continue
        y_b, h_b, c_b, _ = run_row_alone(p, b, n, reverse)
        np.testing.assert_allclose(y[:n, b], y_b[:, 0], rtol=1e-14)
        np.testing.assert_allclose(h_n[b], h_b[0], rtol=1e-14)
        np.testing.assert_allclose(c_n[b], c_b[0], rtol=1e-14)


def test_reverse_is_forward_on_the_flipped_sequence():
    p = make_problem(5, 3, 2, 3, seed=7)
    args = [p[k] for k in INPUTS]
    y_rev, h_rev, c_rev, _ = R.lstm_forward(*args, reverse=True)
    y_flip, h_flip, c_flip, _ = R.lstm_forward(p["x"][::-1], *args[1:])
    np.testing.assert_allclose(y_rev, y_flip[::-1], rtol=1e-14)
    np.testing.assert_allclose(h_rev, h_flip, rtol=1e-14)
    np.testing.assert_allclose(c_rev, c_flip, rtol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_upstream_gradient_past_a_rows_end_is_ignored(reverse):
    p = make_problem(4, 3, 2, 3, seed=12, P=2)
    lengths = [2, 4, 0]
    _, _, _, cache = R.lstm_forward(*(p[k] for k in INPUTS), w_hr=p["w_hr"], lengths=lengths,
                                    reverse=reverse, train=True)
    dy_junk = p["dy"].copy()
    for b, n in enumerate(lengths):
        dy_junk[n:, b] = 1e3
    clean = R.lstm_backward(cache, p["dy"] * (np.arange(4)[:, None] < lengths)[..., None])
    for got, want in zip(R.lstm_backward(cache, dy_junk), clean):
        np.testing.assert_array_equal(got, want)


def test_float32_follows_float64():
    """float32 in, float32 out (every output and gradient), within float32 rounding."""
    p64 = make_problem(5, 3, 2, 3, seed=13, P=2)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    kw = dict(lengths=[5, 0, 3], reverse=True, train=True)
    runs = []
    for p in (p32, p64):
        y, h_n, c_n, cache = R.lstm_forward(*(p[k] for k in INPUTS), w_hr=p["w_hr"], **kw)
        runs.append((y, h_n, c_n, *R.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])))
    for a32, a64 in zip(*runs):
        if a64 is None:  # dw_peephole: no peepholes
            assert a32 is None
            continue
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ stacks

def stack_problem(num_layers, bidirectional, P, seed, T=4, B=3, I=2, H=3, bias=True):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    Po = P or H
    params = {}
    for k, d, sfx in R._layer_names(num_layers, bidirectional):
        n_in = I if k == 0 else D * Po
        params[f"weight_ih{sfx}"] = 0.6 * rng.standard_normal((4 * H, n_in))
        params[f"weight_hh{sfx}"] = 0.6 * rng.standard_normal((4 * H, Po))
        if bias:
            params[f"bias_ih{sfx}"] = 0.6 * rng.standard_normal(4 * H)
            params[f"bias_hh{sfx}"] = 0.6 * rng.standard_normal(4 * H)
        if P:
            params[f"weight_hr{sfx}"] = 0.6 * rng.standard_normal((P, H))
    n = num_layers * D
    data = dict(x=rng.standard_normal((T, B, I)), h0=rng.standard_normal((n, B, Po)),
                c0=rng.standard_normal((n, B, H)), dy=rng.standard_normal((T, B, D * Po)),
                dh_n=rng.standard_normal((n, B, Po)), dc_n=rng.standard_normal((n, B, H)))
    return params, data


def test_stack_gradients_match_finite_differences():
    params, data = stack_problem(2, True, 2, seed=8)
    lengths = [4, 1, 2]
    masks = [np.where(np.random.default_rng(9).random((4, 3, 4)) >= 0.3, 1 / 0.7, 0.0)]
    kw = dict(num_layers=2, bidirectional=True, lengths=lengths, dropout_masks=masks)

    def loss_():
        y, h_n, c_n, _ = R.lstm_stack_forward(data["x"], params, data["h0"], data["c0"], **kw)
        return (np.sum(data["dy"] * y) + np.sum(data["dh_n"] * h_n)
                + np.sum(data["dc_n"] * c_n))

    y, _, _, cache = R.lstm_stack_forward(data["x"], params, data["h0"], data["c0"],
                                          train=True, **kw)
    grads = R.lstm_stack_backward(cache, data["dy"], data["dh_n"], data["dc_n"])
    assert set(grads) == set(params) | {"x", "h0", "c0"}
    for b, n in enumerate(lengths):
        assert not np.any(y[n:, b]) and not np.any(grads["x"][n:, b])
    for name, a in [*params.items(), *((k, data[k]) for k in ("x", "h0", "c0"))]:
        np.testing.assert_allclose(grads[name], numeric_gradient(loss_, a), rtol=1e-6,
                                   atol=1e-8, err_msg=f"d loss / d {name}")


def test_one_layer_stack_is_lstm_forward():
    params, data = stack_problem(1, False, None, seed=10)
    y, h_n, c_n, _ = R.lstm_stack_forward(data["x"], params, data["h0"], data["c0"],
                                          num_layers=1)
    y1, h1, c1, _ = R.lstm_forward(data["x"], params["weight_ih_l0"], params["weight_hh_l0"],
                                   params["bias_ih_l0"], params["bias_hh_l0"], data["h0"][0],
                                   data["c0"][0])
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(h_n[0], h1)
    np.testing.assert_array_equal(c_n[0], c1)


def test_one_bidirectional_layer_is_forward_and_reverse_side_by_side():
    params, data = stack_problem(1, True, 2, seed=14)
    lengths = [1, 4, 0]
    y, h_n, c_n, _ = R.lstm_stack_forward(data["x"], params, data["h0"], data["c0"],
                                          num_layers=1, bidirectional=True, lengths=lengths)
    for d, sfx in enumerate(("_l0", "_l0_reverse")):
        y_d, h_d, c_d, _ = R.lstm_forward(
            data["x"], params["weight_ih" + sfx], params["weight_hh" + sfx],
            params["bias_ih" + sfx], params["bias_hh" + sfx], data["h0"][d], data["c0"][d],
            w_hr=params["weight_hr" + sfx], lengths=lengths, reverse=d == 1)
        np.testing.assert_array_equal(y[..., 2 * d:2 * d + 2], y_d)
        np.testing.assert_array_equal(h_n[d], h_d)
        np.testing.assert_array_equal(c_n[d], c_d)


@pytest.mark.parametrize("bidirectional, P, lengths, bias", [
    (True, 2, [5, 2, 4, 1], True),  # every feature at once, lengths unsorted
    (False, None, None, False),  # plain unidirectional stack without biases
])
def test_stack_matches_torch(bidirectional, P, lengths, bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    params, data = stack_problem(2, bidirectional, P, seed=11, T=5, B=4, bias=bias)
    module = torch.nn.LSTM(2, 3, num_layers=2, bidirectional=bidirectional, proj_size=P or 0,
                           bias=bias, dropout=0.0).double()
    module.load_state_dict({k: torch.tensor(v) for k, v in params.items()})
    x, h0, c0 = (torch.tensor(data[k], requires_grad=True) for k in ("x", "h0", "c0"))
    if lengths is None:
        y, (h_n, c_n) = module(x, (h0, c0))
    else:
        out, (h_n, c_n) = module(pack_padded_sequence(x, torch.tensor(lengths),
                                                      enforce_sorted=False), (h0, c0))
        y, _ = pad_packed_sequence(out, total_length=5)
    ((y * torch.tensor(data["dy"])).sum() + (h_n * torch.tensor(data["dh_n"])).sum()
     + (c_n * torch.tensor(data["dc_n"])).sum()).backward()

    y_r, h_r, c_r, cache = R.lstm_stack_forward(data["x"], params, data["h0"], data["c0"],
                                                num_layers=2, bidirectional=bidirectional,
                                                lengths=lengths, train=True)
    grads = R.lstm_stack_backward(cache, data["dy"], data["dh_n"], data["dc_n"])
    assert set(grads) == {name for name, _ in module.named_parameters()} | {"x", "h0", "c0"}
    for a, b in ((y_r, y), (h_r, h_n), (c_r, c_n)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, t in (("x", x), ("h0", h0), ("c0", c0), *module.named_parameters()):
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
