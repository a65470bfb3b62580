"""`Linear` and `Sequential`: the small pieces around the LSTM that a training loop needs,
with torch.nn's arguments, parameter names and initialisation."""
import math

import numpy as np

from ._checks import check_shape, float_array, float_dtype, positive_int
from ._params import Parameterised


class Linear(Parameterised):
    """``y = x @ weight.T + bias`` with ``torch.nn.Linear``'s arguments and names:
    ``weight (out_features, in_features)``, ``bias (out_features,)``.

    ``y = lin(x)`` maps ``x`` of shape ``(..., in_features)`` to ``(..., out_features)``.
    ``y, backward = lin.forward_train(x)``; ``dx = backward(dy)`` (``dy`` shaped as ``y``)
    adds the parameter gradients into ``lin.grads`` and returns ``dx`` shaped as ``x``.
    ``lin.weight`` and ``lin.bias`` are the live arrays (``lin.bias`` is None without a
    bias, as in PyTorch). Initialisation is PyTorch's, U(-1/sqrt(in_features),
    1/sqrt(in_features)) for weight then bias, drawn from ``numpy.random.default_rng(seed)``.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.dtype = float_dtype(dtype)
        self.seed = seed
        shapes = {"weight": (self.out_features, self.in_features)}
        if bias:
            shapes["bias"] = (self.out_features,)
        else:
            self.bias = None  # as torch: ``lin.bias`` is the parameter, or None without one
        self._init_params(shapes, np.random.default_rng(seed),
                          1.0 / math.sqrt(self.in_features))

    @property
    def has_bias(self):
        return "bias" in self._shapes

    def _prepare(self, x):
        x = float_array("x", x, self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}) (..., in_features), "
                             f"got {x.shape}")
        return x

    def _apply(self, x, p):
        y = x @ p["weight"].T
        if self.has_bias:
            y += p["bias"]
        return y

    def __call__(self, x):
        """``(..., in_features) -> (..., out_features)``."""
        return self._apply(self._prepare(x), self._checked_params())

    forward = __call__

    def forward_train(self, x):
        """``y, backward`` with ``dx = backward(dy)`` accumulating into ``grads``. Keeps its
        own copies of ``x`` and ``weight``, so changes to either (an optimiser step, say)
        before ``backward`` do not change the gradients."""
        x_in = x
        x = self._prepare(x)
        if np.may_share_memory(x, x_in):
            x = x.copy()
        p = self._checked_params()
        weight = p["weight"].copy()
        y = self._apply(x, p)
        y_shape = y.shape

        def backward(dy):
            dy = check_shape("dy", float_array("dy", dy, self.dtype), y_shape)
            dy2 = dy.reshape(-1, self.out_features)
            self.grads["weight"] += dy2.T @ x.reshape(-1, self.in_features)
            if self.has_bias:
                self.grads["bias"] += dy2.sum(axis=0)
            return dy @ weight

        return y, backward

    def __repr__(self):
        bias = "" if self.has_bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{bias}, dtype={self.dtype.name})"


def _first(out):
    """Modules such as LSTM return ``(y, state)`` (and their backward ``(dx, dstate)``):
    the sequence carries on with element 0."""
    return out[0] if isinstance(out, tuple) else out


class Sequential(Parameterised):
    """Modules run in order, as ``torch.nn.Sequential``: ``y = model(x)``,
    ``y, backward = model.forward_train(x)`` with ``dx = backward(dy)``. A module returning
    a tuple (``LSTM`` gives ``y, (h_n, c_n)``) passes on element 0, and its backward gets
    only ``dy`` (no gradient for the final state).

    Parameters are named ``"{index}.{name}"`` as in PyTorch (``"0.weight_ih_l0"``,
    ``"1.weight"``); ``params`` and ``grads`` hold the children's own arrays, so an
    optimiser stepping ``model.params`` updates the children, and ``state_dict``,
    ``load_state_dict``, ``save``, ``load`` and ``zero_grad`` work on the whole model.
    Modules need ``__call__`` and ``forward_train``; ``params``/``grads`` are optional.
    """

    def __init__(self, *modules):
        for i, m in enumerate(modules):
            if not (callable(m) and hasattr(m, "forward_train")):
                raise TypeError(f"module {i} ({type(m).__name__}) needs __call__ and "
                                f"forward_train")
        self._modules = list(modules)
        # Flat views over the children, built once: the children update their arrays in
        # place (load_state_dict, optimisers), so these stay the same objects.
        params, grads, self._dtypes = {}, {}, {}
        for i, m in enumerate(modules):
            for name, p in getattr(m, "params", {}).items():
                params[f"{i}.{name}"] = p
                grads[f"{i}.{name}"] = m.grads[name]
                self._dtypes[f"{i}.{name}"] = p.dtype
        self._shapes = {name: p.shape for name, p in params.items()}
        self._params = params
        self.grads = grads

    def _param_dtype(self, name):
        return self._dtypes[name]

    def __call__(self, x):
        for m in self._modules:
            x = _first(m(x))
        return x

    forward = __call__

    def forward_train(self, x):
        """``y, backward`` with ``dx = backward(dy)``: each module's backward in reverse
        order, accumulating into every child's ``grads``."""
        backwards = []
        for m in self._modules:
            out, back = m.forward_train(x)
            x = _first(out)
            backwards.append(back)

        def backward(dy):
            for back in reversed(backwards):
                dy = _first(back(dy))
            return dy

        return x, backward

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self._modules[index])
        return self._modules[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {m!r}" for i, m in enumerate(self._modules))
        return f"Sequential({inner}\n)"
