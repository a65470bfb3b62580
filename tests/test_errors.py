"""Bad input gets a clear exception naming the argument and the expected shape or dtype."""
import numpy as np
import pytest

import clstm
from _helpers import I, H, make_lstm


def test_readonly_noncontiguous_and_empty_inputs():
    lstm = make_lstm()
    rng = np.random.default_rng(4)
    big = rng.standard_normal((6, 4, 2 * I))
    x = big[::2, :, ::2]  # non-contiguous view
    assert not x.flags.c_contiguous
    ro = np.ascontiguousarray(x)
    ro.setflags(write=False)
    np.testing.assert_array_equal(lstm(x)[0], lstm(ro)[0])
    h0 = np.zeros((1, 4, H))
    h0.setflags(write=False)
    lstm(ro, (h0, h0))
    y, (h, c) = lstm(np.zeros((5, 0, I)))
    assert y.shape == (5, 0, H) and h.shape == (1, 0, H)
    (y, (h, c)), back = lstm.forward_train(np.zeros((5, 0, I)))
    dx, (dh, dc) = back(np.zeros((5, 0, H)))
    assert dx.shape == (5, 0, I) and dh.shape == (1, 0, H)


@pytest.mark.parametrize("x, exc, pattern", [
    (np.zeros((5, 2, I + 1)), ValueError, r"x must have shape \(T, B, 3\)"),
    (np.zeros((5, 2, 3, I)), ValueError, r"x must be 3-D"),
    (np.zeros(5), ValueError, r"x must be 3-D"),
    (np.zeros((5, 2, I), np.int64), TypeError, "x must be a float32 or float64 array"),
    (np.zeros((5, 2, I), bool), TypeError, "x must be a float32 or float64 array"),
    (np.zeros((5, 2, I), complex), TypeError, "x must be a float32 or float64 array"),
    (np.array([[["a"] * I]]), TypeError, "x must be a float32 or float64 array"),
    ([[[1.0, 2.0]]], ValueError, "x must have shape"),
    (object(), TypeError, "x must be a float"),
])
def test_bad_input_is_named(x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make_lstm()(x)


def test_bad_state_and_gradients_are_named():
    lstm = make_lstm()
    x = np.zeros((5, 2, I))
    good = np.zeros((1, 2, H))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 4\)"):
        lstm(x, (np.zeros((1, 3, H)), good))
    with pytest.raises(ValueError, match=r"c0 must have shape \(1, 2, 4\)"):
        lstm(x, (good, np.zeros((2, H))))
    with pytest.raises(TypeError, match="state must be a tuple"):
        lstm(x, good)
    with pytest.raises(TypeError, match="h0 must be a float32"):
        lstm(x, (good.astype(int), good))
    _, back = lstm.forward_train(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(5, 2, 4\)"):
        back(np.zeros((5, 2, H + 1)))
    with pytest.raises(ValueError, match=r"dc_n must have shape \(1, 2, 4\)"):
        back(None, (None, np.zeros((2, H))))
    with pytest.raises(TypeError, match="dstate must be a tuple"):
        back(None, np.zeros((1, 2, H)))


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be >= 1"),
    (dict(input_size=3, hidden_size=2.5), TypeError, "hidden_size must be an int"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers"),
    (dict(input_size=3, hidden_size=4, proj_size=4), ValueError, "proj_size must be smaller"),
    (dict(input_size=3, hidden_size=4, dropout=1.0), ValueError, r"dropout must be .* \[0, 1\)"),
    (dict(input_size=3, hidden_size=4, dropout=-0.1), ValueError, r"dropout must be .* \[0, 1\)"),
    (dict(input_size=3, hidden_size=4, dropout="0.5"), ValueError, r"dropout must be a number"),
    (dict(input_size=3, hidden_size=4, proj_size=5), ValueError, "proj_size must be smaller"),
    (dict(input_size=3, hidden_size=4, proj_size=-1), ValueError, "proj_size must be >= 0"),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "dtype must be float32"),
    (dict(input_size=3, hidden_size=4, dtype=np.float16), TypeError, "dtype must be float32"),
])
def test_bad_constructor_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        clstm.LSTM(**kwargs)


