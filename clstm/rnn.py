"""Recurrent models: `RNNBase` (what every multi-layer model shares), `LSTM` and `GRU`
(torch.nn.LSTM's and torch.nn.GRU's arguments, semantics and parameter names), on NumPy
arrays, running the compiled driver."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

import numpy as np

from . import _packed, _packing, _stack, _threads, functional
from ._checks import check_lengths, check_shape, flag, float_array, float_dtype, generator, \
    generator_from_seed, positive_int, private_copy
from .reference import check_activation
from ._params import Parameterised
from ._threads import get_num_threads

Array = np.ndarray
State = Tuple[Array, Array]

if TYPE_CHECKING:
    from .frozen import FrozenLSTM


def _state_pair(state, name, shapes):
    """Validate ``state = (h, c)`` against ``shapes = (h_shape, c_shape)``."""
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be a tuple (h, c) of arrays of shapes {shapes[0]} and "
                        f"{shapes[1]}, got {type(state).__name__}")
    return state


def _probability(name, value):
    """A number in [0, 1) (a dropout rate), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _set_lstm_variant(module, peephole, recurrent_dropout, activation, recurrent_activation):
    """Check and set an LSTM's (or LSTMCell's) variant arguments, and the compiled cell and
    options they select."""
    module.peephole = flag("peephole", peephole)
    module.recurrent_dropout = _probability("recurrent_dropout", recurrent_dropout)
    module.activation = check_activation("activation", activation)
    module.recurrent_activation = check_activation("recurrent_activation",
                                                   recurrent_activation)
    module._cell, module._cell_options = functional.lstm_cell_variant(
        module.peephole, module.activation, module.recurrent_activation)


def _keras_kernels(kernel, recurrent_kernel, n_gates, dtype):
    """Keras's ``kernel (I, n_gates*H)`` and ``recurrent_kernel (H, n_gates*H)``, checked;
    returns them, H and the dtype (default: the kernel's)."""
    kernel = float_array("kernel", kernel, None)
    dtype = float_dtype(kernel.dtype if dtype is None else dtype)
    check_shape("kernel", kernel, ("I", f"{n_gates}*H"))
    H = kernel.shape[1] // n_gates
    if kernel.shape[1] != n_gates * H or H < 1 or kernel.shape[0] < 1:
        raise ValueError(f"kernel must have shape (I, {n_gates}*H) with I, H >= 1, got "
                         f"{kernel.shape}")
    recurrent_kernel = check_shape("recurrent_kernel",
                                   float_array("recurrent_kernel", recurrent_kernel, dtype),
                                   (H, n_gates * H))
    return kernel, recurrent_kernel, H, dtype


def _read_only(a):
    a = a.view()
    a.flags.writeable = False
    return a


