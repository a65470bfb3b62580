"""The clstm.LSTM class: shapes, state handling, gradients, parameters, and bad input."""
import pickle

import numpy as np
import pytest

import clstm
from clstm import reference as R
from _helpers import assert_close

I, H = 3, 4


def make_lstm(dtype=np.float64, **kw):
    return clstm.LSTM(I, H, dtype=dtype, seed=0, **kw)


def reference_run(lstm, x, h0=None, c0=None):
    p = lstm.state_dict()
    B = x.shape[1]
    h0 = np.zeros((B, H)) if h0 is None else h0
    c0 = np.zeros((B, H)) if c0 is None else c0
    return R.lstm_forward(x, p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"),
                          p.get("bias_hh_l0"), h0, c0, train=True)


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
    """The kernels add weight gradients straight into ``grads`` when an array there can take
    it; any other array (replaced by the user) still gets them added, or a clear error."""
    lstm = make_lstm()
    x = np.random.default_rng(19).standard_normal((5, 3, I))
    (y, _), backward = lstm.forward_train(x)
    backward(np.ones_like(y))
    expected = {k: 3 * v for k, v in lstm.grads.items()}
    kept = lstm.grads["weight_hh_l0"]
    g = lstm.grads
    if replacement == "fortran":
        g["weight_ih_l0"] = np.asfortranarray(2 * g["weight_ih_l0"])
    elif replacement == "float32":
        g["weight_ih_l0"] = (2 * g["weight_ih_l0"]).astype(np.float32)
    elif replacement == "subclass":
        g["weight_ih_l0"] = (2 * g["weight_ih_l0"]).view(_ArraySubclass)
    else:
        g["weight_ih_l0"] = np.broadcast_to(2 * g["weight_ih_l0"], g["weight_ih_l0"].shape)
    for name in g:
        if name != "weight_ih_l0":
            g[name] *= 2
    (y, _), backward = lstm.forward_train(x)
    if replacement == "read-only view":
        with pytest.raises(ValueError, match="read-only"):
            backward(np.ones_like(y))
        return
    backward(np.ones_like(y))
    assert lstm.grads["weight_hh_l0"] is kept  # accumulated in place
    for name, want in expected.items():
        assert_close(lstm.grads[name], want, lstm.grads[name].dtype, 10, name)


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


def test_thread_settings():
    default = clstm.get_num_threads()
    assert default >= 1
    try:
        clstm.set_num_threads(1)
        assert clstm.get_num_threads() == 1
        clstm.set_num_threads(np.int64(3))
        assert clstm.get_num_threads() == 3
        for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(exc, match="n must be a positive int"):
                clstm.set_num_threads(bad)
    finally:
        clstm.set_num_threads(None)
    assert clstm.get_num_threads() == default
    assert isinstance(clstm.openmp_enabled(), bool)


def test_kernels_restore_the_callers_blas_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from clstm import _threads

    lib = _threads._scipy_blas_controller()
    if lib is None or not _threads._kernels_switch_blas:
        pytest.skip("kernels do not switch this BLAS's threads")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        make_lstm()(np.zeros((3, 4, I)))
        assert lib.get_num_threads() == 1
    before = lib.get_num_threads()
    lstm = make_lstm()
    _, back = lstm.forward_train(np.zeros((3, 4, I)))
    back(np.ones((3, 4, H)))
    assert lib.get_num_threads() == before


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


def test_training_cache_is_isolated_from_later_writes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, I))
    dy = rng.standard_normal((4, 3, H))
    expected = make_lstm()
    (y_ref, _), back = expected.forward_train(x)
    dx_ref, _ = back(dy)

    lstm = make_lstm()
    x_mutable = x.copy()
    (y, _), back = lstm.forward_train(x_mutable)
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 0
    x_mutable[...] = 7  # the caller writes to its input and the weights before backward
    lstm.weight_hh_l0[...] = 0
    dx, _ = back(dy)
    assert_close(dx, dx_ref, np.float64)
    for k in expected.grads:
        assert_close(lstm.grads[k], expected.grads[k], np.float64)


