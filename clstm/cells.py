"""`LSTMCell` (torch.nn.LSTMCell's arguments and parameter names) and its frozen snapshot
`FrozenLSTMCell`, on NumPy arrays."""
from __future__ import annotations

import copy
import json
import math
from typing import Callable, Optional, Tuple, Union

import numpy as np

from . import _packed, _threads, functional
from ._checks import check_shape, flag, float_array, float_dtype, generator, \
    generator_from_seed, positive_int
from ._params import Parameterised
from ._threads import get_num_threads
from .rnn import Array, State, _set_lstm_variant, _state_pair


class _Cell(Parameterised):
    """What the one-step cells share: their constructor arguments and the input check."""

    _fixed = ("input_size", "hidden_size", "bias", "dtype", "seed")
    _n_gates = 4  # weight blocks of H rows

    def __init__(self, input_size, hidden_size, bias, dtype, seed, extra_shapes=()):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.bias = bool(bias)
        self.dtype = float_dtype(dtype)
        self.seed = seed
        H, I, G = self.hidden_size, self.input_size, self._n_gates * self.hidden_size
        shapes = {"weight_ih": (G, I), "weight_hh": (G, H)}
        if self.bias:
            shapes.update(bias_ih=(G,), bias_hh=(G,))
        shapes.update(extra_shapes)
        self._rng = generator_from_seed(seed)
        self._init_params(shapes, self._rng, 1.0 / math.sqrt(H))

    def _input(self, x):
        """Validate x; return it as (B, I), the caller's state shape and whether batched."""
        x = float_array("x", x, self.dtype)
        I, H = self.input_size, self.hidden_size
        if x.ndim not in (1, 2):
            raise ValueError(f"x must be 2-D (B, input_size) or unbatched 1-D (input_size,) "
                             f"with input_size={I}, got shape {x.shape}")
        batched = x.ndim == 2
        check_shape("x", x, ("B", I) if batched else (I,))
        B = x.shape[0] if batched else 1
        return x.reshape(B, I), ((B, H) if batched else (H,)), batched


