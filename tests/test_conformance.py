"""One conformance battery over every path that runs a layer: the step, the driver's three
work splits (serial, batch rows, hidden units) at several thread counts, training and
inference, frozen models, both dtypes, lengths, projection and reverse; each against the
NumPy reference, and the driver's paths against each other bit for bit (the packed kernel
sums every output in one order, whatever the split; only a projection's products go
through BLAS, whose order depends on the rows per call)."""
import itertools

import numpy as np
import pytest

import clstm
from clstm import _packed
from clstm import functional as F
from clstm import reference as R
from _helpers import assert_close, assert_grads_close, make_problem

INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")
DRIVER = ("serial", "batch", "units")
DTYPES = (np.float32, np.float64)


def width(dtype):
    return _packed.packed_panel_width(np.dtype(dtype).name)


CASES = {  # name: (T, B, lengths, P, reverse); H is three packed panels (the unit split)
    "plain": (5, 3, None, None, False),
    "one row": (6, 1, None, None, False),
    "lengths": (5, 4, (1, 5, 5, 3), None, False),
    "lengths reverse": (5, 3, (5, 0, 2), None, True),
    "projection": (4, 5, (4, 2, 0, 4, 1), 3, True),
    "one step": (1, 3, None, None, False),
}


def run(p, case, path, n_threads, train, dtype):
    T, B, lengths, P, reverse = CASES[case]
    return F.lstm_forward(*(p[k] for k in INPUTS), w_hr=p.get("w_hr"), lengths=lengths,
                          reverse=reverse, train=train, n_threads=n_threads, strategy=path)


def usable(case, path):
    T, B, lengths, P, reverse = CASES[case]
    if path == "units":
        return P is None
    if path == "step":
        return T == 1 and P is None and lengths is None
    return True


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_path_matches_the_reference_and_the_driver_paths_agree_bitwise(case, dtype):
    T, B, lengths, P, reverse = CASES[case]
    H = 3 * width(dtype)
    p = make_problem(T, B, 4, H, dtype=dtype, seed=len(case), P=P)
    ref = R.lstm_forward(*(p[k] for k in INPUTS), w_hr=p.get("w_hr"), lengths=lengths,
                         reverse=reverse, train=True)
    g_ref = R.lstm_backward(ref[3], p["dy"], p["dh_n"], p["dc_n"])
    driver_results = {}
    for path, n_threads in itertools.product(("step",) + DRIVER, (1, 2, 3)):
        if not usable(case, path):
            with pytest.raises(ValueError, match=f"strategy='{path}' needs"):
                run(p, case, path, n_threads, False, dtype)
            continue
        for train in (False, True):
            y, h, c, cache = run(p, case, path, n_threads, train, dtype)
            for name, a, b in (("y", y, ref[0]), ("h_n", h, ref[1]), ("c_n", c, ref[2])):
                assert a.dtype == dtype
                assert_close(a, b, dtype, what=f"{name} {path} x{n_threads} train={train}")
        g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
        assert_grads_close(g, g_ref, dtype)
        if path in DRIVER:
            driver_results[path, n_threads] = [y, h, c, g.dx, g.dh0, g.dc0, g.dw_ih, g.dw_hh,
                                               g.db_ih]
    first = next(iter(driver_results.values()))
    for key, arrays in driver_results.items():
        for a, b in zip(arrays, first):
            if P is None:
                np.testing.assert_array_equal(a, b, err_msg=str(key))
            else:  # the projection's products are BLAS's: its kernels vary with the rows
                assert_close(a, b, dtype, what=str(key))


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_path_gives_inference_and_training_the_same_numbers(dtype):
    p = make_problem(1, 3, 5, 7, dtype=dtype, seed=4)
    y, h, c, _ = F.lstm_forward(*(p[k] for k in INPUTS))
    y_t, h_t, c_t, _ = F.lstm_forward(*(p[k] for k in INPUTS), train=True)
    for a, b in ((y, y_t), (h, h_t), (c, c_t)):
        np.testing.assert_array_equal(a, b)


