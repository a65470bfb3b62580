"""Losses with their gradients, PyTorch's formulas: each returns ``(loss, dinput)``.

- ``reduction="mean"`` (the default, as PyTorch's), ``"sum"`` or ``"none"``. With ``"mean"``
  and ``"sum"`` the loss is a Python float and ``dinput`` its gradient with respect to the
  input; with ``"none"`` the loss is the array of per-element losses and ``dinput`` the
  gradient of their sum (each element's own derivative), for you to weight and reduce.
- ``mask`` (booleans, of the input's shape or a prefix of it, e.g. ``(T, B)`` for a
  ``(T, B, F)`` output) leaves elements out: they add nothing to the loss and get a zero
  gradient, and ``"mean"`` averages over the elements kept (``nan`` and a zero gradient
  when none is, as PyTorch on an empty selection). `sequence_mask` makes one from
  ``lengths``, and `sequence_loss` wraps a loss to take ``lengths`` (``clstm.fit`` passes
  them on).
- Gradients are in the input's dtype; ``target`` is cast to it and must have its shape
  (PyTorch would broadcast, with a warning).
"""
from typing import Callable, Optional

import numpy as np
from scipy.special import expit

from ._checks import check_lengths, float_array, positive_int
from ._inputs import bool_input, float_input, int_input

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _expand_mask(mask, shape, what):
    """``mask`` (a prefix of ``shape``) broadcast to ``shape``."""
    m = bool_input("mask", mask)
    if m.shape != shape[:m.ndim]:
        raise ValueError(f"mask must have {what}'s shape {shape} or a prefix of it (such as "
                         f"{shape[:2]} for a (T, B, ...) sequence), got {m.shape}")
    return np.broadcast_to(m.reshape(m.shape + (1,) * (len(shape) - m.ndim)), shape)


def _reduce(loss, grad, reduction, denominator):
    """Reduce per-element ``loss`` and ``grad`` (zero where left out); ``"mean"`` divides
    by ``denominator`` (the count kept, or the summed class weights)."""
    if reduction == "none":
        return loss, grad
    total = loss.sum()
    if reduction == "sum":
        return float(total), grad
    if denominator == 0:  # 0/0: nan, as PyTorch; nothing contributed, so no gradient
        return float("nan"), np.zeros_like(grad)
    return float(total / denominator), grad * grad.dtype.type(1.0 / denominator)


def _pointwise(input, target, reduction, mask, per_element):
    """The shared frame of the element-wise losses: ``per_element(input, target)`` gives
    ``(loss, dloss/dinput)`` per element."""
    _check_reduction(reduction)
    input = float_input("input", input)
    target = float_array("target", target, input.dtype)
    if target.shape != input.shape:
        raise ValueError(f"target must have input's shape {input.shape}, got {target.shape}")
    loss, grad = per_element(input, target)
    count = input.size
    if mask is not None:
        keep = _expand_mask(mask, input.shape, "input")
        loss, grad = np.where(keep, loss, 0).astype(input.dtype), np.where(keep, grad, 0)
        count = int(keep.sum())
    return _reduce(loss, grad.astype(input.dtype, copy=False), reduction, count)


def _broadcast_weight(name, weight, shape, dtype):
    w = float_array(name, weight, dtype)
    try:
        return np.broadcast_to(w, shape)
    except ValueError:
        raise ValueError(f"{name} must broadcast to input's shape {shape}, got "
                         f"{w.shape}") from None


def mse_loss(input, target, reduction: str = "mean", *, mask=None):
    """Mean squared error ``(input - target)**2``, as ``torch.nn.functional.mse_loss``.

    Parameters
    ----------
    input, target : float arrays of the same shape
    reduction : {"mean", "sum", "none"}
    mask : bool array, optional
        Elements to keep (the input's shape or a prefix of it).

    Returns
    -------
    loss : float (an array with ``reduction="none"``)
    dinput : array shaped as ``input``
    """
    def per_element(x, t):
        d = x - t
        return d * d, 2 * d

    return _pointwise(input, target, reduction, mask, per_element)


