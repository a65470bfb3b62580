"""Thread policy: the one place that decides how many threads clstm uses.

clstm runs the time loop on ``get_num_threads()`` OpenMP threads (one batch slice each) and
the big hoisted GEMMs on as many BLAS threads. Inside the OpenMP region BLAS must run on one
thread: SciPy's OpenBLAS is a pthreads build that does not notice it is nested and would put
two BLAS threads on each of our threads. The compiled kernels switch OpenBLAS's thread count
themselves (it is process-global, like every BLAS thread setting) and restore the caller's
count before they return; this module finds OpenBLAS's C entry points for them. With another
BLAS (MKL, BLIS, Accelerate) the whole call runs under a threadpoolctl limit of one BLAS
thread instead, which costs the hoisted GEMMs their threads but never oversubscribes.
"""
import contextlib
import ctypes
import os
import threading
from typing import Optional

from . import _runtime
from ._checks import positive_int

_num_threads = None
_kernels_switch_blas = False
# BLAS thread counts are process-global and the kernels save and restore them, so two kernel
# calls overlapping in time (from two Python threads) could leave BLAS on the wrong count.
# Kernel calls therefore run one at a time (each already uses every thread it is given),
# except a forward on one thread without a projection, which calls no BLAS (`forward_call`).
_kernel_lock = threading.Lock()
# GNU OpenMP cannot start a parallel region in a child forked after the parent used one
# (the child hangs), so in such a child clstm runs single-threaded.
_forked_child = False


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def openmp_enabled() -> bool:
    """True when the compiled kernels were built with OpenMP (else they run on one thread)."""
    return _runtime.openmp_enabled()


def _team_cap() -> int:
    """The most threads that can help: the CPUs this process may run on. More threads than
    that only time-share the cores (and each needs its own scratch)."""
    return _available_cpus()


# The largest OpenMP team started so far: its threads stay in GNU OpenMP's pool, so a team
# up to this size needs no new threads (and no address space for them).
_team_started = 1
# Address space a new OpenMP thread needs beyond its stack (its share of malloc and TLS).
_THREAD_MARGIN = 8 << 20


def _address_space_cap(n):
    """At most ``n`` threads, fewer if an address-space limit (``RLIMIT_AS``) leaves no room
    for the stacks of the threads to be started: GNU OpenMP exits the whole process
    ("Thread creation failed") when it cannot create one. Without a limit: ``n``."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return n
        stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return n
    if stack == resource.RLIM_INFINITY or stack <= 0:
        stack = 8 << 20  # (glibc's default thread stack then; OMP_STACKSIZE is not read)
    room = (limit - used) // (stack + _THREAD_MARGIN)
    return max(_team_started, min(n, _team_started + room))


def team_size(n_threads=None, name="n_threads") -> int:
    """The one thread guard: how many threads a kernel call runs on when ``n_threads`` (an
    int, or None for the process-wide setting) were asked for.

    Validates ``n_threads`` (a `TypeError` or `ValueError` naming ``name``), then caps it at
    the CPUs this process may run on, at 1 in a child forked after clstm ran OpenMP
    threads (GNU OpenMP hangs there), and, under an address-space limit, at the threads it
    leaves room for (`_address_space_cap`). Every way of asking for threads goes through
    here.
    """
    if _forked_child:
        if n_threads is not None:
            positive_int(name, n_threads)
        return 1
    if n_threads is None:
        n_threads = _num_threads
        if n_threads is None:
            n = _available_cpus()
            if "OMP_NUM_THREADS" in os.environ and openmp_enabled():
                n = min(n, _runtime.openmp_max_threads())
            n_threads = max(1, n)
    else:
        n_threads = positive_int(name, n_threads)
    n = min(n_threads, _team_cap())
    return n if n <= _team_started or not openmp_enabled() else _address_space_cap(n)


def set_num_threads(n: Optional[int]) -> None:
    """Set how many threads clstm's kernels use (process-wide).

    Parameters
    ----------
    n : int >= 1 or None
        None restores the default: the CPUs this process may run on, capped by
        ``OMP_NUM_THREADS``. Larger values are accepted but capped at the CPUs this process
        may run on (more threads than cores only slow the calls down), and a child forked
        after clstm ran threads uses one (see `get_num_threads`).

    Raises
    ------
    TypeError, ValueError
        ``n`` not an int >= 1 or None (the message names ``n``).
    """
    global _num_threads
    _num_threads = None if n is None else positive_int("n", n)


def get_num_threads() -> int:
    """The number of threads clstm's kernels use: `set_num_threads`'s value capped at the
    CPUs this process may run on, and always 1 in a process forked from one that had
    already run clstm's threads (GNU OpenMP cannot be used again there)."""
    return team_size(None)


