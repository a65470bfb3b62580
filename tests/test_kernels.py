"""The compiled kernels (clstm.functional) against the NumPy reference: forward for inference
and for training, backward, both dtypes, odd shapes, any thread count."""
import tracemalloc

import numpy as np
import pytest

import clstm
from clstm import _dispatch, _testing
from clstm import functional as F
from clstm import reference as R
from _helpers import assert_close, assert_grads_close, make_problem

INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")
SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 7, 3, 5),
    (5, 3, 2, 4),
    (3, 1, 6, 8),    # B = 1 takes the GEMV path
    (4, 9, 5, 1),    # H = 1
    (6, 5, 1, 3),    # I = 1, B odd: slices of unequal size
    (6, 33, 17, 19),
    (300, 2, 3, 4),  # long sequence
]
DTYPES = [np.float32, np.float64]


def run_both(p, n_threads, train=True):
    args = [p[k] for k in INPUTS]
    ref = R.lstm_forward(*args, train=train)
    out = F.lstm_forward(*args, train=train, n_threads=n_threads)
    return ref, out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_forward_and_backward_match_reference(shape, dtype, n_threads):
    p = make_problem(*shape, dtype=dtype, seed=hash(shape) % 1000)
    factor = 10 if shape[0] >= 100 else 1  # rounding differences compound over long T
    for train in (False, True):
        (y0, h0, c0, rcache), (y1, h1, c1, fcache) = run_both(p, n_threads, train)
        for name, a, b in (("y", y1, y0), ("h_n", h1, h0), ("c_n", c1, c0)):
            assert a.dtype == dtype
            assert_close(a, b, dtype, factor, f"{name} (train={train})")
    g_ref = R.lstm_backward(rcache, p["dy"], p["dh_n"], p["dc_n"])
    g = F.lstm_backward(fcache, p["dy"], p["dh_n"], p["dc_n"])
    assert_grads_close(g, g_ref, dtype, factor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["none", "dy", "dh_n", "dc_n"])
def test_backward_with_partial_upstream(dtype, which):
    p = make_problem(4, 3, 2, 5, dtype=dtype, seed=3)
    kwargs = {} if which == "none" else {which: p[which]}
    (_, _, _, rc), (_, _, _, fc) = run_both(p, 2)
    g_ref, g = R.lstm_backward(rc, **kwargs), F.lstm_backward(fc, **kwargs)
    assert_grads_close(g, g_ref, dtype)
    if which == "none":
        assert not any(np.any(v) for v in g if v is not None)


def test_results_agree_across_thread_counts():
    p = make_problem(40, 13, 7, 16, dtype=np.float64, seed=5)
    results = []
    for n in (1, 2, 3, 4):
        y, h, c, cache = F.lstm_forward(*(p[k] for k in INPUTS), train=True, n_threads=n)
        g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
        results.append([y, h, c, *(v for v in g if v is not None)])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert_close(a, b, np.float64)


def test_work_split_policy():
    """The automatic choice of clstm._dispatch (measurements: docs/performance.md)."""
    f32, f64 = np.float32, np.float64
    one, four = F.Packing(10, 1, None), F.Packing(10, 4, None)

    def choice(packing, n_threads, H, projection=False, dtype=f32):
        return _dispatch.choose(packing, n_threads, H, projection, np.dtype(dtype))

    if not clstm.openmp_enabled():
        assert choice(one, 2, 512) == "serial"
        return
    assert choice(one, 2, 512) == "units"
    assert _dispatch.schedule(one, "units", 2, 512, f32).bounds.tolist() == [0, 256, 512]
    assert choice(four, 2, 256) == "units"
    assert choice(one, 2, 256, dtype=f64) == "units"
    assert choice(one, 1, 512) == "serial"              # one thread
    assert choice(one, 2, 128) == "units"               # w_hh 256 KB
    assert choice(one, 2, 96) == "serial"               # w_hh 144 KB: too small; B = 1
    assert choice(one, 2, 96, dtype=f64) == "serial"    # 48 units per thread
    assert choice(four, 2, 528) == "batch"              # H not a multiple of 32
    assert choice(four, 2, 512, projection=True) == "batch"
    assert choice(F.Packing(10, 5, None), 2, 512) == "batch"  # rows enough
    assert choice(F.Packing(1, 5, None), 2, 512) == "step"    # one step of a few rows
    assert choice(F.Packing(1, 9, None), 2, 512) == "batch"
    # w_hh of 8 MB or more: every thread of the batch split would stream all of it per step
    assert choice(F.Packing(10, 32, None), 2, 1024) == "units"      # 16 MB, 16 rows/thread
    assert choice(F.Packing(10, 33, None), 2, 1024) == "batch"      # rows enough
    assert choice(F.Packing(10, 32, None), 2, 512) == "batch"       # 4 MB
    assert choice(F.Packing(10, 32, None), 2, 768, dtype=f64) == "units"  # 18 MB
    assert choice(F.Packing(10, 32, None), 2, 1024, projection=True) == "batch"
    assert choice(F.Packing(1, 5, None), 2, 512, projection=True) == "batch"


