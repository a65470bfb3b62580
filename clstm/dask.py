"""Scale clstm out on Dask: inference over arrays larger than one machine, and synchronous
data-parallel training on a ``dask.distributed`` cluster.

    >>> import clstm.dask                                        # doctest: +SKIP
    >>> scores = clstm.dask.predict(model, x)   # x: a dask array chunked on the batch axis
    >>> history = clstm.dask.fit(model, clstm.mse_loss, opt, x, y, client=client,
    ...                          epochs=3, batch_size=256, batch_axis=1)

Needs the ``dask`` extra (``pip install "clstm-cpu[dask]"``: dask[array] and distributed);
``import clstm`` never imports this module. ``docs/dask.md`` has the design, the thread
policy, the measured costs and how to run on a real cluster.

Thread policy: a distributed worker's nanny sets ``OMP_NUM_THREADS=1``, so clstm would run
one OpenMP thread per call whatever the worker was given. Every task here first calls
`match_worker_threads`, which sets ``clstm.set_num_threads`` to the worker's thread count
(``ThreadPolicy`` does the same as a worker plugin, for your own tasks). Several Dask
threads of one worker then never oversubscribe: clstm's kernel calls run one at a time per
process, each on the worker's threads.
"""
from __future__ import annotations

import math
import operator
import pickle
import threading
import uuid
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError('clstm.dask needs dask[array] and distributed: '
                      'pip install "clstm-cpu[dask]"') from exc

from . import Sequential, get_num_threads, set_num_threads
from ._inputs import keywords_taken

__all__ = ["predict", "fit", "match_worker_threads", "ThreadPolicy"]


# ------------------------------------------------------------------------ thread policy
def match_worker_threads() -> int:
    """Give clstm as many threads as the Dask worker this runs in has (the nanny's
    ``OMP_NUM_THREADS=1`` would otherwise hold it to one); outside a worker, change nothing.

    Returns
    -------
    int
        clstm's thread count afterwards.
    """
    try:
        worker = distributed.get_worker()
    except ValueError:  # not inside a distributed worker (local scheduler, driver)
        return get_num_threads()
    n = worker.state.nthreads
    if get_num_threads() != n:
        set_num_threads(n)
    return n


class ThreadPolicy(distributed.WorkerPlugin):
    """Worker plugin running `match_worker_threads` on every worker, including those that
    join later: ``client.register_plugin(clstm.dask.ThreadPolicy())``. `predict` and `fit`
    do not need it (their tasks call `match_worker_threads` themselves); it is for clstm
    calls in tasks of your own."""

    name = "clstm-thread-policy"

    def setup(self, worker):
        set_num_threads(worker.state.nthreads)


# ------------------------------------------------------------------------ running a model
def _first(out):
    """A module returning ``(y, state)`` (LSTM) passes on ``y``, as `clstm.Sequential`."""
    return out[0] if isinstance(out, tuple) else out


def _takes(fn, name):
    """Whether ``fn`` names the keyword argument ``name`` (a ``**kwargs`` does not count)."""
    return name in keywords_taken(fn, (name,), named=True)


def _modules(model):
    """The leaf modules in call order (a `Sequential` is walked, nested ones too)."""
    if isinstance(model, Sequential):
        return [leaf for m in model for leaf in _modules(m)]
    return [model]


def _check_takes_lengths(model, fn_name):
    if not any(_takes(getattr(m, fn_name), "lengths") for m in _modules(model)):
        raise TypeError(f"lengths needs a model with a recurrent layer that takes lengths "
                        f"(clstm.LSTM, or a Sequential holding one); {type(model).__name__} "
                        f"has none")


def _forward(model, x, lengths):
    """Inference through ``model``, giving ``lengths`` to every module that takes them
    (`Sequential` itself does not, so its children are called here one by one)."""
    for m in _modules(model):
        if lengths is not None and _takes(m, "lengths"):
            x = _first(m(x, lengths=lengths))
        else:
            x = _first(m(x))
    return x


