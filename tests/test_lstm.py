"""The clstm.LSTM class: parameters, inference and gradients against the reference, layouts,
state, lengths, stacks, dropout, state_dict and Keras interop."""
import numpy as np
import pytest

import clstm
from clstm import reference as R
from _helpers import assert_close, I, H, make_lstm, reference_run, ArraySubclass


def test_parameters_follow_pytorch_names_shapes_and_init():
    lstm = clstm.LSTM(5, 7, seed=1)
    shapes = {k: v.shape for k, v in lstm.state_dict().items()}
    assert shapes == {"weight_ih_l0": (28, 5), "weight_hh_l0": (28, 7),
                      "bias_ih_l0": (28,), "bias_hh_l0": (28,)}
    k = 1 / np.sqrt(7)
    for v in lstm.state_dict().values():
        assert v.dtype == np.float32
        assert np.all(np.abs(v) <= k) and np.abs(v).max() > 0.5 * k
    assert list(clstm.LSTM(5, 7, bias=False).state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
    assert lstm.weight_hh_l0 is lstm.params["weight_hh_l0"]
    with pytest.raises(AttributeError):
        lstm.weight_hr_l0


def test_seed_makes_initialisation_reproducible():
    a, b, c = (clstm.LSTM(3, 4, seed=s).state_dict() for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight_ih_l0"], c["weight_ih_l0"])


def test_inference_matches_reference_with_and_without_state():
    lstm = make_lstm()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, I))
    h0, c0 = rng.standard_normal((2, 2, H))
    y, (h_n, c_n) = lstm(x)
    y_ref, h_ref, c_ref, _ = reference_run(lstm, x)
    assert y.shape == (6, 2, H) and h_n.shape == (1, 2, H) and c_n.shape == (1, 2, H)
    assert_close(y, y_ref, np.float64)
    assert_close(h_n[0], h_ref, np.float64)
    y, (h_n, c_n) = lstm(x, (h0[None], c0[None]))
    y_ref, h_ref, c_ref, _ = reference_run(lstm, x, h0, c0)
    assert_close(y, y_ref, np.float64)
    assert_close(c_n[0], c_ref, np.float64)


def test_training_gradients_accumulate_and_zero():
    lstm = make_lstm()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, I))
    dy = rng.standard_normal((5, 3, H))
    dh = rng.standard_normal((1, 3, H))
    (y, (h_n, c_n)), backward = lstm.forward_train(x)
    dx, (dh0, dc0) = backward(dy, (dh, None))
    _, _, _, cache = reference_run(lstm, x)
    g = R.lstm_backward(cache, dy, dh[0], None)
    assert_close(dx, g.dx, np.float64)
    assert_close(dh0[0], g.dh0, np.float64)
    assert_close(dc0[0], g.dc0, np.float64)
    assert_close(lstm.grads["weight_ih_l0"], g.dw_ih, np.float64)
    assert_close(lstm.grads["bias_hh_l0"], g.db_hh, np.float64)
    # a second forward/backward adds to the gradients
    _, backward2 = lstm.forward_train(x)
    backward2(dy, (dh, None))
    assert_close(lstm.grads["weight_hh_l0"], 2 * g.dw_hh, np.float64)
    with pytest.raises(RuntimeError, match="already"):
        backward2(dy)
    lstm.zero_grad()
    assert not any(np.any(v) for v in lstm.grads.values())
    assert set(lstm.grads) == set(lstm.state_dict())


@pytest.mark.parametrize("replacement", ["fortran", "float32", "subclass", "read-only view"])
def test_gradients_accumulate_into_any_array_left_in_grads(replacement):
    """An array assigned into ``grads`` is copied into the array there (the one the kernels
    add into and optimisers hold), whatever its layout, dtype or writability."""
    lstm = make_lstm()
    x = np.random.default_rng(19).standard_normal((5, 3, I))
    (y, _), backward = lstm.forward_train(x)
    backward(np.ones_like(y))
    expected = {k: 3 * v for k, v in lstm.grads.items()}
    kept = dict(lstm.grads)
    g = lstm.grads
    if replacement == "fortran":
        g["weight_ih_l0"] = np.asfortranarray(2 * g["weight_ih_l0"])
    elif replacement == "float32":
        g["weight_ih_l0"] = (2 * g["weight_ih_l0"]).astype(np.float32)
    elif replacement == "subclass":
        g["weight_ih_l0"] = (2 * g["weight_ih_l0"]).view(ArraySubclass)
    else:
        g["weight_ih_l0"] = np.broadcast_to(2 * g["weight_ih_l0"], g["weight_ih_l0"].shape)
    for name in g:
        if name != "weight_ih_l0":
            g[name] *= 2
    (y, _), backward = lstm.forward_train(x)
    backward(np.ones_like(y))
    for name, want in expected.items():
        assert lstm.grads[name] is kept[name]  # accumulated in place
        tol_dtype = np.float32 if replacement == "float32" else np.float64
        assert_close(lstm.grads[name], want, tol_dtype, 10, name)