def test_concurrent_calls_from_python_threads():
    import threading

    lstm = make_lstm()
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((20, 5, I)) for _ in range(4)]
    expected = [lstm(x)[0] for x in xs]
    results = [[] for _ in xs]

    def work(k):
        for _ in range(20):
            results[k].append(lstm(xs[k])[0])

    from clstm import _threads
    lib = _threads._scipy_blas_controller() if _threads._kernels_switch_blas else None
    before = lib.get_num_threads() if lib is not None else None
    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, runs in enumerate(results):
        assert len(runs) == 20
        for y in runs:
            np.testing.assert_array_equal(y, expected[k])
    if lib is not None:
        assert lib.get_num_threads() == before


def _run_in_child(seed):
    return make_lstm()(np.random.default_rng(seed).standard_normal((5, 4, I)))[0]


def test_forked_child_can_run_after_parent_ran_multithreaded():
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    clstm.set_num_threads(2)
    try:
        make_lstm()(np.zeros((5, 4, I)))  # the parent starts its OpenMP pool
        with mp.get_context("fork").Pool(1) as pool:
            y = pool.apply_async(_run_in_child, (0,)).get(timeout=60)
    finally:
        clstm.set_num_threads(None)
    np.testing.assert_array_equal(y, _run_in_child(0))


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

@pytest.mark.parametrize("B", [1, 3, 11])  # 11 rows take the threaded layer path
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_paths_are_one_step_of_the_layer(B, bias):
    cell = clstm.LSTMCell(I, H, bias=bias, dtype=np.float64, seed=5)
    lstm = clstm.LSTM(I, H, bias=bias, dtype=np.float64)
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    rng = np.random.default_rng(10)
    x = rng.standard_normal((B, I))
    h0, c0 = rng.standard_normal((2, B, H))
    h, c = cell(x, (h0, c0))
    _, (h_n, c_n) = lstm(x[None], (h0[None], c0[None]))
    assert_close(h, h_n[0], np.float64)
    assert_close(c, c_n[0], np.float64)
    h32, _ = clstm.LSTMCell(I, H, bias=bias, seed=5)(x.astype(np.float32))
    assert h32.dtype == np.float32


