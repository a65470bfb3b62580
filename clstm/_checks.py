"""Input validation shared by the functional and class APIs: errors name the argument and
say what shape or dtype was expected."""
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(dtype, name="dtype"):
    """np.dtype(dtype), which must be float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def flag(name, value):
    """``value`` as a bool if it is one (Python's or NumPy's), else a TypeError naming
    ``name``: a flag given None or a string is a mistake, not False or True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def positive_int(name, value, minimum=1):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def from_torch(value):
    """A torch.Tensor detached from autograd and on the CPU (NumPy can then view it, even
    one that requires grad); anything else as it is."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
    return value


def private_copy(a, caller_value):
    """``a``, copied if it may share memory with the caller's ``caller_value`` (an array or
    a torch tensor): a training cache must not see the caller's later writes."""
    return a.copy() if np.may_share_memory(a, from_torch(caller_value)) else a


def number(name, value, low=0.0, high=None):
    """``value`` as a float in ``[low, high)`` (``[low, inf)`` without ``high``), as
    PyTorch checks its hyper-parameters: a real number (a 0-d array or tensor too), not a
    bool or a string (a TypeError naming ``name``); nan is out of range (ValueError)."""
    if isinstance(value, (bool, np.bool_)) or not (isinstance(value, numbers.Real)
                                                   or hasattr(value, "__float__")):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} "
                        f"({exc})") from None
    if not (low <= value and (high is None or value < high)):
        interval = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"Invalid {name} value: {value} (must be {interval})")
    return value


def generator_from_seed(seed, name="seed"):
    """``numpy.random.default_rng(seed)``, with an error naming ``seed`` (None, an int >= 0,
    a sequence of them, a SeedSequence or a Generator)."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be None or an int >= 0 (or a numpy SeedSequence or "
                        f"Generator), got {seed!r}: {exc}") from None


def generator(rng, name="rng"):
    """``rng`` if it is a numpy.random.Generator (or a legacy RandomState), else a TypeError
    naming ``name``."""
    if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
        raise TypeError(f"{name} must be a numpy.random.Generator (np.random.default_rng("
                        f"seed)) or None, got {type(rng).__name__}")
    return rng


def float_array(name, value, dtype):
    """``value`` as a C-contiguous, aligned array of ``dtype``; any real float input is
    accepted and cast, anything else (ints, bools, complex, objects) is a TypeError."""
    value = from_torch(value)
    try:
        a = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be a float array, could not convert "
                        f"{type(value).__name__}: {exc}") from None
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    a = np.asarray(a, dtype=dtype, order="C")
    # the kernels read whole elements at their natural alignment (a pickled or
    # frombuffer array may sit anywhere)
    return a if a.flags.aligned else a.copy()


def _fmt(expected):
    return "(" + ", ".join(str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"


def check_shape(name, a, expected):
    """``expected`` holds ints or names; a name matches any size (the first time) and must
    match the same size wherever it occurs again."""
    if a.ndim != len(expected):
        raise ValueError(f"{name} must have shape {_fmt(expected)} ({len(expected)}-D), "
                         f"got shape {a.shape}")
    bound = {}
    for size, want in zip(a.shape, expected):
        if isinstance(want, str):
            want = bound.setdefault(want, size)
        if size != want:
            raise ValueError(f"{name} must have shape {_fmt(expected)}, got {a.shape}")
    return a


BLAS_INT_MAX = 2**31 - 1


def check_blas_sizes(n_rows, n_input, n_hidden):
    """BLAS takes 32-bit sizes: the packed rows, 4H and I must fit."""
    if max(n_rows, 4 * n_hidden, n_input) > BLAS_INT_MAX:
        raise ValueError(f"{n_rows} sequence steps of input size {n_input} and hidden size "
                         f"{n_hidden} are too large for 32-bit BLAS: T*B, 4*H and the input "
                         f"size must each be at most {BLAS_INT_MAX}")


def check_lengths(lengths, T, B):
    """``lengths`` as an intp array of shape (B,) with every value in [0, T]."""
    try:
        a = np.asarray(from_torch(lengths))
    except Exception as exc:
        raise TypeError(f"lengths must be an integer array of shape ({B},), could not convert "
                        f"{type(lengths).__name__}: {exc}") from None
    if a.size == 0 and a.dtype.kind == "f":  # () or [] for an empty batch: NumPy's float64
        a = a.astype(np.intp)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array of shape ({B},), got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per batch row), "
                         f"got {a.shape}")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must be in [0, {T}] (the sequence length), got values from "
                         f"{a.min()} to {a.max()}")
    return a.astype(np.intp)