def test_batch_first_and_unbatched_layouts_agree_with_time_major():
    lstm = make_lstm()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, I))
    dy = rng.standard_normal((5, 3, H))
    (y, (h, c)), back = lstm.forward_train(x)
    dx, (dh0, dc0) = back(dy)
    lstm_bf = make_lstm(batch_first=True)
    (y_bf, (h_bf, c_bf)), back_bf = lstm_bf.forward_train(x.transpose(1, 0, 2))
    dx_bf, _ = back_bf(dy.transpose(1, 0, 2))
    assert y_bf.shape == (3, 5, H) and h_bf.shape == (1, 3, H)
    assert_close(y_bf, y.transpose(1, 0, 2), np.float64)
    assert_close(dx_bf, dx.transpose(1, 0, 2), np.float64)
    assert_close(lstm_bf.grads["weight_hh_l0"], lstm.grads["weight_hh_l0"], np.float64)
    # unbatched: (T, I) in, (T, H) out, states (1, H)
    (y_u, (h_u, c_u)), back_u = make_lstm().forward_train(x[:, 1])
    assert y_u.shape == (5, H) and h_u.shape == (1, H)
    assert_close(y_u, y[:, 1], np.float64)
    dx_u, (dh_u, _) = back_u(dy[:, 1])
    assert dx_u.shape == (5, I) and dh_u.shape == (1, H)
    y_u2, _ = make_lstm()(x[:, 1], (h[:, 1], c[:, 1]))
    assert y_u2.shape == (5, H)


def test_dtype_handling():
    lstm32 = make_lstm(np.float32)
    x64 = np.random.default_rng(3).standard_normal((4, 2, I))
    y, (h, c) = lstm32(x64)  # other precision: cast to the layer's dtype
    assert y.dtype == h.dtype == np.float32
    y_ref, _ = make_lstm(np.float64)(x64)
    # same seed draws the same float64 numbers, rounded to float32
    assert_close(y, y_ref, np.float32, factor=10)
    assert make_lstm(np.float64)(x64.astype(np.float32))[0].dtype == np.float64


def test_state_dict_round_trip_and_load_errors():
    src, dst = clstm.LSTM(I, H, seed=1), clstm.LSTM(I, H, seed=2)
    sd = src.state_dict()
    dst.load_state_dict(sd)
    x = np.ones((3, 2, I), np.float32)
    np.testing.assert_array_equal(src(x)[0], dst(x)[0])
    sd["weight_ih_l0"][...] = 0  # state_dict returns copies, load copies in
    assert np.any(dst.weight_ih_l0)
    # loading from nested lists works (anything np.asarray converts)
    dst.load_state_dict({k: v.tolist() for k, v in src.state_dict().items()})
    before = dst.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['bias_hh_l0'\]"):
        dst.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    with pytest.raises(KeyError, match="unexpected keys.*weight_hr_l0"):
        dst.load_state_dict({**sd, "weight_hr_l0": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(16, 4\)"):
        dst.load_state_dict({**sd, "weight_hh_l0": np.zeros((16, 5))})
    with pytest.raises(TypeError, match="bias_ih_l0.*float"):
        dst.load_state_dict({**sd, "bias_ih_l0": np.zeros(16, np.int32)})
    after = dst.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded
    dst.load_state_dict({"weight_ih_l0": np.zeros((16, I))}, strict=False)
    assert not np.any(dst.weight_ih_l0)


MODELS_FOR_WRITES = {
    "lstm": lambda: make_lstm(num_layers=2, bidirectional=True),
    "projection": lambda: make_lstm(proj_size=2),
    "gru": lambda: clstm.GRU(I, H, num_layers=2, dtype=np.float64, seed=0),
}


@pytest.mark.parametrize("model", sorted(MODELS_FOR_WRITES))
@pytest.mark.parametrize("T,B", [(4, 3), (1, 2)], ids=["steps", "one step"])
def test_training_cache_is_isolated_from_later_writes(model, T, B):
    """The caller reuses its input buffer and an optimiser steps in place, both between
    forward_train and backward: backward must give what it gives without them. (The
    weights' snapshot is backward's packed copy, taken at the forward; the GRU's w_ih is a
    plain copy, its dx multiplying on w_ih itself; T=1 of an LSTM runs the one-step
    kernel, which packs that snapshot apart.)"""
    make = MODELS_FOR_WRITES[model]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I))
    expected = make()
    (y_ref, _), back = expected.forward_train(x)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, _ = back(dy)

    trained = make()
    x_mutable = x.copy()
    (y, _), back = trained.forward_train(x_mutable)
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 0
    x_mutable[...] = 7
    for p in trained.params.values():
        p *= -3
    dx, _ = back(dy)
    assert_close(dx, dx_ref, np.float64)
    for k in expected.grads:
        assert_close(trained.grads[k], expected.grads[k], np.float64)