MODELS = {
    "one layer": dict(),
    "stacked bidirectional": dict(num_layers=2, bidirectional=True),
    "projection": dict(num_layers=2, proj_size=3),
    "batch first": dict(batch_first=True, bidirectional=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", list(MODELS))
def test_frozen_model_is_the_live_model_bit_for_bit(model, dtype):
    kw = MODELS[model]
    lstm = clstm.LSTM(4, 2 * width(dtype), dtype=dtype, seed=3, **kw)
    frozen = lstm.freeze()
    rng = np.random.default_rng(5)
    for T, B, lengths in ((6, 3, None), (5, 4, [5, 1, 0, 3]), (2, 1, None), (1, 9, None)):
        shape = (B, T, 4) if lstm.batch_first else (T, B, 4)
        x = rng.standard_normal(shape).astype(dtype)
        for n_threads in (1, 2):
            clstm.set_num_threads(n_threads)
            try:
                live, snap = lstm(x, lengths=lengths), frozen(x, lengths=lengths)
            finally:
                clstm.set_num_threads(None)
            for a, b in zip((live[0], *live[1]), (snap[0], *snap[1])):
                np.testing.assert_array_equal(a, b)
    x1 = rng.standard_normal((1, 2, 4) if not lstm.batch_first else (2, 1, 4)).astype(dtype)
    live, snap = lstm(x1), frozen(x1)  # one step of two rows: the live model's BLAS step
    for a, b in zip((live[0], *live[1]), (snap[0], *snap[1])):
        assert_close(a, b, dtype)
    unbatched = x1[:, 0] if not lstm.batch_first else x1[0]
    assert_close(frozen(unbatched)[0], lstm(unbatched)[0], dtype)


def test_frozen_model_is_a_snapshot_and_pickles():
    import pickle

    lstm = clstm.LSTM(3, 5, num_layers=2, proj_size=2, seed=1)
    frozen = lstm.freeze()
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    before = frozen(x)
    lstm.params["weight_hh_l1"] *= 2
    lstm.params["weight_hr_l0"] *= 2
    after = frozen(x)
    np.testing.assert_array_equal(before[0], after[0])
    assert not np.allclose(lstm(x)[0], before[0])
    restored = pickle.loads(pickle.dumps(frozen))
    np.testing.assert_array_equal(restored(x)[0], before[0])
    assert repr(frozen) == f"{lstm!r}.freeze()"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 3, 8, 9, 40])
def test_frozen_cell_is_the_driver_bit_for_bit(dtype, B):
    cell = clstm.LSTMCell(5, 2 * width(dtype), dtype=dtype, seed=2)
    frozen = cell.freeze()
    p = cell.params
    rng = np.random.default_rng(B)
    x = rng.standard_normal((B, 5)).astype(dtype)
    h0, c0 = rng.standard_normal((2, B, cell.hidden_size)).astype(dtype)
    h, c = frozen(x, (h0, c0))
    for path in ("serial", "batch"):
        _, h_d, c_d, _ = F.lstm_forward(x[None], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                        p["bias_hh"], h0, c0, strategy=path)
        np.testing.assert_array_equal(h, h_d)
        np.testing.assert_array_equal(c, c_d)
    h_live, c_live = cell(x, (h0, c0))
    assert_close(h, h_live, dtype)
    assert_close(c, c_live, dtype)