def test_lstm_cell_api():
    cell = clstm.LSTMCell(I, H, dtype=np.float64, seed=5)
    lstm = clstm.LSTM(I, H, dtype=np.float64)
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, I))
    h0, c0 = rng.standard_normal((2, 3, H))
    h, c = cell(x, (h0, c0))
    _, (h_n, c_n) = lstm(x[None], (h0[None], c0[None]))
    assert_close(h, h_n[0], np.float64)
    assert_close(c, c_n[0], np.float64)
    h_z, _ = cell(x)
    assert_close(h_z, lstm(x[None])[0][0], np.float64)
    (h1, c1), backward = cell.forward_train(x, (h0, c0))
    dx, (dh0, dc0) = backward(np.ones((3, H)))
    assert dx.shape == (3, I) and dh0.shape == (3, H)
    with pytest.raises(RuntimeError, match="already"):
        backward()
    assert set(cell.grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        cell(np.zeros((3, I + 1)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(3, 4\)"):
        cell(x, (np.zeros((2, H)), c0))
    with pytest.raises(ValueError, match="x must be 2-D"):
        cell(np.zeros((1, 3, I)))
    assert "LSTMCell(3, 4" in repr(cell)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_frozen_cell_is_a_snapshot_of_the_cell(dtype, bias):
    cell = clstm.LSTMCell(I, 40, bias=bias, dtype=dtype, seed=7)  # 4H = 160: 5 panels
    frozen = cell.freeze()
    assert isinstance(frozen, clstm.FrozenLSTMCell) and "freeze()" in repr(frozen)
    rng = np.random.default_rng(12)
    for B in (1, 2, 5):  # the streaming shortcut, and the general checks past it
        x = rng.standard_normal((B, I)).astype(dtype)
        h0, c0 = rng.standard_normal((2, B, 40)).astype(dtype)
        for a, b in zip(frozen(x, (h0, c0)), cell(x, (h0, c0))):
            assert a.dtype == dtype and a.shape == (B, 40)
            assert_close(a, b, dtype)
    for a, b in zip(frozen(x[0]), cell(x[0])):  # unbatched, zero state
        assert a.shape == (40,)
        assert_close(a, b, dtype)
    for a, b in zip(frozen(x, [h0, c0]), cell(x, (h0, c0))):  # a list state, cast inputs
        assert_close(a, b, dtype)
    with pytest.raises(ValueError, match=r"h0 must have shape \(5, 40\)"):
        frozen(x, (h0[:, :-1].copy(), c0))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        frozen(np.zeros((2, I + 1), dtype))
    before = frozen(x, (h0, c0))
    cell.params["weight_hh"] *= 2  # in place: the cell sees it, the snapshot does not
    for a, b in zip(frozen(x, (h0, c0)), before):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(cell(x, (h0, c0))[0], before[0])
    assert_close(cell.freeze()(x, (h0, c0))[0], cell(x, (h0, c0))[0], dtype)
    for a, b in zip(pickle.loads(pickle.dumps(frozen))(x, (h0, c0)), before):
        np.testing.assert_array_equal(a, b)
    bare = clstm._packed.PackedCell()  # the compiled part alone, never packed: an error
    with pytest.raises(ValueError, match="no weights"):
        bare._step(x, h0, c0, False)


class _ArraySubclass(np.ndarray):
    pass


def _unaligned(a):
    """A copy of a whose data starts one byte past an aligned address."""
    buf = np.empty(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("frozen", [False, True])
def test_cell_step_takes_any_array_the_shortcut_refuses(dtype, frozen):
    """The compiled streaming check passes only exact, C-contiguous, aligned, native-order
    arrays of the cell's dtype; everything else must come out the same through the general
    path, not be read as if it were such an array."""
    cell = clstm.LSTMCell(I, H, dtype=dtype, seed=5)
    step = cell.freeze() if frozen else cell
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, I)).astype(dtype)
    h0, c0 = rng.standard_normal((2, 2, H)).astype(dtype)
    fast = step(x, (h0, c0))
    swapped = x.astype(x.dtype.newbyteorder())
    other = np.float64 if dtype == np.float32 else np.float32
    variants = {"list state": (x, [h0, c0]), "Fortran x": (np.asfortranarray(x), (h0, c0)),
                "byte-swapped x": (swapped, (h0, c0)), "unaligned h0": (x, (_unaligned(h0), c0)),
                "subclass c0": (x, (h0, c0.view(_ArraySubclass))),
                "strided x": (np.repeat(x, 2, axis=1)[:, ::2], (h0, c0)),
                "other dtype x": (x.astype(other), (h0, c0))}
    for name, (xv, state) in variants.items():
        out = step(xv, state)
        for a, b in zip(out, fast):
            assert type(a) is np.ndarray and a.dtype == dtype and a.shape == (2, H), name
            if name == "other dtype x":
                assert_close(a, b, np.float32)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
    h1, c1 = step(x[1], (h0[1], c0[1]))  # unbatched, on the shortcut
    assert h1.shape == c1.shape == (H,)
    assert_close(h1, fast[0][1], dtype)
    assert_close(c1, fast[1][1], dtype)
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 4\)"):
        step(x, (h0, c0[:1].copy()))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        step(np.zeros((2, I + 1), dtype), (h0, c0))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4,\)"):
        step(x[0], (h0, c0[0]))  # ranks that do not match x's