def l1_loss(input, target, reduction: str = "mean", *, mask=None):
    """Absolute error ``|input - target|``, as ``torch.nn.functional.l1_loss`` (gradient
    ``sign(input - target)``, 0 where they are equal). Parameters and returns as
    `mse_loss`."""
    def per_element(x, t):
        d = x - t
        return np.abs(d), np.sign(d)

    return _pointwise(input, target, reduction, mask, per_element)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0, *, mask=None):
    """Huber loss, as ``torch.nn.functional.huber_loss``: ``0.5 * d**2`` where
    ``|d| < delta``, else ``delta * (|d| - 0.5 * delta)``, for ``d = input - target``.
    Parameters and returns as `mse_loss`, plus ``delta > 0``."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)) \
            or not delta > 0:
        raise ValueError(f"delta must be a number > 0, got {delta!r}")

    def per_element(x, t):
        d = x - t
        a = np.abs(d)
        loss = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
        return loss, np.clip(d, -delta, delta)

    return _pointwise(input, target, reduction, mask, per_element)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean",
                                     pos_weight=None, *, mask=None):
    """Sigmoid and binary cross-entropy in one stable step, as
    ``torch.nn.functional.binary_cross_entropy_with_logits``:
    ``-weight * (pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))``.

    Parameters
    ----------
    input : float array
        Logits ``x``.
    target : float array of input's shape
        Probabilities ``y`` in ``[0, 1]``.
    weight : float array, optional
        Broadcast to input's shape: a rescaling of each element (``"mean"`` still divides
        by the element count, as PyTorch).
    reduction : {"mean", "sum", "none"}
    pos_weight : float array, optional
        Weight of the positive term, broadcast along the last (class) axis.
    mask : bool array, optional
        Elements to keep (the input's shape or a prefix of it).

    Returns
    -------
    loss : float (an array with ``reduction="none"``)
    dinput : array shaped as ``input``
    """
    def per_element(x, y):
        p = 1 if pos_weight is None else _broadcast_weight("pos_weight", pos_weight,
                                                           x.shape, x.dtype)
        log_weight = (p - 1) * y + 1
        # softplus(-x) = log(1 + exp(-x)) without overflow for either sign of x
        softplus = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)
        loss = (1 - y) * x + log_weight * softplus
        grad = (1 - y) - log_weight * expit(-x)
        if weight is None:
            return loss, grad
        w = _broadcast_weight("weight", weight, x.shape, x.dtype)
        return loss * w, grad * w

    return _pointwise(input, target, reduction, mask, per_element)


def cross_entropy(logits, target, weight=None, ignore_index: int = -100,
                  reduction: str = "mean", *, mask=None):
    """Softmax cross-entropy with integer class targets, as
    ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    logits : float array ``(..., C)``
        Classes on the **last** axis (PyTorch puts them on axis 1; for ``(N, C)`` the two
        agree, and a ``(T, B, C)`` LSTM output goes in as it is).
    target : int array ``(...)``
        Class indices in ``[0, C)``, or ``ignore_index``.
    weight : float array ``(C,)``, optional
        Class weights: each target's loss is scaled by its class's weight, and ``"mean"``
        divides by the summed weights of the targets kept (PyTorch's weighted mean).
    ignore_index : int
        Targets with this value add nothing and get a zero gradient.
    reduction : {"mean", "sum", "none"}
        ``"none"`` gives the loss per target, shape ``(...)`` (0 where left out).
    mask : bool array, optional
        Targets to keep (target's shape or a prefix of it), on top of ``ignore_index``.

    Returns
    -------
    loss : float (an array with ``reduction="none"``)
    dlogits : array shaped as ``logits``
        When every target is left out the mean is ``nan`` (0/0, as PyTorch) and
        ``dlogits`` all zeros.

    Raises
    ------
    TypeError
        Float targets, or a non-integer ``ignore_index``.
    ValueError
        Shapes that do not match, or a target outside ``[0, C)``.
    """
    _check_reduction(reduction)
    logits = float_input("logits", logits)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., C) with C >= 1 classes on the last "
                         f"axis, got {logits.shape}")
    C = logits.shape[-1]
    target = int_input("target", target, "an integer array of class indices")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target must have shape {logits.shape[:-1]} (logits' shape without "
                         f"the class axis), got {target.shape}")
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index,
                                                                    (int, np.integer)):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= C))
    if bad.any():
        raise ValueError(f"target values must be in [0, {C}) or ignore_index={ignore_index}, "
                         f"got {target[bad].ravel()[0]}")
    if mask is not None:
        valid = valid & _expand_mask(mask, target.shape, "target")
    safe_target = np.where(valid, target, 0)
    if weight is None:
        w = valid.astype(logits.dtype)
    else:
        class_weight = float_array("weight", weight, logits.dtype)
        if class_weight.shape != (C,):
            raise ValueError(f"weight must have shape ({C},) (one weight per class), got "
                             f"{class_weight.shape}")
        w = np.where(valid, class_weight[safe_target], 0).astype(logits.dtype)

    # log-softmax with the row maximum subtracted: exp never overflows
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_p, safe_target[..., None], axis=-1)[..., 0]
    dlogits = np.exp(log_p)
    np.put_along_axis(dlogits, safe_target[..., None],
                      np.take_along_axis(dlogits, safe_target[..., None], axis=-1) - 1,
                      axis=-1)
    dlogits *= w[..., None]
    return _reduce(-picked * w, dlogits, reduction, float(w.sum()))


def sequence_mask(lengths, T: int, *, batch_first: bool = False) -> np.ndarray:
    """Booleans ``(T, B)`` (``(B, T)`` with ``batch_first``), True at the steps before each
    row's length: the ``mask`` for a loss over a padded batch of sequences.

    Parameters
    ----------
    lengths : int array ``(B,)``
        Each in ``[0, T]``.
    T : int
        The padded length.
    batch_first : bool

    Returns
    -------
    mask : bool array
    """
    T = positive_int("T", T, minimum=0)
    lengths = int_input("lengths", lengths)
    lengths = check_lengths(lengths, T, lengths.shape[0] if lengths.ndim else 1)
    mask = np.arange(T)[None, :] < lengths[:, None]
    return mask if batch_first else mask.T


def sequence_loss(loss: Callable, *, batch_first: bool = False) -> Callable:
    """``loss`` over a padded batch of sequences: ``f(input, target, lengths=None)`` calls
    ``loss(input, target, mask=sequence_mask(lengths, T, batch_first=...))``, the time axis
    being axis 0 of ``input`` (1 with ``batch_first``). ``clstm.fit`` gives it each batch's
    ``lengths``.

    Parameters
    ----------
    loss : callable
        One of the losses here (anything taking ``mask=``).
    batch_first : bool

    Returns
    -------
    callable ``(input, target, lengths=None) -> (loss, dinput)``
    """
    time_axis = 1 if batch_first else 0

    def masked(input, target, lengths: Optional[np.ndarray] = None):
        if lengths is None:
            return loss(input, target)
        T = np.shape(input)[time_axis]
        return loss(input, target, mask=sequence_mask(lengths, T, batch_first=batch_first))

    masked.__name__ = f"sequence_{getattr(loss, '__name__', 'loss')}"
    masked.__doc__ = f"{masked.__name__}(input, target, lengths=None): see sequence_loss."
    return masked
