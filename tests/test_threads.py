"""Threads: settings, BLAS's thread count, calls from several Python threads, forked children,
and Ctrl-C during a long call."""
import numpy as np
import pytest

import clstm
from _helpers import I, H, make_lstm


def test_thread_settings():
    default = clstm.get_num_threads()
    assert default >= 1
    try:
        clstm.set_num_threads(1)
        assert clstm.get_num_threads() == 1
        clstm.set_num_threads(np.int64(3))
        assert clstm.get_num_threads() == 3
        for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                         ("2", TypeError)):
            with pytest.raises(exc, match="^n must be"):
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


def test_thread_requests_are_validated_and_capped_at_the_cpus(monkeypatch):
    """set_num_threads and the per-call n_threads go through one guard: a clear error for
    a bad value, and a team no larger than the CPUs (a huge request used to overflow, and
    1000 threads on 2 CPUs made calls slower and sized scratch by 1000)."""
    from clstm import _threads
    from clstm import functional as F
    from _helpers import make_problem

    monkeypatch.setattr(_threads, "_team_cap", lambda: 2)
    p = make_problem(3, 5, 2, 4, dtype=np.float64, seed=1)
    args = [p[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    expected = F.lstm_forward(*args, n_threads=1)[0]
    try:
        for n in (1000, 2**31, 2**63):
            clstm.set_num_threads(n)
            assert clstm.get_num_threads() == 2
            np.testing.assert_array_equal(make_lstm()(np.zeros((2, 3, I)))[0],
                                          make_lstm()(np.zeros((2, 3, I)))[0])
            np.testing.assert_array_equal(F.lstm_forward(*args, n_threads=n)[0], expected)
    finally:
        clstm.set_num_threads(None)
    assert _threads.team_size(1) == 1
    for bad, exc in ((0, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="^n_threads must be"):
            F.lstm_forward(*args, n_threads=bad)


_FORK_EXPLICIT_THREADS = """
import os, sys, time
import numpy as np
import clstm
from clstm import functional as F

clstm.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((20, 8, 4))
w_ih, w_hh = rng.standard_normal((64, 4)), rng.standard_normal((64, 16))
b, h0 = np.zeros(64), np.zeros((8, 16))
args = (x, w_ih, w_hh, b, b, h0, h0)
expected = F.lstm_forward(*args, n_threads=2, strategy="batch")[0]  # the parent's OpenMP pool
pid = os.fork()
if pid == 0:
    y = F.lstm_forward(*args, n_threads=2, strategy="batch")[0]
    os._exit(0 if np.array_equal(y, expected) else 3)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.02)
os.kill(pid, 9)
sys.exit("the forked child hung")
"""


def test_forked_child_with_explicit_n_threads_does_not_hang():
    import os
    import subprocess
    import sys

    from clstm import _threads

    if not hasattr(os, "fork") or not clstm.openmp_enabled() or _threads._available_cpus() < 2:
        pytest.skip("needs fork, an OpenMP build and 2 CPUs")
    # A fresh interpreter (a fork of the test process could inherit its threads), outside
    # the repository so that it imports the installed package.
    proc = subprocess.run([sys.executable, "-c", _FORK_EXPLICIT_THREADS], cwd=os.sep,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]


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


_INTERRUPT = """
import os, signal, sys, threading, time
import numpy as np
import clstm

lstm = clstm.LSTM(64, 256, seed=0)
rng = np.random.default_rng(0)
small = rng.standard_normal((30, 4, 64)).astype(np.float32)
expected = lstm(small)[0]
x = rng.standard_normal((100, 64, 64)).astype(np.float32)
start = time.monotonic()
lstm(x)
per_step = (time.monotonic() - start) / 100
sent = []

def interrupt_after(delay):
    def send():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(delay, send).start()

# a call of about 4 s (many time chunks), interrupted after 0.3 s
x = rng.standard_normal((int(min(20000, 4.0 / per_step)), 64, 64)).astype(np.float32)
interrupt_after(0.3)
try:
    lstm(x)
    sys.exit("the call was not interrupted")
except KeyboardInterrupt:
    latency = time.monotonic() - sent[0]
if latency > 1.0:
    sys.exit(f"KeyboardInterrupt {latency:.2f} s after SIGINT")
assert np.array_equal(lstm(small)[0], expected), "not usable after the interrupt"

# a handler that does not raise: the call goes on and gives the full result
x = x[:int(min(20000, 0.6 / per_step))]
whole = lstm(x)[0]
seen = []
signal.signal(signal.SIGINT, lambda *args: seen.append(1))
interrupt_after(0.1)
y = lstm(x)[0]
time.sleep(0.05)
assert seen and np.array_equal(y, whole), "a handler that does not raise broke the call"
print(f"latency {latency * 1000:.1f} ms")
"""


def test_ctrl_c_ends_a_long_inference_call_quickly():
    """SIGINT during a long call used to land only when the call returned (seconds later);
    now KeyboardInterrupt comes between time chunks, and the library works afterwards."""
    import os
    import signal
    import subprocess
    import sys

    if not hasattr(signal, "SIGINT") or os.name != "posix":
        pytest.skip("needs POSIX signals")
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT], cwd=os.sep, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def test_release_memory_frees_every_threads_scratch():
    import threading

    lstm = clstm.LSTM(8, 64, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((50, 16, 8))
    expected = lstm(x)[0]
    done, leave = threading.Event(), threading.Event()

    def other_thread():
        (y, _), backward = lstm.forward_train(x)
        backward(np.ones_like(y))
        done.set()
        leave.wait(30)  # alive, holding its buffers, until released

    clstm.release_memory()
    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        assert done.wait(30)
        # only the other thread has buffers now: its training call's T*B-row arrays
        assert clstm.release_memory() > 50 * 16 * 64 * 8
        assert clstm.release_memory() == 0
        lstm(x)
        assert clstm.release_memory() > 0
    finally:
        leave.set()
        worker.join()
    np.testing.assert_array_equal(lstm(x)[0], expected)  # buffers come back as needed


_ADDRESS_SPACE_LIMIT = """
import os, resource
import numpy as np
import clstm

lstm = clstm.LSTM(16, 64, seed=0)
cell = clstm.LSTMCell(16, 64, dtype=np.float64)
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (used + (4 << 20),) * 2)  # 4 MB to spare
lstm(np.zeros((1, 2, 16), np.float32))  # OpenBLAS's step: hung in its allocator
cell(np.zeros((3, 16)))
clstm.set_num_threads(2)
lstm(np.zeros((5, 4, 16), np.float32))  # GNU OpenMP exited the process: no room for a thread
print("ok", clstm.get_num_threads())
"""


def test_calls_near_the_address_space_limit_neither_hang_nor_exit():
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    proc = subprocess.run([sys.executable, "-c", _ADDRESS_SPACE_LIMIT], cwd=os.sep,
                          capture_output=True, text=True, timeout=30)
    # (a serial build starts no OpenMP threads: its thread count has nothing to guard)
    expected = "ok 1" if clstm.openmp_enabled() else "ok "
    assert proc.returncode == 0 and expected in proc.stdout, \
        (proc.stdout + proc.stderr)[-2000:]



def _runs_while_the_kernel_lock_is_held(call, wait):
    """Whether ``call()`` finishes in another thread within ``wait`` seconds while this
    thread holds the kernel lock (it finishes anyway once the lock is released)."""
    import threading
    from clstm import _threads

    done = threading.Event()
    thread = threading.Thread(target=lambda: (call(), done.set()))
    with _threads.kernel_lock():
        thread.start()
        finished = done.wait(wait)
    thread.join(60)
    return finished


def test_one_thread_forwards_without_projection_take_no_lock():
    """Item 17: a forward on one thread without a projection calls no BLAS (the kernel
    leaves BLAS's thread count alone), so it runs unlocked; the others take the lock."""
    x = np.random.default_rng(17).standard_normal((30, 4, 8)).astype(np.float32)
    lstm = clstm.LSTM(8, 32, num_layers=2, seed=0)
    projected = clstm.LSTM(8, 32, proj_size=16, seed=0)
    clstm.set_num_threads(1)
    try:
        for call in (lambda: lstm(x), lambda: lstm.freeze()(x),
                     lambda: lstm.forward_train(x)):
            assert _runs_while_the_kernel_lock_is_held(call, 30)
        assert not _runs_while_the_kernel_lock_is_held(lambda: projected(x), 0.2)
    finally:
        clstm.set_num_threads(None)
    assert not _runs_while_the_kernel_lock_is_held(lambda: lstm(x), 0.2)  # (two threads)


def test_unlocked_and_locked_calls_from_python_threads_give_the_serial_bits():
    """Threads each running their own model at once (live, frozen, training, a projection)
    next to a thread making two-thread calls: every result is the serial one bit for bit,
    and BLAS's thread count is as before."""
    import threading
    from clstm import _threads

    rng = np.random.default_rng(18)
    models = [clstm.LSTM(8, 32, num_layers=2, seed=k) for k in range(3)]
    models.append(clstm.LSTM(8, 32, proj_size=16, seed=3))
    frozen = models[1].freeze()
    xs = [rng.standard_normal((30, 4, 8)).astype(np.float32) for _ in range(5)]
    p = models[0].state_dict()
    weights = [p[n] for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    zeros = np.zeros((4, 32), np.float32)

    def train(x):
        (y, _), backward = models[2].forward_train(x)
        return y.copy(), backward(np.ones_like(y))[0]

    calls = [lambda x: models[0](x)[0], lambda x: frozen(x)[0], train,
             lambda x: models[3](x)[0],
             lambda x: clstm.functional.lstm_forward(x, *weights, zeros, zeros,
                                                     n_threads=2)[0]]
    lib = _threads._scipy_blas_controller() if _threads._kernels_switch_blas else None
    before = lib.get_num_threads() if lib is not None else None
    results = [[] for _ in calls]

    def worker(k):
        for _ in range(15):
            results[k].append(calls[k](xs[k]))

    clstm.set_num_threads(1)
    try:
        alone = [call(x) for call, x in zip(calls, xs)]
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
    finally:
        clstm.set_num_threads(None)
    for k, got in enumerate(results):
        assert len(got) == 15
        for out in got:
            for a, b in zip(out, alone[k]) if k == 2 else [(out, alone[k])]:  # (y, dx)
                np.testing.assert_array_equal(a, b)
    if lib is not None:
        assert lib.get_num_threads() == before
