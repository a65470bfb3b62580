"""Getting data into batches: padding variable-length sequences (`pad_sequences`), cutting a
time series into training windows (`windows`), and the pieces of ``clstm.fit`` and
``clstm.predict`` that any training loop over NumPy arrays can reuse: inputs made ready
(`sample_inputs`), the validation split (`split_validation`) and the mini-batch iteration
(`iterate_batches`)."""
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ._checks import check_lengths, from_torch, positive_int

BatchAxis = Union[int, Sequence[int]]


def pad_sequences(sequences, *, batch_first: bool = False, padding_value=0,
                  dtype=None) -> Tuple[np.ndarray, np.ndarray]:
    """Stack sequences of different lengths into one padded array, as
    ``torch.nn.utils.rnn.pad_sequence``, and return their lengths too.

    Parameters
    ----------
    sequences : sequence of array-likes
        Each of shape ``(L_i, *F)`` with the same trailing shape ``F`` (token ids: ``(L_i,)``).
    batch_first : bool
        Result ``(B, T, *F)`` instead of ``(T, B, *F)``.
    padding_value : scalar
        Fills the steps past each sequence's end.
    dtype : optional
        Of the result; default: the sequences' common dtype (integer ids stay integers).

    Returns
    -------
    padded : array ``(T, B, *F)`` or ``(B, T, *F)``, ``T = max(L_i)``
    lengths : int array ``(B,)``
        Ready for the ``lengths`` argument of the LSTM, the pooling layers and ``fit``.

    Raises
    ------
    ValueError
        No sequences, a 0-D one, or trailing shapes that differ.
    """
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("sequences is empty: nothing to pad")
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"sequences[{i}] must have a time axis (shape (L, ...)), got a "
                             f"scalar")
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"sequences[{i}] has shape {a.shape}; every sequence must be "
                             f"(L, *{arrays[0].shape[1:]}) like sequences[0]")
    lengths = np.array([len(a) for a in arrays], np.intp)
    dtype = np.result_type(*arrays) if dtype is None else np.dtype(dtype)
    padded = np.full((len(arrays), int(lengths.max())) + arrays[0].shape[1:], padding_value,
                     dtype)
    for row, a in zip(padded, arrays):
        row[:len(a)] = a
    return (padded if batch_first else np.ascontiguousarray(padded.swapaxes(0, 1))), lengths


def windows(series, window: int, horizon: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """All ``(inputs, target)`` pairs of a time series for a forecaster: ``window``
    consecutive steps and the step ``horizon`` after the window's last one.

    Parameters
    ----------
    series : array-like ``(T,)`` or ``(T, F)``
    window : int
        Steps the model reads.
    horizon : int
        1 forecasts the next step.

    Returns
    -------
    x : array ``(N, window, F)``
        Batch-first (``batch_axis=0`` in ``fit``; ``F = 1`` for a 1-D series).
    y : array ``(N, F)``
        ``y[i] = series[i + window + horizon - 1]``; ``N = T - window - horizon + 1``.

    Raises
    ------
    ValueError
        A series too short for one window, or one that is not 1-D or 2-D.
    """
    window = positive_int("window", window)
    horizon = positive_int("horizon", horizon)
    s = np.asarray(series)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"series must have shape (T,) or (T, F), got {s.shape}")
    n = len(s) - window - horizon + 1
    if n < 1:
        raise ValueError(f"series of {len(s)} steps is too short for a window of {window} "
                         f"and a horizon of {horizon} (needs at least {window + horizon})")
    starts = np.arange(n)
    x = s[starts[:, None] + np.arange(window)[None, :]]
    return x, s[starts + window + horizon - 1]


def _axes(batch_axis, n_arrays):
    """One sample axis per array: an int applies to all."""
    if isinstance(batch_axis, (int, np.integer)) and not isinstance(batch_axis, bool):
        return [int(batch_axis)] * n_arrays
    axes = [positive_int("batch_axis", a, minimum=0) for a in batch_axis]
    if len(axes) != n_arrays:
        raise ValueError(f"batch_axis must be an int or one axis per array ({n_arrays}), "
                         f"got {tuple(batch_axis)}")
    return axes


def n_samples(arrays, batch_axis: BatchAxis = 0, names=None) -> int:
    """The number of samples the arrays (None entries skipped) share along their
    ``batch_axis``; a ValueError naming the arrays if they disagree."""
    names = names or [f"arrays[{i}]" for i in range(len(arrays))]
    counts = []
    for a, axis, name in zip(arrays, _axes(batch_axis, len(arrays)), names):
        if a is None:
            continue
        if not 0 <= axis < a.ndim:
            raise ValueError(f"batch_axis {axis} is not an axis of {name} (shape {a.shape})")
        counts.append((name, a.shape[axis], axis))
    if not counts:
        raise ValueError("no arrays to take samples from")
    if len({c for _, c, _ in counts}) > 1:
        detail = ", ".join(f"{name} {c} (axis {axis})" for name, c, axis in counts)
        raise ValueError(f"the arrays disagree on the number of samples along batch_axis: "
                         f"{detail}; for targets with the sample axis elsewhere pass "
                         f"batch_axis=(x_axis, y_axis)")
    return counts[0][1]


