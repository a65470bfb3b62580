"""Which path runs a layer call: the one place that decides.

Paths: "step" (one step of a few rows: the streaming step on the weights as they are, no
packing), and the recurrent driver's time-loop work splits "serial", "batch" (each thread
carries a slice of rows through every step) and "units" (the threads share each step's
hidden units, meeting at a barrier per step). `choose` picks one automatically; every path
can be forced (``strategy=``), which is how the tests run each of them. Measurements behind
the thresholds: docs/performance.md ("Work splits").
"""
import functools

import numpy as np

from . import _packed, _recurrent
from ._packing import Packing
from ._threads import openmp_enabled

PATHS = ("step", "serial", "batch", "units")

# The hidden-unit split pays for its barrier per step only when each thread's share of w_hh
# is big and the batch cannot feed the threads; or when w_hh is too big for any cache a
# thread has to itself, so that the batch split would stream all of it from memory into
# every thread at every step, and the rows per thread are few enough that this stream,
# not the multiply-adds, bounds the step.
UNIT_SPLIT_MIN_BYTES = 1 << 18
UNIT_SPLIT_MIN_UNITS_PER_THREAD = 64
UNIT_SPLIT_MAX_ROWS_PER_THREAD = 2
UNIT_SPLIT_STREAM_BYTES = 1 << 23
UNIT_SPLIT_MAX_STREAM_ROWS_PER_THREAD = 16

# Backward's dx = dG @ w_ih multiplied step by step in the time loop, while each step's
# dG_t is in cache, rather than over all rows after it, which reads dG back from memory:
# when dG is too big for the caches, w_ih small enough to stay in a thread's L2 next to w_hh
# at every step, and each thread's rows per step many enough for whole register tiles (the
# batch and serial splits only). (The forward's input projection in the loop measured
# slower than hoisted, at every size tried: docs/performance.md.)
STEP_DX_MIN_DG_BYTES = 1 << 25
STEP_DX_MAX_W_IH_BYTES = 1 << 19
STEP_DX_MIN_ROWS_PER_THREAD = 32


def _threads(n_threads):
    return n_threads if openmp_enabled() else 1


def step_usable(packing, projection, cell="lstm"):
    """One step of at most STEP_MAX_ROWS rows, no projection (the step has none), an LSTM
    (the step's cell)."""
    return (cell == "lstm" and not projection and packing.T == 1
            and 1 <= packing.B <= _packed.STEP_MAX_ROWS and packing.n_rows == packing.B)


_PANEL_WIDTH = {np.dtype(t): _packed.packed_panel_width(np.dtype(t).name)
                for t in (np.float32, np.float64)}


def _panel_width(dtype):
    return _PANEL_WIDTH[np.dtype(dtype)]


def units_usable(H, projection, dtype):
    """The unit split cuts at whole packed panels and has no projection."""
    return not projection and H % _panel_width(dtype) == 0