class LSTMCell(_Cell):
    """One LSTM step with ``torch.nn.LSTMCell``'s arguments and parameter names
    (``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias_ih``, ``bias_hh``).

    ``h, c = cell(x, state=None)`` for ``x`` of shape ``(B, I)`` or ``(I,)``, ``state =
    (h, c)`` of shape ``(B, H)`` (``(H,)`` unbatched), zeros if omitted: the streaming API
    for one sample at a time. ``(h, c), backward = cell.forward_train(x, state)`` with
    ``dx, (dh0, dc0) = backward(dh=None, dc=None)`` accumulating into ``grads``.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    bias : bool
        Whether the cell has ``bias_ih``/``bias_hh``.
    dtype : float32 or float64
        The parameters' dtype.
    seed : int, optional
        Seeds PyTorch's initialisation U(-1/sqrt(H), 1/sqrt(H)) and the recurrent dropout
        generator.
    peephole, activation, recurrent_activation
        As `clstm.LSTM`'s (parameter ``weight_peephole (3, H)``, rows i, f, o).
    recurrent_dropout : float in [0, 1)
        As `clstm.LSTM`'s, in ``forward_train``: a cell does not know where a sequence
        starts, so it multiplies ``h`` by the ``recurrent_mask`` given (draw one per
        sequence with `recurrent_mask` and pass it at every step: Gal & Ghahramani's
        variant), or by a fresh mask per call if none is given.
    """

    _fixed = ("input_size", "hidden_size", "bias", "dtype", "seed", "peephole",
              "recurrent_dropout", "activation", "recurrent_activation")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Union[type, np.dtype, str] = np.float32, seed: Optional[int] = None,
                 peephole: bool = False, recurrent_dropout: float = 0.0,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid"):
        _set_lstm_variant(self, peephole, recurrent_dropout, activation, recurrent_activation)
        super().__init__(input_size, hidden_size, bias, dtype, seed,
                         {"weight_peephole": (3, hidden_size)} if self.peephole else {})

    def _prepare(self, x, state):
        """Validate; return x (B, I), h0, c0 (B, H), the caller's state shape, batched."""
        x, shape, batched = self._input(x)
        B, H = x.shape[0], self.hidden_size
        if state is None:
            h0 = np.zeros((B, H), self.dtype)
            c0 = np.zeros((B, H), self.dtype)
        else:
            _state_pair(state, "state", (shape, shape))
            h0, c0 = (check_shape(name, float_array(name, s, self.dtype), shape)
                      .reshape(B, H) for name, s in zip(("h0", "c0"), state))
        return x, h0, c0, shape, batched

    def __call__(self, x: Array, state: Optional[State] = None) -> State:
        """One step.

        Parameters
        ----------
        x : array_like (B, I) or (I,)
        state : tuple (h, c) of (B, H) (or (H,)), optional
            Zeros if omitted.

        Returns
        -------
        h, c
            The new state, shaped as ``state``.
        """
        p, double = self._params, self.dtype == np.float64
        if self._cell != "lstm":  # a variant cell: the driver (the C step has the plain cell)
            x, h0, c0, _, batched = self._prepare(x, state)
            _, h, c, _ = functional.layer_forward(
                x, functional.Packing(1, h0.shape[0]), self._layer_weights(copy=False), h0,
                c0, False, get_num_threads())
            return (h, c) if batched else (h[0], c[0])
        if type(state) is tuple and len(state) == 2:
            # the streaming case (the state fed back in) is checked in C: it skips _prepare
            with _threads.kernel_lock():
                out = _packed.cell_step(x, state[0], state[1], p.get("weight_ih"),
                                      p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"),
                                      double)
            if out is not None:
                return out
        x, h0, c0, _, batched = self._prepare(x, state)
        B, H = h0.shape
        p = self._checked_params()
        if not 1 <= B <= _packed.STEP_MAX_ROWS:  # the threaded layer path (or an empty batch)
            _, h, c, _ = functional.layer_forward(
                x, functional.Packing(1, B), self._layer_weights(copy=False), h0, c0, False,
                get_num_threads())
        else:
            weights = (np.require(p[k], self.dtype, "CA") if k in p else None
                       for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            with _threads.kernel_lock():
                h, c = _packed.cell_step(*(np.require(a, self.dtype, "CA") for a in (x, h0, c0)),
                                       *weights, double, True)
        return (h, c) if batched else (h[0], c[0])

    forward = __call__

    def freeze(self, weights: Optional[str] = None) -> FrozenLSTMCell:
        """An inference-only snapshot of this cell for streaming: `FrozenLSTMCell`;
        ``weights`` None, "int8" or "bfloat16" as in `clstm.LSTM.freeze`. A variant cell's
        (peepholes, other activations) steps through the driver (the one-step kernel has
        the plain cell only)."""
        if self._cell == "lstm":
            return FrozenLSTMCell(self, weights=weights)
        return _FrozenVariantCell(self, weights=weights)

    def _layer_weights(self, copy, input_grad=True):
        p = self._checked_params()
        return functional.LayerWeights(p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                                       p.get("bias_hh"), copy=copy, cell=self._cell,
                                       extra=p.get("weight_peephole"),
                                       options=self._cell_options, input_grad=input_grad)

    def recurrent_mask(self, batch_size: int, rng: Optional[np.random.Generator] = None
                       ) -> Array:
        """A recurrent dropout mask ``(batch_size, H)``: ``(rng.random(...) >= p) / (1 - p)``
        with ``p = recurrent_dropout`` (``rng`` defaults to the cell's, seeded by ``seed``).
        Pass it to ``forward_train`` at every step of one sequence."""
        B = positive_int("batch_size", batch_size)
        rng = self._rng if rng is None else generator(rng)
        p = self.recurrent_dropout
        return ((rng.random((B, self.hidden_size)) >= p) / (1 - p)).astype(self.dtype)

    def _run_train(self, x, state, recurrent_mask, rng, input_grad=True):
        x, h0, c0, shape, batched = self._prepare(x, state)
        B = h0.shape[0]
        mask = None
        if recurrent_mask is not None:
            mask = check_shape("recurrent_mask",
                               float_array("recurrent_mask", recurrent_mask, self.dtype),
                               (B, self.hidden_size)).copy()
        elif self.recurrent_dropout > 0:
            mask = self.recurrent_mask(B, rng)
        weights = self._layer_weights(copy=True, input_grad=input_grad)
        _, h, c, cache = functional.layer_forward(x.copy(), functional.Packing(1, B), weights,
                                                  h0.copy(), c0.copy(), True,
                                                  get_num_threads(), mask=mask)
        if not batched:
            h, c = h[0], c[0]
        return (h, c), cache, shape, batched

    def forward_train(self, x: Array, state: Optional[State] = None,
                      recurrent_mask: Optional[Array] = None,
                      rng: Optional[np.random.Generator] = None, *, input_grad: bool = True
                      ) -> Tuple[State, Callable[..., Tuple[Optional[Array], State]]]:
        """One step keeping what backward needs.

        Parameters
        ----------
        x, state
            As `__call__`.
        recurrent_mask : array_like (B, H), optional
            Multiplies ``h`` before the recurrent product (recurrent dropout; see
            `recurrent_mask`). Default: a fresh mask if ``recurrent_dropout > 0``.
        rng : numpy.random.Generator, optional
            For that fresh mask (default: the cell's generator).
        input_grad : bool
            Whether backward computes ``dx``. False (an input that is data, not the output
            of a layer being trained) skips the product with ``weight_ih`` and its packing;
            backward then returns None for ``dx``. Every other gradient is the same, bit
            for bit.

        Returns
        -------
        (h, c), backward
            ``dx, (dh0, dc0) = backward(dh=None, dc=None)`` adds the parameter gradients
            into ``grads`` (runs once).
        """
        out, cache, shape, batched = self._run_train(x, state, recurrent_mask, rng,
                                                     flag("input_grad", input_grad))
        B = out[0].shape[0] if batched else 1

        def backward(dh=None, dc=None):
            H = self.hidden_size
            grads = []
            for name, d in (("dh", dh), ("dc", dc)):
                buf = np.zeros((B, H), self.dtype)
                if d is not None:
                    buf[...] = check_shape(name, float_array(name, d, self.dtype),
                                           shape).reshape(B, H)
                grads.append(buf)
            g = self.grads
            into = (g.get("weight_ih"), g.get("weight_hh"), None)
            dx, dh0, dc0, dw_ih, dw_hh, db, _, dp = functional.layer_backward(
                cache, None, grads[0], grads[1], into)
            for name, dw, target in zip(("weight_ih", "weight_hh"), (dw_ih, dw_hh), into):
                if dw is not target:  # not added in place
                    g[name] += dw
            if self.bias:
                g["bias_ih"] += db
                g["bias_hh"] += db
            if dp is not None:
                g["weight_peephole"] += dp
            if not batched:
                return (None if dx is None else dx[0]), (dh0[0], dc0[0])
            return dx, (dh0, dc0)

        return out, backward

    def __repr__(self):
        bias = "" if self.bias else ", bias=False"
        extra = "".join(f", {name}={getattr(self, name)!r}" for name, default in (
            ("peephole", False), ("recurrent_dropout", 0.0), ("activation", "tanh"),
            ("recurrent_activation", "sigmoid")) if getattr(self, name) != default)
        return (f"LSTMCell({self.input_size}, {self.hidden_size}{bias}{extra}, "
                f"dtype={self.dtype.name})")


class FrozenLSTMCell(_packed.PackedCell):
    """``cell.freeze()``: an inference-only snapshot of an `LSTMCell`, for streaming.

    Calls as the cell does (``h, c = frozen(x, state=None)``, same shapes, same checks),
    on weights packed at freeze time into the layout the compiled step multiplies fastest
    (the cell itself must read its weights afresh on every step, since they may change in
    place). Later changes to the cell's parameters do not reach the snapshot: freeze again
    after training. Each Python thread may step it concurrently. Up to
    ``STEP_MAX_ROWS`` rows a step is one compiled call (`clstm._packed.PackedCell`); more
    rows run the threaded layer driver on the same packed weights.

    Parameters
    ----------
    cell : LSTMCell
        The cell to snapshot.
    weights : {None, "int8", "bfloat16"}
        The packed weights' format (None: the cell's dtype; `clstm.LSTM.freeze`).
    """

    def __init__(self, cell: LSTMCell, weights: Optional[str] = None):
        if not isinstance(cell, LSTMCell):
            raise TypeError(f"cell must be an LSTMCell (FrozenLSTMCell(cell) or cell.freeze()), "
                            f"got {type(cell).__name__}")
        self._spec = cell  # for the shapes, dtype and input checks only
        self.input_size, self.hidden_size, self.dtype = cell.input_size, cell.hidden_size, \
            cell.dtype
        self.weights = functional.check_weights_format(weights, cell.dtype)
        self._weights = cell._layer_weights(copy=False).freeze(weights)
        layer = self._weights.packed
        self._set_weights(layer.w_ih_packed, layer.w_hh_packed, layer.bias)

    def __repr__(self):
        return f"{self._spec!r}.freeze()"

    def __reduce__(self):
        return (_restore_frozen_cell, (self._spec, self._weights))

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's weights (packed, with int8 scales and sums, and bias)."""
        from .frozen import layer_nbytes
        return layer_nbytes(self._weights)

    def save(self, path) -> None:
        """Write the snapshot to ``path`` (an ``.npz`` archive, no pickles; as
        `clstm.FrozenLSTM.save`)."""
        from .frozen import layer_arrays, spec_config
        arrays = {"config": np.array(json.dumps(spec_config(self._spec, self.weights)))}
        arrays.update(layer_arrays(self._weights, "l0d0."))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "FrozenLSTMCell":
        """A snapshot written by `FrozenLSTMCell.save`; a file that is not one is a
        ValueError naming it."""
        import sys

        from ._params import read_npz
        from .frozen import layer_from_arrays, load_config
        arrays = read_npz(path, "a saved FrozenLSTMCell")
        spec, _ = load_config(arrays, path, sys.modules[__name__])
        return _restore_frozen_cell(spec, layer_from_arrays(arrays, "l0d0.", "lstm", path))

    def _general_call(self, x, state):
        x2, h0, c0, _, batched = self._spec._prepare(x, state)
        x2, h0, c0 = (np.require(a, self.dtype, "CA") for a in (x2, h0, c0))
        B = x2.shape[0]
        if 1 <= B <= _packed.STEP_MAX_ROWS:
            h, c = self._step(x2, h0, c0, True)
        else:
            _, h, c, _ = functional.layer_forward(x2, functional.Packing(1, B), self._weights,
                                                  h0, c0, False, get_num_threads())
        return (h, c) if batched else (h[0], c[0])

    forward = _packed.PackedCell.__call__


def _restore_frozen_cell(spec, weights):
    """Unpickle a FrozenLSTMCell: through _set_weights, which checks (and aligns) what
    arrives, as every compiled object's restore does."""
    frozen = FrozenLSTMCell.__new__(FrozenLSTMCell)
    frozen._spec = spec
    frozen.input_size, frozen.hidden_size, frozen.dtype = spec.input_size, spec.hidden_size, \
        spec.dtype
    frozen._weights = weights
    layer = weights.packed
    frozen.weights = layer.w_ih_packed.format if layer.w_ih_packed.lowp else None
    frozen._set_weights(layer.w_ih_packed, layer.w_hh_packed, layer.bias)
    return frozen



class GRUCell(_Cell):
    """One GRU step with ``torch.nn.GRUCell``'s arguments, parameter names and semantics
    (``weight_ih (3H, I)``, ``weight_hh (3H, H)``, ``bias_ih``, ``bias_hh``, blocks r, z, n;
    "reset after", as `clstm.GRU`).

    ``h = cell(x, state=None)`` for ``x`` of shape ``(B, I)`` or ``(I,)`` and ``state`` the
    previous ``h`` of shape ``(B, H)`` (``(H,)`` unbatched), zeros if omitted.
    ``h, backward = cell.forward_train(x, state)`` with ``dx, dh0 = backward(dh=None)``
    accumulating into ``grads``. Each step runs the recurrent driver (there is no one-step
    GRU kernel like the LSTM's: a GRU step costs a few microseconds more).

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    bias : bool
        Whether the cell has ``bias_ih``/``bias_hh``.
    dtype : float32 or float64
        The parameters' dtype.
    seed : int, optional
        Seeds PyTorch's initialisation U(-1/sqrt(H), 1/sqrt(H)).
    """

    _n_gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Union[type, np.dtype, str] = np.float32, seed: Optional[int] = None):
        super().__init__(input_size, hidden_size, bias, dtype, seed)

    def _prepare(self, x, state):
        """Validate; return x (B, I), h0 (B, H) (C-contiguous, the cell's dtype), batched."""
        x, shape, batched = self._input(x)
        B, H = x.shape[0], self.hidden_size
        h0 = np.zeros((B, H), self.dtype) if state is None else \
            check_shape("h0", float_array("h0", state, self.dtype), shape).reshape(B, H)
        return (np.require(x, self.dtype, "CA"), np.require(h0, self.dtype, "CA"), batched)

    def _step(self, weights, x, state):
        x, h0, batched = self._prepare(x, state)
        _, h, _, _ = functional.layer_forward(x, functional.Packing(1, x.shape[0]), weights, h0,
                                              None, False, get_num_threads())
        return h if batched else h[0]

    def __call__(self, x: Array, state: Optional[Array] = None) -> Array:
        """One step: the new ``h``, shaped as ``state``.

        Parameters
        ----------
        x : array_like (B, I) or (I,)
        state : array_like (B, H) or (H,), optional
            The previous ``h``; zeros if omitted.
        """
        return self._step(self._layer_weights(copy=False), x, state)

    forward = __call__

    def freeze(self, weights: Optional[str] = None) -> "FrozenGRUCell":
        """An inference-only snapshot on prepacked weights: `FrozenGRUCell`; ``weights``
        None, "int8" or "bfloat16" as in `clstm.LSTM.freeze`."""
        return FrozenGRUCell(self, weights=weights)

    def _layer_weights(self, copy, input_grad=True):
        p = self._checked_params()
        return functional.LayerWeights(p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                                       p.get("bias_hh"), copy=copy, cell="gru",
                                       input_grad=input_grad)

    def forward_train(self, x: Array, state: Optional[Array] = None, *,
                      input_grad: bool = True
                      ) -> Tuple[Array, Callable[..., Tuple[Optional[Array], Array]]]:
        """One step keeping what backward needs.

        Parameters
        ----------
        x, state
            As `__call__`.
        input_grad : bool
            Whether backward computes ``dx`` (`LSTMCell.forward_train`): False returns
            None for it and skips its product with ``weight_ih``.

        Returns
        -------
        h, backward
            ``dx, dh0 = backward(dh=None)`` adds the parameter gradients into ``grads``
            (runs once).
        """
        input_grad = flag("input_grad", input_grad)
        x, h0, batched = self._prepare(x, state)
        B, H = h0.shape
        weights = self._layer_weights(copy=True, input_grad=input_grad)
        _, h, _, cache = functional.layer_forward(x.copy(), functional.Packing(1, B), weights,
                                                  h0.copy(), None, True, get_num_threads())

        def backward(dh=None):
            buf = np.zeros((B, H), self.dtype)
            if dh is not None:
                buf[...] = check_shape("dh", float_array("dh", dh, self.dtype),
                                       (B, H) if batched else (H,)).reshape(B, H)
            g = self.grads
            into = (g.get("weight_ih"), g.get("weight_hh"), None)
            dx, dh0, _, dw_ih, dw_hh, db, _, _ = functional.layer_backward(cache, None, buf,
                                                                           None, into)
            for name, dw, target in zip(("weight_ih", "weight_hh"), (dw_ih, dw_hh), into):
                if dw is not target:  # not added in place
                    g[name] += dw
            if self.bias:
                db_ih, db_hh = functional.bias_grads("gru", db)
                g["bias_ih"] += db_ih
                g["bias_hh"] += db_hh
            return (dx, dh0) if batched else (None if dx is None else dx[0], dh0[0])

        return (h if batched else h[0]), backward

    def __repr__(self):
        bias = "" if self.bias else ", bias=False"
        return f"GRUCell({self.input_size}, {self.hidden_size}{bias}, dtype={self.dtype.name})"


