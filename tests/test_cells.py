"""LSTMCell and its frozen snapshot: one step of the layer, the compiled streaming shortcuts and
what they refuse, the threaded path past the step rows."""
import pickle

import numpy as np
import pytest

import clstm
from clstm import reference as R
from _helpers import assert_close, I, H, ArraySubclass, unaligned


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
                "byte-swapped x": (swapped, (h0, c0)), "unaligned h0": (x, (unaligned(h0), c0)),
                "subclass c0": (x, (h0, c0.view(ArraySubclass))),
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
                "subclass h0": (x, (h0.view(ArraySubclass), c0)),
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