def test_attribute_assignment_validates_and_copies():
    lstm = make_lstm()
    w = np.full((4 * H, I), 0.5)
    original = lstm.weight_ih_l0
    lstm.weight_ih_l0 = w
    assert lstm.weight_ih_l0 is original  # written in place: optimisers keep their reference
    np.testing.assert_array_equal(lstm.weight_ih_l0, w)
    w[...] = 0  # no aliasing of the caller's array
    assert np.all(lstm.weight_ih_l0 == 0.5)
    with pytest.raises(ValueError, match=r"weight_ih_l0 must have shape \(16, 3\)"):
        lstm.weight_ih_l0 = np.zeros((16, I + 1))
    lstm.something_else = 3  # ordinary attributes still work
    assert lstm.something_else == 3


def test_parameters_replaced_in_params_dict_are_checked():
    lstm = make_lstm()
    lstm.params["weight_hh_l0"] = np.zeros((4 * H, H + 1))
    with pytest.raises(ValueError, match=r"parameter weight_hh_l0 must be .*\(16, 4\)"):
        lstm(np.zeros((2, 1, I)))
    lstm.params["weight_hh_l0"] = np.zeros((4 * H, H), np.float32)
    with pytest.raises(ValueError, match="parameter weight_hh_l0 must be a C-contiguous float64"):
        lstm(np.zeros((2, 1, I)))


@pytest.mark.parametrize("lengths, exc, pattern", [
    ([5, 5], ValueError, r"lengths must have shape \(3,\)"),
    (np.array([5, 5, 5.0]), TypeError, "lengths must be an integer array"),
    (np.array([True, True, True]), TypeError, "lengths must be an integer array"),
    ([5, -1, 2], ValueError, r"lengths must be in \[0, 5\]"),
    ([5, 6, 2], ValueError, r"lengths must be in \[0, 5\]"),
    ("abc", TypeError, "lengths must be an integer array"),
])
def test_bad_lengths_are_named(lengths, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make_lstm()(np.zeros((5, 3, I)), lengths=lengths)


def _torch_requires_grad(a):
    torch = pytest.importorskip("torch")
    return torch.tensor(a, requires_grad=True)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda m: clstm.optim.SGD(m, lr="0.1"), TypeError, "lr must be a number, got str"),
    (lambda m: clstm.optim.SGD(m, lr=0.1, momentum="0.9"), TypeError, "momentum must be a number"),
    (lambda m: clstm.optim.Adam(m, eps="1e-8"), TypeError, "eps must be a number"),
    (lambda m: clstm.optim.Adam(m, betas=("0.9", 0.999)), TypeError, "beta1 must be a number"),
    (lambda m: clstm.clip_grad_norm(m, "1"), TypeError, "max_norm must be a number"),
    (lambda m: clstm.optim.SGD(None, lr=0.1), TypeError, "params must be a module .* NoneType"),
    (lambda m: clstm.optim.Adam(5), TypeError, "params must be a module .* got int"),
    (lambda m: clstm.clip_grad_norm(None, 1.0), TypeError, "params must be a module"),
    (lambda m: m.load_state_dict(None), TypeError, "state_dict must be a mapping .* NoneType"),
    (lambda m: clstm.optim.SGD(m, lr=0.1).load_state_dict(None), TypeError,
     "state_dict must be a dict"),
    (lambda m: clstm.FrozenLSTMCell(5), TypeError, r"cell must be an LSTMCell .* got int"),
    (lambda m: clstm.FrozenLSTM(5), TypeError, "model must be a clstm.LSTM"),
    (lambda m: m.forward_train(np.zeros((2, 1, I)), rng=5), TypeError,
     "rng must be a numpy.random.Generator"),
    (lambda m: clstm.Dropout(0.5).forward_train(np.zeros(3), rng=5), TypeError,
     "rng must be a numpy.random.Generator"),
    (lambda m: clstm.LSTM(4, 8, seed=-1), ValueError, "seed must be None or an int >= 0"),
    (lambda m: clstm.LSTMCell(4, 8, seed="a"), TypeError, "seed must be None or an int >= 0"),
    (lambda m: clstm.Linear(4, 8, seed=1.5), TypeError, "seed must be None or an int >= 0"),
])
def test_unclear_errors_now_name_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(make_lstm())


