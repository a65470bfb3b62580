"""int8 and bfloat16 weights (csrc/lowp.h, `freeze(weights=...)`).

Trust in order: the kernels against a NumPy emulation of the same quantisation (int8: bit
for bit, the integer sums being exact and the float epilogue uncontracted; bfloat16: bit for
bit too, the emulation adding in the kernel's order), under every kernel this machine has
(CLSTM_ISA, in subprocesses); then frozen low-precision models against the float32 model,
with error bounds derived from the quantisation steps; then against ONNX Runtime's
DynamicQuantizeLSTM on the same weights and input (skipped without onnx/onnxruntime).
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from clstm import _packed

TESTS = pathlib.Path(__file__).resolve().parent
NR = _packed.packed_panel_width("int8")
F32 = np.float32


# ---------------------------------------------------------------------------------------------
# The NumPy emulation of csrc/lowp.h.

def quantize_weights_int8(w):
    """(q (N, K) int8 values as int64, scale (N,) float32, colsum (N,) int64)."""
    w = np.asarray(w, F32)
    s = (np.abs(w).max(axis=1) / F32(127)).astype(F32)
    safe = np.where(s > 0, s, F32(1))
    q = np.where(s[:, None] > 0, np.clip(np.rint(w / safe[:, None]), -127, 127), 0)
    q = q.astype(np.int64)
    return q, s, q.sum(axis=1)


def quantize_rows_u8(a):
    """(q (n, K) in [0, 255] as int64, scale (n,) float32, zero point (n,) int64)."""
    a = np.asarray(a, F32)
    lo = np.minimum(a.min(axis=1), F32(0))
    hi = np.maximum(a.max(axis=1), F32(0))
    s = ((hi - lo) / F32(255)).astype(F32)
    s = np.where((s > 0) & (s <= F32(3e38)), s, F32(1)).astype(F32)
    z = np.clip(np.rint(-lo / s), 0, 255).astype(F32)
    q = np.clip(np.rint((a / s[:, None]).astype(F32) + z[:, None]), 0, 255)
    return q.astype(np.int64), s, z.astype(np.int64)


def emulate_int8(a, w, c):
    """c + a @ w.T as the int8 kernel computes it."""
    qw, sw, colsum = quantize_weights_int8(w)
    qa, sa, za = quantize_rows_u8(a)
    acc = qa @ qw.T - za[:, None] * colsum[None, :]  # exact integers
    assert np.abs(acc).max(initial=0) < 2**31
    scale = (sa[:, None] * sw[None, :]).astype(F32)
    return (c + acc.astype(np.int32).astype(F32) * scale).astype(F32)


def to_bf16(x):
    """float32 values rounded to bfloat16 (nearest even), as float32."""
    u = np.asarray(x, F32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(F32)


def emulate_bf16(a, w, c, ks=2):
    """c + a @ w.T as the bfloat16 kernel computes it: per pair of k the odd product is
    added first, then the even (vdpbf16ps), pairs taking turns over ks accumulators."""
    a, w = to_bf16(a), to_bf16(w)
    K = a.shape[1]
    groups = (K + 1) // 2
    pad = 2 * groups - K
    a = np.pad(a, ((0, 0), (0, pad)))
    w = np.pad(w, ((0, 0), (0, pad)))
    acc = np.zeros((ks,) + c.shape, F32)
    for g in range(groups):
        s = g % ks if g < groups // ks * ks else 0
        for k in (2 * g + 1, 2 * g):  # products of bf16 values are exact in float32
            acc[s] = acc[s] + a[:, k, None] * w[None, :, k]
    total = acc[0]
    for s in range(1, ks):
        total = total + acc[s]
    return (c + total).astype(F32)


EMULATE = {"int8": emulate_int8, "bfloat16": emulate_bf16}


def rows_of_every_kind(rng, n, K):
    a = rng.standard_normal((n, K)).astype(F32)
    if n > 1:
        a[1] = 0  # all zero: scale 1, zero point 0
    if n > 2:
        a[2] = np.abs(a[2]) * 1e3  # all positive, large
    if n > 3:
        a[3] = -np.abs(a[3]) * 1e-3  # all negative, small
    if n > 4:
        a[4] = 0.5  # constant
    return a


# ---------------------------------------------------------------------------------------------
# Kernels (the `kernel` tests are the ones run again under every CLSTM_ISA).

@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("N,K", [(1, 1), (4, 3), (63, 5), (64, 64), (65, 130), (256, 257),
                                 (200, 70)])
def test_kernel_matches_the_numpy_emulation_bit_for_bit(fmt, N, K):
    rng = np.random.default_rng(N * 1000 + K)
    w = rng.standard_normal((N, K)).astype(F32)
    if N > 2:
        w[2] = 0  # a zero row: scale 0
    packed = _packed.PackedWeights(N, K, fmt).pack(w)
    for n in (1, 2, 3, 5, 6, 7, 13, 64, 70):
        a = rows_of_every_kind(rng, n, K)
        c0 = rng.standard_normal((n, N)).astype(F32)
        got = _packed.lowp_gemm(packed, a, c0.copy())
        want = EMULATE[fmt](a, w, c0)
        np.testing.assert_array_equal(got, want, err_msg=f"{fmt} n={n} kernel="
                                      f"{_packed.lowp_kernel()}")


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
def test_kernel_column_ranges_are_the_whole_product_s_columns(fmt):
    """A range of whole panels (the hidden-unit split) gives those columns of the whole."""
    rng = np.random.default_rng(7)
    N, K, n = 4 * 3 * NR, 96, 9
    w = rng.standard_normal((N, K)).astype(F32)
    a = rng.standard_normal((n, K)).astype(F32)
    packed = _packed.PackedWeights(N, K, fmt).pack(w)
    whole = _packed.lowp_gemm(packed, a, np.zeros((n, N), F32))
    for col0, cols in ((0, NR), (NR, 2 * NR), (5 * NR, NR + 7), (11 * NR, NR)):
        out = np.zeros((n, cols), F32)
        _packed.lowp_gemm(packed, a, out, col0, cols)
        np.testing.assert_array_equal(out, whole[:, col0:col0 + cols])


def test_kernel_int8_error_is_within_the_quantisation_steps():
    """|a @ w.T - int8| <= sum_k (|a_k| dw_k + |w_k| da_k + da_k dw_k) with half steps
    da = s_a / 2, dw = s_w / 2: the bound the tests of frozen models build on."""
    rng = np.random.default_rng(3)
    N, K, n = 256, 300, 16
    w = rng.standard_normal((N, K)).astype(F32) * 0.1
    a = rng.standard_normal((n, K)).astype(F32)
    packed = _packed.PackedWeights(N, K, "int8").pack(w)
    got = _packed.lowp_gemm(packed, a, np.zeros((n, N), F32))
    exact = a.astype(np.float64) @ w.T.astype(np.float64)
    _, sw, _ = quantize_weights_int8(w)
    _, sa, _ = quantize_rows_u8(a)
    bound = (np.abs(a).sum(1)[:, None] * sw[None, :] / 2 + sa[:, None] / 2
             * np.abs(w).sum(1)[None, :] + K * sa[:, None] * sw[None, :] / 4)
    assert np.all(np.abs(got - exact) <= bound * (1 + 1e-5) + 1e-6)


def test_packed_weights_low_precision_format_pickles_and_reports_its_size():
    import pickle
    rng = np.random.default_rng(1)
    w = rng.standard_normal((130, 40)).astype(F32)
    a = rng.standard_normal((3, 40)).astype(F32)
    for fmt, bytes_per_weight in (("int8", 1), ("bfloat16", 2)):
        p = _packed.PackedWeights(130, 40, fmt).pack(w)
        q = pickle.loads(pickle.dumps(p))
        assert q.format == fmt and q.nbytes == p.nbytes
        assert p.data.nbytes == _packed.packed_length(130, 40, fmt)
        assert p.data.nbytes == 192 * 40 * bytes_per_weight  # padded to whole panels
        np.testing.assert_array_equal(_packed.lowp_gemm(p, a, np.zeros((3, 130), F32)),
                                      _packed.lowp_gemm(q, a, np.zeros((3, 130), F32)))


def test_low_precision_packing_refuses_what_it_cannot_do():
    w = np.zeros((8, 4), F32)
    with pytest.raises(ValueError, match="transposed"):
        _packed.PackedWeights(4, 8, "int8").pack(w, transposed=True)
    with pytest.raises(ValueError, match="format"):
        _packed.PackedWeights(4, 8, "int4")
    with pytest.raises(ValueError, match="format"):
        _packed.lowp_gemm(_packed.PackedWeights(4, 8, "float32"), w[:1, :], w[:1, :4])


@pytest.mark.parametrize("isa", ["v4", "avxvnni", "v3", "base"])
def test_kernel_tests_pass_under_every_isa(isa, tmp_path):
    """The kernel tests again with each lower kernel forced (skipped where it would be
    the same kernel as the default)."""
    env = dict(os.environ, CLSTM_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "from clstm import _packed; "
                            "print(_packed.lowp_kernel())"], env=env, capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.strip()
    if probe == _packed.lowp_kernel():
        pytest.skip(f"CLSTM_ISA={isa} runs the default kernel ({probe}) on this machine")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "-k", "kernel and not every_isa", str(TESTS / "test_lowp.py")],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, probe + out.stdout[-3000:] + out.stderr[-3000:]