class RNNBase(Parameterised):
    """What every recurrent model shares: PyTorch's constructor arguments and layouts,
    validation, the stack (`clstm._stack`) in inference and training, gradients into
    ``grads``, ``strategy`` and ``freeze()``. A subclass gives its cell (``_cell``), its
    parameter shapes and names, ``output_size`` and its interop. The state is ``(h, c)``,
    or ``h`` alone for a cell without a state of its own (``_has_cell_state`` False: the
    GRU).

    See `LSTM` for the arguments and the calls.
    """

    _cell = None  # the compiled cell's name (clstm._recurrent.CELLS)
    _cell_options = (0, 0)  # its option ids (clstm.functional.lstm_cell_variant)
    recurrent_dropout = 0.0  # no recurrent dropout unless the subclass has it
    _has_cell_state = True  # the state is (h, c); else h alone
    _fixed = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "dtype", "seed")
    proj_size = 0  # no projection unless the subclass has one

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers=1", UserWarning, stacklevel=3)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = float_dtype(dtype)
        self.seed = seed
        self.strategy = None
        self._rng = generator_from_seed(seed)
        self._init_params(self._param_shapes(), self._rng, 1.0 / math.sqrt(self.hidden_size))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer):
        return [f"_l{layer}", f"_l{layer}_reverse"][:self.num_directions]

    @property
    def output_size(self) -> int:
        """Features per direction in the output and in ``h``."""
        return self.hidden_size

    def _prepare(self, x, state, lengths):
        """Validate; return time-major x (T, B, I), h0 (L*D, B, H_out), c0 (L*D, B, H),
        lengths (or None) and whether the input was batched."""
        fast = self._streaming_args(x, state) if lengths is None else None
        if fast is not None:
            return fast + (None, True)
        x = float_array("x", x, self.dtype)
        I, H, P = self.input_size, self.hidden_size, self.output_size
        n_states = self.num_layers * self.num_directions
        if x.ndim == 2:
            check_shape("x", x, ("T", I))
            x = x[:, None, :]
            batched = False
        elif x.ndim == 3:
            check_shape("x", x, ("B", "T", I) if self.batch_first else ("T", "B", I))
            if self.batch_first:
                x = np.ascontiguousarray(x.transpose(1, 0, 2))
            batched = True
        else:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            raise ValueError(f"x must be 3-D {layout} or unbatched 2-D (T, input_size) with "
                             f"input_size={I}, got shape {x.shape}")
        T, B = x.shape[:2]
        shapes = ((n_states, B, P), (n_states, B, H)) if batched else \
            ((n_states, P), (n_states, H))
        if not self._has_cell_state:
            h0 = np.zeros((n_states, B, P), self.dtype) if state is None else \
                check_shape("h0", float_array("h0", state, self.dtype), shapes[0]) \
                .reshape(n_states, B, P)
            c0 = None
        elif state is None:
            h0 = np.zeros((n_states, B, P), self.dtype)
            c0 = np.zeros((n_states, B, H), self.dtype)
        else:
            state = _state_pair(state, "state", shapes)
            h0, c0 = (check_shape(name, float_array(name, s, self.dtype), shape)
                      .reshape(n_states, B, shape[-1])
                      for name, s, shape in zip(("h0", "c0"), state, shapes))
        if lengths is not None:
            lengths = check_lengths(lengths, T, B)
        return x, h0, c0, lengths, batched

    def _zero_state(self, x):
        """Zero (h0, c0) for a time-major or batch-first 3-D x, else None (LSTM)."""
        if type(x) is not np.ndarray or x.ndim != 3:
            return None
        shape = (self.num_layers * self.num_directions, x.shape[0 if self.batch_first else 1])
        return (np.zeros(shape + (self.output_size,), self.dtype),
                np.zeros(shape + (self.hidden_size,), self.dtype))

    def _streaming_args(self, x, state):
        """(x, h0, c0) if they are already what _prepare would make of them (time-major
        x (T, B, I), and no state or a tuple of C-contiguous arrays of the layer's dtype: a
        loop feeding each call's state into the next), else None. Checking that costs a
        third of the general validation, which is most of a short call's overhead."""
        dtype = self.dtype
        if not (type(x) is np.ndarray and x.ndim == 3 and not self.batch_first
                and x.dtype == dtype and x.shape[2] == self.input_size
                and x.flags.c_contiguous and x.flags.aligned):
            return None
        B, n_states = x.shape[1], self.num_layers * self.num_directions
        if state is None:
            return (x, np.zeros((n_states, B, self.output_size), dtype),
                    np.zeros((n_states, B, self.hidden_size), dtype)
                    if self._has_cell_state else None)
        if not self._has_cell_state:
            h0, c0 = state, None
            arrays = ((h0, self.output_size),)
        elif type(state) is not tuple or len(state) != 2:
            return None
        else:
            h0, c0 = state
            arrays = ((h0, self.output_size), (c0, self.hidden_size))
        for a, width in arrays:
            if not (type(a) is np.ndarray and a.dtype == dtype and a.shape == (n_states, B, width)
                    and a.flags.c_contiguous and a.flags.aligned):
                return None
        return x, h0, c0

    def _to_caller(self, y, h_n, c_n, batched):
        """Time-major results to the caller's layout: y (or None) and the state, (h_n, c_n)
        or h_n."""
        if not batched:
            y = None if y is None else y[:, 0, :]
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        elif self.batch_first and y is not None:
            y = y.transpose(1, 0, 2)
        return y, ((h_n, c_n) if self._has_cell_state else h_n)

    def _layer_weights(self, copy, input_grad=True):
        """`LayerWeights` per layer and direction (``copy``: snapshots for a training
        cache; ``input_grad``: whether its backward computes the gradient of the input)."""
        p = self._checked_params()
        return [[functional.LayerWeights(p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"],
                                         p.get(f"bias_ih{sfx}"), p.get(f"bias_hh{sfx}"),
                                         p.get(f"weight_hr{sfx}"), copy=copy, cell=self._cell,
                                         extra=p.get(f"weight_peephole{sfx}"),
                                         options=self._cell_options,
                                         input_grad=input_grad or layer > 0)
                 for sfx in self._suffixes(layer)] for layer in range(self.num_layers)]

    def _run(self, x, state, lengths, train, rng, weights=None, input_grad=True):
        x_in = x
        x, h0, c0, lengths, batched = self._prepare(x, state, lengths)
        if weights is None:
            weights = self._layer_weights(copy=train, input_grad=input_grad)
        if not train and lengths is None and self.num_directions == 1:
            out = _stack.infer([w for (w,) in weights], x, h0, c0,
                               n_threads=get_num_threads(), strategy=self.strategy)
            if out is not None:
                return self._to_caller(*out, batched), (None, batched)
        T, B = x.shape[:2]
        packing = _packing.packing(T, B, lengths)
        layer_in = packing.pack(x)
        if train:
            layer_in = private_copy(layer_in, x_in)
        y, h_n, c_n, tape = _stack.forward(
            weights, packing, layer_in, packing.sort_rows(h0),
            None if c0 is None else packing.sort_rows(c0),
            train=train, n_threads=get_num_threads(), dropout=self.dropout,
            rng=self._rng if rng is None else generator(rng), strategy=self.strategy,
            recurrent_dropout=self.recurrent_dropout)
        y = packing.unpack(y)
        h_n = packing.unsort_rows(h_n)
        c_n = None if c_n is None else packing.unsort_rows(c_n)
        return self._to_caller(y, h_n, c_n, batched), (tape, batched)

    def __call__(self, x: Array, state: Optional[State] = None,
                 lengths: Optional[Array] = None) -> Tuple[Array, State]:
        """Inference. Keeps no caches; memory does not grow with T beyond the outputs of two
        layers.

        Parameters
        ----------
        x : array_like
            ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``.
        state : tuple (h0, c0), optional
            ``(L*D, B, H_out)`` and ``(L*D, B, H)`` (no batch axis when unbatched); zeros
            if omitted.
        lengths : array_like of int (B,), optional
            Each row's real length in ``[0, T]``.

        Returns
        -------
        y, (h_n, c_n)
            ``y (T, B, D*H_out)`` (in ``x``'s layout), the final states as ``state``.

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, naming the argument and the expected shape.
        """
        if (lengths is None and type(x) is np.ndarray and x.ndim == 3
                and x.shape[int(self.batch_first)] == 1 and self._cell == "lstm"
                and not self.proj_size and self.strategy in (None, "step")):
            # One step of a few rows (streaming): every layer in one compiled call, on the
            # weights as they are; anything it does not take goes the general way.
            if state is None:
                state = self._zero_state(x)
            if type(state) is tuple and len(state) == 2:
                p = self._params
                weights = [(p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], p.get(f"bias_ih{sfx}"),
                            p.get(f"bias_hh{sfx}"))
                           for layer in range(self.num_layers) for sfx in self._suffixes(layer)]
                with _threads.kernel_lock():
                    out = _packed.stack_step(weights, False, self.num_directions,
                                             self.batch_first, x, state[0], state[1])
                if out is not None:
                    return out
        out, _ = self._run(x, state, lengths, train=False, rng=None)
        return out

    forward = __call__

    def freeze(self, weights: Optional[str] = None) -> FrozenLSTM:
        """An inference-only snapshot on prepacked weights.

        Parameters
        ----------
        weights : {None, "int8", "bfloat16"}
            None: the model's dtype. "int8": w_ih and w_hh quantised per row (symmetric
            scales), the inputs of each step's multiplies quantised per row on the fly;
            "bfloat16": rounded to bfloat16 (nearest even) and multiplied with float32
            accumulation. Both are for float32 models; activations, states, outputs and
            the projection stay float32 (docs/performance.md gives the accuracy). On a CPU
            with Intel AMX the multiplies run on AMX tiles: int8 gives the same bits as on
            any other CPU, bfloat16 its own last bits (the environment variable
            ``CLSTM_AMX_BF16=0`` keeps the other CPUs' bits).

        Returns
        -------
        clstm.FrozenLSTM
            Called exactly like the model; with ``weights=None`` equal to its inference
            bit for bit (see `clstm.FrozenLSTM` for the one exception); later changes to
            the model's parameters do not reach it (freeze again after training).
        """
        from .frozen import FrozenGRU, FrozenLSTM  # (frozen imports this module)
        frozen = FrozenLSTM if self._has_cell_state else FrozenGRU
        return frozen(self, weights=weights)

    def forward_train(self, x: Array, state: Optional[State] = None,
                      lengths: Optional[Array] = None,
                      rng: Optional[np.random.Generator] = None, *, input_grad: bool = True
                      ) -> Tuple[Tuple[Array, State],
                                 Callable[..., Tuple[Optional[Array], State]]]:
        """Forward that keeps what backward needs.

        Parameters
        ----------
        x, state, lengths
            As `__call__`.
        rng : numpy.random.Generator, optional
            For the dropout masks (default: the model's generator, seeded by ``seed``).
        input_grad : bool
            Whether backward computes ``dx``. False (as PyTorch does for an input that
            does not require grad) skips the first layer's product with ``w_ih`` and its
            packing, about a sixth of a one-layer training step; backward then returns
            None for ``dx``. Every other gradient is the same, bit for bit.

        Returns
        -------
        (y, (h_n, c_n)), backward
            ``y`` is read-only (backward may read it); ``dx, (dh0, dc0) =
            backward(dy=None, dstate=None)`` takes the gradients of ``y`` and of
            ``(h_n, c_n)`` (either may be None), adds the parameter gradients into
            ``grads`` and runs once.
        """
        (y, state_n), (tape, batched) = self._run(x, state, lengths, train=True, rng=rng,
                                                  input_grad=flag("input_grad", input_grad))
        y_shape = y.shape
        state_shapes = tuple(s.shape for s in state_n) if self._has_cell_state else \
            (state_n.shape,)

        def backward(dy=None, dstate=None):
            return self._backward(tape, batched, y_shape, state_shapes, dy, dstate)

        return (_read_only(y), state_n), backward

    def _backward(self, tape, batched, y_shape, state_shapes, dy, dstate):
        dtype = self.dtype
        packing = tape.packing
        B = packing.B
        L, D, P = self.num_layers, self.num_directions, self.output_size
        n_states = L * D
        if dy is not None:
            dy = check_shape("dy", float_array("dy", dy, dtype), y_shape)
            dy = dy[:, None, :] if not batched else \
                dy.transpose(1, 0, 2) if self.batch_first else dy
            dy = packing.pack(np.ascontiguousarray(dy))
        dh = np.zeros((n_states, B, P), dtype)
        dc = np.zeros((n_states, B, self.hidden_size), dtype) if self._has_cell_state else None
        if dstate is not None:
            if self._has_cell_state:
                _state_pair(dstate, "dstate", state_shapes)
            else:
                dstate = (dstate,)
            for name, d, buf, shape in zip(("dh_n", "dc_n"), dstate, (dh, dc), state_shapes):
                if d is not None:
                    buf[...] = check_shape(name, float_array(name, d, dtype), shape) \
                        .reshape(buf.shape)
        dh = packing.sort_rows(dh)
        dc = None if dc is None else packing.sort_rows(dc)
        names = [(f"weight_ih{sfx}", f"weight_hh{sfx}",
                  f"weight_hr{sfx}" if self.proj_size else None,
                  *((f"bias_ih{sfx}", f"bias_hh{sfx}") if self.bias else (None, None)),
                  f"weight_peephole{sfx}" if f"weight_peephole{sfx}" in self._shapes else None)
                 for layer in range(L) for sfx in self._suffixes(layer)]
        into = [tuple(self.grads.get(name) for name in n[:3]) for n in names]
        d_out, layer_grads = _stack.backward(tape, dy, dh, dc, into)
        for n, g, i in zip(names, layer_grads, into):
            _stack.add_grads(self.grads, n, g, i, self._cell)
        dx = None if d_out is None else packing.unpack(d_out)
        return self._to_caller(dx, packing.unsort_rows(dh),
                               None if dc is None else packing.unsort_rows(dc), batched)

    _repr_defaults = (("num_layers", 1), ("bias", True), ("batch_first", False),
                      ("dropout", 0.0), ("bidirectional", False))

    def __repr__(self):
        args = [f"{self.input_size}", f"{self.hidden_size}"]
        for name, default in self._repr_defaults:
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)!r}")
        args.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(args)})"