def test_step_dx_policy():
    """Backward's dx in the time loop: dG beyond the caches (32 MB), w_ih within 512 KB,
    32 rows per thread per step, batch or serial split (docs/performance.md)."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)

    def step_dx(T, B, I, H, path="batch", n_threads=2, dtype=f32):
        return _dispatch.step_dx(F.Packing(T, B, None), path, n_threads, I, 4 * H, 4 * H,
                                 dtype)

    threads = 2 if clstm.openmp_enabled() else 1
    assert step_dx(200, 256, 128, 128)                           # dG 105 MB, w_ih 256 KB
    assert step_dx(200, 256, 128, 128, "serial", 1)
    assert not step_dx(200, 256, 128, 128, "units")
    assert not step_dx(100, 64, 256, 256)                        # dG 26 MB, w_ih 1 MB
    assert step_dx(200, 256, 256, 128)                           # w_ih 512 KB
    assert not step_dx(200, 256, 257, 128)                       # just over
    assert step_dx(200, 256, 128, 64, dtype=f64)
    assert not step_dx(1000, 32 * threads - 1, 128, 128, n_threads=threads)  # rows per thread
    assert step_dx(1000, 32 * threads, 128, 128, n_threads=threads)
    assert step_dx(100, 256, 128, 128)                           # dG 52 MB
    assert not step_dx(30, 256, 128, 128)                        # dG 16 MB
    assert _dispatch.schedule(F.Packing(200, 256, None), "batch", 2, 128, f32, 128, 512,
                              512).step_dx
    assert not _dispatch.schedule(F.Packing(200, 256, None), "batch", 2, 128, f32).step_dx


def _force_step_dx(monkeypatch, on):
    monkeypatch.setattr(_dispatch, "STEP_DX_MIN_DG_BYTES", 0 if on else 1 << 62)
    monkeypatch.setattr(_dispatch, "STEP_DX_MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(_dispatch, "STEP_DX_MAX_W_IH_BYTES", 1 << 62)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", ["serial", "batch"])
@pytest.mark.parametrize("case", ["plain", "lengths", "projection"])
def test_dx_in_the_time_loop_gives_the_same_bits(monkeypatch, case, strategy, dtype):
    """Backward's dx step by step in the time loop (Schedule.step_dx) adds up each row's
    sum as the product over all rows after the loop does: every gradient bit for bit."""
    p = make_problem(7, 11, 5, 32, dtype=dtype, seed=4, P=16 if case == "projection" else None)
    kwargs = dict(w_hr=p.get("w_hr"), strategy=strategy, n_threads=3, train=True)
    if case == "lengths":
        kwargs["lengths"] = np.array([7, 3, 7, 1, 5, 6, 2, 7, 4, 0, 7])
    results = []
    for on in (False, True):
        _force_step_dx(monkeypatch, on)
        assert _dispatch.schedule(F.Packing(7, 11, None), strategy, 3, 32, np.dtype(dtype), 5,
                                  128, 128).step_dx == on
        y, h, c, cache = F.lstm_forward(*(p[k] for k in INPUTS), **kwargs)
        g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
        results.append([y, h, c, *(v for v in g if v is not None)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    ref = R.lstm_backward(R.lstm_forward(*(p[k] for k in INPUTS), w_hr=p.get("w_hr"),
                                         lengths=kwargs.get("lengths"), train=True)[3],
                          p["dy"], p["dh_n"], p["dc_n"])
    assert_close(results[1][3], ref.dx, dtype, 1, "dx")


@pytest.mark.parametrize("model", ["bidirectional", "recurrent_dropout", "gru"])
def test_dx_in_the_time_loop_in_models(monkeypatch, model):
    """The same through whole models: stacked bidirectional, recurrent dropout (the masked
    batch split) and the GRU (its input side is not dG's first columns: dx stays after the
    loop)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 40, 24)).astype(np.float32)
    results = []
    for on in (False, True):
        _force_step_dx(monkeypatch, on)
        if model == "gru":
            m = clstm.GRU(24, 32, seed=1)
        else:
            m = clstm.LSTM(24, 32, num_layers=2, bidirectional=model == "bidirectional",
                           recurrent_dropout=0.3 if model == "recurrent_dropout" else 0.0,
                           seed=1)
        m.strategy = "batch"
        (y, _), backward = m.forward_train(x, rng=np.random.default_rng(5))
        dx, _ = backward(np.ones_like(y))
        results.append([y, dx, *(m.grads[k] for k in sorted(m.grads))])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_forcing_an_unusable_path_is_an_error():
    p = make_problem(3, 2, 2, 3)
    args = [p[k] for k in INPUTS]
    with pytest.raises(ValueError, match="strategy='step' needs"):
        F.lstm_forward(*args, strategy="step")  # T = 3
    with pytest.raises(ValueError, match="strategy='units' needs"):
        F.lstm_forward(*args, strategy="units")  # H = 3: no whole panels
    with pytest.raises(ValueError, match="strategy must be one of"):
        F.lstm_forward(*args, strategy="fast")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps_per_chunk", [1, 3, 7])
