"""Optimisers with ``torch.optim``'s update rules, and gradient clipping, for NumPy arrays.

``params`` is any of: a module (anything with ``params`` and ``grads`` dicts of arrays under
the same names: ``LSTM``, ``Linear``, ``Sequential``...), a list of modules, or a list of
``(params_dict, grads_dict)`` pairs. Updates are in place, so the modules keep their arrays;
an array reached twice (a module shared by two containers) is updated once.
"""
import math

import numpy as np


def _pairs(params):
    """``[(param, grad), ...]`` from any of the accepted forms, first occurrence kept."""
    def is_module(obj):
        return hasattr(obj, "params") and hasattr(obj, "grads")

    sources = [params] if is_module(params) else list(params)
    pairs, seen = [], set()
    for i, src in enumerate(sources):
        if is_module(src):
            p_dict, g_dict = src.params, src.grads
        elif isinstance(src, (tuple, list)) and len(src) == 2:
            p_dict, g_dict = src
        else:
            raise TypeError(f"params[{i}] must be a module (with .params and .grads) or a "
                            f"(params_dict, grads_dict) pair, got {type(src).__name__}")
        for name, p in p_dict.items():
            if name not in g_dict:
                raise KeyError(f"params[{i}]: no gradient for parameter {name!r}")
            g = g_dict[name]
            if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)
                    and p.dtype.kind == "f" and p.shape == g.shape):
                raise TypeError(f"params[{i}][{name!r}]: parameter and gradient must be float "
                                f"arrays of the same shape")
            if id(p) not in seen:
                seen.add(id(p))
                pairs.append((p, g))
    return pairs


def _number(name, value, low=0.0, high=None):
    """A float in ``[low, high)`` (``[low, inf)`` without ``high``); nan is rejected."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got bool")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (low <= value and (high is None or value < high)):
        interval = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"Invalid {name} value: {value} (must be {interval})")
    return value


class Optimizer:
    """The shared part: the (param, grad) pairs, and ``zero_grad``."""

    def __init__(self, params):
        self.pairs = _pairs(params)
        if not self.pairs:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for _, g in self.pairs:
            g[...] = 0


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s rule. Per parameter ``p`` with
    gradient ``g``: ``g += weight_decay * p``; with momentum, ``buf = g`` on the first step,
    then ``buf = momentum * buf + (1 - dampening) * g``, and ``g = g + momentum * buf``
    (nesterov) or ``g = buf``; finally ``p -= lr * g``."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        self.lr = _number("lr", lr)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening, low=-math.inf)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params)
        self.buffers = [None] * len(self.pairs)

    def step(self):
        """One update of every parameter, in place."""
        for i, (p, g) in enumerate(self.pairs):
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = g.copy()
                else:
                    buf *= self.momentum
                    buf += (1 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class Adam(Optimizer):
    """Adam, ``torch.optim.Adam``'s rule (its single-tensor path). At step ``t`` (from 1),
    per parameter: ``g += weight_decay * p``; ``m += (1 - beta1) * (g - m)``;
    ``v = beta2 * v + (1 - beta2) * g**2``; with amsgrad ``v_max = max(v_max, v)`` replaces
    ``v`` below; ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        self.lr = _number("lr", lr)
        self.eps = _number("eps", eps)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_number("beta1", beta1, high=1.0), _number("beta2", beta2, high=1.0))
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        super().__init__(params)
        self.t = 0
        self.exp_avg = [np.zeros_like(p) for p, _ in self.pairs]
        self.exp_avg_sq = [np.zeros_like(p) for p, _ in self.pairs]
        self.max_exp_avg_sq = [np.zeros_like(p) for p, _ in self.pairs] if amsgrad else None

    def step(self):
        """One update of every parameter, in place."""
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.t)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.t)
        for i, (p, g) in enumerate(self.pairs):
            if self.weight_decay:
                g = g + self.weight_decay * p
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            m += (1 - beta1) * (g - m)  # torch's lerp_
            v *= beta2
            v += (1 - beta2) * (g * g)
            if self.amsgrad:
                np.maximum(self.max_exp_avg_sq[i], v, out=self.max_exp_avg_sq[i])
                v = self.max_exp_avg_sq[i]
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p -= step_size * (m / denom)


def _norm(a, norm_type):
    a = np.abs(a.ravel())
    if norm_type == math.inf:
        return float(a.max(initial=0.0))
    return float(np.sum(a ** norm_type) ** (1.0 / norm_type))


def clip_grad_norm(params, max_norm, norm_type=2.0):
    """Scale all gradients in place so that their total norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``-norm of the
    per-gradient norms (``inf``: the largest absolute entry); every gradient is multiplied
    by ``min(1, max_norm / (total + 1e-6))``. Returns the total norm before clipping, a
    float (0.0 without parameters). ``norm_type`` is a number > 0 or ``inf``. A non-finite
    total norm is not an error: the gradients become 0 (inf) or nan (nan), as PyTorch's
    default."""
    max_norm = _number("max_norm", max_norm)
    norm_type = _number("norm_type", norm_type)
    if norm_type == 0:
        raise ValueError("norm_type must be > 0 or inf, got 0")
    grads = [g for _, g in _pairs(params)]
    if not grads:
        return 0.0
    total = _norm(np.array([_norm(g, norm_type) for g in grads]), norm_type)
    coef = max_norm / (total + 1e-6)
    if coef > 1.0:  # not min(): a nan norm must give nan gradients, as in PyTorch
        coef = 1.0
    for g in grads:
        g *= coef
    return total
