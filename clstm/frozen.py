"""Frozen models: inference-only snapshots on prepacked weights (`LSTM.freeze()`)."""
from __future__ import annotations

import copy
import inspect
import json
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from . import _packed, _recurrent, functional
from ._params import read_npz

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

    _model = "LSTM"  # the model class (and cell) this snapshots

    def __init__(self, model: "LSTM", weights: Optional[str] = None):
        from .rnn import RNNBase  # (rnn imports this module)
        # (the LSTM's variant cells are "lstm_act", "lstm_peephole": still an LSTM)
        if not (isinstance(model, RNNBase)
                and model._cell.partition("_")[0] == self._model.lower()):
            raise TypeError(f"model must be a clstm.{self._model} ({type(self).__name__}(model) "
                            f"or model.freeze()), got {type(model).__name__}")
        self.weights = functional.check_weights_format(weights, model.dtype)
        self._spec = copy.copy(model)  # its configuration, for validation and layouts
        self._weights = [[w.freeze(weights) for w in layer]
                         for layer in model._layer_weights(copy=False)]
        self._set_step_weights()

    def _set_step_weights(self):
        # One step of a few rows (streaming) runs the whole stack in one compiled call.
        # (int8/bfloat16: the PackedWeights themselves, for their scales)
        model, lowp = self._spec, self.weights is not None
        self._step_weights = None if model.proj_size or model._cell != "lstm" else [
            (w.packed.w_ih_packed if lowp else w.packed.w_ih_packed.data,
             w.packed.w_hh_packed if lowp else w.packed.w_hh_packed.data, w.bias, None)
            for layer in self._weights for w in layer]

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's weights: packed (with int8 scales and sums), summed
        biases and projections."""
        return sum(layer_nbytes(w) for layer in self._weights for w in layer)

    def save(self, path) -> None:
        """Write the snapshot to ``path`` as an uncompressed ``.npz`` archive (no pickles):
        the model's configuration and its packed (quantised) weights and scales as they
        are, so `FrozenLSTM.load` gives the same numbers without the float weights. The
        packed layout is this build's (csrc/pgemm.h, csrc/lowp.h)."""
        arrays = {"config": np.array(json.dumps(spec_config(self._spec, self.weights)))}
        for l, layer in enumerate(self._weights):
            for d, w in enumerate(layer):
                arrays.update(layer_arrays(w, f"l{l}d{d}."))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "FrozenLSTM":
        """A snapshot written by `FrozenLSTM.save`; a file that is not one is a ValueError
        naming it."""
        from . import rnn
        arrays = read_npz(path, "a saved FrozenLSTM")
        config, weights = load_config(arrays, path, rnn)
        if config._cell != cls._model.lower():
            raise ValueError(f"{path}: a saved {type(config).__name__}, not a "
                             f"{cls._model} (load it with Frozen{type(config).__name__}.load)")
        self = cls.__new__(cls)
        self.weights = weights
        self._spec = config
        D = config.num_directions
        self._weights = [[layer_from_arrays(arrays, f"l{l}d{d}.", config._cell, path)
                          for d in range(D)] for l in range(config.num_layers)]
        self._set_step_weights()
        return self

    def __call__(self, x: np.ndarray, state: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                 lengths: Optional[np.ndarray] = None
                 ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Inference: ``y, (h_n, c_n)``, exactly as `clstm.LSTM.__call__` (same
        parameters, returns and errors)."""
        if (self._step_weights is not None and lengths is None and type(x) is np.ndarray
                and x.ndim == 3 and x.shape[int(self._spec.batch_first)] == 1):
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


class FrozenGRU(FrozenLSTM):
    """``gru.freeze()``: an inference-only snapshot of a whole `clstm.GRU` on prepacked
    weights, called exactly like the model: ``y, h_n = frozen(x, state=None,
    lengths=None)``; the results are the live model's bit for bit, with the same threads.

    Parameters
    ----------
    model : clstm.GRU
        The model to snapshot.
    weights : {None, "int8", "bfloat16"}
        The packed weights' format (None: the model's dtype; `clstm.GRU.freeze`).
    """

    _model = "GRU"


# ---------------------------------------------------------------------------------------------
# Saving snapshots (FrozenLSTM, FrozenLSTMCell): the configuration as JSON, each layer's
# packed weights as they are.

SAVE_VERSION = 1


def spec_config(spec, weights):
    """The JSON-able configuration of a model or cell (its class and fixed arguments)."""
    takes = inspect.signature(type(spec).__init__).parameters
    args = {name: getattr(spec, name) for name in spec._fixed
            if name != "seed" and name in takes}
    args["dtype"] = np.dtype(args["dtype"]).name
    return {"version": SAVE_VERSION, "class": type(spec).__name__, "args": args,
            "weights": weights}


def load_config(arrays, path, module):
    """(a new model of the saved class and arguments, the weights format)."""
    try:
        config = json.loads(str(arrays["config"]))
        if config.get("version") != SAVE_VERSION:
            raise ValueError(f"version {config.get('version')}, this build reads "
                             f"{SAVE_VERSION}")
        from ._params import Parameterised
        kind = getattr(module, config["class"])
        if not (isinstance(kind, type) and issubclass(kind, Parameterised)):
            raise ValueError(f"unknown class {config['class']!r}")
        spec = kind(**config["args"])
        return spec, functional.check_weights_format(config["weights"], spec.dtype)
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a saved frozen model ({exc})") from None


def layer_nbytes(w):
    layer = w.packed
    return (layer.w_ih_packed.nbytes + layer.w_hh_packed.nbytes + layer.bias.nbytes
            + (0 if layer.w_hr is None else layer.w_hr.nbytes))


def layer_arrays(w, prefix):
    """The arrays of one frozen layer-direction, named with ``prefix``."""
    layer, out = w.packed, {}
    for name, p in (("w_ih", layer.w_ih_packed), ("w_hh", layer.w_hh_packed)):
        out[prefix + name] = p.data[:_packed.packed_length(p.n_out, p.n_in, p.format)]
        out[prefix + name + ".shape"] = np.array([p.n_out, p.n_in])
        out[prefix + name + ".format"] = np.array(p.format)
        if p.scales is not None:
            out[prefix + name + ".scales"] = p.scales
            out[prefix + name + ".colsums"] = p.colsums
    out[prefix + "bias"] = layer.bias
    if layer.w_hr is not None:
        out[prefix + "w_hr"] = layer.w_hr
    return out


def layer_from_arrays(arrays, prefix, cell, path):
    """A frozen `functional.LayerWeights` from `layer_arrays`' arrays (checked by
    PackedWeights and the Layer, as any unpickled weights)."""
    try:
        packed = []
        for name in ("w_ih", "w_hh"):
            n_out, n_in = (int(v) for v in arrays[prefix + name + ".shape"])
            fmt = str(arrays[prefix + name + ".format"])
            packed.append(_packed.PackedWeights(n_out, n_in, fmt).copy_from(
                arrays[prefix + name], arrays.get(prefix + name + ".scales"),
                arrays.get(prefix + name + ".colsums")))
        w = functional.LayerWeights.__new__(functional.LayerWeights)
        w.w_ih = w.w_hh = None
        w.cell = cell
        w.bias = _packed.kernel_ready(arrays[prefix + "bias"])
        w.w_hr = _packed.kernel_ready(arrays.get(prefix + "w_hr"))
        w.packed = _recurrent.Layer(cell, packed[0], packed[1], w.bias, w.w_hr)
        return w
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a saved frozen model ({exc})") from None