def test_inference_in_time_chunks_matches_training_forward(monkeypatch, dtype,
                                                           steps_per_chunk):
    T, B, I, H = 7, 4, 3, 5
    monkeypatch.setattr(F, "GATES_CHUNK_ELEMENTS", steps_per_chunk * B * 4 * H)
    p = make_problem(T, B, I, H, dtype=dtype, seed=11)
    args = [p[k] for k in INPUTS]
    for n in (1, 2):
        y, h, c, _ = F.lstm_forward(*args, n_threads=n)
        y_t, h_t, c_t, _ = F.lstm_forward(*args, train=True, n_threads=n)
        np.testing.assert_array_equal(y, y_t)
        np.testing.assert_array_equal(h, h_t)
        np.testing.assert_array_equal(c, c_t)


def test_inference_memory_does_not_grow_with_sequence_length():
    B, I, H = 4, 8, 16
    steps_per_chunk = F.GATES_CHUNK_ELEMENTS // (B * 4 * H)
    extra = {}
    for T in (2 * steps_per_chunk, 8 * steps_per_chunk):
        p = make_problem(T, B, I, H, dtype=np.float32)
        args = [p[k] for k in INPUTS]
        tracemalloc.start()
        y, _, _, _ = F.lstm_forward(*args, n_threads=2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        extra[T] = peak - y.nbytes
    small, large = extra.values()
    assert large <= small * 1.05 + 4096, extra
    # and the scratch really is bounded by the chunk size (plus small state arrays)
    assert large <= F.GATES_CHUNK_ELEMENTS * 4 + 64 * 1024, extra


LENGTHS = {"full": None, "mixed": [6, 0, 3, 1, 6, 2, 5], "short": [2, 4, 1, 4, 3, 2, 1],
           "empty": [0] * 7}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("P", [None, 2])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True])
