"""The pool of large arrays (clstm.functional._Pool): memory is handed out again only once
nothing references it, results of earlier calls never change under later ones, and the free
memory it keeps stays bounded."""
import gc
import os
import time

import numpy as np
import pytest

import clstm
from clstm import functional

BIG = (512, 1024)  # 2 MB of float32: above the pool's threshold
F32 = np.dtype(np.float32)


def address(a):
    return a.__array_interface__["data"][0]


def test_memory_is_reused_only_when_nothing_references_it():
    a = functional.pooled_empty(BIG, F32)
    a_at = address(a)
    b = functional.pooled_empty(BIG, F32)
    assert not np.shares_memory(a, b)
    view = a[10:20]
    del a
    gc.collect()
    c = functional.pooled_empty(BIG, F32)  # a's memory is still held by its view
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    del view, c
    gc.collect()
    d = functional.pooled_empty(BIG, F32)
    assert address(d) == a_at or not np.shares_memory(d, b)  # a's memory (or c's) again
    assert address(d) % 64 == 0 and d.flags.c_contiguous and d.flags.writeable
    assert d.shape == BIG and d.dtype == F32


def test_small_arrays_bypass_the_pool():
    n_before = len(functional._pool.buffers)
    a = functional.pooled_empty((16, 16), F32)
    assert a.base is None and len(functional._pool.buffers) == n_before


@pytest.mark.parametrize("H", [64, 512], ids=["own array", "pooled"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_packed_weights_start_on_a_cache_line(H, dtype):
    """A training layer's packed w_ih.T / w_hh.T (the snapshot backward multiplies by): the
    kernel loads whole 64-byte vectors from them, so they must start on a cache line
    whether they are pooled (large) or not (a small np.empty starts 16 or 32 bytes off,
    which cost T=100, B=1, H=64 training 12%)."""
    rng = np.random.default_rng(0)
    w_ih, w_hh = (rng.standard_normal((4 * H, n)).astype(dtype) for n in (H, H))
    layer = functional.LayerWeights(w_ih, w_hh, copy=True).driver_layer()
    for packed in (layer.w_ih_t, layer.w_hh_t):
        assert address(packed.data) % functional.CACHE_LINE == 0
    assert (w_hh.nbytes >= functional._Pool.MIN_BYTES) == (H == 512)


def test_sizes_share_a_class_and_zeros_are_zero():
    a = functional.pooled_zeros((1000, 1024), F32)
    assert not a.any()
    a[:] = 7
    at = address(a)
    del a
    gc.collect()
    b = functional.pooled_zeros((1010, 1024), F32)  # same size class: the same memory
    assert address(b) == at and not b.any()


def test_free_memory_is_bounded_and_released():
    clstm.release_memory()
    for rows in range(1, 40):  # 39 size classes, each dropped at once
        functional.pooled_empty((rows * 1024, 1024), F32)
    pool = functional._pool
    free = pool.free_bytes()
    assert 0 < free <= pool.FREE_BYTES
    kept = functional.pooled_empty(BIG, F32)
    assert clstm.release_memory() >= free
    assert [b for b in pool.buffers] == [kept.base]  # only the array still referenced


def arrays(*results):
    """The arrays in nested tuples of results."""
    out = []
    for r in results:
        if isinstance(r, np.ndarray):
            out.append(r)
        elif isinstance(r, tuple):
            out.extend(arrays(*r))
    return out


@pytest.mark.parametrize("bidirectional", [False, True])
def test_earlier_results_do_not_change_under_later_calls(bidirectional):
    """Results and training caches of one call live on while later calls of the same shapes
    run; each later call would reuse the memory of an array wrongly taken for free."""
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((40, 32, 256)).astype(np.float32) for _ in range(2))
    dy = np.ones((40, 32, 512 if bidirectional else 256), np.float32)

    def model():
        return clstm.LSTM(256, 256, num_layers=2, bidirectional=bidirectional,
                          dtype=np.float32, seed=0)

    # interleaved: the first cache and results alive through the second call
    lstm = model()
    out1, backward1 = lstm.forward_train(x1)
    kept = [a.copy() for a in arrays(out1)]
    out2, backward2 = lstm.forward_train(x2)
    grad_out2 = backward2(dy)
    grad_out1 = backward1(dy)
    kept_grads = [a.copy() for a in arrays(grad_out1, grad_out2)]
    summed = {name: g.copy() for name, g in lstm.grads.items()}
    for _ in range(2):  # more calls of the same shapes, the earlier results kept
        out3, backward3 = lstm.forward_train(x2)
        backward3(dy)
        lstm(x1)
    for a, k in zip(arrays(out1) + arrays(grad_out1, grad_out2), kept + kept_grads):
        np.testing.assert_array_equal(a, k)
    # one after the other on a fresh model: the same results and summed parameter gradients
    fresh = model()
    out1b, backward1b = fresh.forward_train(x1)
    grad_out1b = backward1b(dy)
    out2b, backward2b = fresh.forward_train(x2)
    grad_out2b = backward2b(dy)
    for a, k in zip(arrays(out1b) + arrays(grad_out1b, grad_out2b), kept + kept_grads):
        np.testing.assert_array_equal(a, k)
    assert summed.keys() == fresh.grads.keys()
    for name, g in fresh.grads.items():  # (added in another order: to rounding)
        np.testing.assert_allclose(summed[name], g, rtol=1e-5, atol=1e-5 * np.abs(g).max())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_use_the_pool_while_a_parent_thread_held_it():
    """The child of a fork taken while another thread held the pool's lock gets a new lock
    (a held one would hang its first large array)."""
    with functional._pool.lock:  # as another thread of the parent could be
        pid = os.fork()
        if pid == 0:  # the child: a large array, then out without running pytest's exit
            try:
                functional.pooled_empty(BIG, F32)[:] = 1
                os._exit(0)
            except BaseException:
                os._exit(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the pool's lock")
