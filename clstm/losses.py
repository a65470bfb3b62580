"""Losses with their gradients: each returns ``(loss, dinput)``, the loss a Python float and
the gradient of the loss with respect to the input, in the input's dtype. Mean reduction,
as PyTorch's default."""
import numpy as np

from ._checks import float_array, float_dtype


def _float_input(name, value):
    a = float_array(name, value, None)
    float_dtype(a.dtype, name)  # float16 / longdouble: TypeError rather than a silent cast
    return a


def mse_loss(input, target):
    """``mean((input - target)**2)`` over all elements, and its gradient
    ``2 * (input - target) / input.size``. ``target`` must have ``input``'s shape (PyTorch
    would broadcast with a warning); it is cast to ``input``'s dtype. Empty input gives
    ``nan``, as PyTorch."""
    input = _float_input("input", input)
    target = float_array("target", target, input.dtype)
    if target.shape != input.shape:
        raise ValueError(f"target must have input's shape {input.shape}, got {target.shape}")
    diff = input - target
    if diff.size == 0:
        return float("nan"), diff
    return float(np.mean(diff * diff)), diff * input.dtype.type(2.0 / diff.size)


def cross_entropy(logits, target, ignore_index=-100):
    """Softmax cross-entropy with integer class targets, mean over the targets that are not
    ``ignore_index`` (``torch.nn.functional.cross_entropy`` with ``reduction="mean"``).

    ``logits`` has shape ``(..., C)``: classes on the **last** axis (PyTorch puts them on
    axis 1; for ``(N, C)`` the two agree, for a ``(T, B, C)`` LSTM output pass it as is).
    ``target`` has shape ``(...)``, integers in ``[0, C)`` or ``ignore_index``.
    Returns ``(loss, dlogits)``. When every target is ignored (or there are none) the loss
    is ``nan`` (0/0, as PyTorch) and ``dlogits`` is all zeros (as PyTorch's backward).
    """
    logits = _float_input("logits", logits)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., C) with C >= 1 classes on the last "
                         f"axis, got {logits.shape}")
    C = logits.shape[-1]
    if hasattr(target, "detach") and hasattr(target, "cpu"):  # a torch.Tensor
        target = target.detach().cpu()
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must be an integer array of class indices, got dtype "
                        f"{target.dtype}")
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

    # log-softmax with the row maximum subtracted: exp never overflows
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    n_valid = int(valid.sum())
    safe_target = np.where(valid, target, 0)[..., None]
    picked = np.take_along_axis(log_p, safe_target, axis=-1)[..., 0]
    dlogits = np.exp(log_p)
    np.put_along_axis(dlogits, safe_target,
                      np.take_along_axis(dlogits, safe_target, axis=-1) - 1, axis=-1)
    dlogits *= valid[..., None]
    if n_valid == 0:
        return float("nan"), dlogits
    dlogits *= logits.dtype.type(1.0 / n_valid)
    return float(-picked[valid].sum() / n_valid), dlogits