def test_projection_lengths_and_reverse_match_reference(dtype, n_threads, P, lengths, reverse):
    T, B, I, H = 6, 7, 3, 4
    p = make_problem(T, B, I, H, dtype=dtype, seed=21, P=P)
    args = [p[k] for k in INPUTS]
    kw = dict(w_hr=p.get("w_hr"), lengths=LENGTHS[lengths], reverse=reverse)
    y0, h0, c0, rc = R.lstm_forward(*args, train=True, **kw)
    for train in (False, True):
        y1, h1, c1, fc = F.lstm_forward(*args, train=train, n_threads=n_threads, **kw)
        for name, a, b in (("y", y1, y0), ("h_n", h1, h0), ("c_n", c1, c0)):
            assert_close(a, b, dtype, what=f"{name} (train={train})")
    g_ref = R.lstm_backward(rc, p["dy"], p["dh_n"], p["dc_n"])
    g = F.lstm_backward(fc, p["dy"], p["dh_n"], p["dc_n"])
    assert_grads_close(g, g_ref, dtype)


@pytest.mark.parametrize("steps_per_chunk", [1, 2, 5])
def test_inference_chunks_with_lengths_and_projection(monkeypatch, steps_per_chunk):
    T, B, I, H, P = 7, 5, 3, 5, 3
    monkeypatch.setattr(F, "GATES_CHUNK_ELEMENTS", steps_per_chunk * B * 4 * H)
    p = make_problem(T, B, I, H, seed=12, P=P)
    args = [p[k] for k in INPUTS]
    for reverse in (False, True):
        kw = dict(w_hr=p["w_hr"], lengths=[7, 2, 5, 0, 7], reverse=reverse, n_threads=2)
        inference = F.lstm_forward(*args, **kw)[:3]
        training = F.lstm_forward(*args, train=True, **kw)[:3]
        for a, b in zip(inference, training):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("train", [False, True])
def test_empty_sequence_and_empty_batch(train):
    for T, B in ((0, 3), (4, 0), (0, 0)):
        p = make_problem(T, B, 2, 3)
        args = [p[k] for k in INPUTS]
        y, h, c, cache = F.lstm_forward(*args, train=train)
        assert y.shape == (T, B, 3)
        np.testing.assert_array_equal(h, p["h0"] if T == 0 else h)
        np.testing.assert_array_equal(c, p["c0"] if T == 0 else c)
        if train:
            g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
            assert g.dx.shape == (T, B, 2)
            if T == 0:
                np.testing.assert_array_equal(g.dh0, p["dh_n"])
                np.testing.assert_array_equal(g.dc0, p["dc_n"])
            assert not np.any(g.dw_ih) and not np.any(g.db_ih)


def test_no_bias():
    p = make_problem(5, 3, 2, 4, seed=2)
    args = [p[k] for k in INPUTS]
    args[3] = args[4] = None
    _, _, _, rc = R.lstm_forward(*args, train=True)
    y, _, _, fc = F.lstm_forward(*args, train=True)
    assert_close(y, R.lstm_forward(*args)[0], np.float64)
    g_ref, g = R.lstm_backward(rc, p["dy"]), F.lstm_backward(fc, p["dy"])
    assert g.db_ih is None and g.db_hh is None
    assert_close(g.dw_hh, g_ref.dw_hh, np.float64)


def test_huge_preactivations_stay_finite():
    for dtype in DTYPES:
        p = make_problem(3, 2, 2, 3, dtype=dtype)
        p["x"][0] = 1e4
        p["x"][1] = -1e4
        (y0, *_), (y1, _, _, cache) = run_both(p, 2)
        assert_close(y1, y0, dtype)
        g = F.lstm_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
        assert all(np.all(np.isfinite(v)) for v in g if v is not None)


def test_backward_runs_once_per_forward():
    p = make_problem(3, 2, 2, 3)
    _, _, _, cache = F.lstm_forward(*(p[k] for k in INPUTS), train=True)
    F.lstm_backward(cache, p["dy"])
    with pytest.raises(RuntimeError, match="already"):
        F.lstm_backward(cache, p["dy"])


