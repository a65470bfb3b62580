"""clstm.GRU / GRUCell: the NumPy reference against finite differences, the C cell and the
driver against the reference (every work split, bit for bit among themselves), and both
against torch.nn.GRU when PyTorch is installed."""
import pickle

import numpy as np
import pytest

import clstm
from clstm import _testing, functional, reference as R
from _helpers import TOL, assert_close, numeric_gradient

DTYPES = [np.float32, np.float64]


def gru_problem(T, B, I, H, dtype=np.float64, seed=0, scale=0.6):
    rng = np.random.default_rng(seed)

    def r(*shape):
        return (scale * rng.standard_normal(shape)).astype(dtype)
    return dict(x=r(T, B, I), w_ih=r(3 * H, I), w_hh=r(3 * H, H), b_ih=r(3 * H),
                b_hh=r(3 * H), h0=r(B, H), dy=r(T, B, H), dh_n=r(B, H))


INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0")


@pytest.mark.parametrize("lengths, reverse", [(None, False), ([4, 2, 0], False),
                                              ([3, 4, 1], True)])
def test_reference_gradients_match_finite_differences(lengths, reverse):
    p = gru_problem(4, 3, 2, 3, seed=3)

    def loss():
        y, h_n, _ = R.gru_forward(*(p[k] for k in INPUTS), lengths=lengths, reverse=reverse)
        return np.sum(p["dy"] * y) + np.sum(p["dh_n"] * h_n)

    _, _, cache = R.gru_forward(*(p[k] for k in INPUTS), lengths=lengths, reverse=reverse,
                                train=True)
    g = R.gru_backward(cache, p["dy"], p["dh_n"])
    analytic = dict(x=g.dx, h0=g.dh0, w_ih=g.dw_ih, w_hh=g.dw_hh, b_ih=g.db_ih, b_hh=g.db_hh)
    for name in INPUTS:
        np.testing.assert_allclose(analytic[name], numeric_gradient(loss, p[name]),
                                   rtol=1e-6, atol=1e-8, err_msg=f"d loss / d {name}")