def _units_pay_off(packing, n_threads, H, dtype):
    n = min(_threads(n_threads), H // _panel_width(dtype))
    w_hh_bytes = 4 * H * H * np.dtype(dtype).itemsize
    if n < 2 or H < UNIT_SPLIT_MIN_UNITS_PER_THREAD * n:
        return False
    if w_hh_bytes >= UNIT_SPLIT_STREAM_BYTES:
        return packing.B <= UNIT_SPLIT_MAX_STREAM_ROWS_PER_THREAD * n
    return w_hh_bytes >= UNIT_SPLIT_MIN_BYTES and packing.B <= UNIT_SPLIT_MAX_ROWS_PER_THREAD * n


def choose(packing, n_threads, H, projection, dtype, strategy=None, allow_step=True,
           cell="lstm", allow_units=True):
    """The path for one layer call: ``strategy`` if given (checked usable), else the
    automatic choice (among the driver's work splits only, without ``allow_step``; not the
    unit split without ``allow_units``: recurrent dropout, whose masked h_{t-1} each thread
    makes for its own rows)."""
    if strategy is not None:
        if strategy not in PATHS:
            raise ValueError(f"strategy must be one of {PATHS} or None, got {strategy!r}")
        if strategy == "step" and not (allow_step and step_usable(packing, projection, cell)):
            raise ValueError("strategy='step' needs an LSTM's live weights and one step "
                             f"(T=1, no row ending early) of at most {_packed.STEP_MAX_ROWS} "
                             "rows and no projection")
        if strategy == "units" and not allow_units:
            raise ValueError("strategy='units' cannot run recurrent dropout (each thread "
                             "masks h_{t-1} for its own rows); use 'batch' or 'serial'")
        if strategy == "units" and not units_usable(H, projection, dtype):
            raise ValueError("strategy='units' needs no projection and a hidden size that "
                             f"is a multiple of the packed panel width ({_panel_width(dtype)})")
        return strategy
    if allow_step and step_usable(packing, projection, cell):
        return "step"
    if allow_units and units_usable(H, projection, dtype) and \
            _units_pay_off(packing, n_threads, H, dtype):
        return "units"
    return "batch" if _threads(n_threads) > 1 and packing.B > 1 else "serial"


def schedule(packing, path, n_threads, H, dtype, n_input=None, G=None, R=None):
    """The driver's `_recurrent.Schedule` for a time-loop path (not "step"); given the
    layer's input size and gate widths, with backward's dx in the loop where `step_dx`
    says."""
    n = _threads(n_threads)
    if path == "units":
        width = _panel_width(dtype)
        panels = H // width
        n = min(n, panels)
        bounds = (np.arange(n + 1) * panels // n * width).astype(np.intp)
    elif path == "batch":
        bounds = packing.batch_bounds(n)
    else:
        bounds = None
    in_loop = n_input is not None and step_dx(packing, path, n_threads, n_input, G, R, dtype)
    return _recurrent.Schedule(packing.steps, packing.offsets, packing.sorted_lengths, path,
                               bounds, n_threads, in_loop)


def plan(packing, n_threads, H, projection, dtype, strategy=None, allow_step=True,
         cell="lstm", allow_units=True, n_input=None, G=None, R=None):
    """``(path, schedule)`` for one layer call: `choose`'s path and, for a time-loop path,
    its `schedule` (None for "step", and when no row has a step). Remembered for
    full-length batches, which need only (T, B) of the packing: choosing costs more than a
    short call's multiply-adds."""
    args = (n_threads, H, projection, np.dtype(dtype), strategy, allow_step, cell,
            allow_units, n_input, G, R)
    if packing.uniform:
        return _uniform_plan(packing.T, packing.B, *args)
    return _plan(packing, *args)


def _plan(packing, n_threads, H, projection, dtype, strategy, allow_step, cell, allow_units,
          n_input, G, R):
    path = choose(packing, n_threads, H, projection, dtype, strategy, allow_step, cell,
                  allow_units)
    if path == "step" or packing.n_rows == 0:
        return path, None
    return path, schedule(packing, path, n_threads, H, dtype, n_input, G, R)


@functools.lru_cache(maxsize=256)
def _uniform_plan(T, B, *args):
    # (a Schedule is read-only, so calls and threads can share one)
    return _plan(Packing(T, B), *args)


def step_dx(packing, path, n_threads, n_input, G, R, dtype):
    """Whether backward multiplies dx inside the time loop (`_recurrent.Schedule`)."""
    item = np.dtype(dtype).itemsize
    parts = 1 if path == "serial" else _threads(n_threads)
    return (path in ("serial", "batch")
            and packing.n_rows * R * item >= STEP_DX_MIN_DG_BYTES
            and n_input * G * item <= STEP_DX_MAX_W_IH_BYTES
            and packing.B >= STEP_DX_MIN_ROWS_PER_THREAD * parts)
