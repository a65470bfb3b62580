"""Stubs of the compiled `clstm._recurrent` (the recurrent driver)."""
from typing import Any, Literal, Optional

import numpy as np
from numpy.typing import NDArray

from ._packed import PackedWeights

Array = NDArray[Any]
STRATEGIES: tuple
CELLS: tuple

def n_gates(cell: str) -> int: ...
def row_blocks(cell: str) -> int: ...
def dG_t_length(n_threads: int) -> int: ...
def dx_from_packed(cell: str) -> bool: ...
def rows_length(N: int, first_step_rows: int, n_input: int, n_out: int, typenum: int) -> int: ...

class Schedule:
    n_steps: int
    n_batch: int
    n_rows: int
    first_step_rows: int
    offsets: Optional[NDArray[np.intp]]
    lengths: NDArray[np.intp]
    bounds: Optional[NDArray[np.intp]]
    strategy: str
    n_threads: int
    n_parts: int
    step_dx: bool
    def __init__(self, n_steps: int, offsets: Optional[NDArray[np.intp]],
                 lengths: NDArray[np.intp], strategy: Literal["serial", "batch", "units"],
                 bounds: Optional[NDArray[np.intp]], n_threads: int,
                 step_dx: bool = False) -> None: ...

class Layer:
    w_ih_packed: PackedWeights
    w_hh_packed: PackedWeights
    bias: Array
    w_hr: Optional[Array]
    w_ih: Optional[Array]
    w_hh: Optional[Array]
    w_ih_t: Optional[PackedWeights]
    w_hh_t: Optional[PackedWeights]
    extra: Optional[Array]
    cell: str
    n_input: int
    n_hidden: int
    n_out: int
    typenum: int
    @property
    def options(self) -> tuple: ...
    def __init__(self, cell: str, w_ih_packed: PackedWeights, w_hh_packed: PackedWeights,
                 bias: Array, w_hr: Optional[Array] = ..., w_ih: Optional[Array] = ...,
                 w_hh: Optional[Array] = ..., extra: Optional[Array] = ...,
                 options: tuple = ..., w_ih_t: Optional[PackedWeights] = ...,
                 w_hh_t: Optional[PackedWeights] = ...) -> None: ...
    def pack_backward(self, n_threads: int = ...) -> None: ...

class LayerIO:
    x: Array
    h0: Array
    c0: Optional[Array]
    y: Array
    h_n: Array
    c_n: Optional[Array]
    gates: Optional[Array]
    cells: Optional[Array]
    r: Optional[Array]
    hg: Optional[Array]
    mask: Optional[Array]
    hm: Optional[Array]
    train: bool
    def __init__(self, x: Array, h0: Array, c0: Optional[Array], y: Array, h_n: Array,
                 c_n: Optional[Array], gates: Optional[Array], cells: Optional[Array] = ...,
                 r: Optional[Array] = ..., hg: Optional[Array] = ...,
                 train: Optional[bool] = ..., mask: Optional[Array] = ...,
                 hm: Optional[Array] = ...) -> None: ...

class Grads:
    dy: Optional[Array]
    dh: Array
    dc: Array
    dx: Optional[Array]
    dw_ih: Array
    dw_hh: Array
    dbias: Array
    dw_hr: Optional[Array]
    def __init__(self, dy: Optional[Array], dh: Array, dc: Array, dx: Optional[Array],
                 dw_ih: Array, dw_hh: Array, dbias: Array,
                 dw_hr: Optional[Array] = ...) -> None: ...

class BackwardWork:
    rows: Array
    dG_t: Array
    h_prev: Optional[Array]
    dh_all: Optional[Array]
    dr: Optional[Array]
    h_masked: Optional[Array]
    def __init__(self, rows: Array, dG_t: Array, h_prev: Optional[Array] = ...,
                 dh_all: Optional[Array] = ..., dr: Optional[Array] = ...,
                 h_masked: Optional[Array] = ...) -> None: ...

def forward(layer: Layer, sched: Schedule, io: LayerIO, interruptible: bool = ...) -> None: ...
def backward(layer: Layer, sched: Schedule, io: LayerIO, grads: Grads,
             work: BackwardWork) -> None: ...