def test_reference_matches_the_equations_by_hand_for_one_step():
    p = gru_problem(1, 2, 3, 2, seed=1)
    y, h_n, _ = R.gru_forward(*(p[k] for k in INPUTS))
    H = 2
    a = p["x"][0] @ p["w_ih"].T + p["b_ih"]
    b = p["h0"] @ p["w_hh"].T + p["b_hh"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r, z = sig(a[:, :H] + b[:, :H]), sig(a[:, H:2 * H] + b[:, H:2 * H])
    n = np.tanh(a[:, 2 * H:] + r * b[:, 2 * H:])
    np.testing.assert_allclose(h_n, (1 - z) * n + z * p["h0"], rtol=1e-14)
    np.testing.assert_allclose(y[0], h_n, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c_cell_matches_the_equations(dtype):
    """The fused GRU row functions (csrc/cells.h) on one step, forward and backward."""
    rng = np.random.default_rng(0)
    B, H = 3, 37
    gx = rng.standard_normal((B, 3 * H)).astype(dtype)
    hg = rng.standard_normal((B, 3 * H)).astype(dtype)
    b_ih, b_hh = rng.standard_normal((2, 3 * H)).astype(dtype)
    h_prev = rng.standard_normal((B, H)).astype(dtype)
    bias = functional.cell_bias("gru", b_ih, b_hh, 3 * H, dtype)
    gates = np.zeros((B, 4 * H), dtype)
    gates[:, :3 * H] = gx
    h_t = np.zeros((B, H), dtype)
    _testing.cell_step_forward("gru", gates, bias, h_prev, None, h_t, hg=hg)
    sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    a, b = gx + b_ih, hg + b_hh
    r, z = sig(a[:, :H] + b[:, :H]), sig(a[:, H:2 * H] + b[:, H:2 * H])
    n = np.tanh(a[:, 2 * H:] + r * b[:, 2 * H:])
    assert_close(h_t, (1 - z) * n + z * h_prev, dtype, 4)
    assert_close(gates, np.concatenate([r, z, b[:, 2 * H:], n], axis=1), dtype, 4)
    dr, dc = rng.standard_normal((2, B, H)).astype(dtype)
    dc_prev = dc.copy()
    _testing.cell_step_backward("gru", gates, h_prev, None, dr, dc_prev)
    dh = dr + dc
    dn = dh * (1 - z) * (1 - n ** 2)
    expected = np.concatenate([dn * b[:, 2 * H:] * r * (1 - r), dh * (h_prev - n) * z * (1 - z),
                               dn * r, dn], axis=1)
    assert_close(gates, expected, dtype, 8)
    assert_close(dc_prev, dh * z, dtype, 4)


def single_layer(p, dtype, bias=True):
    T, B, I = p["x"].shape
    H = p["h0"].shape[1]
    g = clstm.GRU(I, H, bias=bias, dtype=dtype)
    state = {"weight_ih_l0": p["w_ih"], "weight_hh_l0": p["w_hh"]}
    if bias:
        state.update(bias_ih_l0=p["b_ih"], bias_hh_l0=p["b_hh"])
    g.load_state_dict(state)
    return g


CASES = {  # (T, B, I, H), lengths
    "streaming": ((6, 1, 5, 7), None),
    "batch": ((5, 9, 4, 6), None),
    "lengths": ((7, 6, 3, 5), [7, 0, 3, 7, 1, 5]),
    "unit split": ((4, 3, 6, 64), [4, 2, 3]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_every_path_matches_the_reference_and_the_paths_agree_bitwise(case, bias, dtype):
    (T, B, I, H), lengths = CASES[case]
    p = gru_problem(T, B, I, H, dtype=np.float64, seed=7)
    g = single_layer({k: v.astype(dtype) for k, v in p.items()}, dtype, bias)
    x, h0, dy, dh_n = (p[k].astype(dtype) for k in ("x", "h0", "dy", "dh_n"))
    y_ref, h_ref, cache = R.gru_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"] if bias else None,
                                        p["b_hh"] if bias else None, p["h0"], lengths=lengths,
                                        train=True)
    ref = R.gru_backward(cache, p["dy"], p["dh_n"])
    paths = ["serial", "batch"] + (["units"] if H % 32 == 0 else [])
    results = []
    for path in paths:
        for n_threads in (1, 2):
            clstm.set_num_threads(n_threads)
            try:
                g.strategy = path
                y, h_n = g(x, h0[None], lengths=lengths)
                g.zero_grad()
                (y_t, h_t), backward = g.forward_train(x, h0[None], lengths=lengths)
                dx, dh0 = backward(dy, dh_n[None])
            finally:
                clstm.set_num_threads(None)
            assert_close(y, y_ref, dtype, 10, "y")
            assert_close(h_n[0], h_ref, dtype, 10, "h_n")
            assert_close(dx, ref.dx, dtype, 50, "dx")
            assert_close(dh0[0], ref.dh0, dtype, 50, "dh0")
            for name, expected in (("weight_ih_l0", ref.dw_ih), ("weight_hh_l0", ref.dw_hh),
                                   ("bias_ih_l0", ref.db_ih), ("bias_hh_l0", ref.db_hh)):
                if bias:
                    assert_close(g.grads[name], expected, dtype, 100, name)
            results.append((path, n_threads, [y, h_n, y_t, h_t, dx, dh0] +
                            [g.grads[k].copy() for k in sorted(g.grads)]))
    first = results[0][2]
    for path, n_threads, arrays in results[1:]:
        for a, b in zip(first, arrays):
            # (the weight gradients' GEMMs are split by rows: the same bits; the inference
            # and training forwards run the same cell too)
            np.testing.assert_array_equal(a, b, err_msg=f"{path} at {n_threads} threads")


def test_stacked_bidirectional_gradients_match_finite_differences():
    """The whole stack (layers x directions x lengths x dropout masks off) in float64."""
    g = clstm.GRU(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 3))
    h0 = rng.standard_normal((4, 3, 4))
    lengths = [5, 2, 4]
    dy = rng.standard_normal((5, 3, 8))
    dh = rng.standard_normal((4, 3, 4))

    def loss():
        y, h_n = g(x, h0, lengths=lengths)
        return np.sum(y * dy) + np.sum(h_n * dh)

    g.zero_grad()
    _, backward = g.forward_train(x, h0, lengths=lengths)
    dx, dh0 = backward(dy, dh)
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dh0, numeric_gradient(loss, h0), rtol=1e-6, atol=1e-8)
    params = g.state_dict()
    for name in ("weight_hh_l1_reverse", "bias_hh_l0", "bias_ih_l1", "weight_ih_l0_reverse"):
        target = g._params[name]
        np.testing.assert_allclose(g.grads[name], numeric_gradient(loss, target), rtol=1e-6,
                                   atol=1e-8, err_msg=name)
    assert set(params) == set(g.grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_unbatched_and_frozen(dtype):
    g = clstm.GRU(4, 6, num_layers=2, batch_first=True, dtype=dtype, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 4)).astype(dtype)  # (B, T, I)
    y, h_n = g(x)
    y_tm, h_tm = clstm.GRU(4, 6, num_layers=2, dtype=dtype, seed=1)(x.transpose(1, 0, 2))
    np.testing.assert_array_equal(y, y_tm.transpose(1, 0, 2))
    np.testing.assert_array_equal(h_n, h_tm)
    assert y.shape == (3, 5, 6) and h_n.shape == (2, 3, 6) and y.dtype == dtype
    y1, h1 = g(x[1])  # unbatched (T, I)
    np.testing.assert_array_equal(y1, y[1])
    np.testing.assert_array_equal(h1, h_n[:, 1])
    frozen = g.freeze()
    assert isinstance(frozen, clstm.FrozenGRU)
    yf, hf = frozen(x)
    np.testing.assert_array_equal(yf, y)
    np.testing.assert_array_equal(hf, h_n)
    g._params["weight_hh_l0"][...] = 0  # a snapshot: later changes do not reach it
    np.testing.assert_array_equal(frozen(x)[0], y)
    yp, _ = pickle.loads(pickle.dumps(frozen))(x)
    np.testing.assert_array_equal(yp, y)


def test_state_is_an_array_and_errors_name_it():
    g = clstm.GRU(2, 3)
    x = np.zeros((4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="h0"):
        g(x, np.zeros((1, 2, 4), np.float32))
    with pytest.raises((ValueError, TypeError), match="h0"):
        g(x, (np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32)))
    with pytest.raises(TypeError, match="clstm.GRU"):
        clstm.FrozenGRU(clstm.LSTM(2, 3))
    with pytest.raises(TypeError, match="clstm.LSTM"):
        clstm.FrozenLSTM(g)
    with pytest.raises(ValueError, match="strategy='step'"):
        g.strategy = "step"
        g(x[:1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_cell_is_one_step_of_the_layer(dtype):
    cell = clstm.GRUCell(5, 7, dtype=dtype, seed=3)
    layer = clstm.GRU(5, 7, dtype=dtype)
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5)).astype(dtype)
    h0 = rng.standard_normal((4, 7)).astype(dtype)
    h = cell(x, h0)
    y, h_n = layer(x[None], h0[None])
    np.testing.assert_array_equal(h, h_n[0])
    np.testing.assert_array_equal(cell(x[0], h0[0]), h[0])
    np.testing.assert_array_equal(cell.freeze()(x, h0), h)
    h_t, backward = cell.forward_train(x, h0)
    np.testing.assert_array_equal(h_t, h)
    dh = rng.standard_normal((4, 7)).astype(dtype)
    dx, dh0 = backward(dh)
    layer.zero_grad()
    _, lb = layer.forward_train(x[None], h0[None])
    ldx, ldh0 = lb(dh[None])
    np.testing.assert_array_equal(dx, ldx[0])
    np.testing.assert_array_equal(dh0, ldh0[0])
    for k in cell.grads:
        np.testing.assert_array_equal(cell.grads[k], layer.grads[f"{k}_l0"])


def test_save_load_and_sequential(tmp_path):
    model = clstm.Sequential(clstm.GRU(3, 5, batch_first=True, seed=0), clstm.LastStep(),
                             clstm.Linear(5, 2, seed=1))
    x = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)
    out = model(x)
    clstm.save(model, tmp_path / "model.npz")
    np.testing.assert_array_equal(clstm.load(tmp_path / "model.npz")(x), out)
    cell = clstm.GRUCell(3, 4, dtype=np.float64, seed=2)
    clstm.save(cell, tmp_path / "cell.npz")
    loaded = clstm.load(tmp_path / "cell.npz")
    assert isinstance(loaded, clstm.GRUCell)
    np.testing.assert_array_equal(loaded(x[0].astype(np.float64)), cell(x[0].astype(np.float64)))
    y, backward = model.forward_train(x)
    dx = backward(np.ones_like(y))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert np.abs(model[0].grads["weight_hh_l0"]).sum() > 0