@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_bidirectional_results_do_not_share_reused_buffers(lengths):
    """The reverse direction's reversed input and gradients live in reused scratch buffers:
    nothing a call returns may be one of them, or the next call would overwrite it."""
    lstm = make_lstm(num_layers=2, bidirectional=True)
    rng = np.random.default_rng(18)
    x1, x2 = rng.standard_normal((2, 4, 3, I))
    y1, (h1, c1) = lstm(x1, lengths=lengths)
    (yt, _), backward = lstm.forward_train(x1, lengths=lengths)
    dx1, (dh1, dc1) = backward(np.ones_like(yt))
    kept = [a.copy() for a in (y1, h1, c1, dx1, dh1, dc1)]
    lstm(x2, lengths=lengths)
    (yt2, _), backward2 = lstm.forward_train(x2, lengths=lengths)
    backward2(np.cos(yt2))
    for a, b in zip((y1, h1, c1, dx1, dh1, dc1), kept):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lstm(x1, lengths=lengths)[0], y1)


# ------------------------------------------------------------------ stacked / bidirectional


def test_parameter_names_shapes_and_order_for_every_configuration():
    lstm = clstm.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    expected = []
    for k in range(2):
        n_in = 3 if k == 0 else 4
        for sfx in ("", "_reverse"):
            expected += [(f"weight_ih_l{k}{sfx}", (20, n_in)), (f"weight_hh_l{k}{sfx}", (20, 2)),
                         (f"bias_ih_l{k}{sfx}", (20,)), (f"bias_hh_l{k}{sfx}", (20,)),
                         (f"weight_hr_l{k}{sfx}", (2, 5))]
    assert [(k, v.shape) for k, v in lstm.state_dict().items()] == expected
    assert lstm.weight_hr_l1_reverse.shape == (2, 5)
    no_bias = clstm.LSTM(3, 5, num_layers=2, bias=False)
    assert [k for k in no_bias.state_dict() if "bias" in k] == []
    assert "LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2" in repr(lstm)


def test_stacked_bidirectional_shapes_and_state_errors():
    lstm = clstm.LSTM(I, H, num_layers=3, bidirectional=True, proj_size=2, dtype=np.float64)
    x = np.zeros((5, 2, I))
    y, (h_n, c_n) = lstm(x)
    assert y.shape == (5, 2, 4) and h_n.shape == (6, 2, 2) and c_n.shape == (6, 2, H)
    with pytest.raises(ValueError, match=r"h0 must have shape \(6, 2, 2\)"):
        lstm(x, (np.zeros((1, 2, 2)), np.zeros((6, 2, H))))
    with pytest.raises(ValueError, match=r"c0 must have shape \(6, 2, 4\)"):
        lstm(x, (np.zeros((6, 2, 2)), np.zeros((6, 2, 2))))
    y, (h_n, c_n) = lstm(x[:, 0])  # unbatched
    assert y.shape == (5, 4) and h_n.shape == (6, 2)