def iterate_batches(arrays: Sequence[Optional[np.ndarray]], batch_size: int, *,
                    batch_axis: BatchAxis = 0, lengths=None,
                    shuffle: Union[bool, np.random.Generator] = False
                    ) -> Iterator[Tuple[Tuple[Optional[np.ndarray], ...], Optional[np.ndarray]]]:
    """Mini-batches of several arrays that share their samples (inputs, targets...).

    Parameters
    ----------
    arrays : sequence of arrays (None entries are passed through as None)
    batch_size : int
        The last batch may be smaller.
    batch_axis : int or sequence of ints
        The axis that indexes samples: one for all arrays, or one per array (e.g.
        ``(1, 0)`` for time-major inputs ``(T, N, I)`` with per-sequence targets ``(N, C)``).
    lengths : int array ``(N,)``, optional
        Sliced along with the samples.
    shuffle : bool or numpy.random.Generator
        Visit the samples in a random order: True draws it from NumPy's global generator
        (``np.random.seed`` makes it repeatable, as Keras's ``fit``), a Generator from that.

    Yields
    ------
    batch : tuple of arrays
        Each array's samples for this batch (views when not shuffled, copies otherwise).
    lengths : int array ``(b,)`` or None
    """
    batch_size = positive_int("batch_size", batch_size)
    axes = _axes(batch_axis, len(arrays))
    n = n_samples(arrays, axes)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (n,):
            raise ValueError(f"lengths must have shape ({n},) (one per sample), got "
                             f"{lengths.shape}")
    if isinstance(shuffle, np.random.Generator):
        order = shuffle.permutation(n)
    elif shuffle:
        order = np.random.permutation(n)
    else:
        order = None
    for start in range(0, n, batch_size):
        if order is None:
            index = slice(start, start + batch_size)
            batch = tuple(None if a is None else a[(slice(None),) * ax + (index,)]
                          for a, ax in zip(arrays, axes))
        else:
            index = order[start:start + batch_size]
            batch = tuple(None if a is None else np.take(a, index, axis=ax)
                          for a, ax in zip(arrays, axes))
        yield batch, (None if lengths is None else lengths[index])


def check_sample_lengths(lengths, x, batch_axis: int):
    """``lengths`` for the samples of ``x`` (``(N,)``, each in ``[0, T]``, the time axis
    being the other one of the first two)."""
    if x.ndim < 2:
        raise ValueError(f"lengths need sequences: x must have a time and a sample axis, got "
                         f"shape {x.shape}")
    time_axis = 1 if batch_axis == 0 else 0
    return check_lengths(lengths, x.shape[time_axis], x.shape[batch_axis])


def as_array(name, value) -> np.ndarray:
    """``value`` (an array, a list, a torch.Tensor) as an array, as it is (no cast)."""
    value = from_torch(value)
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except ValueError:
        raise ValueError(f"{name} is a ragged list: pass x as a list of sequences (they are "
                         f"padded) or as one array") from None


def sample_inputs(x, lengths=None, batch_axis: int = 0):
    """``(x, lengths)`` ready for batching: ``x`` as an array (a list or tuple of
    sequences is padded with `pad_sequences`, batch-first for ``batch_axis=0``, and its
    lengths are used unless ``lengths`` is given) and ``lengths`` validated against it
    (``(N,)``, each in ``[0, T]``) or None."""
    if isinstance(x, (list, tuple)):
        x, own = pad_sequences(x, batch_first=(batch_axis == 0))
        lengths = own if lengths is None else lengths
    x = as_array("x", x)
    if lengths is not None:
        lengths = check_sample_lengths(lengths, x, batch_axis)
    return x, lengths


def split_validation(x, y, lengths, validation, batch_axis: BatchAxis, n: int):
    """``(train, held_out)``, each a triple ``(x, y, lengths)`` (``held_out`` None without
    validation), for ``fit``'s ``validation``: None, a fraction in (0, 1) (the *last*
    ``n * fraction`` samples, before any shuffling, as Keras's ``validation_split``), or
    ``(x_val, y_val[, lengths_val])``. ``batch_axis`` as in `iterate_batches` (for x and
    y); ``n`` is the number of samples."""
    axes = _axes(batch_axis, 2)
    if validation is None:
        return (x, y, lengths), None
    if isinstance(validation, (tuple, list)):
        if len(validation) not in (2, 3):
            raise ValueError("validation must be a fraction, (x_val, y_val) or (x_val, y_val, "
                             f"lengths_val), got a sequence of {len(validation)}")
        vx, vl = sample_inputs(validation[0], validation[2] if len(validation) == 3 else None,
                               axes[0])
        vy = as_array("y_val", validation[1])
        n_samples([vx, vy], axes, ["x_val", "y_val"])
        return (x, y, lengths), (vx, vy, vl)
    fraction = float(validation)
    if not 0 < fraction < 1:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")
    cut = int(n * (1 - fraction))
    if cut in (0, n):
        raise ValueError(f"validation={validation} of {n} samples leaves an empty training "
                         f"or validation set")

    def part(a, axis, index):
        return None if a is None else a[(slice(None),) * axis + (index,)]

    train = (part(x, axes[0], slice(None, cut)), part(y, axes[1], slice(None, cut)),
             part(lengths, 0, slice(None, cut)))
    held = (part(x, axes[0], slice(cut, None)), part(y, axes[1], slice(cut, None)),
            part(lengths, 0, slice(cut, None)))
    return train, held