class FrozenGRUCell:
    """``cell.freeze()``: an inference-only snapshot of a `GRUCell` on weights packed once;
    ``h = frozen(x, state=None)`` as the cell (same shapes, checks and numbers, bit for
    bit). Later changes to the cell's parameters do not reach it.

    Parameters
    ----------
    cell : GRUCell
        The cell to snapshot.
    weights : {None, "int8", "bfloat16"}
        The packed weights' format (None: the cell's dtype; with a low-precision format
        the numbers are the quantised model's, `clstm.LSTM.freeze`).
    """

    def __init__(self, cell: GRUCell, weights: Optional[str] = None):
        if not isinstance(cell, GRUCell):
            raise TypeError(f"cell must be a GRUCell (FrozenGRUCell(cell) or cell.freeze()), "
                            f"got {type(cell).__name__}")
        self._spec = copy.copy(cell)  # for the shapes, dtype and input checks only
        self.input_size, self.hidden_size, self.dtype = cell.input_size, cell.hidden_size, \
            cell.dtype
        self.weights = functional.check_weights_format(weights, cell.dtype)
        self._weights = cell._layer_weights(copy=False).freeze(weights)

    def __call__(self, x: Array, state: Optional[Array] = None) -> Array:
        """One step: the new ``h`` (see `GRUCell.__call__`)."""
        return self._spec._step(self._weights, x, state)

    forward = __call__

    def __repr__(self):
        return f"{self._spec!r}.freeze()"


class _FrozenVariantCell(FrozenLSTMCell):
    """`FrozenLSTMCell` of a variant cell (peepholes, other activations): every step runs
    the driver on the weights packed at freeze time (the compiled one-step kernel has the
    plain cell only)."""

    def __call__(self, x, state=None):
        x2, h0, c0, _, batched = self._spec._prepare(x, state)
        x2, h0, c0 = (np.require(a, self.dtype, "CA") for a in (x2, h0, c0))
        _, h, c, _ = functional.layer_forward(x2, functional.Packing(1, x2.shape[0]),
                                              self._weights, h0, c0, False, get_num_threads())
        return (h, c) if batched else (h[0], c[0])

    forward = __call__

    def __reduce__(self):
        return (_restore_frozen_variant_cell, (self._spec, self._weights))


def _restore_frozen_variant_cell(spec, weights):
    frozen = _restore_frozen_cell(spec, weights)
    frozen.__class__ = _FrozenVariantCell
    return frozen
