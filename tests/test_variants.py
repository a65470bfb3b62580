"""The LSTM variants on the compiled core (peepholes, activations, recurrent dropout)
against their NumPy reference (`clstm.reference`): outputs, states and every
gradient (peepholes included), in every mode, on every work split."""
import pickle

import numpy as np
import pytest

import clstm
from clstm import reference as V
from _helpers import assert_close

CONFIGS = [
    dict(peephole=True),
    dict(peephole=True, num_layers=2, bidirectional=True, dropout=0.3,
         recurrent_dropout=0.4),
    dict(peephole=True, num_layers=2, proj_size=2, batch_first=True, recurrent_dropout=0.25),
    dict(activation="relu", recurrent_activation="hard_sigmoid", bidirectional=True),
    dict(peephole=True, activation="linear", recurrent_activation="sigmoid", bias=False),
    dict(activation="sigmoid", recurrent_activation="tanh", num_layers=2,
         recurrent_dropout=0.5),
    dict(recurrent_dropout=0.3, num_layers=3, bidirectional=True, proj_size=3),
]


def ident(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


def reference_masks(lstm, T, B, seed):
    """The masks ``forward_train(..., rng=default_rng(seed))`` draws, as documented: per
    layer, each direction's recurrent mask (B, H_out), then the layer's output mask."""
    rng = np.random.default_rng(seed)
    L, D, P = lstm.num_layers, lstm.num_directions, lstm.output_size
    rec, out = [], []
    for k in range(L):
        for _ in range(D):
            if lstm.recurrent_dropout:
                p = lstm.recurrent_dropout
                rec.append((rng.random((B, P)) >= p) / (1 - p))
        if lstm.dropout and k < L - 1:
            out.append((rng.random((T, B, D * P)) >= lstm.dropout) / (1 - lstm.dropout))
    return (rec or None), (out or None)


def run_both(lstm, T, B, lengths, strategy=None, n_threads=1, seed=1):
    """(kernel results, reference results): y, h_n, c_n, dx, dh0, dc0 and the gradients."""
    L, D, P, H = lstm.num_layers, lstm.num_directions, lstm.output_size, lstm.hidden_size
    dtype = lstm.dtype
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, lstm.input_size)).astype(dtype)
    h0, dh = rng.standard_normal((2, L * D, B, P)).astype(dtype)
    c0, dc = rng.standard_normal((2, L * D, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, D * P)).astype(dtype)
    params = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
    rec_masks, out_masks = reference_masks(lstm, T, B, seed=3)
    f64 = lambda a: a.astype(np.float64)
    y_r, h_r, c_r, cache = V.lstm_stack_forward(
        f64(x), params, f64(h0), f64(c0), num_layers=L, bidirectional=lstm.bidirectional,
        lengths=lengths, dropout_masks=out_masks, recurrent_masks=rec_masks,
        activation=lstm.activation, recurrent_activation=lstm.recurrent_activation, train=True)
    g_r = V.lstm_stack_backward(cache, f64(dy), f64(dh), f64(dc))
    bf = lstm.batch_first
    t = (lambda a: a.transpose(1, 0, 2)) if bf else (lambda a: a)
    lstm.strategy = strategy
    lstm.zero_grad()
    clstm.set_num_threads(n_threads)
    try:
        (y, (h_n, c_n)), backward = lstm.forward_train(t(x), (h0, c0), lengths=lengths,
                                                       rng=np.random.default_rng(3))
        dx, (dh0, dc0) = backward(t(dy), (dh, dc))
    finally:
        clstm.set_num_threads(None)
        lstm.strategy = None
    got = dict(y=t(y), h_n=h_n, c_n=c_n, x=t(dx), h0=dh0, c0=dc0, **lstm.grads)
    want = dict(y=y_r, h_n=h_r, c_n=c_r, x=g_r["x"], h0=g_r["h0"], c0=g_r["c0"],
                **{k: g_r[k] for k in lstm.grads})
    return got, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=ident)
@pytest.mark.parametrize("lengths", [None, [5, 0, 2, 5, 1]])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_variants_match_the_reference(dtype, config, lengths, n_threads):
    lstm = clstm.LSTM(3, 4, dtype=dtype, seed=7, **config)
    got, want = run_both(lstm, 5, 5, lengths, n_threads=n_threads)
    assert set(got) == set(want)
    if lstm.peephole:
        assert "weight_peephole_l0" in lstm.grads and np.any(lstm.grads["weight_peephole_l0"])
    factor = 1e2 if dtype == np.float32 else 1  # float32 against a float64 reference
    for name in want:
        assert_close(got[name], want[name], dtype, factor, name)