def _forward_train(model, x, lengths, rng):
    """``pred, backward`` of ``model.forward_train`` with ``lengths`` and the dropout
    generator ``rng`` (a `Sequential` hands both on to the modules that take them), and
    ``input_grad=False`` where it is named: nothing here uses the gradient of x."""
    kw = {} if lengths is None else {"lengths": lengths}
    for name, value in (("rng", rng), ("input_grad", False)):
        if _takes(model.forward_train, name):
            kw[name] = value
    return model.forward_train(x, **kw)


def _default_batch_axis(model, ndim):
    """Where clstm's modules put the batch: axis 0 of 2-D input (cells, Linear) and of
    batch-first input, else axis 1 (time-major ``(T, B, I)``)."""
    if ndim <= 2:
        return 0
    return 0 if getattr(_modules(model)[0], "batch_first", False) else 1


def _int(name, value):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _axis(name, axis, ndim, what="input"):
    axis = _int(name, axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for {ndim}-D {what}")
    return axis % ndim


def _positive(name, value):
    value = _int(name, value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _batch_chunked(name, a, batch_axis, batch_chunks="auto"):
    """``a`` (NumPy or dask) as a dask array with one chunk along every axis but
    ``batch_axis``: the model needs whole sequences and whole feature vectors."""
    if isinstance(a, da.Array):
        if any(len(c) > 1 for ax, c in enumerate(a.chunks) if ax != batch_axis):
            # merging is cheap next to an LSTM over the block, and every block needs it
            a = a.rechunk({ax: -1 for ax in range(a.ndim) if ax != batch_axis})
        if batch_chunks != "auto" and a.chunks[batch_axis] != batch_chunks:
            a = a.rechunk({batch_axis: batch_chunks})
        return a
    try:
        a = np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be a dask or NumPy array, could not convert "
                        f"{type(a).__name__}: {exc}") from None
    chunks = {ax: -1 for ax in range(a.ndim)}
    chunks[batch_axis] = batch_chunks
    return da.from_array(a, chunks=chunks)


def _check_lengths(lengths, n_rows):
    """``lengths`` (NumPy or dask) checked for kind, dtype and shape ``(n_rows,)``; the values
    are checked by the model in each block (and here already when they are NumPy)."""
    if not isinstance(lengths, da.Array):
        try:
            lengths = np.asarray(lengths)
        except Exception as exc:
            raise TypeError(f"lengths must be an integer array of shape ({n_rows},), could "
                            f"not convert {type(lengths).__name__}: {exc}") from None
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array of shape ({n_rows},), got dtype "
                        f"{lengths.dtype}")
    if lengths.shape != (n_rows,):
        raise ValueError(f"lengths must have shape ({n_rows},) (one length per batch row), "
                         f"got {lengths.shape}")
    if isinstance(lengths, np.ndarray) and n_rows and lengths.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.min()}")
    return lengths


def _axis_pair(batch_axis, ndims, names):
    """``batch_axis`` as one axis per array (an int: the same for all), each checked
    against its array's number of axes. A pair as in ``clstm.fit``/``clstm.predict``."""
    axes = tuple(batch_axis) if isinstance(batch_axis, (tuple, list)) else \
        (batch_axis,) * len(ndims)
    if len(axes) != len(ndims):
        raise ValueError(f"batch_axis must be an int or a pair ({', '.join(names)}), got "
                         f"{batch_axis!r}")
    return tuple(_axis("batch_axis", a, n, name) for a, n, name in zip(axes, ndims, names))


def _take(a, axis, rows):
    return a[(slice(None),) * axis + (rows,)]


def _predict_block(x, lengths, model, x_axis, out_axis, batch_size, token):
    """One block: the model over ``batch_size`` rows at a time, outputs concatenated."""
    match_worker_threads()
    model = _thread_model(model, token)
    n = x.shape[x_axis]
    step = batch_size or max(n, 1)
    outs = [_forward(model, _take(x, x_axis, slice(i, i + step)),
                     None if lengths is None else lengths[i:i + step])
            for i in range(0, max(n, 1), step)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=out_axis)


