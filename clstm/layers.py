"""The modules around the LSTM that the models in LSTM tutorials need: `Linear`,
`Embedding`, `Dropout`, `AttentionPooling`, `LastStep` and `Sequential`, with torch.nn's
arguments, parameter names and initialisation where PyTorch has the module.

Every module has ``__call__`` (inference) and ``forward_train`` (returns ``out, backward``;
``backward(dout)`` adds the parameter gradients into ``grads`` and returns the gradient of
the input)."""
import math
import numbers
from typing import Optional

import numpy as np

from ._checks import check_shape, flag, float_array, float_dtype, generator, \
    generator_from_seed, positive_int, private_copy
from ._inputs import (batch_major, float_input, int_input, keywords_taken, sequence_lengths,
                      to_caller)
from ._params import Gradients, Parameterised, random_array


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

    _fixed = ("in_features", "out_features", "dtype", "seed")

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
        self._init_params(shapes, generator_from_seed(seed),
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
        x = private_copy(self._prepare(x), x)
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


def _adopt(module, params):
    """Give a module its parameters (name -> array, in state_dict order) and zero grads."""
    module._shapes = {name: p.shape for name, p in params.items()}
    module._params = dict(params)
    module.grads = Gradients((name, np.zeros_like(p)) for name, p in params.items())


class Embedding(Parameterised):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``, as
    ``torch.nn.Embedding``: ``emb(indices)`` maps integer indices of any shape ``(...)`` to
    ``(..., embedding_dim)``.

    Parameters
    ----------
    num_embeddings : int
        Size of the vocabulary; indices must be in ``[0, num_embeddings)``.
    embedding_dim : int
        Size of each vector.
    padding_idx : int, optional
        This row starts as zeros and never gets a gradient (a padding token), as in
        PyTorch; a negative value counts from the end.
    dtype : float32 or float64
    seed : int, optional
        Seeds ``numpy.random.default_rng`` for the initialisation, PyTorch's N(0, 1).

    Notes
    -----
    ``out, backward = emb.forward_train(indices)``; ``backward(dout)`` adds each position's
    gradient into its row of ``grads["weight"]`` (a row used twice gets both) and returns
    None: integer input has no gradient.
   
    Raises
    ------
    TypeError
        Non-integer indices (a call).
    IndexError
        Indices outside ``[0, num_embeddings)`` (a call).
    ValueError
        ``padding_idx`` outside ``[-num_embeddings, num_embeddings)``.
    """

    _fixed = ("num_embeddings", "embedding_dim", "padding_idx", "dtype", "seed")

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: Optional[int] = None, *, dtype=np.float32,
                 seed: Optional[int] = None):
        self.num_embeddings = positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            padding_idx = positive_int("padding_idx", padding_idx, minimum=-num_embeddings)
            if padding_idx >= num_embeddings:
                raise ValueError(f"padding_idx must be in [-{num_embeddings}, "
                                 f"{num_embeddings}) (num_embeddings), got {padding_idx}")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        self.dtype = float_dtype(dtype)
        self.seed = seed
        weight = random_array(generator_from_seed(seed).standard_normal,
                              (self.num_embeddings, self.embedding_dim), self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        _adopt(self, {"weight": weight})

    def _prepare(self, indices):
        indices = int_input("indices", indices)
        bad = (indices < 0) | (indices >= self.num_embeddings)
        if bad.any():
            raise IndexError(f"indices must be in [0, {self.num_embeddings}) "
                             f"(num_embeddings), got {indices[bad].ravel()[0]}")
        return indices

    def __call__(self, indices) -> np.ndarray:
        """``(...)`` integer indices -> ``(..., embedding_dim)`` vectors (a new array)."""
        return self._checked_params()["weight"][self._prepare(indices)]

    forward = __call__

    def forward_train(self, indices):
        """``out, backward`` with ``backward(dout)`` accumulating into ``grads["weight"]``
        (returns None)."""
        indices = self._prepare(indices).copy()
        out = self(indices)
        out_shape = out.shape

        def backward(dout):
            dout = check_shape("dout", float_array("dout", dout, self.dtype), out_shape)
            rows, d = indices.ravel(), dout.reshape(-1, self.embedding_dim)
            if self.padding_idx is not None:
                keep = rows != self.padding_idx
                rows, d = rows[keep], d[keep]
            np.add.at(self.grads["weight"], rows, d)
            return None

        return out, backward

    def __repr__(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad}, "
                f"dtype={self.dtype.name})")


class Dropout:
    """``torch.nn.Dropout(p)``: in training (``forward_train``) each element is zeroed with
    probability ``p`` and the others scaled by ``1 / (1 - p)``; inference (``__call__``)
    passes the input through unchanged. The input keeps its float dtype.

    Parameters
    ----------
    p : float
        Probability of zeroing an element, in ``[0, 1]`` (1 zeros everything).
    seed : int, optional
        Seeds the generator of the masks (``numpy.random.default_rng``); ``forward_train``
        also takes an ``rng``.
    """

    def __init__(self, p: float = 0.5, *, seed: Optional[int] = None):
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.seed = seed
        self._rng = generator_from_seed(seed)

    def __call__(self, x) -> np.ndarray:
        """Inference: ``x`` unchanged."""
        return float_input("x", x)

    forward = __call__

    def forward_train(self, x, rng: Optional[np.random.Generator] = None):
        """``out, backward``: ``out = x * mask``, ``backward(dout) = dout * mask``, with
        ``mask = (rng.random(x.shape) >= p) / (1 - p)`` (all zeros when ``p == 1``)."""
        x = float_input("x", x)
        rng = self._rng if rng is None else generator(rng)
        if self.p == 1:
            mask = np.zeros_like(x)
        else:
            mask = (rng.random(x.shape) >= self.p).astype(x.dtype)
            mask *= x.dtype.type(1.0 / (1.0 - self.p))

        def backward(dout):
            return check_shape("dout", float_array("dout", dout, x.dtype), x.shape) * mask

        return x * mask, backward

    def __repr__(self):
        return f"Dropout(p={self.p:g})"


class AttentionPooling(Parameterised):
    """Attention pooling over time (Yang et al. 2016, "Hierarchical Attention Networks"):
    ``u_t = tanh(W h_t + b)``, ``a = softmax_t(u_t . v)``, ``s = sum_t a_t h_t``.

    ``s, weights = pool(h, lengths=None)`` for ``h`` of shape ``(T, B, H)`` (``(B, T, H)``
    with ``batch_first``, as the LSTM's flag; or unbatched ``(T, H)``) gives ``s (B, H)``
    and the attention ``weights`` in ``h``'s layout without the feature axis, ``(T, B)``
    (``(B, T)``), each row summing to 1 over its valid steps. With ``lengths`` (as the
    LSTM's) the padded steps get weight 0; a row of length 0 gives ``s = 0`` and weights 0.

    Parameters
    ----------
    hidden_size : int
        ``H``, the size of each ``h_t``.
    attention_size : int
        ``A``, the size of ``u_t``. Parameters: ``weight (A, H)``, ``bias (A,)`` and the
        context vector ``context (A,)`` (the paper's ``u_w``).
    batch_first : bool
        Layout of ``h`` and ``weights``.
    dtype : float32 or float64
    seed : int, optional
        Initialisation as ``torch.nn.Linear(H, A)`` for ``weight`` and ``bias``
        (U(-1/sqrt(H), 1/sqrt(H))) and for ``context`` U(-1/sqrt(A), 1/sqrt(A)), drawn in
        that order from ``numpy.random.default_rng(seed)``.

    Notes
    -----
    ``(s, weights), backward = pool.forward_train(h, lengths)``;
    ``dh = backward(ds, dweights=None)`` adds into ``grads``. In a `Sequential` the next
    module gets ``s``.
   
    Raises
    ------
    ValueError
        ``h`` not ``(T, B, hidden_size)`` (``(B, T, hidden_size)``, ``(T, hidden_size)``),
        or ``lengths`` not ``(B,)`` in ``[0, T]`` (a call).
    TypeError
        Non-float ``h`` (a call).
    """

    _fixed = ("hidden_size", "attention_size", "batch_first", "dtype", "seed")

    def __init__(self, hidden_size: int, attention_size: int, *, batch_first: bool = False,
                 dtype=np.float32, seed: Optional[int] = None):
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.attention_size = positive_int("attention_size", attention_size)
        self.batch_first = bool(batch_first)
        self.dtype = float_dtype(dtype)
        self.seed = seed
        H, A = self.hidden_size, self.attention_size
        rng = generator_from_seed(seed)
        b_h, b_a = 1.0 / math.sqrt(H), 1.0 / math.sqrt(A)
        _adopt(self, {name: random_array(lambda n, b=bound: rng.uniform(-b, b, n), shape,
                                         self.dtype)
                      for name, shape, bound in (("weight", (A, H), b_h), ("bias", (A,), b_h),
                                                 ("context", (A,), b_a))})

    def _forward(self, h, lengths):
        """Batch-major ``h (B, T, H)``, ``u (B, T, A)``, ``a (B, T)``, ``s (B, H)``, batched."""
        h = float_array("h", h, self.dtype)
        h, batched = batch_major("h", h, self.batch_first, self.hidden_size)
        B, T = h.shape[:2]
        lengths = sequence_lengths(lengths, T, B)
        p = self._checked_params()
        u = np.tanh(h @ p["weight"].T + p["bias"])
        score = u @ p["context"]
        valid = np.arange(T) < lengths[:, None]
        # Softmax over the valid steps only; the row maximum keeps exp from overflowing,
        # and an empty row (length 0) gets all-zero weights rather than 0/0.
        score = np.where(valid, score, -np.inf)
        top = np.max(score, axis=1, keepdims=True, initial=-np.inf)
        e = np.exp(score - np.where(np.isfinite(top), top, 0))
        total = e.sum(axis=1, keepdims=True)
        a = e / np.where(total > 0, total, 1)
        s = np.einsum("bt,bth->bh", a, h)
        return h, u, a, s, batched

    def _to_caller(self, s, a, batched):
        return (s if batched else s[0]), to_caller(a, batched, self.batch_first)

    def __call__(self, h, lengths=None):
        """Inference: ``(s, weights)``."""
        _, _, a, s, batched = self._forward(h, lengths)
        return self._to_caller(s, a, batched)

    forward = __call__

    def forward_train(self, h, lengths=None):
        """``(s, weights), backward`` with ``dh = backward(ds, dweights=None)``
        accumulating into ``grads``; keeps its own copies of what backward reads."""
        h_in = h
        h, u, a, s, batched = self._forward(h, lengths)
        h = private_copy(h, h_in)
        weight, context = self.params["weight"].copy(), self.params["context"].copy()
        out = self._to_caller(s, a, batched)
        s_shape, a_shape = out[0].shape, out[1].shape

        def backward(ds, dweights=None):
            ds = check_shape("ds", float_array("ds", ds, self.dtype), s_shape)
            ds = ds.reshape(s.shape)
            dh = a[..., None] * ds[:, None, :]
            da = np.einsum("bth,bh->bt", h, ds)
            if dweights is not None:
                dw = check_shape("dweights", float_array("dweights", dweights, self.dtype),
                                 a_shape)
                da += batch_major("dweights", dw[..., None], self.batch_first)[0][..., 0]
            # softmax backward; padded steps have a = 0, so they get no gradient
            dscore = a * (da - np.sum(a * da, axis=1, keepdims=True))
            dz = dscore[..., None] * context * (1 - u * u)
            g = self.grads
            g["context"] += np.einsum("bt,bta->a", dscore, u)
            g["weight"] += dz.reshape(-1, self.attention_size).T @ \
                h.reshape(-1, self.hidden_size)
            g["bias"] += dz.sum(axis=(0, 1))
            dh += dz @ weight
            return to_caller(dh, batched, self.batch_first)

        return out, backward

    def __repr__(self):
        bf = ", batch_first=True" if self.batch_first else ""
        return (f"AttentionPooling({self.hidden_size}, {self.attention_size}{bf}, "
                f"dtype={self.dtype.name})")


class LastStep:
    """Each row's output at its own last valid step: ``(T, B, F)`` (``(B, T, F)`` with
    ``batch_first``; unbatched ``(T, F)``) to ``(B, F)`` (``(F,)``); with ``lengths`` row
    ``b`` gives step ``lengths[b] - 1`` (zeros for length 0). Keras's
    ``return_sequences=False`` after an LSTM; in a `Sequential` it gets the LSTM's
    ``lengths``. The input keeps its float dtype.

    Parameters
    ----------
    batch_first : bool
        Layout of the input, as the LSTM's flag.

    Notes
    -----
    ``out, backward = last.forward_train(x, lengths)``; ``dx = backward(dout)`` is zero
    except at each row's last step.
    """

    def __init__(self, *, batch_first: bool = False):
        self.batch_first = bool(batch_first)

    def _pick(self, x, lengths):
        x, batched = batch_major("x", float_input("x", x), self.batch_first)
        B, T = x.shape[:2]
        if lengths is None and T == 0:
            raise ValueError("x has no time steps (T = 0): there is no last step")
        lengths = sequence_lengths(lengths, T, B)
        rows, steps, nonempty = np.arange(B), lengths - 1, lengths > 0
        out = np.zeros((B,) + x.shape[2:], x.dtype)  # a length-0 row has no last step: 0
        out[nonempty] = x[rows[nonempty], steps[nonempty]]
        return x.shape, batched, rows, steps, nonempty, out

    def __call__(self, x, lengths=None) -> np.ndarray:
        """``(B, F)``: each row's output at its last valid step."""
        _, batched, _, _, _, out = self._pick(x, lengths)
        return out if batched else out[0]

    forward = __call__

    def forward_train(self, x, lengths=None):
        """``out, backward`` with ``dx = backward(dout)``."""
        shape, batched, rows, steps, nonempty, out = self._pick(x, lengths)
        dtype = out.dtype

        def backward(dout):
            dout = check_shape("dout", float_array("dout", dout, dtype),
                               out.shape if batched else out.shape[1:])
            dx = np.zeros(shape, dtype)
            dx[rows[nonempty], steps[nonempty]] = dout.reshape(out.shape)[nonempty]
            return to_caller(dx, batched, self.batch_first)

        return (out if batched else out[0]), backward

    def __repr__(self):
        return "LastStep(batch_first=True)" if self.batch_first else "LastStep()"


def _first(out):
    """Modules such as LSTM return ``(y, state)`` (and their backward ``(dx, dstate)``):
    the sequence carries on with element 0."""
    return out[0] if isinstance(out, tuple) else out


_PASSED_ON = ("state", "lengths", "rng")


class Sequential(Parameterised):
    """Modules run in order, as ``torch.nn.Sequential``: ``y = model(x, state=None,
    lengths=None)``, ``y, backward = model.forward_train(x, state=None, lengths=None)``
    with ``dx = backward(dy)``.

    A module returning a tuple (``LSTM`` gives ``y, (h_n, c_n)``, ``AttentionPooling``
    gives ``s, weights``) passes on element 0, and its backward gets only the gradient of
    that element. ``lengths`` goes to every module that takes a ``lengths`` argument (the
    LSTM, ``AttentionPooling``, ``LastStep``) and ``state`` to the first module that takes a
    ``state`` (the LSTM after an ``Embedding``, say); the others are called without them.
    Passing either when no module takes it is a TypeError.

    Parameters are named ``"{index}.{name}"`` as in PyTorch (``"0.weight_ih_l0"``,
    ``"1.weight"``); ``params`` and ``grads`` hold the children's own arrays, so an
    optimiser stepping ``model.params`` updates the children, and ``state_dict``,
    ``load_state_dict``, ``save``, ``load`` and ``zero_grad`` work on the whole model.
    Modules need ``__call__`` and ``forward_train``; ``params``/``grads`` are optional.

    Parameters
    ----------
    *modules
        Run in this order.

    Raises
    ------
    TypeError
        A module without ``__call__`` and ``forward_train``; at a call, ``lengths`` or
        ``state`` that no module takes.
    """

    def __init__(self, *modules):
        for i, m in enumerate(modules):
            if not (callable(m) and hasattr(m, "forward_train")):
                raise TypeError(f"module {i} ({type(m).__name__}) needs __call__ and "
                                f"forward_train")
        self._modules = list(modules)
        # Flat views over the children, built once: the children update their arrays in
        # place (load_state_dict, optimisers), so these stay the same objects.
        params, grads, self._dtypes = {}, Gradients(), {}
        for i, m in enumerate(modules):
            for name, p in getattr(m, "params", {}).items():
                params[f"{i}.{name}"] = p
                grads[f"{i}.{name}"] = m.grads[name]
                self._dtypes[f"{i}.{name}"] = p.dtype
        self._shapes = {name: p.shape for name, p in params.items()}
        self._params = params
        self.grads = grads
        self._call_keywords = [keywords_taken(m.__call__, _PASSED_ON) for m in modules]
        self._train_keywords = [keywords_taken(m.forward_train, _PASSED_ON) for m in modules]

    def _param_dtype(self, name):
        return self._dtypes[name]

    def _plan(self, keywords, state, lengths, rng=None):
        """The keyword arguments for each module's call (``rng``, the dropout generator,
        goes to every module that takes one; a model without dropout may have none)."""
        given = {"state": state, "lengths": lengths, "rng": rng}
        plans = [{} for _ in keywords]
        for name, value in given.items():
            if value is None:
                continue
            takers = [i for i, kw in enumerate(keywords) if name in kw]
            if not takers and name != "rng":
                raise TypeError(f"Sequential got {name}= but none of its modules takes "
                                f"{name}: {[type(m).__name__ for m in self._modules]}")
            for i in takers[:1] if name == "state" else takers:
                plans[i][name] = value
        return plans

    def __call__(self, x, state=None, lengths=None):
        """Inference: the last module's output."""
        for m, kw in zip(self._modules, self._plan(self._call_keywords, state, lengths)):
            x = _first(m(x, **kw))
        return x

    forward = __call__

    def forward_train(self, x, state=None, lengths=None, rng=None, *, input_grad=True):
        """``y, backward`` with ``dx = backward(dy)``: each module's backward in reverse
        order, accumulating into every child's ``grads``. ``rng`` (a
        ``numpy.random.Generator``) draws every dropout mask, module by module in order;
        by default each module uses its own. ``input_grad=False``: ``dx`` is None, and the
        first module skips computing it if its ``forward_train`` takes ``input_grad``
        (the LSTM and GRU do: a sixth of a one-layer step)."""
        backwards = []
        input_grad = flag("input_grad", input_grad)
        plans = self._plan(self._train_keywords, state, lengths, rng)
        if not input_grad and self._modules and \
                keywords_taken(self._modules[0].forward_train, ("input_grad",), named=True):
            plans[0]["input_grad"] = False
        for m, kw in zip(self._modules, plans):
            out, back = m.forward_train(x, **kw)
            x = _first(out)
            backwards.append(back)

        def backward(dy):
            for back in reversed(backwards):
                dy = _first(back(dy))
            return dy if input_grad else None

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