@pytest.mark.parametrize("strategy", ["serial", "batch", "units"])
def test_every_work_split_runs_the_variants(strategy):
    """H a multiple of the panel width so the unit split can run (it refuses recurrent
    dropout: each thread masks only its own rows of h_{t-1})."""
    H = 32
    for config in (dict(peephole=True, bidirectional=True),
                   dict(activation="relu", recurrent_activation="hard_sigmoid", peephole=True),
                   dict(recurrent_dropout=0.3)):
        lstm = clstm.LSTM(3, H, dtype=np.float64, seed=2, **config)
        if strategy == "units" and lstm.recurrent_dropout:
            with pytest.raises(ValueError, match="strategy='units' cannot run recurrent"):
                run_both(lstm, 4, 3, None, strategy, n_threads=2)
            continue
        got, want = run_both(lstm, 4, 3, [4, 2, 3], strategy, n_threads=2)
        for name in want:
            assert_close(got[name], want[name], np.float64, 1, f"{strategy} {name}")


def test_zero_peepholes_are_the_plain_lstm():
    """The peephole cell adds p * c: with p = 0 it is the plain cell's arithmetic, to
    rounding (the compiler contracts the two loops' multiply-adds into FMAs differently:
    measured up to 1 ulp of float32 here)."""
    plain = clstm.LSTM(3, 8, 2, bidirectional=True, seed=4)
    peep = clstm.LSTM(3, 8, 2, bidirectional=True, seed=4, peephole=True)
    state = plain.state_dict()
    peep.load_state_dict({**state, **{k: np.zeros((3, 8)) for k in peep.state_dict()
                                      if "peephole" in k}})
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    for a, b in zip(plain(x, lengths=[6, 2, 3, 1, 6])[1], peep(x, lengths=[6, 2, 3, 1, 6])[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(plain(x)[0], peep(x)[0], rtol=1e-6, atol=1e-7)


def test_defaults_keep_the_plain_cell_and_inference_ignores_recurrent_dropout():
    assert clstm.LSTM(3, 4)._cell == "lstm" and clstm.LSTM(3, 4, recurrent_dropout=0.5) \
        ._cell == "lstm"
    assert clstm.LSTM(3, 4, peephole=True)._cell == "lstm_peephole"
    assert clstm.LSTM(3, 4, activation="relu")._cell == "lstm_act"
    a, b = clstm.LSTM(3, 4, seed=1), clstm.LSTM(3, 4, seed=1, recurrent_dropout=0.5)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    # and a training forward with p = 0 draws nothing and changes nothing
    (y0, _), _ = clstm.LSTM(3, 4, seed=1, recurrent_dropout=0.0).forward_train(x)
    np.testing.assert_array_equal(y0, a(x)[0])


def test_streaming_and_unbatched_calls_of_a_variant_model():
    """T = 1 calls (which the plain model steps in C) and unbatched input run the driver."""
    lstm = clstm.LSTM(3, 4, 2, peephole=True, activation="relu", dtype=np.float64, seed=5)
    x = np.random.default_rng(1).standard_normal((6, 3))
    y, (h, c) = lstm(x)
    params = lstm.state_dict()
    y_r, h_r, c_r, _ = V.lstm_stack_forward(x[:, None], params, np.zeros((2, 1, 4)),
                                            np.zeros((2, 1, 4)), num_layers=2,
                                            activation="relu")
    np.testing.assert_allclose(y, y_r[:, 0], rtol=1e-12, atol=1e-13)
    state = None
    for t in range(6):  # step by step, feeding the state back
        y_t, state = lstm(x[t:t + 1, None], state)
        np.testing.assert_allclose(y_t[0, 0], y_r[t, 0], rtol=1e-12, atol=1e-13)
    frozen = lstm.freeze()
    np.testing.assert_array_equal(frozen(x)[0], y)
    np.testing.assert_array_equal(frozen(x[:1, None])[0], lstm(x[:1, None])[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_cell_variant_step_and_gradients(dtype):
    cell = clstm.LSTMCell(3, 4, peephole=True, recurrent_activation="hard_sigmoid",
                          recurrent_dropout=0.4, dtype=dtype, seed=3)
    rng = np.random.default_rng(2)
    x, h0, c0, dh, dc = (rng.standard_normal(s).astype(dtype)
                         for s in ((5, 3), (5, 4), (5, 4), (5, 4), (5, 4)))
    mask = cell.recurrent_mask(5, np.random.default_rng(9))
    expect_mask = (np.random.default_rng(9).random((5, 4)) >= 0.4) / 0.6
    np.testing.assert_allclose(mask, expect_mask, rtol=1e-6)
    p = {k: v.astype(np.float64) for k, v in cell.state_dict().items()}
    f64 = lambda a: a.astype(np.float64)
    _, h_r, c_r, cache = V.lstm_forward(f64(x)[None], p["weight_ih"], p["weight_hh"],
                                        p["bias_ih"], p["bias_hh"], f64(h0), f64(c0),
                                        w_peephole=p["weight_peephole"],
                                        recurrent_activation="hard_sigmoid",
                                        recurrent_mask=f64(mask), train=True)
    g = V.lstm_backward(cache, None, f64(dh), f64(dc))
    (h, c), backward = cell.forward_train(x, (h0, c0), recurrent_mask=mask)
    dx, (dh0, dc0) = backward(dh, dc)
    factor = 1e2 if dtype == np.float32 else 1
    for a, b, name in ((h, h_r, "h"), (c, c_r, "c"), (dx, g.dx[0], "dx"), (dh0, g.dh0, "dh0"),
                       (dc0, g.dc0, "dc0"), (cell.grads["weight_ih"], g.dw_ih, "dw_ih"),
                       (cell.grads["weight_hh"], g.dw_hh, "dw_hh"),
                       (cell.grads["bias_ih"], g.db_ih, "db"),
                       (cell.grads["weight_peephole"], g.dw_peephole, "dw_peephole")):
        assert_close(a, b, dtype, factor, name)
    # inference: no mask; the frozen cell is the live one bit for bit, pickled too
    h_i, c_i = cell(x, (h0, c0))
    _, h_r, c_r, _ = V.lstm_forward(f64(x)[None], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                    p["bias_hh"], f64(h0), f64(c0),
                                    w_peephole=p["weight_peephole"],
                                    recurrent_activation="hard_sigmoid")
    assert_close(h_i, h_r, dtype, factor, "inference h")
    frozen = pickle.loads(pickle.dumps(cell.freeze()))
    for a, b in zip(frozen(x, (h0, c0)), (h_i, c_i)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cell(x[0], (h0[0], c0[0]))[0], h_i[0])


def test_state_dict_save_load_and_repr_carry_the_variants(tmp_path):
    lstm = clstm.LSTM(3, 4, bidirectional=True, peephole=True, recurrent_dropout=0.2,
                      activation="relu", recurrent_activation="hard_sigmoid", seed=1)
    assert [k for k in lstm.state_dict() if "peephole" in k] == [
        "weight_peephole_l0", "weight_peephole_l0_reverse"]
    assert lstm.weight_peephole_l0.shape == (3, 4)
    bound = 1 / np.sqrt(4)
    assert np.all(np.abs(lstm.weight_peephole_l0) <= bound) and np.any(lstm.weight_peephole_l0)
    clstm.save(lstm, tmp_path / "m")
    again = clstm.load(tmp_path / "m")
    assert repr(again) == repr(lstm) == (
        "LSTM(3, 4, bidirectional=True, peephole=True, recurrent_dropout=0.2, "
        "activation='relu', recurrent_activation='hard_sigmoid', dtype=float32)")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], lstm(x)[0])


def test_bad_variant_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"recurrent_dropout must be a number in \[0, 1\), "
                                         "got 1.0"):
        clstm.LSTM(3, 4, recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="recurrent_dropout must be a number"):
        clstm.LSTMCell(3, 4, recurrent_dropout=-0.1)
    with pytest.raises(ValueError, match="activation must be one of 'tanh', 'sigmoid', "
                                         "'hard_sigmoid', 'relu', 'linear', got 'gelu'"):
        clstm.LSTM(3, 4, activation="gelu")
    with pytest.raises(ValueError, match="recurrent_activation must be one of"):
        clstm.LSTMCell(3, 4, recurrent_activation="Sigmoid")
    with pytest.raises(TypeError, match="peephole must be True or False"):
        clstm.LSTM(3, 4, peephole="yes")
    lstm = clstm.LSTM(3, 4, peephole=True)
    with pytest.raises(ValueError, match=r"weight_peephole_l0 .*\(3, 4\)"):
        lstm.load_state_dict({"weight_peephole_l0": np.zeros((4, 3))}, strict=False)
    with pytest.raises(ValueError, match=r"recurrent_mask .*\(2, 4\)"):
        clstm.LSTMCell(3, 4).forward_train(np.zeros((2, 3)), recurrent_mask=np.ones((2, 5)))
    with pytest.raises(AttributeError, match="fixed at construction"):
        lstm.peephole = False
    with pytest.raises(ValueError, match="Keras's LSTM has no peepholes"):
        lstm.to_keras_weights()


def test_from_keras_weights_with_keras_2s_hard_sigmoid_is_onnxs_hardsigmoid():
    """Keras 2 (recurrent_activation='hard_sigmoid', its default before 2.3) against ONNX's
    LSTM semantics with HardSigmoid(0.2, 0.5), written independently (tests/_onnx_lstm.py),
    weights moved from Keras's gate order i, f, c, o to ONNX's i, o, f, c by the test."""
    import _onnx_lstm
    rng = np.random.default_rng(6)
    I, H, T, B = 3, 4, 5, 2
    kernel, rec, bias = (rng.standard_normal(s) for s in ((I, 4 * H), (H, 4 * H), (4 * H,)))
    lstm = clstm.LSTM.from_keras_weights(kernel, rec, bias, recurrent_activation="hard_sigmoid",
                                         dtype=np.float64)
    x = rng.standard_normal((B, T, I))
    y, (h, c) = lstm(x)
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 3, 1, 2)])
    Y, Yh, Yc = _onnx_lstm.lstm(x.transpose(1, 0, 2), kernel.T[order][None],
                                rec.T[order][None],
                                np.concatenate([bias[order], np.zeros(4 * H)])[None],
                                activations=["HardSigmoid", "Tanh", "Tanh"])
    np.testing.assert_allclose(y, Y[:, 0].transpose(1, 0, 2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c[0], Yc[0], rtol=1e-12, atol=1e-13)


def test_clstm_onnx_imports_without_onnx_and_says_how_to_install():
    """clstm.onnx needs onnx only when called; then the ImportError names the extra."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import clstm, clstm.onnx\n"
            "try:\n"
            "    clstm.onnx.export(clstm.LSTM(2, 3))\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd="/", timeout=60)
    assert "IMPORTERROR clstm.onnx needs the onnx package" in out.stdout, out.stderr


def test_work_splits_give_the_variants_the_same_bits():
    """As for the plain LSTM (docs/design.md, "Bit-for-bit guarantees"): serial, batch and
    unit splits, 1-3 threads, give the same outputs and gradients, peephole gradient
    included (a reduction after the time loop, whatever the split)."""
    for config in (dict(peephole=True, activation="relu", recurrent_activation="hard_sigmoid"),
                   dict(peephole=True, recurrent_dropout=0.3, bidirectional=True)):
        results = []
        for strategy, threads in (("serial", 1), ("batch", 2), ("batch", 3), ("units", 2)):
            lstm = clstm.LSTM(3, 32, dtype=np.float32, seed=2, **config)
            if strategy == "units" and lstm.recurrent_dropout:
                continue
            got, _ = run_both(lstm, 6, 5, [6, 2, 5, 0, 3], strategy, n_threads=threads)
            results.append((strategy, threads, got))
        for strategy, threads, got in results[1:]:
            for name in got:
                np.testing.assert_array_equal(got[name], results[0][2][name],
                                              err_msg=f"{strategy} x{threads}: {name}")


@pytest.mark.parametrize("weights", ["int8", "bfloat16"])
def test_low_precision_snapshots_of_variant_models(weights):
    """freeze(weights=...) packs the variant's w_ih/w_hh in the low-precision format; the
    peepholes and activations stay the cell's (float32): close to the live model."""
    x = np.random.default_rng(0).standard_normal((6, 3, 8)).astype(np.float32)
    for kw in (dict(peephole=True, bidirectional=True),
               dict(activation="relu", recurrent_activation="hard_sigmoid")):
        lstm = clstm.LSTM(8, 32, 2, seed=1, **kw)
        np.testing.assert_allclose(lstm.freeze(weights=weights)(x)[0], lstm(x)[0], atol=1e-2)
        kw.pop("bidirectional", None)
        cell = clstm.LSTMCell(8, 32, seed=1, **kw)
        np.testing.assert_allclose(cell.freeze(weights=weights)(x[0])[0], cell(x[0])[0],
                                   atol=1e-2)
