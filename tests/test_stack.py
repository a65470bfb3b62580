"""clstm.LSTM (stacks, directions, projection, dropout, lengths) against the reference
composition `clstm.reference.lstm_stack_forward/backward`: proves the orchestration without
PyTorch."""
import numpy as np
import pytest

import clstm
from clstm import reference as R
from _helpers import assert_close

CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, proj_size=2),
    dict(num_layers=2, bidirectional=True, proj_size=3, bias=False),
    dict(num_layers=3, bidirectional=True, dropout=0.4),
    dict(num_layers=2, proj_size=2, dropout=0.25, batch_first=True),
]


def reference_masks(lstm, T, B, seed):
    """The masks `forward_train(..., rng=default_rng(seed))` draws (documented in LSTM)."""
    if not lstm.dropout:
        return None
    rng = np.random.default_rng(seed)
    width = lstm.num_directions * lstm.output_size
    return [(rng.random((T, B, width)) >= lstm.dropout) / (1 - lstm.dropout)
            for _ in range(lstm.num_layers - 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}"
                                                                    for k, v in c.items()))
@pytest.mark.parametrize("lengths", [None, [5, 0, 2, 5, 1]])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_layer_matches_reference_stack(dtype, config, lengths, n_threads):
    T, B, I, H = 5, 5, 3, 4
    lstm = clstm.LSTM(I, H, dtype=dtype, seed=7, **config)
    L, D, P = lstm.num_layers, lstm.num_directions, lstm.output_size
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, dh = rng.standard_normal((2, L * D, B, P)).astype(dtype)
    c0, dc = rng.standard_normal((2, L * D, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, D * P)).astype(dtype)
    bf = lstm.batch_first
    x_in = x.transpose(1, 0, 2) if bf else x
    dy_in = dy.transpose(1, 0, 2) if bf else dy

    params = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    masks = reference_masks(lstm, T, B, seed=3)
    y_r, h_r, c_r, cache = R.lstm_stack_forward(
        x.astype(np.float64), params, h0.astype(np.float64), c0.astype(np.float64),
        num_layers=L, bidirectional=lstm.bidirectional, lengths=lengths, dropout_masks=masks,
        train=True)
    g_r = R.lstm_stack_backward(cache, dy.astype(np.float64), dh.astype(np.float64),
                                dc.astype(np.float64))

    clstm.set_num_threads(n_threads)
    try:
        (y, (h_n, c_n)), backward = lstm.forward_train(x_in, (h0, c0), lengths=lengths,
                                                       rng=np.random.default_rng(3))
        dx, (dh0, dc0) = backward(dy_in, (dh, dc))
        y_inf, _ = lstm(x_in, (h0, c0), lengths=lengths)
    finally:
        clstm.set_num_threads(None)
    if bf:
        y, dx, y_inf = (a.transpose(1, 0, 2) for a in (y, dx, y_inf))
    factor = 1e2 if dtype == np.float32 else 1  # float32 against a float64 reference
    for a, b, name in ((y, y_r, "y"), (h_n, h_r, "h_n"), (c_n, c_r, "c_n"), (dx, g_r["x"], "dx"),
                       (dh0, g_r["h0"], "dh0"), (dc0, g_r["c0"], "dc0")):
        assert_close(a, b, dtype, factor, name)
    for name, g in lstm.grads.items():
        assert_close(g, g_r[name], dtype, factor, name)
    if not lstm.dropout:
        assert_close(y_inf, y_r, dtype, factor, "inference y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS[:4], ids=lambda c: "-".join(f"{k}={v}"
                                                                       for k, v in c.items()))
@pytest.mark.parametrize("B, lengths", [(1, None), (3, None), (3, [1, 1, 1]), (3, [1, 0, 1]),
                                        (9, None)])
def test_one_step_inference_matches_reference_stack(dtype, config, B, lengths):
    """T = 1 with a few rows (a layer stepped token by token) takes LSTMCell's step on the
    unpacked weights: the same numbers as the reference, with outputs that own their memory."""
    I, H = 3, 4
    lstm = clstm.LSTM(I, H, dtype=dtype, seed=8, **config)
    L, D, P = lstm.num_layers, lstm.num_directions, lstm.output_size
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, P)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    params = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    y_r, h_r, c_r, _ = R.lstm_stack_forward(
        x.astype(np.float64), params, h0.astype(np.float64), c0.astype(np.float64),
        num_layers=L, bidirectional=lstm.bidirectional, lengths=lengths)
    y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
    factor = 1e2 if dtype == np.float32 else 1
    for a, b, name in ((y, y_r, "y"), (h_n, h_r, "h_n"), (c_n, c_r, "c_n")):
        assert_close(a, b, dtype, factor, name)
    assert not np.shares_memory(y, h_n)


MODELS = {
    "lstm": lambda: clstm.LSTM(6, 32, num_layers=3, seed=3),
    "projection": lambda: clstm.LSTM(6, 32, num_layers=2, proj_size=5, dtype=np.float64,
                                     seed=3),
    "frozen": lambda: clstm.LSTM(6, 32, num_layers=2, seed=3).freeze(),
    "frozen-int8": lambda: clstm.LSTM(6, 64, num_layers=2, seed=3).freeze(weights="int8"),
    "frozen-gru": lambda: clstm.GRU(6, 32, num_layers=2, seed=3).freeze(),
    "batch-first": lambda: clstm.LSTM(6, 32, num_layers=2, batch_first=True, seed=3),
}


@pytest.mark.parametrize("name, strategy", [
    (name, strategy) for name in MODELS for strategy in (None, "serial", "batch", "units")
    if not (name == "projection" and strategy == "units")])  # (units: no projection)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_inference_without_lengths_is_the_general_path(name, strategy, n_threads):
    """Inference on full-length rows skips the packing (`_stack.infer`); with lengths (all
    T, so the same rows) it goes the general way: the same bits, states included."""
    m = MODELS[name]()
    spec = getattr(m, "_spec", m)
    spec.strategy = strategy
    T, B = 7, 3
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, 6) if spec.batch_first else (T, B, 6)).astype(spec.dtype)
    n_states = spec.num_layers
    h0 = rng.standard_normal((n_states, B, spec.output_size)).astype(spec.dtype)
    c0 = rng.standard_normal((n_states, B, spec.hidden_size)).astype(spec.dtype)
    state = h0 if isinstance(spec, clstm.GRU) else (h0, c0)
    clstm.set_num_threads(n_threads)
    try:
        fast = m(x, state)
        general = m(x, state, lengths=np.full(B, T))
    finally:
        clstm.set_num_threads(None)
    np.testing.assert_array_equal(fast[0], general[0])
    for a, b in zip(np.atleast_1d(fast[1]) if isinstance(spec, clstm.GRU) else fast[1],
                    np.atleast_1d(general[1]) if isinstance(spec, clstm.GRU) else general[1]):
        np.testing.assert_array_equal(a, b)