def predict(model: Any, x: Any, *, lengths: Any = None, batch_size: Optional[int] = None,
            batch_axis: Union[int, Sequence[int], None] = None) -> "da.Array":
    """Run ``model`` over a dask array, lazily, one task per batch chunk.

    Parameters
    ----------
    model : clstm module
        ``LSTM``, ``LSTMCell``, a frozen cell, ``Linear``, ``Sequential`` (or any picklable
        callable mapping a NumPy batch to a NumPy batch). A snapshot is taken now: later
        changes to ``model`` do not reach the result. The snapshot is one key of the graph,
        so each worker receives it once, whatever the number of chunks.
    x : dask.array.Array or numpy.ndarray
        Input, e.g. ``(T, B, I)`` (``(B, T, I)`` for a batch-first model, ``(B, I)`` for a
        cell). Chunks along any axis but the batch axis are merged (``rechunk``); a NumPy
        array is wrapped with dask's automatic chunk size along the batch axis.
    lengths : dask.array.Array or numpy.ndarray, optional
        Integer sequence lengths, shape ``(B,)``, passed to every module that takes them
        (``LSTM``, also inside ``Sequential``). Rechunked to match ``x``'s batch chunks.
    batch_size : int, optional
        Rows per model call inside a block (bounds a worker's memory; results do not
        depend on it). Default: the whole block in one call.
    batch_axis : int or (x_axis, out_axis), optional
        The batch axis of ``x`` and of the output; a pair when they differ (``(1, 0)``:
        time-major input, one output row per sequence), as in ``clstm.predict``. Default:
        0 for 2-D input and for a batch-first model, else 1, for both.

    Returns
    -------
    dask.array.Array
        The model's output (element 0 of a tuple result, as ``Sequential`` passes on),
        chunked as ``x`` along the batch axis; equal to the model run locally.

    Raises
    ------
    TypeError
        ``x`` or ``lengths`` of the wrong kind, or ``lengths`` for a model that takes none.
    ValueError
        ``lengths`` of the wrong shape, ``batch_axis`` out of range, a ``batch_size`` < 1,
        or a model whose output has no batch on ``out_axis``.
    """
    if not callable(model):
        raise TypeError(f"model must be a callable clstm module, got {type(model).__name__}")
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        x = np.asarray(x)
        ndim = x.ndim
    if ndim == 0:
        raise ValueError("x must have a batch axis, got a 0-D array")
    if batch_axis is None:
        batch_axis = _default_batch_axis(model, ndim)
    if isinstance(batch_axis, (tuple, list)):
        if len(batch_axis) != 2:
            raise ValueError(f"batch_axis must be an int or a pair (x_axis, out_axis), got "
                             f"{batch_axis!r}")
        x_axis, out_axis = batch_axis
    else:
        x_axis = out_axis = batch_axis
    x_axis = _axis("batch_axis", x_axis, ndim)
    out_axis = _int("batch_axis", out_axis)
    if batch_size is not None:
        batch_size = _positive("batch_size", batch_size)
    x = _batch_chunked("x", x, x_axis)
    blocks = x.to_delayed().ravel()  # one per batch chunk, in order (the rest is 1 chunk)
    len_blocks = [None] * len(blocks)
    if lengths is not None:
        _check_takes_lengths(model, "__call__")
        lens = _batch_chunked("lengths", _check_lengths(lengths, x.shape[x_axis]), 0,
                              x.chunks[x_axis])
        len_blocks = lens.to_delayed().ravel()

    # The output's shape and dtype from one row run locally: shapes other than the batch
    # may change (features I -> H, or the time axis pooled away).
    payload = pickle.dumps(model, protocol=4)  # the snapshot
    probe = _forward(pickle.loads(payload), np.zeros(_take(x, x_axis, slice(0, 1)).shape,
                                                     x.dtype), None)
    if not (-probe.ndim <= out_axis < probe.ndim and probe.shape[out_axis] == 1):
        raise ValueError(f"the model's output must have the batch on axis {out_axis} "
                         f"(batch_axis=(x_axis, out_axis) when they differ); one row of x "
                         f"gave an output of shape {probe.shape}")
    out_axis %= probe.ndim
    # The pickled model is one key of the graph (pure=False: a random name, not a hash of
    # its bytes); each worker fetches it once and each worker thread unpickles it once.
    model_key = dask.delayed(payload, pure=False)
    token = uuid.uuid4().hex
    run = dask.delayed(_predict_block, pure=True)
    parts = []
    for xb, lb, n in zip(blocks, len_blocks, x.chunks[x_axis]):
        shape = tuple(n if ax == out_axis else k for ax, k in enumerate(probe.shape))
        parts.append(da.from_delayed(run(xb, lb, model_key, x_axis, out_axis, batch_size,
                                         token), shape, dtype=probe.dtype))
    return da.concatenate(parts, axis=out_axis)