@pytest.mark.parametrize("T", [1, 4])
def test_layer_shortcut_for_conforming_inputs_equals_general_path(T):
    """A time-major x and a state tuple of C-contiguous arrays of the layer's dtype skip the
    general validation; anything else takes it, with the same numbers."""
    lstm = clstm.LSTM(I, H, num_layers=2, bidirectional=True, seed=9)
    rng = np.random.default_rng(16)
    x = rng.standard_normal((T, 3, I)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 4, 3, H)).astype(np.float32)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    variants = {"list state": (x, [h0, c0]), "Fortran x": (np.asfortranarray(x), (h0, c0)),
                "byte-swapped x": (x.astype(x.dtype.newbyteorder()), (h0, c0)),
                "subclass h0": (x, (h0.view(_ArraySubclass), c0)),
                "float64 c0": (x, (h0, c0.astype(np.float64)))}
    for name, (xv, state) in variants.items():
        yv, (hv, cv) = lstm(xv, state)
        for a, b in ((yv, y), (hv, h_n), (cv, c_n)):
            assert type(a) is np.ndarray and a.dtype == np.float32, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    zeros = [np.zeros_like(h0), np.zeros_like(c0)]
    for a, b in zip(lstm(x)[0:1] + lstm(x)[1], lstm(x, zeros)[0:1] + lstm(x, zeros)[1]):
        np.testing.assert_array_equal(a, b)  # no state: zeros, on the shortcut too
    with pytest.raises(ValueError, match=r"c0 must have shape \(4, 3, 4\)"):
        lstm(x, (h0, c0[:, :2].copy()))
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 3\)"):
        lstm(np.zeros((T, 3, I + 1), np.float32), (h0, c0))


def test_cell_beyond_the_step_rows_runs_the_layer_kernel():
    rows = clstm._packed.STEP_MAX_ROWS + 1
    cell = clstm.LSTMCell(I, H, seed=4)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((rows, I)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, rows, H)).astype(np.float32)
    p = cell.params
    _, h_ref, c_ref, _ = R.lstm_forward(x[None], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                        p["bias_hh"], h0, c0)
    for step in (cell, cell.freeze()):
        h, c = step(x, (h0, c0))
        assert_close(h, h_ref, np.float32)
        assert_close(c, c_ref, np.float32)


def test_frozen_cell_steps_concurrently_from_python_threads():
    """The frozen step releases the GIL and shares nothing: threads stepping one snapshot
    at once get exactly what each gets alone."""
    import threading
    frozen = clstm.LSTMCell(16, 64, seed=3).freeze()
    rng = np.random.default_rng(15)
    xs = rng.standard_normal((4, 50, 1, 16)).astype(np.float32)

    def run(seq):
        h = c = np.zeros((1, 64), np.float32)
        for x in seq:
            h, c = frozen(x, (h, c))
        return h, c

    alone = [run(seq) for seq in xs]
    together = [None] * len(xs)

    def worker(k):
        for _ in range(20):
            together[k] = run(xs[k])
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_cell_streaming_path_equals_general_path(dtype):
    """A tuple of exact-dtype C-contiguous arrays takes the streaming shortcut; a list
    state, or a Fortran-ordered x, the general validation: same numbers, unbatched too."""
    cell = clstm.LSTMCell(I, H, dtype=dtype, seed=6)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, I)).astype(dtype)
    h0, c0 = rng.standard_normal((2, 2, H)).astype(dtype)
    fast = cell(x, (h0, c0))
    for slow in (cell(x, [h0, c0]), cell(np.asfortranarray(x), (h0, c0))):
        for a, b in zip(fast, slow):
            assert a.dtype == dtype and a.shape == (2, H)
            np.testing.assert_array_equal(a, b)
    h1, c1 = cell(x[1], (h0[1], c0[1]))
    assert h1.shape == c1.shape == (H,)
    assert_close(h1, fast[0][1], dtype)  # one row is a GEMV, two a GEMM: rounding differs
    assert_close(c1, fast[1][1], dtype)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 4\)"):
        cell(x, (h0[:, :-1].copy(), c0))
    cell.params["weight_hh"] = cell.params["weight_hh"].astype(np.float16)
    with pytest.raises(ValueError, match="parameter weight_hh must be a C-contiguous"):
        cell(x, (h0, c0))
