"""The `LSTM` layer: torch.nn.LSTM's constructor, parameter names and shapes, on NumPy."""
import math

import numpy as np

from . import functional
from ._checks import check_shape, float_array, float_dtype, positive_int
from ._threads import get_num_threads


class LSTM:
    """A multi-layer LSTM with ``torch.nn.LSTM``'s arguments, semantics and parameter names.

    ``y, (h_n, c_n) = lstm(x, state=None)`` runs inference on ``x`` of shape ``(T, B, I)``
    (``(B, T, I)`` with ``batch_first``, or unbatched ``(T, I)``); ``state = (h0, c0)`` with
    shapes ``(num_layers * D, B, H)`` (``(num_layers * D, H)`` unbatched), zeros if omitted.

    ``(y, (h_n, c_n)), backward = lstm.forward_train(x, state)`` also returns
    ``dx, (dh0, dc0) = backward(dy=None, dstate=None)``, which adds the parameter gradients
    into ``lstm.grads`` (same keys and shapes as ``state_dict()``).

    Parameters are float32 or float64 (``dtype``); float input of the other precision is
    cast to it. Initialisation is PyTorch's, U(-1/sqrt(H), 1/sqrt(H)), drawn from
    ``numpy.random.default_rng(seed)`` in ``state_dict()`` order.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
                 seed=None):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.proj_size = positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), "
                             f"got {proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = float_dtype(dtype)
        unsupported = [name for name, on in (("num_layers > 1", self.num_layers > 1),
                                             ("bidirectional=True", self.bidirectional),
                                             ("proj_size > 0", self.proj_size > 0),
                                             ("dropout > 0", self.dropout > 0)) if on]
        if unsupported:
            raise NotImplementedError(f"{', '.join(unsupported)}: not implemented yet; "
                                      "this version runs one unidirectional layer")
        self.seed = seed
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.hidden_size)
        self._params = {name: rng.uniform(-k, k, shape).astype(self.dtype)
                        for name, shape in self._param_shapes().items()}
        self.grads = {name: np.zeros_like(p) for name, p in self._params.items()}

    # ---------------------------------------------------------------- parameters
    def _param_shapes(self):
        H, I = self.hidden_size, self.input_size
        shapes = {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H)}
        if self.bias:
            shapes.update(bias_ih_l0=(4 * H,), bias_hh_l0=(4 * H,))
        return shapes

    @property
    def params(self):
        """The live parameter arrays by name (for optimisers); see also `state_dict`."""
        return self._params

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            self.load_state_dict({name: value}, strict=False)
        else:
            super().__setattr__(name, value)

    def state_dict(self):
        """A copy of the parameters, named and shaped as ``torch.nn.LSTM.state_dict()``."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in from a mapping of name -> array-like (NumPy arrays, PyTorch
        tensors, ...). Shapes must match; with ``strict``, missing or unexpected names are an
        error (without it they are skipped). Nothing changes unless every entry is valid.
        Values are copied into the existing arrays, so references to ``params`` (held by an
        optimiser, say) stay valid and nothing aliases the caller's memory."""
        expected = self._param_shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict: {'; '.join(parts)} "
                           f"(expected {list(expected)})")
        new = {name: check_shape(name, float_array(name, state_dict[name], self.dtype), shape)
               for name, shape in expected.items() if name in state_dict}
        for name, value in new.items():
            self._params[name][...] = value

    def zero_grad(self):
        """Reset every accumulated gradient in ``grads`` to zero."""
        for g in self.grads.values():
            g[...] = 0

    # ---------------------------------------------------------------- running
    def _prepare(self, x, state):
        """Validate input and state; return time-major x (T, B, I), h0, c0 (B, H), batched."""
        x = float_array("x", x, self.dtype)
        I, H = self.input_size, self.hidden_size
        n_states = self.num_layers * (2 if self.bidirectional else 1)
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
        B = x.shape[1]
        state_shape = (n_states, B, H) if batched else (n_states, H)
        if state is None:
            h0 = np.zeros((B, H), self.dtype)
            c0 = np.zeros((B, H), self.dtype)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError("state must be a tuple (h0, c0) of arrays of shape "
                                f"{state_shape}, got {type(state).__name__}")
            h0, c0 = (check_shape(name, float_array(name, s, self.dtype), state_shape)
                      .reshape(B, H) for name, s in zip(("h0", "c0"), state))
        return x, h0, c0, batched

    def _finish(self, y, h_n, c_n, batched):
        """Back to the caller's layout: y as x came in, states (num_layers * D, [B,] H)."""
        if not batched:
            return y[:, 0, :], (h_n.reshape(1, -1), c_n.reshape(1, -1))
        if self.batch_first:
            y = y.transpose(1, 0, 2)
        return y, (h_n[None], c_n[None])

    def _checked_params(self):
        """The parameters, after an O(1) check that nobody replaced one in ``params`` with
        an array the kernels cannot take."""
        for name, shape in self._param_shapes().items():
            p = self._params.get(name)
            if not (isinstance(p, np.ndarray) and p.shape == shape and p.dtype == self.dtype
                    and p.flags.c_contiguous):
                raise ValueError(f"parameter {name} must be a C-contiguous {self.dtype} array "
                                 f"of shape {shape}; assign through load_state_dict or "
                                 "attribute access to convert")
        return self._params

    def _run(self, x, state, train):
        x, h0, c0, batched = self._prepare(x, state)
        p = self._checked_params()
        w_ih, w_hh = p["weight_ih_l0"], p["weight_hh_l0"]
        if train:  # the cache must not see later writes to the caller's input or weights
            x, w_ih, w_hh, h0, c0 = (a.copy() for a in (x, w_ih, w_hh, h0, c0))
        bias = (p["bias_ih_l0"] + p["bias_hh_l0"] if self.bias
                else np.zeros(4 * self.hidden_size, self.dtype))
        y, h_n, c_n, cache = functional._forward(x, w_ih, w_hh, bias, self.bias, h0, c0, train,
                                                 get_num_threads())
        return self._finish(y, h_n, c_n, batched), cache, batched

    def __call__(self, x, state=None):
        """Inference: ``y, (h_n, c_n)``. Keeps no caches; memory does not grow with T beyond
        the output itself."""
        out, _, _ = self._run(x, state, train=False)
        return out

    forward = __call__

    def forward_train(self, x, state=None):
        """Forward that keeps what backward needs: ``(y, (h_n, c_n)), backward`` where
        ``dx, (dh0, dc0) = backward(dy=None, dstate=None)`` accumulates into ``grads``.
        ``y`` is read-only (backward reads it); copy it to modify it."""
        (y, (h_n, c_n)), cache, batched = self._run(x, state, train=True)
        y_shape, state_shape = y.shape, h_n.shape

        def backward(dy=None, dstate=None):
            T, B, H = cache.y.shape
            dtype = self.dtype
            if dy is not None:
                dy = check_shape("dy", float_array("dy", dy, dtype), y_shape)
                if not batched:
                    dy = dy[:, None, :]
                elif self.batch_first:
                    dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
            dh = np.zeros((B, H), dtype)
            dc = np.zeros((B, H), dtype)
            if dstate is not None:
                if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
                    raise TypeError("dstate must be a tuple (dh_n, dc_n), each None or of "
                                    f"shape {state_shape}")
                for name, d, buf in zip(("dh_n", "dc_n"), dstate, (dh, dc)):
                    if d is not None:
                        buf[...] = check_shape(name, float_array(name, d, dtype),
                                               state_shape).reshape(B, H)
            grads = functional._backward(cache, dy, dh, dc)
            g = self.grads
            g["weight_ih_l0"] += grads.dw_ih
            g["weight_hh_l0"] += grads.dw_hh
            if self.bias:
                g["bias_ih_l0"] += grads.db_ih
                g["bias_hh_l0"] += grads.db_hh
            dx = grads.dx
            if not batched:
                return dx[:, 0, :], (grads.dh0.reshape(1, H), grads.dc0.reshape(1, H))
            if self.batch_first:
                dx = dx.transpose(1, 0, 2)
            return dx, (grads.dh0[None], grads.dc0[None])

        return (y, (h_n, c_n)), backward

    def __repr__(self):
        args = [f"{self.input_size}", f"{self.hidden_size}"]
        if not self.bias:
            args.append("bias=False")
        if self.batch_first:
            args.append("batch_first=True")
        args.append(f"dtype={self.dtype.name}")
        return f"LSTM({', '.join(args)})"