# ------------------------------------------------------------------------ training
def _flat(arrays, names, dtype):
    """The named arrays raveled into one vector: one message instead of one per array."""
    return np.concatenate([arrays[n].ravel() for n in names]).astype(dtype, copy=False)


def _unflat(flat, arrays, names):
    """Copy a `_flat` vector back into the arrays, in place."""
    start = 0
    for n in names:
        a = arrays[n]
        a[...] = flat[start:start + a.size].reshape(a.shape)
        start += a.size


def _batches(n_rows, batch_size, shuffle, rng):
    """One epoch's batches: arrays of row indices, ``batch_size`` each (the last may be
    smaller), a fresh permutation from ``rng`` when ``shuffle``. (The one place that
    decides the batches: to be swapped for clstm.data's iterator once it lands.)"""
    order = rng.permutation(n_rows) if shuffle else np.arange(n_rows)
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


_local = threading.local()


def _thread_model(payload, token):
    """This thread's own model for the `fit` or `predict` call ``token``, unpickled once
    from ``payload``. The model travels as pickled bytes, not as an object: distributed
    would send its arrays as separate frames that may arrive unaligned, which compiled
    objects may refuse while they unpickle (outside any code of ours); ``pickle.loads`` of
    protocol-4 bytes allocates fresh, aligned, writable arrays. Per thread, because a
    worker with several threads may run two shards at once, each with its parameters."""
    if getattr(_local, "token", None) != token:
        _local.token, _local.model = token, pickle.loads(payload)
    return _local.model


def _shard_step(model, flat_params, x, y, lengths, rows, *, loss, axes, names, seed, token):
    """One shard of one step, on the worker holding the data: load the parameters, run
    forward/backward on ``rows`` of this partition, and return ``(n * grad, n * loss, n)``
    so that a plain sum over shards divided by the summed ``n`` is the batch mean."""
    match_worker_threads()
    m = _thread_model(model, token)
    _unflat(flat_params, m.params, names)
    m.zero_grad()
    lens = None if lengths is None else lengths[rows]
    pred, backward = _forward_train(m, _take(x, axes[0], rows), lens,
                                    np.random.default_rng(seed))
    # a loss taking lengths (a masked sequence loss) gets them, as in clstm.fit
    kw = {"lengths": lens} if lens is not None and _takes(loss, "lengths") else {}
    value, dpred = loss(pred, _take(y, axes[1], rows), **kw)
    backward(dpred)
    n = len(rows)
    return _flat(m.grads, names, flat_params.dtype) * n, float(value) * n, n


def _sum_shards(*results):
    """Sum ``(grad, loss, n)`` triples in the order given (a fixed order: the same sums
    whichever worker finishes first)."""
    grad, value, n = results[0]
    grad = grad.copy()
    for g, v, k in results[1:]:
        grad += g
        value += v
        n += k
    return grad, value, n