def test_lstm_strategy_attribute_forces_a_path_for_the_whole_stack():
    lstm = clstm.LSTM(3, 64, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    results = []
    for strategy in (None,) + DRIVER:
        lstm.strategy = strategy
        (y, (h, c)), backward = lstm.forward_train(x)
        lstm.zero_grad()
        dx, _ = backward(np.ones_like(y))
        results.append([y, h, c, dx, lstm.grads["weight_hh_l0"].copy()])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            np.testing.assert_array_equal(a, b)
    lstm.strategy = "step"
    with pytest.raises(ValueError, match="strategy='step' needs"):
        lstm(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["one layer", "stacked bidirectional", "batch first"])
def test_one_step_stack_calls(model, dtype):
    """A T=1 call of a few rows runs the whole stack in one compiled call: the live model's
    equals its own training forward (the same BLAS step), the frozen one's equals the driver
    (lengths given take the driver) bit for bit."""
    lstm = clstm.LSTM(4, 2 * width(dtype), dtype=dtype, seed=7, **MODELS[model])
    frozen = lstm.freeze()
    rng = np.random.default_rng(8)
    L = lstm.num_layers * lstm.num_directions
    for B in (1, 3, 8):
        x = rng.standard_normal((B, 1, 4) if lstm.batch_first else (1, B, 4)).astype(dtype)
        state = tuple(rng.standard_normal((2, L, B, lstm.hidden_size)).astype(dtype))
        live = lstm(x, state)
        (y_t, (h_t, c_t)), _ = lstm.forward_train(x, state)
        for a, b in zip((live[0], *live[1]), (y_t, h_t, c_t)):
            np.testing.assert_array_equal(a, b)
        snap = frozen(x, state)
        driver = frozen(x, state, lengths=np.ones(B, int))
        for a, b in zip((snap[0], *snap[1]), (driver[0], *driver[1])):
            np.testing.assert_array_equal(a, b)
        ref = R.lstm_stack_forward(x.transpose(1, 0, 2) if lstm.batch_first else x,
                                   lstm.state_dict(), *state, num_layers=lstm.num_layers,
                                   bidirectional=lstm.bidirectional)
        y_ref = ref[0].transpose(1, 0, 2) if lstm.batch_first else ref[0]
        assert_close(live[0], y_ref, dtype)
        assert_close(snap[0], y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_row_gives_the_same_bits_alone_or_in_any_batch(dtype):
    """The packed paths do not depend on the rows sharing a call (docs/design.md, "Bit-for-
    bit guarantees"): a live model over T >= 2 steps, a frozen model and a frozen cell."""
    rng = np.random.default_rng(8)
    lstm = clstm.LSTM(4, 2 * width(dtype), num_layers=2, bidirectional=True, dtype=dtype,
                      seed=2)
    frozen = lstm.freeze()
    x = rng.standard_normal((6, 11, 4)).astype(dtype)
    for model in (lstm, frozen):
        for n_threads in (1, 3):
            clstm.set_num_threads(n_threads)
            try:
                batch = model(x)[0]
                for b in (0, 5, 10):
                    np.testing.assert_array_equal(model(x[:, b:b + 1])[0][:, 0], batch[:, b])
                if model is frozen:  # (a live one-step call of <= 8 rows is BLAS's)
                    np.testing.assert_array_equal(model(x[:1])[0][0, 3],
                                                  model(x[:1, 3:4])[0][0, 0])
            finally:
                clstm.set_num_threads(None)
    cell = clstm.LSTMCell(4, 2 * width(dtype), dtype=dtype, seed=2).freeze()
    xs = x[0]
    batch = cell(xs)[0]  # 11 rows: the threaded driver; 1 and 3 rows: the packed step
    for rows in (slice(0, 1), slice(4, 7)):
        np.testing.assert_array_equal(cell(xs[rows])[0], batch[rows])


def test_unaligned_input_and_unpickled_unaligned_weights_are_accepted():
    """Arrays that sit anywhere (frombuffer, pickle protocol 5 buffers between processes)
    are copied where the kernels need alignment, not refused."""
    import pickle

    from _helpers import unaligned

    lstm = clstm.LSTM(3, 5, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    expected = lstm(x)
    got = lstm(unaligned(x))
    for a, b in zip((expected[0], *expected[1]), (got[0], *got[1])):
        np.testing.assert_array_equal(a, b)
    (y, _), backward = lstm.forward_train(unaligned(x))
    np.testing.assert_array_equal(y, expected[0])
    for model in (lstm.freeze(), clstm.LSTMCell(3, 5, seed=1).freeze()):
        buffers = []
        data = pickle.dumps(model, protocol=5, buffer_callback=buffers.append)
        assert buffers  # the arrays travel out of band, as between Dask workers
        moved = []
        for b in buffers:  # each buffer copied to an odd address
            raw = np.frombuffer(b.raw(), np.uint8)
            odd = np.empty(raw.size + 1, np.uint8)[1:]
            odd[...] = raw
            moved.append(odd)
        restored = pickle.loads(data, buffers=moved)
        inp = x if isinstance(model, clstm.FrozenLSTM) else x[0]
        for a, b in zip(np.atleast_1d(model(inp)[0]), np.atleast_1d(restored(inp)[0])):
            np.testing.assert_array_equal(a, b)
