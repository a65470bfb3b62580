"""Frozen models: inference-only snapshots on prepacked weights (`LSTM.freeze()`)."""
import copy


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

    Parameters
    ----------
    model : clstm.LSTM
        The model to snapshot.
    """

    def __init__(self, model):
        self._spec = copy.copy(model)  # its configuration, for validation and layouts
        self._weights = [[w.freeze() for w in layer]
                         for layer in model._layer_weights(copy=False)]

    def __call__(self, x, state=None, lengths=None):
        """Inference: ``y, (h_n, c_n)``, as `clstm.LSTM.__call__`."""
        out, _ = self._spec._run(x, state, lengths, train=False, rng=None,
                                 weights=self._weights)
        return out

    forward = __call__

    def __repr__(self):
        return f"{self._spec!r}.freeze()"