def _partitions(client, arrays, axes, n_workers):
    """Put the data on the workers once: contiguous row ranges ("partitions"), one task
    result each, spread round-robin. Returns the partition start rows (plus the end) and,
    per array, one future per partition (None for an absent array)."""
    workers = sorted(client.nthreads())
    x = arrays[0]
    n_rows = x.shape[axes[0]]
    if isinstance(x, da.Array):
        bounds = np.concatenate([[0], np.cumsum(x.chunks[axes[0]])])
        batch_chunks = x.chunks[axes[0]]
    else:
        bounds = np.linspace(0, n_rows, min(n_workers, n_rows) + 1).astype(np.intp)
        batch_chunks = tuple(np.diff(bounds))
    futures = []
    for i, (a, axis) in enumerate(zip(arrays, axes)):
        if a is None:
            futures.append(None)
            continue
        if not isinstance(x, da.Array):
            parts = [_take(a, axis, slice(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
            futures.append([client.scatter(p, workers=[workers[j % len(workers)]], hash=False)
                            for j, p in enumerate(parts)])
        else:
            blocks = _batch_chunked("xyl"[i], a, axis, batch_chunks).to_delayed().ravel()
            futures.append([client.compute(b, workers=[workers[j % len(workers)]])
                            for j, b in enumerate(blocks)])
    return bounds, futures


def fit(model: Any, loss: Callable, optimizer: Any, x: Any, y: Any, *,
        client: "distributed.Client", epochs: int, batch_size: int, lengths: Any = None,
        batch_axis: Union[int, Sequence[int]] = 0,
        shuffle: Union[bool, np.random.Generator] = True, seed: Optional[int] = None,
        progress: bool = True) -> dict:
    """Synchronous data-parallel training on a ``dask.distributed`` cluster.

    The rows of ``x``, ``y`` (and ``lengths``) are split into partitions that stay on the
    workers for the whole run: a dask array's chunks along ``batch_axis``, or one
    contiguous range per worker for NumPy input. Each step takes the next batch of row
    indices, broadcasts the current parameters to the workers (one vector), lets every
    partition holding rows of the batch compute the gradient of ``loss`` on them (its
    "shard"), sums the shards' row-weighted gradients in a tree of tasks on the workers,
    fetches the sum (one vector), divides by the batch's rows, and runs
    ``optimizer.step()`` here, on ``model``. For a loss that averages over rows (``mse_loss``;
    ``cross_entropy`` without ignored targets) this is the full-batch gradient, so the run
    equals single-process training on the same batches, to rounding.

    Dropout: the shard of partition ``p`` at step ``s`` draws its masks from
    ``numpy.random.default_rng([seed, s, p])``. The run therefore equals a single process
    that accumulates the gradient of each step shard by shard with those generators; it
    does not depend on the number of workers (for a given partitioning), but it is not the
    same draw as one forward over the whole batch with one generator.

    Parameters
    ----------
    model : clstm module
        ``LSTM``, ``Linear``, ``Sequential``...: anything with ``forward_train``,
        ``params``, ``grads`` and ``zero_grad``. Sent to each worker once.
    loss : callable
        ``loss(pred, target) -> (value, dpred)``, mean-reduced (``clstm.mse_loss``,
        ``clstm.cross_entropy``); given ``lengths=`` too when it takes them. Must pickle
        (a module-level function).
    optimizer : clstm.optim optimizer
        Built on ``model``; ``step()`` runs here after each reduction.
    x, y : numpy.ndarray or dask.array.Array
        Inputs and targets, samples on ``batch_axis``.
    client : distributed.Client
        The cluster to run on.
    epochs, batch_size : int
        Passes over the data (0: none); rows per step (the last batch of an epoch may be
        smaller).
    lengths : numpy.ndarray or dask.array.Array, optional
        Integer sequence lengths, shape ``(N,)``, for every module taking them.
    batch_axis : int or (x_axis, y_axis)
        The sample axis of ``x`` and ``y``: 0 for batch-first data, 1 for time-major
        ``(T, N, ...)``; a pair when they differ, e.g. ``(1, 0)`` for time-major ``x`` and
        one target per sequence (as in ``clstm.fit``).
    shuffle : bool or numpy.random.Generator
        A new permutation of the rows each epoch, from that generator or
        ``numpy.random.default_rng(seed)``.
    seed : int, optional
        Seeds the shuffling and the dropout generators; default: fresh entropy.
    progress : bool
        Print each epoch's mean loss.

    Returns
    -------
    dict
        ``{"loss": [mean loss per epoch], "batch_loss": [loss per step]}``; ``model``'s
        parameters are trained in place and ``model.grads`` holds the last step's gradient.
    """
    x, y, lengths, axes, n_rows = _check_fit_args(model, loss, optimizer, x, y, client,
                                                  lengths, batch_axis)
    epochs = _int("epochs", epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    batch_size = _positive("batch_size", batch_size)
    seed = int(np.random.SeedSequence().entropy) if seed is None else _int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_workers = len(client.nthreads())
    if n_workers == 0:
        raise ValueError("client has no workers")
    if any(isinstance(a, da.Array) for a in (x, y, lengths)):
        # one layout for all: partitions are x's chunks along the batch axis, at least one
        # per worker (a single-chunk array would otherwise run on one worker)
        if not isinstance(x, da.Array) or len(x.chunks[axes[0]]) < n_workers:
            x = _batch_chunked("x", x, axes[0], -(-n_rows // n_workers))
    bounds, data = _partitions(client, [x, y, lengths], axes + (0,), n_workers)
    # The model goes to every worker once; each step ships only the parameters.
    payload = pickle.dumps(model, protocol=4)  # see _thread_model
    run = dict(worker_model=client.scatter(payload, broadcast=True, hash=False),
               names=list(model.params), dtype=np.result_type(*model.params.values()),
               bounds=bounds, data=data, loss=loss, axes=axes,
               token=uuid.uuid4().hex)
    shuffle_rng = shuffle if isinstance(shuffle, np.random.Generator) else \
        np.random.default_rng(seed)
    history = {"loss": [], "batch_loss": []}
    step = 0
    for epoch in range(epochs):
        epoch_sum = 0.0
        for rows in _batches(n_rows, batch_size, shuffle is not False, shuffle_rng):
            grad, value, n = _batch_gradient(client, model, rows, seed=[seed, step], **run)
            _unflat(grad / n, model.grads, run["names"])
            optimizer.step()
            history["batch_loss"].append(value / n)
            epoch_sum += value
            step += 1
        history["loss"].append(epoch_sum / n_rows)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.6g}", flush=True)
    return history


def _check_fit_args(model, loss, optimizer, x, y, client, lengths, batch_axis):
    missing = [a for a in ("forward_train", "params", "grads", "zero_grad")
               if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model needs {', '.join(missing)} (a clstm module), got "
                        f"{type(model).__name__}")
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(pred, target) -> (value, dpred), got "
                        f"{type(loss).__name__}")
    if not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer must have step() (a clstm.optim optimizer), got "
                        f"{type(optimizer).__name__}")
    # an optimiser built on another model would step nothing of ours, silently
    own = {id(p) for p in model.params.values()}
    if hasattr(optimizer, "pairs") and not any(id(p) in own for p, _ in optimizer.pairs):
        raise ValueError("optimizer must be built on model's parameters, e.g. "
                         "clstm.optim.Adam(model)")
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    arrays = []
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, da.Array):
            a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"{name} must have a batch axis, got a 0-D array")
        arrays.append(a)
    x, y = arrays
    axes = _axis_pair(batch_axis, (x.ndim, y.ndim), ("x", "y"))
    n_rows = x.shape[axes[0]]
    if math.isnan(n_rows) or n_rows == 0:
        raise ValueError(f"x must have a known, non-zero number of samples on its batch "
                         f"axis {axes[0]}, got shape {x.shape}")
    if y.shape[axes[1]] != n_rows:
        raise ValueError(f"y must have x's {n_rows} samples on its batch axis {axes[1]}, "
                         f"got shape {y.shape}")
    if lengths is not None:
        _check_takes_lengths(model, "forward_train")
        lengths = _check_lengths(lengths, n_rows)
    return x, y, lengths, axes, n_rows


def _batch_gradient(client, model, rows, *, seed, worker_model, names, dtype, bounds, data,
                    loss, axes, token):
    """One step's communication and compute: broadcast the parameters, one task per
    partition holding rows of the batch, a tree sum; returns ``(n * grad, n * loss, n)``."""
    params = client.scatter(_flat(model.params, names, dtype), broadcast=True, hash=False)
    part = np.searchsorted(bounds, rows, side="right") - 1
    x, y, lengths = data
    shards = []
    for p in np.unique(part):  # partitions in order: a fixed order of the sums
        shards.append(client.submit(
            _shard_step, worker_model, params, x[p], y[p],
            None if lengths is None else lengths[p], rows[part == p] - bounds[p],
            loss=loss, axes=axes, names=names, seed=seed + [int(p)],
            token=token, pure=False))
    return client.gather(_tree_sum(client, shards))


def _tree_sum(client, futures: Sequence, fan_in: int = 4):
    """Reduce shard results on the workers in a tree of ``fan_in``-way sums, so the
    client receives one vector per step however many workers there are."""
    while len(futures) > 1:
        futures = [client.submit(_sum_shards, *futures[i:i + fan_in], pure=False)
                   for i in range(0, len(futures), fan_in)]
    return futures[0]