def test_valid_numbers_and_empty_lengths_are_accepted():
    lstm = make_lstm()
    for lr in (np.float32(0.1), 1, np.array(0.5)):
        assert clstm.optim.SGD(lstm, lr=lr).lr == float(lr)
    assert clstm.LSTM(3, 4, dropout=np.int64(0)).dropout == 0.0
    assert clstm.LSTM(3, 4, num_layers=2, dropout=np.float32(0.25)).dropout == 0.25
    for empty in ((), []):
        y, (h, c) = lstm(np.zeros((5, 0, I)), lengths=empty)
        assert y.shape == (5, 0, H) and h.shape == (1, 0, H)
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        lstm(np.zeros((5, 1, I)), lengths=[5.0])  # a non-empty float array stays an error


def test_training_takes_torch_tensors_that_require_grad():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, I))
    lstm = make_lstm()
    expected = lstm.forward_train(x)[0][0]
    (y, _), backward = lstm.forward_train(_torch_requires_grad(x))
    np.testing.assert_array_equal(y, expected)
    backward(np.ones_like(y))
    lin = clstm.Linear(I, 2, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(lin.forward_train(_torch_requires_grad(x))[0], lin(x))
    pool = clstm.AttentionPooling(I, 2, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(pool.forward_train(_torch_requires_grad(x))[0][0],
                                  pool(x)[0])


def test_replaced_grads_reach_an_earlier_optimiser_or_are_refused():
    lstm = clstm.LSTM(1, 8, dtype=np.float64, seed=0)
    opt = clstm.optim.SGD(lstm, lr=1.0)
    before = lstm.weight_ih_l0.copy()
    lstm.grads["weight_ih_l0"] = np.full((32, 1), 0.5, np.float32)  # cast, copied in
    assert lstm.grads["weight_ih_l0"].dtype == np.float64
    opt.step()
    np.testing.assert_array_equal(lstm.weight_ih_l0, before - 0.5)
    with pytest.raises(ValueError, match=r"grads\['weight_ih_l0'\] must have shape \(32, 1\)"):
        lstm.grads["weight_ih_l0"] = np.zeros((32, 2))
    with pytest.raises(TypeError, match=r"grads\['bias_ih_l0'\] must be a float"):
        lstm.grads.update(bias_ih_l0=np.zeros(32, int))
    _, backward = lstm.forward_train(np.ones((2, 1, 1)))
    backward(np.ones((2, 1, 8)))  # adds into the same arrays
    assert np.any(lstm.grads["weight_hh_l0"])
    model = clstm.Sequential(clstm.Linear(2, 3, seed=0))
    model.grads["0.weight"] = np.ones((3, 2))  # reaches the child's array
    np.testing.assert_array_equal(model[0].grads["weight"], np.ones((3, 2)))


def test_hyper_parameters_are_read_only_but_models_copy_and_pickle():
    import copy
    import pickle

    lstm = clstm.LSTM(3, 4, num_layers=2, seed=1)
    for name in ("hidden_size", "input_size", "num_layers", "bidirectional", "proj_size",
                 "dtype", "dropout", "batch_first", "bias", "seed"):
        with pytest.raises(AttributeError, match=f"LSTM.{name} is fixed at construction"):
            setattr(lstm, name, 16)
    for module, name in ((clstm.LSTMCell(3, 4), "hidden_size"), (clstm.Linear(3, 4), "dtype"),
                         (clstm.Embedding(5, 2), "embedding_dim"),
                         (clstm.AttentionPooling(4, 2), "attention_size")):
        with pytest.raises(AttributeError, match="is fixed at construction"):
            setattr(module, name, 7)
    lstm.strategy = "serial"  # not a hyper-parameter: still settable
    x = np.ones((2, 1, 3), np.float32)
    for clone in (copy.copy(lstm), pickle.loads(pickle.dumps(lstm)), lstm.freeze()):
        np.testing.assert_array_equal(clone(x)[0], lstm(x)[0])
    clone = pickle.loads(pickle.dumps(lstm))
    clone.grads["weight_hh_l0"] = np.ones((16, 4))
    assert np.all(clone.grads["weight_hh_l0"] == 1) and not np.any(lstm.grads["weight_hh_l0"])
    with pytest.raises(AttributeError, match="fixed"):
        clone.hidden_size = 8


@pytest.mark.parametrize("T, B", [(0, 2), (5, 0), (0, 0)])
def test_empty_bidirectional_reverse_and_cell_batches_work(T, B):
    """An empty sequence or batch passes the state through (and its gradient back)."""
    from clstm import functional as F
    from _helpers import make_problem

    rng = np.random.default_rng(2)
    lstm = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    h0, c0 = rng.standard_normal((2, 4, B, H))
    x = np.zeros((T, B, I))
    for model in (lstm, lstm.freeze()):
        y, (h, c) = model(x, (h0, c0))
        assert y.shape == (T, B, 2 * H)
        np.testing.assert_array_equal(h, h0 if T == 0 else h)
    (y, (h, c)), backward = lstm.forward_train(x, (h0, c0), lengths=np.full(B, T))
    dx, (dh0, dc0) = backward(np.zeros((T, B, 2 * H)), (h0, c0))
    assert dx.shape == x.shape and dh0.shape == h0.shape
    p = make_problem(T, B, I, H, dtype=np.float64)
    args = [p[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    y, h, c, cache = F.lstm_forward(*args, reverse=True, train=True)
    assert y.shape == (T, B, H)
    g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    assert g.dx.shape == (T, B, I)
    cell = clstm.LSTMCell(I, H, dtype=np.float64, seed=0)
    state = (np.zeros((B, H)), np.zeros((B, H)))
    for step in (cell, cell.freeze()):
        for s in (None, state):
            h, c = step(np.zeros((B, I)), s)
            assert h.shape == c.shape == (B, H)


def test_importing_the_source_folder_says_what_to_do():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "clstm" / "__init__.py").exists() or \
            any((root / "clstm").glob("_runtime*.so")) or any((root / "clstm").glob("*.pyd")):
        pytest.skip("not a source checkout without an in-place build")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import clstm"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "source folder" in last and "pip install ." in last and "other directory" in last


def test_initialisation_draws_in_the_parameter_dtype_with_bounded_memory():
    import tracemalloc

    H_big = 1024  # weight_hh: 4M values, 16 MB in float32 (a float64 draw: 32 MB more)
    tracemalloc.start()
    try:
        lstm = clstm.LSTM(4, H_big, dtype=np.float32, seed=7)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - current < 9 * 2**20  # one 8 MB chunk of float64 draws at most
    # the same numbers as one float64 draw of each parameter, in state_dict order
    rng = np.random.default_rng(7)
    for name, p in lstm.state_dict().items():
        expected = rng.uniform(-1 / np.sqrt(H_big), 1 / np.sqrt(H_big), p.shape)
        np.testing.assert_array_equal(p, expected.astype(np.float32), err_msg=name)


def test_one_layer_dropout_warns_as_torch_does():
    import warnings

    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        clstm.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clstm.LSTM(3, 4, num_layers=2, dropout=0.5)
        clstm.LSTM(3, 4, dropout=0.0)


def test_projection_shape_mismatch_names_w_hh_and_w_hr():
    """Found by tests/test_fuzz.py: a w_hh with the wrong P (its last axis) next to a
    projection was reported as a wrong w_hr alone."""
    from clstm import functional as F

    H, P, I = 4, 2, 3
    f32 = np.float32
    w_hh_wrong_p = np.zeros((4 * H, P + 1), f32)
    with pytest.raises(ValueError, match=r"w_hr must have shape \(P, H\) = \(3, 4\) for "
                                         r"w_hh of shape \(4\*H, P\) = \(16, 3\)"):
        F.lstm_forward(np.zeros((2, 1, I), f32), np.zeros((4 * H, I), f32), w_hh_wrong_p,
                       None, None, np.zeros((1, P + 1), f32), np.zeros((1, H), f32),
                       w_hr=np.zeros((P, H), f32))