def _openblas_functions(dynlib):
    """Addresses of (set_num_threads, get_num_threads) in an OpenBLAS build, or None."""
    for prefix in ("scipy_", ""):
        for suffix in ("", "64_"):
            try:
                set_fn = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}")
                get_fn = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}")
            except AttributeError:
                continue
            return (ctypes.cast(set_fn, ctypes.c_void_p).value,
                    ctypes.cast(get_fn, ctypes.c_void_p).value)
    return None


def _scipy_blas_controller():
    """threadpoolctl's controller for the BLAS that scipy.linalg.cython_blas calls, or None."""
    import scipy
    from threadpoolctl import ThreadpoolController

    blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    scipy_root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    # NumPy may bundle an OpenBLAS of its own: prefer the one that ships with SciPy.
    blas.sort(key=lambda lib: not os.path.abspath(lib.filepath).startswith(
        os.path.join(scipy_root, "scipy")))
    return blas[0] if blas else None


def _install():
    """Give the kernels OpenBLAS's thread switches, or leave them to the fallback."""
    global _kernels_switch_blas
    try:
        lib = _scipy_blas_controller()
    except Exception:  # threadpoolctl missing or confused: run the fallback
        lib = None
    fns = None
    if lib is not None and lib.internal_api == "openblas":
        fns = _openblas_functions(getattr(lib, "dynlib", None) or ctypes.CDLL(lib.filepath))
    if fns is not None:
        _runtime.install_blas_thread_control(*fns)
        _kernels_switch_blas = True


def kernel_call(n_threads):
    """Context manager around every compiled kernel call: one at a time, and with a BLAS the
    kernels cannot switch themselves, held to one BLAS thread while OpenMP threads run.
    (Usually just the lock: a generator-based manager would cost a microsecond per call.)"""
    global _openmp_used, _team_started
    if n_threads > 1 and openmp_enabled():
        _openmp_used = True
        _team_started = max(_team_started, n_threads)
    if _kernels_switch_blas or n_threads < 2 or not openmp_enabled():
        return _kernel_lock
    return _one_blas_thread()


_UNLOCKED = contextlib.nullcontext()


def forward_call(n_threads, projection):
    """Context manager around a layer forward (`clstm._recurrent.forward`) on ``n_threads``
    OpenMP threads: `kernel_call`'s, except for a call on one thread without a projection,
    which runs unlocked. Such a call multiplies with clstm's packed GEMM only, so it calls
    no BLAS and leaves BLAS's thread count alone (the kernel skips its switch), and it
    shares nothing with other calls: scratch is per Python thread, a frozen model's packed
    weights are read-only, and only the main thread's call reads the Ctrl-C flag. Several
    Python threads running such calls (``set_num_threads(1)``) then use a core each."""
    if n_threads == 1 and not projection:
        return _UNLOCKED
    return kernel_call(n_threads)


@contextlib.contextmanager
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with _kernel_lock, threadpool_limits(limits=1, user_api="blas"):
        yield


_openmp_used = False


def kernel_lock():
    """The lock of `kernel_call`, for a single-threaded kernel call that needs nothing else
    (re-read on each call: a forked child replaces it)."""
    return _kernel_lock


def _after_fork_in_child():
    global _kernel_lock, _forked_child
    _kernel_lock = threading.Lock()  # a thread of the parent may have held it
    _forked_child = _forked_child or _openmp_used


def _allocate_blas_buffers():
    """Let OpenBLAS allocate its work buffers now, with one small step per dtype: it does so
    at its first call on a thread, and near an address-space limit (``RLIMIT_AS``) its
    allocator retries forever instead of failing. Import time is the safe moment, before a
    program lowers the limit (it covers the importing thread)."""
    import numpy as np
    from . import _packed

    for dtype in (np.float32, np.float64):
        x, h = np.zeros((4, 8), dtype), np.zeros((4, 32), dtype)
        w_ih, w_hh = np.zeros((128, 8), dtype), np.zeros((128, 32), dtype)
        with _kernel_lock:
            _packed.cell_step(x, h, h, w_ih, w_hh, None, None, dtype == np.float64, True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_install()
_allocate_blas_buffers()