def test_lengths_semantics_and_zero_length_rows():
    lstm = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, I))
    h0, c0 = rng.standard_normal((2, 4, 4, H))
    lengths = np.array([6, 0, 3, 1])
    y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
    for b, n in enumerate(lengths):
        assert not np.any(y[n:, b])  # zero past each row's length
        if n == 0:
            np.testing.assert_array_equal(h_n[:, b], h0[:, b])
            np.testing.assert_array_equal(c_n[:, b], c0[:, b])
            continue
        # a row with length n is that row run alone for n steps
        y_b, (h_b, c_b) = lstm(x[:n, b:b + 1], (h0[:, b:b + 1], c0[:, b:b + 1]))
        assert_close(y[:n, b], y_b[:, 0], np.float64)
        assert_close(h_n[:, b], h_b[:, 0], np.float64)
        assert_close(c_n[:, b], c_b[:, 0], np.float64)
    # gradients: padded positions get none, and the zero-length row's state passes through
    (_, _), backward = lstm.forward_train(x, (h0, c0), lengths=lengths)
    dy = rng.standard_normal((6, 4, 2 * H))
    dh = rng.standard_normal((4, 4, H))
    dx, (dh0, dc0) = backward(dy, (dh, None))
    assert not np.any(dx[3:, 2]) and not np.any(dx[:, 1])
    np.testing.assert_array_equal(dh0[:, 1], dh[:, 1])
    assert not np.any(dc0[:, 1])


def test_dropout_is_training_only_and_reproducible():
    lstm = clstm.LSTM(I, H, num_layers=3, dropout=0.5, dtype=np.float64, seed=3)
    plain = clstm.LSTM(I, H, num_layers=3, dtype=np.float64, seed=3)
    x = np.random.default_rng(8).standard_normal((5, 4, I))
    np.testing.assert_array_equal(lstm(x)[0], plain(x)[0])  # inference: no dropout
    (y1, _), _ = lstm.forward_train(x, rng=np.random.default_rng(1))
    (y2, _), _ = lstm.forward_train(x, rng=np.random.default_rng(1))
    (y3, _), _ = lstm.forward_train(x, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(y1, y3)
    (y_plain, _), _ = plain.forward_train(x)
    assert not np.allclose(y1, y_plain)
    # the layer's own generator: same seed, same sequence of masks
    a = clstm.LSTM(I, H, num_layers=2, dropout=0.3, seed=4)
    b = clstm.LSTM(I, H, num_layers=2, dropout=0.3, seed=4)
    np.testing.assert_array_equal(a.forward_train(x)[0][0], b.forward_train(x)[0][0])


# ------------------------------------------------------------------ Keras interop


def _keras_lstm_step(x, h, c, kernel, recurrent_kernel, bias):
    """Keras's LSTM cell, written from its documentation: z = x K + h R + b, gates i, f, c, o."""
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))
    z = x @ kernel + h @ recurrent_kernel + bias
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def test_keras_weights_round_trip_and_semantics():
    rng = np.random.default_rng(9)
    kernel, recurrent, bias = (0.5 * rng.standard_normal(s) for s in ((I, 4 * H), (H, 4 * H),
                                                                        (4 * H,)))
    lstm = clstm.LSTM.from_keras_weights(kernel, recurrent, bias)
    assert lstm.batch_first and lstm.dtype == np.float64
    x = rng.standard_normal((2, 6, I))  # Keras layout (B, T, I)
    y, (h_n, c_n) = lstm(x)
    h = c = np.zeros((2, H))
    for t in range(6):
        h, c = _keras_lstm_step(x[:, t], h, c, kernel, recurrent, bias)
        assert_close(y[:, t], h, np.float64)
    assert_close(c_n[0], c, np.float64)
    k2, r2, b2 = lstm.to_keras_weights()
    np.testing.assert_array_equal(k2, kernel)
    np.testing.assert_array_equal(r2, recurrent)
    assert_close(b2, bias, np.float64)
    assert len(clstm.LSTM.from_keras_weights(kernel, recurrent).to_keras_weights()) == 2
    bi = clstm.LSTM(I, H, bidirectional=True, seed=0)
    k_rev, _, _ = bi.to_keras_weights(direction=1)
    np.testing.assert_array_equal(k_rev, bi.weight_ih_l0_reverse.T)
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(4, 16\)"):
        clstm.LSTM.from_keras_weights(kernel, recurrent[:, :8], bias)
    with pytest.raises(ValueError, match=r"kernel must have shape \(I, 4\*H\)"):
        clstm.LSTM.from_keras_weights(kernel[:, :6], recurrent, bias)
    with pytest.raises(ValueError, match="proj_size=0"):
        clstm.LSTM(I, H, proj_size=2).to_keras_weights()
    with pytest.raises(ValueError, match="direction"):
        lstm.to_keras_weights(direction=1)


# ------------------------------------------------------------------ LSTMCell
