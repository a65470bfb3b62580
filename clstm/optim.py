"""Optimisers with ``torch.optim``'s update rules, their ``state_dict`` in
``torch.optim``'s format, learning-rate schedules with ``torch.optim.lr_scheduler``'s rules,
and gradient clipping, for NumPy arrays.

``params`` is any of: a module (anything with ``params`` and ``grads`` dicts of arrays under
the same names: ``LSTM``, ``Linear``, ``Sequential``...), a list of modules, or a list of
``(params_dict, grads_dict)`` pairs. Updates are in place, so the modules keep their arrays;
an array reached twice (a module shared by two containers) is updated once.
"""
import math
from collections.abc import Mapping
from typing import Any, Dict, List

import numpy as np

from ._checks import check_shape, float_array, number


def _pairs(params):
    """``[(param, grad), ...]`` from any of the accepted forms, first occurrence kept."""
    def is_module(obj):
        return hasattr(obj, "params") and hasattr(obj, "grads")

    try:
        sources = [params] if is_module(params) else list(params)
    except TypeError:  # not iterable
        raise TypeError("params must be a module (with .params and .grads), a list of modules "
                        f"or a list of (params_dict, grads_dict) pairs, got "
                        f"{type(params).__name__}") from None
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


class Optimizer:
    """The shared part: the (param, grad) pairs, ``zero_grad``, and ``state_dict`` /
    ``load_state_dict`` in ``torch.optim``'s format (one parameter group).

    Subclasses name their hyperparameters in ``_hyper`` (torch's ``param_groups`` keys)
    and their per-parameter state in ``_get_state`` / ``_set_state``."""

    _hyper = ("lr",)
    # torch's group options that clstm does not implement: loading a True here would
    # silently change the rule, so it is an error; the others are torch's execution details.
    _unsupported = ("maximize", "decoupled_weight_decay", "capturable")

    def __init__(self, params):
        self.pairs = _pairs(params)
        if not self.pairs:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")

    def zero_grad(self):
        """Set every gradient to zero (in place)."""
        for _, g in self.pairs:
            g[...] = 0

    def state_dict(self) -> Dict[str, Any]:
        """The optimiser's state in ``torch.optim.Optimizer.state_dict()``'s layout:
        ``{"state": {index: {name: array or number}}, "param_groups": [{hyperparameters,
        "params": [0, 1, ...]}]}``, parameters numbered in the optimiser's order. Arrays
        are copies. ``torch_optimizer.load_state_dict`` takes it once the arrays are
        tensors, and `load_state_dict` takes torch's."""
        group = {name: getattr(self, name) for name in self._hyper}
        group["params"] = list(range(len(self.pairs)))
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                     for k, v in entry.items()}
                 for i, entry in self._get_state().items()}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore hyperparameters and per-parameter state (moments, momentum buffers,
        step count) from `state_dict`'s output or a ``torch.optim`` optimiser's of the same
        class (tensors or arrays). Checked in full before anything changes.

        Raises
        ------
        ValueError
            Not one parameter group, a different number of parameters, state arrays of the
            wrong shape, or an option clstm does not implement (``maximize=True``...).
        KeyError
            A missing hyperparameter or state entry.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict with 'state' and 'param_groups' (from "
                            f"state_dict()), got {type(state_dict).__name__}")
        try:
            groups, state = state_dict["param_groups"], state_dict["state"]
        except KeyError:
            raise KeyError("state_dict must have 'state' and 'param_groups' entries") from None
        if len(groups) != 1:
            raise ValueError(f"state_dict has {len(groups)} parameter groups; clstm's "
                             f"optimisers have one")
        group = groups[0]
        n = len(self.pairs)
        if len(group.get("params", ())) != n:
            raise ValueError(f"state_dict is for {len(group.get('params', ()))} parameters, "
                             f"this optimiser has {n}")
        for name in self._unsupported:
            if group.get(name):
                raise ValueError(f"state_dict has {name}=True, which clstm's "
                                 f"{type(self).__name__} does not implement")
        missing = [name for name in self._hyper if name not in group]
        if missing:
            raise KeyError(f"state_dict's param_groups[0] lacks {missing}")
        # torch numbers its parameters by their position in the group's list
        position = {index: i for i, index in enumerate(group["params"])}
        entries = {}
        for index, entry in state.items():
            if index not in position:
                raise ValueError(f"state_dict has state for parameter {index}, which is not "
                                 f"in its param_groups")
            entries[position[index]] = dict(entry)
        hyper = self._check_hyper(**{name: group[name] for name in self._hyper})
        new = self._check_state(entries)
        vars(self).update(hyper)
        self._set_state(new)

    def _state_array(self, i, entry, key):
        """``entry[key]`` as a new array of parameter ``i``'s dtype and shape (a copy: the
        optimiser updates it in place, and must not write into the caller's memory)."""
        p = self.pairs[i][0]
        if key not in entry:
            raise KeyError(f"state_dict's state for parameter {i} lacks {key!r}")
        name = f"state[{i}][{key!r}]"
        return check_shape(name, float_array(name, entry[key], p.dtype), p.shape).copy()


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s rule. Per parameter ``p`` with
    gradient ``g``: ``g += weight_decay * p``; with momentum, ``buf = g`` on the first step,
    then ``buf = momentum * buf + (1 - dampening) * g``, and ``g = g + momentum * buf``
    (nesterov) or ``g = buf``; finally ``p -= lr * g``. State: ``momentum_buffer`` per
    parameter (after the first step with momentum).

    Parameters
    ----------
    params : a module, a list of modules, or ``(params_dict, grads_dict)`` pairs
    lr : float
        The learning rate (a schedule may change ``opt.lr``).
    momentum, dampening, weight_decay : float
    nesterov : bool

    Raises
    ------
    ValueError
        A negative or nan hyperparameter, nesterov without momentum, no parameters.
    """

    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        vars(self).update(self._check_hyper(lr, momentum, dampening, weight_decay, nesterov))
        super().__init__(params)
        self.buffers = [None] * len(self.pairs)

    @staticmethod
    def _check_hyper(lr, momentum, dampening, weight_decay, nesterov):
        hyper = dict(lr=number("lr", lr), momentum=number("momentum", momentum),
                     dampening=number("dampening", dampening, low=-math.inf),
                     weight_decay=number("weight_decay", weight_decay),
                     nesterov=bool(nesterov))
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return hyper

    def _get_state(self):
        return {i: {"momentum_buffer": buf} for i, buf in enumerate(self.buffers)
                if buf is not None}

    def _check_state(self, entries):
        return {i: self._state_array(i, entry, "momentum_buffer")
                for i, entry in entries.items() if entry.get("momentum_buffer") is not None}

    def _set_state(self, new):
        self.buffers = [new.get(i) for i in range(len(self.pairs))]

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
    ``v`` below; ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``.
    State per parameter (after the first step): ``step``, ``exp_avg``, ``exp_avg_sq``
    (and ``max_exp_avg_sq`` with amsgrad).

    Parameters
    ----------
    params : a module, a list of modules, or ``(params_dict, grads_dict)`` pairs
    lr : float
    betas : (float, float)
        Each in ``[0, 1)``.
    eps, weight_decay : float
    amsgrad : bool

    Raises
    ------
    ValueError
        A hyperparameter out of range, no parameters.
    TypeError
        ``betas`` not a pair.
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        vars(self).update(self._check_hyper(lr, betas, eps, weight_decay, amsgrad))
        super().__init__(params)
        self._set_state({})

    @staticmethod
    def _check_hyper(lr, betas, eps, weight_decay, amsgrad):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        return dict(lr=number("lr", lr), eps=number("eps", eps),
                    betas=(number("beta1", beta1, high=1.0), number("beta2", beta2, high=1.0)),
                    weight_decay=number("weight_decay", weight_decay), amsgrad=bool(amsgrad))

    def _get_state(self):
        if self.t == 0:
            return {}  # as torch: no state before the first step
        return {i: {"step": float(self.t), "exp_avg": self.exp_avg[i],
                    "exp_avg_sq": self.exp_avg_sq[i],
                    **({"max_exp_avg_sq": self.max_exp_avg_sq[i]} if self.amsgrad else {})}
                for i in range(len(self.pairs))}

    def _check_state(self, entries):
        if not entries:
            return {}
        if len(entries) != len(self.pairs):
            raise ValueError(f"state_dict has Adam state for {len(entries)} of "
                             f"{len(self.pairs)} parameters")
        steps = {float(entry.get("step", -1)) for entry in entries.values()}
        if len(steps) != 1 or min(steps) < 1 or not float(min(steps)).is_integer():
            raise ValueError(f"state_dict's Adam steps must be one positive integer for all "
                             f"parameters, got {sorted(steps)}")
        # the names of the state that will be: amsgrad comes from the loaded group
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        new = {"t": int(steps.pop())}
        for name in names:
            if all(name in entry for entry in entries.values()):
                new[name] = [self._state_array(i, entries[i], name)
                             for i in range(len(self.pairs))]
        return new

    def _set_state(self, new):
        zeros = [np.zeros_like(p) for p, _ in self.pairs]
        self.t = new.get("t", 0)
        self.exp_avg = new.get("exp_avg", zeros)
        self.exp_avg_sq = new.get("exp_avg_sq", [z.copy() for z in zeros])
        self.max_exp_avg_sq = None
        if self.amsgrad:
            self.max_exp_avg_sq = new.get("max_exp_avg_sq", [z.copy() for z in zeros])

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
    max_norm = number("max_norm", max_norm)
    norm_type = number("norm_type", norm_type)
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


# ------------------------------------------------------------------------------ schedules
class _Schedule:
    """The shared part of the schedules: the optimiser whose ``lr`` they set,
    ``get_last_lr``, and ``state_dict`` / ``load_state_dict`` with ``torch``'s key names
    (``load_state_dict`` also takes a torch scheduler's, ignoring torch's private keys)."""

    _state_keys = ("last_epoch", "base_lrs")

    def __init__(self, optimizer):
        if not isinstance(getattr(optimizer, "lr", None), float):
            raise TypeError(f"optimizer must be a clstm optimiser (with a float lr), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [optimizer.lr]
        self.last_epoch = 0

    def get_last_lr(self) -> List[float]:
        """The learning rate now, as a one-element list (torch: one per group)."""
        return [self.optimizer.lr]

    def state_dict(self) -> Dict[str, Any]:
        """Everything but the optimiser, torch's names (``last_epoch``, ``base_lrs``...)."""
        return {key: (list(v) if isinstance(v, list) else v)
                for key, v in ((k, getattr(self, k)) for k in self._state_keys)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from `state_dict`'s output or a torch scheduler's of the same class."""
        missing = [k for k in self._state_keys if k not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}")
        for key in self._state_keys:
            value = state_dict[key]
            setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)


class StepLR(_Schedule):
    """``torch.optim.lr_scheduler.StepLR``: every ``step_size`` calls of ``step()`` (one
    per epoch, after the optimiser's steps), ``lr *= gamma``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Epochs between decays.
    gamma : float
        Multiplicative factor.
    """

    _state_keys = ("last_epoch", "base_lrs", "step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        self.step_size = step_size
        self.gamma = number("gamma", gamma)

    def step(self) -> None:
        """End of an epoch: decay if this is a multiple of ``step_size``."""
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            self.optimizer.lr = self.optimizer.lr * self.gamma


class CosineAnnealingLR(_Schedule):
    """``torch.optim.lr_scheduler.CosineAnnealingLR``: the learning rate follows
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``, computed, as
    torch does, recursively from the current ``lr`` (so changes made to ``lr`` by others
    carry on), and rising again after ``T_max`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Epochs of half a cosine period.
    eta_min : float
        The lowest learning rate.
    """

    _state_keys = ("last_epoch", "base_lrs", "T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = number("eta_min", eta_min)

    def step(self) -> None:
        """End of an epoch: the next point on the cosine."""
        self.last_epoch += 1
        epoch, T, lo = self.last_epoch, self.T_max, self.eta_min
        lr = self.optimizer.lr
        if (epoch - 1 - T) % (2 * T) == 0:  # the bottom of the cosine: torch's special case
            lr = lr + (self.base_lrs[0] - lo) * (1 - math.cos(math.pi / T)) / 2
        else:
            lr = (1 + math.cos(math.pi * epoch / T)) / \
                (1 + math.cos(math.pi * (epoch - 1) / T)) * (lr - lo) + lo
        self.optimizer.lr = lr


class ReduceLROnPlateau(_Schedule):
    """``torch.optim.lr_scheduler.ReduceLROnPlateau``: ``step(metric)`` once per epoch;
    after more than ``patience`` epochs without improvement, ``lr = max(lr * factor,
    min_lr)`` (if that changes it by more than ``eps``), then ``cooldown`` epochs in which
    bad epochs do not count.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {"min", "max"}
        Whether the metric should fall (a loss) or rise (an accuracy).
    factor : float
        In ``[0, 1)``.
    patience : int
    threshold : float
        An improvement beats ``best * (1 - threshold)`` (``"rel"``, mode min) or
        ``best - threshold`` (``"abs"``); mirrored for mode max.
    threshold_mode : {"rel", "abs"}
    cooldown : int
    min_lr : float
    eps : float
    """

    _state_keys = ("last_epoch", "factor", "patience", "threshold", "threshold_mode",
                   "cooldown", "min_lrs", "eps", "mode", "best", "num_bad_epochs",
                   "cooldown_counter")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        super().__init__(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = number("factor", factor, high=1.0)
        self.patience = int(number("patience", patience))
        self.threshold = number("threshold", threshold)
        self.cooldown = int(number("cooldown", cooldown))
        self.min_lrs = [number("min_lr", min_lr)]
        self.eps = number("eps", eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _is_better(self, value):
        if self.mode == "min":
            bar = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < bar
        bar = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > bar

    def step(self, metric: float) -> None:
        """End of an epoch, with the monitored value (a validation loss, say)."""
        value = float(metric)
        self.last_epoch += 1
        if self._is_better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lrs[0])
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