def test_functional_rejects_bad_arguments():
    p = make_problem(3, 2, 2, 3)
    args = [p[k] for k in INPUTS]
    bad = {
        0: (np.zeros((3, 2, 5)), ValueError, "x"),
        1: (np.zeros((12, 2), np.int64), TypeError, "w_ih"),
        2: (np.zeros((12, 4)), ValueError, "w_hh"),
        3: (np.zeros(11), ValueError, "b_ih"),
        5: (np.zeros((3, 3)), ValueError, "h0"),
        6: (np.zeros((2, 3), complex), TypeError, "c0"),
    }
    for k, (value, exc, name) in bad.items():
        a = list(args)
        a[k] = value
        with pytest.raises(exc, match=name):
            F.lstm_forward(*a)
    _, _, _, cache = F.lstm_forward(*args, train=True)
    with pytest.raises(ValueError, match="dy"):
        F.lstm_backward(cache, np.zeros((3, 2, 4)))
    with pytest.raises(TypeError, match="cache"):
        F.lstm_backward(object())
    with pytest.raises(ValueError, match=r"w_ih must have shape \(4\*H, I\) with I >= 1"):
        F.lstm_forward(np.zeros((3, 2, 0)), np.zeros((12, 0)), *args[2:])
    for bad, exc in ((0, ValueError), (1.5, TypeError)):
        with pytest.raises(exc, match="n_threads"):
            F.lstm_forward(*args, n_threads=bad)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 2\) \(3-D\), got shape \(\)"):
        F.lstm_forward(np.float64(1.0), *args[1:])


@pytest.mark.parametrize("dtype, max_ulps", [(np.float32, 4), (np.float64, 2.5)])
def test_activations_are_accurate(dtype, max_ulps):
    # float32: a few ulp of the float64 truth. float64: against an extended-precision truth,
    # as close as libm's own 1 / (1 + exp(-z)) and tanh (measured: 2.28 and 1.09 ulp; ours
    # 2.28 and 1.27).
    z = np.concatenate([np.linspace(-100, 100, 400_001), np.geomspace(1e-30, 1, 2001),
                        -np.geomspace(1e-30, 1, 2001), np.linspace(-1000, 1000, 2001),
                        [0.0, 1e4, -1e4, np.inf, -np.inf]])
    z = z.astype(dtype)
    sig, tanh_z = np.empty_like(z), np.empty_like(z)
    scalar_vs_vector = _testing.activations(z, sig, tanh_z)
    wide = np.longdouble if dtype == np.float64 else np.float64
    zw = z.astype(wide)
    with np.errstate(over="ignore"):
        sig_true = 1 / (1 + np.exp(-zw))
    tanh_true = np.tanh(zw)
    tiny = np.finfo(dtype).tiny

    def ulps(a, true):
        return np.abs(a - true) / np.spacing(np.maximum(np.abs(true), tiny).astype(dtype))

    normal = sig_true >= tiny  # below the normal range, an absolute error under tiny
    assert ulps(sig, sig_true)[normal].max() <= max_ulps
    assert np.abs(sig - sig_true)[~normal].max() <= tiny
    assert ulps(tanh_z, tanh_true).max() <= max_ulps
    assert scalar_vs_vector <= 4 * np.finfo(dtype).eps  # FMA contraction may differ
    _testing.activations(np.array([np.nan], dtype), sig[:1], tanh_z[:1])
    assert np.isnan(sig[0]) and np.isnan(tanh_z[0])


def test_packing_holds_only_real_steps():
    lengths = np.array([2, 5, 0, 5, 1, 3])
    pk = F.Packing(5, 6, lengths)
    assert pk.n_rows == lengths.sum()  # ended rows take no space, hence no compute
    np.testing.assert_array_equal(pk.sorted_lengths, [5, 5, 3, 2, 1, 0])
    np.testing.assert_array_equal(np.diff(pk.offsets), [5, 4, 3, 2, 2])  # rows per step
    x = np.random.default_rng(0).standard_normal((5, 6, 2))
    mask = (np.arange(5)[:, None] < lengths)[..., None]
    np.testing.assert_array_equal(pk.unpack(pk.pack(x)), x * mask)
    packed = pk.pack(x)
    np.testing.assert_array_equal(pk.reverse(pk.reverse(packed)), packed)
    rev = pk.unpack(pk.reverse(packed))
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(rev[:n, b], x[:n, b][::-1])
    np.testing.assert_array_equal(pk.batch_bounds(2), [0, 2, 6])  # equal shares: 10 | 6
    uniform = F.Packing(4, 3)
    assert uniform.offsets is None and uniform.n_rows == 12
    a = x[:4, :3].copy()
    assert np.shares_memory(uniform.pack(a), a)  # equal lengths: packing is a reshape