class LSTM(RNNBase):
    """A multi-layer LSTM with ``torch.nn.LSTM``'s arguments, semantics and parameter names.

    ``y, (h_n, c_n) = lstm(x, state=None, lengths=None)`` runs inference on ``x`` of shape
    ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``);
    ``state = (h0, c0)`` with shapes ``(L*D, B, H_out)`` and ``(L*D, B, H)`` (no batch axis
    when unbatched), zeros if omitted; ``D = 2`` if bidirectional, ``H_out = proj_size or H``.
    ``y`` is ``(T, B, D*H_out)``: the last layer's forward and reverse outputs concatenated.
    ``h_n``/``c_n`` are ordered layer-major, direction-minor, as PyTorch's.

    ``lengths`` (ints, shape ``(B,)``, each in ``[0, T]``) gives each row's real length:
    the result equals PyTorch's ``pack_padded_sequence(..., enforce_sorted=False)`` then
    ``pad_packed_sequence``: outputs past a row's length are zero, its final state is the
    state at its own last step (its initial state for length 0), and the reverse direction
    runs each row from its own last step back to step 0.

    ``(y, (h_n, c_n)), backward = lstm.forward_train(x, state, lengths=None, rng=None)``
    also returns ``dx, (dh0, dc0) = backward(dy=None, dstate=None)``, which adds the
    parameter gradients into ``lstm.grads`` (same keys and shapes as ``state_dict()``).
    In training, ``dropout`` multiplies each layer's output but the last by a mask of
    ``rng.random((T, B, D*H_out)) >= dropout`` scaled by ``1/(1-dropout)``, one draw per
    layer in order; ``rng`` defaults to the layer's generator, seeded by ``seed``.

    Parameters are float32 or float64 (``dtype``); float input of the other precision is
    cast to it. Initialisation is PyTorch's, U(-1/sqrt(H), 1/sqrt(H)), drawn from
    ``numpy.random.default_rng(seed)`` in ``state_dict()`` order.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    num_layers : int
        Stacked layers ``L``.
    bias : bool
        Whether the layers have ``bias_ih``/``bias_hh``.
    batch_first : bool
        ``x`` and ``y`` are ``(B, T, .)`` instead of ``(T, B, .)``.
    dropout : float in [0, 1)
        Dropout on every layer's output but the last, in training only.
    bidirectional : bool
        A reverse direction per layer (``D = 2``).
    proj_size : int
        ``H_out < H``: each layer's output is projected by ``weight_hr (H_out, H)``.
    dtype : float32 or float64
        The parameters' (and every result's) dtype.
    seed : int, optional
        Seeds the initialisation and the dropout generator.
    peephole : bool
        Peephole connections (ONNX's equations, Gers & Schmidhuber): the input and forget
        gates also see ``p ⊙ c_{t-1}``, the output gate ``p ⊙ c_t``, through per-unit
        weights ``weight_peephole_l{k}`` (+ ``_reverse``) of shape ``(3, H)``, rows i, f,
        o, initialised as the other weights.
    recurrent_dropout : float in [0, 1)
        Training only: Gal & Ghahramani's variational dropout on ``h_{t-1}`` before the
        recurrent product, one mask ``rng.random((B, H_out)) >= recurrent_dropout`` scaled
        by ``1/(1-recurrent_dropout)`` per call and layer-direction (drawn before that
        layer's output dropout mask), the same at every step and shared by the four gates
        (so the recurrent product stays one GEMM; Keras 3 draws one per gate).
    activation, recurrent_activation : str
        Keras's names and defaults: ``activation`` (the cell input g and the cell output,
        ``"tanh"``) and ``recurrent_activation`` (the gates i, f, o, ``"sigmoid"``), each
        one of ``"tanh"``, ``"sigmoid"``, ``"hard_sigmoid"`` (Keras 2's ``clip(0.2 x +
        0.5, 0, 1)``, ONNX's default HardSigmoid), ``"relu"``, ``"linear"``. Other pairs
        and peepholes run a variant cell (exact, a little slower); the defaults keep the
        plain cell.

    Attributes
    ----------
    strategy : {None, "step", "serial", "batch", "units"}
        Forces how each layer call runs (`clstm._dispatch`); None chooses automatically.
        The results do not depend on it beyond rounding ("step" uses BLAS; the others are
        equal bit for bit).
    input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, \
proj_size, dtype, seed
        The constructor's arguments, read-only (assigning one is an AttributeError: the
        parameters' shapes and dtype follow them; build a new LSTM instead).
    grads : dict
        The gradient of each parameter, by name, that backward adds into and optimisers
        read; assigning an entry copies the value into that array (checked against its
        shape), so an optimiser built before sees it.

    Raises
    ------
    ValueError, TypeError
        A size, dropout or dtype out of range (the message names the argument).
    """

    _cell = "lstm"
    _fixed = RNNBase._fixed + ("peephole", "recurrent_dropout", "activation",
                               "recurrent_activation")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, *,
                 dtype: Union[type, np.dtype, str] = np.float32, seed: Optional[int] = None,
                 peephole: bool = False, recurrent_dropout: float = 0.0,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid"):
        self.proj_size = positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size >= positive_int("hidden_size", hidden_size):
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), "
                             f"got {proj_size}")
        _set_lstm_variant(self, peephole, recurrent_dropout, activation, recurrent_activation)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)

    @property
    def output_size(self) -> int:
        """Features per direction in the output and in ``h``: proj_size or hidden_size."""
        return self.proj_size or self.hidden_size

    def _param_shapes(self):
        H, P, D = self.hidden_size, self.output_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else D * P
            for sfx in self._suffixes(layer):
                shapes[f"weight_ih{sfx}"] = (4 * H, n_in)
                shapes[f"weight_hh{sfx}"] = (4 * H, P)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (4 * H,)
                    shapes[f"bias_hh{sfx}"] = (4 * H,)
                if self.proj_size:
                    shapes[f"weight_hr{sfx}"] = (P, H)
                if self.peephole:
                    shapes[f"weight_peephole{sfx}"] = (3, H)
        return shapes

    # ---------------------------------------------------------------- Keras interop
    @classmethod
    def from_keras_weights(cls, kernel, recurrent_kernel, bias=None, *, batch_first=True,
                           dtype=None, activation="tanh", recurrent_activation="sigmoid"):
        """A one-layer LSTM from Keras's ``LSTM.get_weights()``: ``kernel (I, 4H)``,
        ``recurrent_kernel (H, 4H)``, ``bias (4H,)`` or None (``use_bias=False``), gates in
        Keras's order i, f, c, o (PyTorch's i, f, g, o). Keras layers are batch-first, so
        this one is too unless ``batch_first=False``. ``dtype`` defaults to the kernel's.
        ``activation``/``recurrent_activation``: the Keras layer's (its config); models of
        Keras < 2.3 default to ``recurrent_activation="hard_sigmoid"`` (Keras 2's, which
        clstm's is)."""
        kernel, recurrent_kernel, H, dtype = _keras_kernels(kernel, recurrent_kernel, 4, dtype)
        lstm = cls(kernel.shape[0], H, bias=bias is not None, batch_first=batch_first,
                   dtype=dtype, activation=activation,
                   recurrent_activation=recurrent_activation)
        weights = {"weight_ih_l0": kernel.T, "weight_hh_l0": recurrent_kernel.T}
        if bias is not None:
            weights["bias_ih_l0"] = check_shape("bias", float_array("bias", bias, dtype),
                                                (4 * H,))
            weights["bias_hh_l0"] = np.zeros(4 * H, dtype)
        lstm.load_state_dict(weights)
        return lstm

    def to_keras_weights(self, layer=0, direction=0):
        """``[kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]`` for Keras's
        ``LSTM.set_weights`` (bias omitted without biases); the two PyTorch biases are
        summed. ``direction=1`` is the reverse direction (Keras's ``Bidirectional``
        backward layer). Keras has no projection nor peepholes, so ``proj_size`` must be 0
        and ``peephole`` False; give the Keras layer this model's ``activation`` and
        ``recurrent_activation``."""
        if self.proj_size:
            raise ValueError("Keras's LSTM has no projection: to_keras_weights needs "
                             "proj_size=0")
        if self.peephole:
            raise ValueError("Keras's LSTM has no peepholes: to_keras_weights needs "
                             "peephole=False (clstm.onnx.export keeps them)")
        layer = positive_int("layer", layer, minimum=0)
        direction = positive_int("direction", direction, minimum=0)
        if layer >= self.num_layers or direction >= self.num_directions:
            raise ValueError(f"layer must be < {self.num_layers} and direction < "
                             f"{self.num_directions}, got layer={layer}, direction={direction}")
        sfx = self._suffixes(layer)[direction]
        p = self._params
        out = [p[f"weight_ih{sfx}"].T.copy(), p[f"weight_hh{sfx}"].T.copy()]
        if self.bias:
            out.append(p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"])
        return out

    _repr_defaults = RNNBase._repr_defaults + (
        ("proj_size", 0), ("peephole", False), ("recurrent_dropout", 0.0),
        ("activation", "tanh"), ("recurrent_activation", "sigmoid"))


class GRU(RNNBase):
    """A multi-layer GRU with ``torch.nn.GRU``'s arguments, semantics and parameter names.

    ``y, h_n = gru(x, state=None, lengths=None)`` runs inference on ``x`` of shape
    ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``); the state
    ``h0`` and ``h_n`` is ``(L*D, B, H)`` (no batch axis when unbatched), zeros if omitted
    (an array, not a tuple: the GRU has no cell state); ``y`` is
    ``(T, B, D*H)``. Each layer computes, as PyTorch's ("reset after")::

        r = sigmoid(x W_ir.T + b_ir + h W_hr.T + b_hr)
        z = sigmoid(x W_iz.T + b_iz + h W_hz.T + b_hz)
        n = tanh(x W_in.T + b_in + r * (h W_hn.T + b_hn))
        h' = (1 - z) * n + z * h

    with ``weight_ih_l{k} (3H, I_k)`` and ``weight_hh_l{k} (3H, H)`` stacking the blocks
    r, z, n, and ``bias_ih``/``bias_hh`` (3H,) likewise (``_reverse`` for the reverse
    direction): ``load_state_dict(torch_gru.state_dict())`` works as it is. ``lengths``,
    ``dropout``, ``bidirectional``, ``forward_train`` (``dx, dh0 = backward(dy=None,
    dh_n=None)``, gradients into ``grads``), ``strategy`` and ``freeze()`` are as `LSTM`'s.

    Parameters
    ----------
    input_size, hidden_size : int
        ``I`` and ``H``.
    num_layers : int
        Stacked layers ``L``.
    bias : bool
        Whether the layers have ``bias_ih``/``bias_hh``.
    batch_first : bool
        ``x`` and ``y`` are ``(B, T, .)`` instead of ``(T, B, .)``.
    dropout : float in [0, 1)
        Dropout on every layer's output but the last, in training only.
    bidirectional : bool
        A reverse direction per layer (``D = 2``).
    dtype : float32 or float64
        The parameters' (and every result's) dtype.
    seed : int, optional
        Seeds the initialisation U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's) and the dropout
        generator.

    Raises
    ------
    ValueError, TypeError
        A size, dropout or dtype out of range (the message names the argument).
    """

    _cell = "gru"
    _has_cell_state = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *,
                 dtype: Union[type, np.dtype, str] = np.float32, seed: Optional[int] = None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)

    def _param_shapes(self):
        H, D = self.hidden_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else D * H
            for sfx in self._suffixes(layer):
                shapes[f"weight_ih{sfx}"] = (3 * H, n_in)
                shapes[f"weight_hh{sfx}"] = (3 * H, H)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (3 * H,)
                    shapes[f"bias_hh{sfx}"] = (3 * H,)
        return shapes

    @classmethod
    def from_keras_weights(cls, kernel, recurrent_kernel, bias=None, *, batch_first=True,
                           dtype=None):
        """A one-layer GRU from Keras's ``GRU(reset_after=True).get_weights()`` (Keras's
        default since 2.3, and the same equations as PyTorch's): ``kernel (I, 3H)``,
        ``recurrent_kernel (H, 3H)``, ``bias (2, 3H)`` (input and recurrent biases) or None,
        gates in Keras's order z, r, h (PyTorch's r, z, n). Batch-first unless
        ``batch_first=False``; ``dtype`` defaults to the kernel's. (``reset_after=False``
        models, Keras 2.2's default, compute another function: not supported.)"""
        kernel, recurrent_kernel, H, dtype = _keras_kernels(kernel, recurrent_kernel, 3, dtype)
        order = np.r_[H:2 * H, 0:H, 2 * H:3 * H]  # Keras's z, r, h -> r, z, n
        gru = cls(kernel.shape[0], H, bias=bias is not None, batch_first=batch_first,
                  dtype=dtype)
        weights = {"weight_ih_l0": kernel.T[order], "weight_hh_l0": recurrent_kernel.T[order]}
        if bias is not None:
            bias = check_shape("bias", float_array("bias", bias, dtype), (2, 3 * H))
            weights["bias_ih_l0"], weights["bias_hh_l0"] = bias[0][order], bias[1][order]
        gru.load_state_dict(weights)
        return gru

    def __call__(self, x: Array, state: Optional[Array] = None,  # type: ignore[override]
                 lengths: Optional[Array] = None) -> Tuple[Array, Array]:
        """Inference: ``y, h_n`` (see the class). Keeps no caches.

        Parameters
        ----------
        x : array_like
            ``(T, B, I)``, ``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``.
        state : array_like (L*D, B, H), optional
            The initial state h0 (no batch axis when unbatched); zeros if omitted.
        lengths : array_like of int (B,), optional
            Each row's real length in ``[0, T]``.

        Returns
        -------
        y, h_n
            ``y (T, B, D*H)`` in ``x``'s layout, and the final state shaped as ``state``.

        Raises
        ------
        ValueError, TypeError
            A wrong shape or dtype, naming the argument and the expected shape.
        """
        out, _ = self._run(x, state, lengths, train=False, rng=None)
        return out

    forward = __call__

    def forward_train(self, x: Array, state: Optional[Array] = None,  # type: ignore[override]
                      lengths: Optional[Array] = None,
                      rng: Optional[np.random.Generator] = None, *, input_grad: bool = True
                      ) -> Tuple[Tuple[Array, Array],
                                 Callable[..., Tuple[Optional[Array], Array]]]:
        """Forward that keeps what backward needs (arguments as `LSTM.forward_train`).

        Returns
        -------
        (y, h_n), backward
            ``y`` is read-only; ``dx, dh0 = backward(dy=None, dh_n=None)`` takes the
            gradients of ``y`` and ``h_n`` (either may be None), adds the parameter
            gradients into ``grads`` and runs once (``dx`` None with ``input_grad=False``).
        """
        out, backward = super().forward_train(x, state, lengths, rng, input_grad=input_grad)
        return out, lambda dy=None, dh_n=None: backward(dy, dh_n)