# ---------------------------------------------------------------- PyTorch parity

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers, bidirectional, lengths, bias", [
    (1, False, None, True), (2, True, None, True), (2, False, [5, 1, 3, 5], True),
    (1, True, [2, 5, 5, 4], False), (3, True, [5, 3, 1, 4], True)])
def test_matches_torch(layers, bidirectional, lengths, bias, dtype):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    T, B, I, H = 5, 4, 3, 6
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    tg = torch.nn.GRU(I, H, layers, bias=bias, bidirectional=bidirectional).to(torch_dtype)
    g = clstm.GRU(I, H, layers, bias=bias, bidirectional=bidirectional, dtype=dtype)
    g.load_state_dict({k: v.detach().numpy() for k, v in tg.state_dict().items()})
    rng = np.random.default_rng(3)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dh = rng.standard_normal((layers * D, B, H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    if lengths is None:
        yt, ht = tg(xt, h0t)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        yt, ht = tg(packed, h0t)
        yt, _ = pad_packed_sequence(yt, total_length=T)
    ((yt * torch.tensor(dy)).sum() + (ht * torch.tensor(dh)).sum()).backward()
    (y, h_n), backward = g.forward_train(x, h0, lengths=lengths)
    dx, dh0 = backward(dy, dh)
    factor = 20
    assert_close(y, yt.detach().numpy(), dtype, factor, "y")
    assert_close(h_n, ht.detach().numpy(), dtype, factor, "h_n")
    assert_close(g(x, h0, lengths=lengths)[0], y, dtype, 1, "inference y")
    assert_close(dx, xt.grad.numpy(), dtype, factor * 10, "dx")
    assert_close(dh0, h0t.grad.numpy(), dtype, factor * 10, "dh0")
    for name, param in tg.named_parameters():
        assert_close(g.grads[name], param.grad.numpy(), dtype, factor * 10, name)


def test_torch_gru_cell_parity():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    tc = torch.nn.GRUCell(4, 5).double()
    cell = clstm.GRUCell(4, 5, dtype=np.float64)
    cell.load_state_dict({k: v.detach().numpy() for k, v in tc.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 4))
    h0 = np.random.default_rng(1).standard_normal((3, 5))
    xt, ht = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out = tc(xt, ht)
    out.sum().backward()
    h, backward = cell.forward_train(x, h0)
    dx, dh0 = backward(np.ones_like(h))
    tol = TOL[np.float64] * 10
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dh0, ht.grad.numpy(), rtol=tol, atol=tol)
    for name, param in tc.named_parameters():
        np.testing.assert_allclose(cell.grads[name], param.grad.numpy(), rtol=tol, atol=tol)


def keras_gru(x, kernel, recurrent_kernel, bias):
    """Keras's GRU(reset_after=True) as its documentation writes it, batch-first, z first."""
    H = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], H))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(x.shape[1]):
        xk = x[:, t] @ kernel + bias[0]
        hk = h @ recurrent_kernel + bias[1]
        z = sig(xk[:, :H] + hk[:, :H])
        r = sig(xk[:, H:2 * H] + hk[:, H:2 * H])
        hh = np.tanh(xk[:, 2 * H:] + r * hk[:, 2 * H:])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, axis=1), h


def test_from_keras_weights_gives_keras_numbers():
    rng = np.random.default_rng(4)
    I, H = 3, 5
    kernel, recurrent_kernel = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H))
    bias = rng.standard_normal((2, 3 * H))
    x = rng.standard_normal((2, 6, I))
    y_keras, h_keras = keras_gru(x, kernel, recurrent_kernel, bias)
    g = clstm.GRU.from_keras_weights(kernel, recurrent_kernel, bias)
    y, h_n = g(x)
    np.testing.assert_allclose(y, y_keras, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n[0], h_keras, rtol=1e-12, atol=1e-12)
    g0 = clstm.GRU.from_keras_weights(kernel, recurrent_kernel, None)
    y0, _ = g0(x)
    np.testing.assert_allclose(y0, keras_gru(x, kernel, recurrent_kernel, 0 * bias)[0],
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="bias"):
        clstm.GRU.from_keras_weights(kernel, recurrent_kernel, bias[0])
