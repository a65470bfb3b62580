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
import operator
import os

from . import _lstm

_num_threads = None
_kernels_switch_blas = False


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP (else they run on one thread)."""
    return _lstm.openmp_enabled()


def set_num_threads(n):
    """Set how many threads clstm's kernels use (process-wide). ``None`` restores the default:
    the CPUs this process may run on, capped by ``OMP_NUM_THREADS``."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool):
            raise TypeError("n must be a positive int or None, got bool")
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"n must be a positive int or None, got {type(n).__name__}") from None
        if n < 1:
            raise ValueError(f"n must be a positive int or None, got {n}")
    _num_threads = n


def get_num_threads():
    """The number of threads clstm's kernels use."""
    if _num_threads is not None:
        return _num_threads
    n = _available_cpus()
    if "OMP_NUM_THREADS" in os.environ and openmp_enabled():
        n = min(n, _lstm.openmp_max_threads())
    return max(1, n)


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
        _lstm._install_blas_thread_control(*fns)
        _kernels_switch_blas = True


@contextlib.contextmanager
def blas_guard(n_threads):
    """Around a kernel call: only needed when the kernels cannot switch BLAS threads."""
    if _kernels_switch_blas or n_threads < 2 or not openmp_enabled():
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


_install()
