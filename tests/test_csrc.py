"""The C pieces on their own, against NumPy: packing into panels, the packed GEMM, the
transposes, PackedWeights, and each cell's fused step against the reference cell."""
import pickle

import numpy as np
import pytest

from clstm import _packed, _testing
from clstm import reference as R
from _helpers import assert_close

DTYPES = (np.float32, np.float64)
ODD = [(1, 1), (1, 7), (5, 1), (31, 17), (32, 16), (33, 65), (100, 3), (7, 130),
       (290, 300), (33, 520)]
# Row counts reaching every tile shape: 1-3 rows over several panels, 4-12 rows, and the
# even cuts (13 = 7 + 6, 25 = 9 + 8 + 8, 40 = 4 x 10); past 64 rows a short K takes tiles
# of at most 6 (70 = 10 x 6 + 2 x 5)
ROWS = (1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 17, 25, 40, 70)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", ODD)
@pytest.mark.parametrize("transposed", [False, True])
def test_packed_gemm_matches_numpy(dtype, N, K, transposed):
    rng = np.random.default_rng(N * 100 + K)
    w = rng.standard_normal((N, K)).astype(dtype)
    fmt = np.dtype(dtype).name
    packed = np.full(_packed.packed_length(N, K, fmt), np.nan, dtype)
    _testing.pack_matrix(np.ascontiguousarray(w.T) if transposed else w, transposed, packed)
    assert not np.isnan(packed).any()  # every element written, padding zeroed
    for n in ROWS:
        a = rng.standard_normal((n, K)).astype(dtype)
        c = rng.standard_normal((n, N + 3)).astype(dtype)  # ldc > N: columns past N untouched
        expected = c.copy()
        expected[:, :N] += a @ w.T
        backwards = c.copy()
        _testing.packed_gemm(a, packed, N, c)
        assert_close(c, expected, dtype, factor=max(1, K / 16))
        # the panels in descending order (the time loops' odd steps): the same bits
        _testing.packed_gemm(a, packed, N, backwards, descending=True)
        np.testing.assert_array_equal(backwards, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", [(130, 300), (290, 70)])
def test_a_rows_sum_does_not_depend_on_its_tile(dtype, N, K):
    """Each output is added up in one order whichever tile of rows (or group of panels)
    it falls in: what keeps results independent of how threads split the rows."""
    rng = np.random.default_rng(N + K)
    w = rng.standard_normal((N, K)).astype(dtype)
    packed = np.zeros(_packed.packed_length(N, K, np.dtype(dtype).name), dtype)
    _testing.pack_matrix(w, False, packed)
    a = rng.standard_normal((80, K)).astype(dtype)  # 6-row tiles when K is short
    whole = np.zeros((80, N), dtype)
    _testing.packed_gemm(a, packed, N, whole)
    for lo, hi in [(0, 1), (5, 7), (9, 12), (3, 9), (13, 30), (0, 17), (1, 13), (3, 40)]:
        part = np.zeros((hi - lo, N), dtype)
        _testing.packed_gemm(np.ascontiguousarray(a[lo:hi]), packed, N, part)
        np.testing.assert_array_equal(part, whole[lo:hi])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_bytes", [4096, 8192])
def test_rows_of_a_a_multiple_of_4kb_apart(dtype, row_bytes):
    """Tiles of more than 8 rows whose rows of A are a multiple of 4 KB apart multiply a
    copy of A (pgemm.h): the same bits as A with any other stride, and NumPy's numbers.
    1100 rows are past the copy's 4 MB (A is used where it is)."""
    item = np.dtype(dtype).itemsize
    K, N = row_bytes // item, 40
    rng = np.random.default_rng(row_bytes)
    w = rng.standard_normal((N, K)).astype(dtype)
    packed = np.zeros(_packed.packed_length(N, K, np.dtype(dtype).name), dtype)
    _testing.pack_matrix(w, False, packed)
    for n in (8, 9, 12, 13, 17, 25, 40, 70, 1100):
        a = rng.standard_normal((n, K)).astype(dtype)
        padded = np.zeros((n, K + 5), dtype)  # the same rows, 5 elements more apart
        padded[:, :K] = a
        c = rng.standard_normal((n, N)).astype(dtype)
        expected = c + a @ w.T
        other = c.copy()
        _testing.packed_gemm(a, packed, N, c)
        _testing.packed_gemm(padded[:, :K], packed, N, other)
        np.testing.assert_array_equal(c, other)
        assert_close(c, expected, dtype, factor=max(1, K / 16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K", [(1000, 300), (4096, 64), (33, 8000)])
@pytest.mark.parametrize("transposed", [False, True])
def test_threaded_packing_is_the_serial_packing(dtype, N, K, transposed):
    """Big enough to be split among threads (panels shared out, the last one partial)."""
    w = np.random.default_rng(N + K).standard_normal((N, K)).astype(dtype)
    src = np.ascontiguousarray(w.T) if transposed else w
    fmt = np.dtype(dtype).name
    serial = np.full(_packed.packed_length(N, K, fmt), np.nan, dtype)
    _testing.pack_matrix(src, transposed, serial)
    for n_threads in (2, 3):
        threaded = np.full_like(serial, np.nan)
        _testing.pack_matrix(src, transposed, threaded, n_threads)
        np.testing.assert_array_equal(threaded, serial)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, cols", ODD + [(16, 16), (64, 48)])
def test_transpose_matches_numpy(dtype, rows, cols):
    src = np.arange(rows * cols, dtype=dtype).reshape(rows, cols)
    dst = np.empty((cols, rows), dtype)
    _testing.transpose_matrix(src, dst)
    np.testing.assert_array_equal(dst, src.T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_weights_object(dtype):
    fmt = np.dtype(dtype).name
    w = np.random.default_rng(0).standard_normal((70, 9)).astype(dtype)
    pw = _packed.PackedWeights(70, 9, fmt).pack(w)
    assert (pw.n_out, pw.n_in, pw.format) == (70, 9, fmt)
    assert pw.panel_width == _packed.packed_panel_width(fmt)
    reference = np.empty(_packed.packed_length(70, 9, fmt), dtype)
    _testing.pack_matrix(w, False, reference)
    np.testing.assert_array_equal(pw.data, reference)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pw)).data, reference)
    buffer = np.empty(reference.size + 5, dtype)
    assert _packed.PackedWeights(70, 9, fmt, buffer).pack(w).data is buffer  # packs in place
    np.testing.assert_array_equal(buffer[:reference.size], reference)
    with pytest.raises(ValueError, match="packed source"):
        pw.pack(w[:, :8].copy())
    with pytest.raises(ValueError, match="packed source"):
        pw.pack(w.astype(np.float64 if dtype == np.float32 else np.float32))
    with pytest.raises(ValueError, match="buffer"):
        _packed.PackedWeights(70, 9, fmt, np.empty(3, dtype))
    with pytest.raises(ValueError, match="shape/format"):
        _packed.PackedWeights(70, 9, "int4")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("units", [None, (2, 5)])
def test_lstm_cell_step_matches_the_reference_cell(dtype, units):
    B, H = 3, 7
    rng = np.random.default_rng(1)
    pre = rng.standard_normal((B, 4 * H)).astype(dtype)
    bias = rng.standard_normal(4 * H).astype(dtype)
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    gates, c_t, r_t = pre.copy(), np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    j0, j1 = units or (0, H)
    _testing.cell_step_forward("lstm", gates, bias, c_prev, c_t, r_t, j0, j1)
    z = (pre + bias).astype(np.float64)
    sig = 1 / (1 + np.exp(-z))
    i, f, g, o = sig[:, :H], sig[:, H:2 * H], np.tanh(z[:, 2 * H:3 * H]), sig[:, 3 * H:]
    c = f * c_prev + i * g
    cols = slice(j0, j1)
    assert_close(c_t[:, cols], c[:, cols], dtype)
    assert_close(r_t[:, cols], (o * np.tanh(c))[:, cols], dtype)
    assert not c_t[:, :j0].any() and not c_t[:, j1:].any()  # other units untouched
    if units is None:  # backward: the reference's cell gradients
        dr, dc = rng.standard_normal((2, B, H)).astype(dtype)
        dc_prev = dc.copy()
        _testing.cell_step_backward("lstm", gates, c_prev, c_t, dr, dc_prev)
        tc = np.tanh(c)
        dc_t = dc + dr * o * (1 - tc ** 2)
        dG = np.concatenate([dc_t * g * i * (1 - i), dc_t * c_prev * f * (1 - f),
                             dc_t * i * (1 - g ** 2), dr * tc * o * (1 - o)], axis=1)
        assert_close(gates, dG, dtype)
        assert_close(dc_prev, dc_t * f, dtype)
    with pytest.raises(ValueError, match="unknown cell"):
        _testing.cell_step_forward("no-such-cell", gates, bias, c_prev, c_t, r_t)


def test_reference_cell_is_what_the_c_cell_is_tested_against():
    # the hand-written formulas above are the reference's: one step of R.lstm_forward
    rng = np.random.default_rng(2)
    B, I, H = 2, 3, 4
    x = rng.standard_normal((1, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    h0, c0 = rng.standard_normal((2, B, H))
    y, _, c_n, _ = R.lstm_forward(x, w_ih, w_hh, None, None, h0, c0)
    gates = (x[0] @ w_ih.T + h0 @ w_hh.T).copy()
    c_t, r_t = np.zeros((B, H)), np.zeros((B, H))
    _testing.cell_step_forward("lstm", gates, None, c0, c_t, r_t)
    assert_close(c_t, c_n, np.float64)
    assert_close(r_t, y[0], np.float64)
