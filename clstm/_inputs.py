"""Input conversion shared by the toolkit (layers, losses, training): arrays that keep their
own float dtype, integer index arrays, and the time/batch layout of sequence input. Errors
name the argument and say what was expected, as ``clstm._checks``."""
import inspect

import numpy as np

from ._checks import check_lengths, float_array, float_dtype, from_torch


def float_input(name, value):
    """``value`` as a C-contiguous float32 or float64 array of its own dtype (for layers
    without parameters, and losses: they compute in the input's precision). Other floats
    (float16, longdouble) and non-floats are a TypeError rather than a silent cast."""
    a = float_array(name, value, None)
    float_dtype(a.dtype, name)
    return a


def int_input(name, value, what="an integer array"):
    """``value`` as an integer array (class indices, token ids); anything else, floats
    included, is a TypeError: a float index is almost always a bug upstream."""
    try:
        a = np.asarray(from_torch(value))
    except Exception as exc:
        raise TypeError(f"{name} must be {what}, could not convert "
                        f"{type(value).__name__}: {exc}") from None
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be {what}, got dtype {a.dtype}")
    return a


def bool_input(name, value):
    a = np.asarray(from_torch(value))
    if a.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array, got dtype {a.dtype}")
    return a


def batch_major(name, x, batch_first, n_features=None):
    """A sequence input ``(T, B, F)`` (``(B, T, F)`` with ``batch_first``) or unbatched
    ``(T, F)``, as the LSTM's, seen batch-major: ``(x (B, T, F), batched)``. The result may
    be a view of ``x``; ``to_caller`` undoes the layout."""
    if x.ndim == 2:
        x_bm, batched = x[None], False
    elif x.ndim == 3:
        x_bm, batched = (x if batch_first else x.transpose(1, 0, 2)), True
    else:
        layout = "(B, T, F)" if batch_first else "(T, B, F)"
        raise ValueError(f"{name} must be 3-D {layout} or unbatched 2-D (T, F), got shape "
                         f"{x.shape}")
    if n_features is not None and x_bm.shape[2] != n_features:
        layout = "(B, T, {0})" if batch_first else "(T, B, {0})"
        raise ValueError(f"{name} must have {n_features} features on its last axis: "
                         f"{layout.format(n_features)} or (T, {n_features}), got shape "
                         f"{x.shape}")
    return x_bm, batched


def to_caller(a_bm, batched, batch_first):
    """Undo ``batch_major`` for an array ``(B, T, ...)``."""
    if not batched:
        return a_bm[0]
    return a_bm if batch_first else np.swapaxes(a_bm, 0, 1)


def sequence_lengths(lengths, T, B):
    """Validated lengths ``(B,)`` in ``[0, T]``, or all ``T`` when None."""
    if lengths is None:
        return np.full(B, T, np.intp)
    return check_lengths(lengths, T, B)


def keywords_taken(fn, names, named=False):
    """Which of ``names`` the callable takes as keyword arguments (all of them with a
    ``**kwargs``, unless ``named``: then only those it names): how `Sequential` and
    ``fit`` know whom to give ``lengths``, ``state`` and ``input_grad``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return frozenset()
    if not named and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return frozenset(names)
    return frozenset(k for k in names if k in params and params[k].kind is not
                     inspect.Parameter.POSITIONAL_ONLY)
