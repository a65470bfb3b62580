"""Frozen models: inference-only snapshots on prepacked weights (`LSTM.freeze()`)."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from . import _packed, functional

if TYPE_CHECKING:
    from .rnn import LSTM


class FrozenLSTM:
    """``lstm.freeze()``: an inference-only snapshot of a whole `clstm.LSTM`.

    Called exactly like the model: ``y, (h_n, c_n) = frozen(x, state=None, lengths=None)``
    with every mode of the model (layers, bidirectional, ``proj_size``, ``lengths``,
    ``batch_first``, unbatched input). Each layer's weights are packed once, at freeze time,
    into the layout the driver multiplies (a live model repacks them on every call, since
    they may change in place); later changes to the model do not reach the snapshot.

    The results are the live model's inference bit for bit, with the same threads, except
    for one step (T = 1) of at most ``clstm._packed.STEP_MAX_ROWS`` rows without
    projection: there the live model multiplies its unpacked weights with BLAS (packing
    would cost more than the step), a different summation order, so the two agree to
    rounding only.

    With ``weights="int8"`` or ``"bfloat16"`` the input and recurrent weights are quantised
    (`clstm.LSTM.freeze`): the results then differ from the model's by the quantisation
    (docs/performance.md); the one-call streaming step quantises as the driver does, so
    the two give the same numbers.

    Parameters
    ----------
    model : clstm.LSTM
        The model to snapshot.
    weights : {None, "int8", "bfloat16"}
        The packed weights' format (None: the model's dtype).
    """

    def __init__(self, model: "LSTM", weights: Optional[str] = None):
        from .rnn import RNNBase  # (rnn imports this module)
        if not isinstance(model, RNNBase):
            raise TypeError(f"model must be a clstm.LSTM (FrozenLSTM(model) or model.freeze()), "
                            f"got {type(model).__name__}")
        self.weights = functional.check_weights_format(weights, model.dtype)
        self._spec = copy.copy(model)  # its configuration, for validation and layouts
        self._weights = [[w.freeze(weights) for w in layer]
                         for layer in model._layer_weights(copy=False)]
        # One step of a few rows (streaming) runs the whole stack in one compiled call.
        # (int8/bfloat16: the PackedWeights themselves, for their scales)
        self._step_weights = None if model.proj_size or model._cell != "lstm" else [
            (w.packed.w_ih_packed if weights else w.packed.w_ih_packed.data,
             w.packed.w_hh_packed if weights else w.packed.w_hh_packed.data, w.bias, None)
            for layer in self._weights for w in layer]

    def __call__(self, x: np.ndarray, state: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                 lengths: Optional[np.ndarray] = None
                 ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Inference: ``y, (h_n, c_n)``, exactly as `clstm.LSTM.__call__` (same
        parameters, returns and errors)."""
        if self._step_weights is not None and lengths is None:
            if state is None:
                state = self._spec._zero_state(x)
            if type(state) is tuple and len(state) == 2:
                out = _packed.stack_step(self._step_weights, True, self._spec.num_directions,
                                         self._spec.batch_first, x, state[0], state[1])
                if out is not None:
                    return out
        out, _ = self._spec._run(x, state, lengths, train=False, rng=None,
                                 weights=self._weights)
        return out

    forward = __call__

    def __repr__(self):
        return f"{self._spec!r}.freeze()"
