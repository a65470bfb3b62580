"""Stubs of the compiled `clstm._packed` (packed weights, the one-step kernels)."""
from typing import Any, Literal, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

Format = Literal["float32", "float64", "int8", "bfloat16"]
FORMATS: dict
LOWP_FORMATS: dict
FORMAT_OF: dict
STEP_MAX_ROWS: int

class PackedWeights:
    data: NDArray[Any]
    n_out: int
    n_in: int
    format: str
    typenum: int
    lowp: int
    scales: Optional[NDArray[np.float32]]
    colsums: Optional[NDArray[np.int32]]
    def __init__(self, n_out: int, n_in: int, format: Format,
                 buffer: Optional[NDArray[np.floating[Any]]] = ...) -> None: ...
    def pack(self, w: NDArray[np.floating[Any]], transposed: bool = ...) -> "PackedWeights": ...
    def copy_from(self, data: NDArray[Any], scales: Optional[NDArray[np.float32]] = ...,
                  colsums: Optional[NDArray[np.int32]] = ...) -> "PackedWeights": ...
    @property
    def panel_width(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

def packed_length(n_out: int, n_in: int, format: Format) -> int: ...
def packed_panel_width(format: Format) -> int: ...
def cell_step(x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any,
              double: bool, strict: bool = ..., gates: Any = ...
              ) -> Optional[Tuple[NDArray[Any], NDArray[Any]]]: ...
def stack_step(weights: list, packed: bool, n_directions: int, batch_first: bool, x: Any,
               h0: Any, c0: Any) -> Optional[Tuple[NDArray[Any], Tuple[NDArray[Any],
                                                                          NDArray[Any]]]]: ...

class PackedCell:
    w_ih_packed: Optional[PackedWeights]
    w_hh_packed: Optional[PackedWeights]
    bias: Optional[NDArray[Any]]
    def _set_weights(self, w_ih: PackedWeights, w_hh: PackedWeights, bias: NDArray[Any]
                     ) -> None: ...
    def __call__(self, x: Any, state: Any = ...) -> Tuple[NDArray[Any], NDArray[Any]]: ...
    def _step(self, x: Any, h0: Any, c0: Any, strict: bool
              ) -> Optional[Tuple[NDArray[Any], NDArray[Any]]]: ...

def lowp_gemm(w: PackedWeights, a: NDArray[np.float32], c: NDArray[np.float32],
              col0: int = ..., n_cols: int = ...) -> NDArray[np.float32]: ...
def lowp_kernel() -> str: ...
