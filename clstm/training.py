"""A training loop in Keras's shape: ``history = clstm.fit(model, loss, optimizer, x, y,
epochs=..., batch_size=...)`` and ``clstm.predict(model, x, batch_size)``, with callbacks
(`EarlyStopping`, `BestWeights`, `GradientClipping`, `LearningRateSchedule`, `Metric`).

The model is anything with ``__call__`` and ``forward_train`` (a `Sequential`, an LSTM...);
a model returning a tuple (an LSTM's ``y, state``) is scored on element 0. The loss is one
of ``clstm.losses``' functions or any callable ``loss(pred, target) -> (value, dpred)``;
when ``fit`` has ``lengths`` and the loss takes a ``lengths`` argument (see
``clstm.losses.sequence_loss``) it gets each batch's.
"""
import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ._checks import positive_int
from ._inputs import keywords_taken
from .data import _axes, as_array, iterate_batches, n_samples, sample_inputs, split_validation
from .layers import _first
from .optim import ReduceLROnPlateau, clip_grad_norm

__all__ = ["fit", "predict", "History", "Callback", "EarlyStopping", "BestWeights",
           "GradientClipping", "LearningRateSchedule", "Metric", "accuracy"]


class History:
    """What ``fit`` returns: ``history.history`` maps ``"loss"``, ``"val_loss"`` and any
    metric (``"accuracy"``, ``"val_accuracy"``, ``"lr"``...) to one value per epoch, as
    Keras's; ``history["loss"]`` is a shortcut, ``history.epoch`` the epochs run (from 0)."""

    def __init__(self):
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"History({len(self.epoch)} epochs; last: {last})"


class Run:
    """The state of one ``fit`` call that callbacks see: ``model``, ``optimizer``,
    ``history``, ``epoch`` (from 0), the validation data and this epoch's predictions on
    it (``val_pred``, None without validation), and ``stop_training`` (set it to stop
    after this epoch)."""

    def __init__(self, model, optimizer, history, validation, batch_axis):
        self.model, self.optimizer, self.history = model, optimizer, history
        self.batch_axis = batch_axis  # (x_axis, y_axis)
        self.val_x, self.val_y, self.val_lengths = validation or (None, None, None)
        self.val_pred = None
        self.epoch = 0
        self.stop_training = False


class Callback:
    """Hooks called by ``fit``; override the ones you need. ``logs`` is the dict of this
    epoch's values (``loss``, ``val_loss``...), which a callback may add to."""

    def on_train_begin(self, run: Run) -> None:
        """Before the first epoch."""

    def on_batch_end(self, run: Run, pred, target, lengths) -> None:
        """After a batch's forward pass (before its backward): the batch's predictions."""

    def on_before_step(self, run: Run) -> None:
        """After a batch's backward, before the optimiser's step (the gradients are in)."""

    def on_epoch_end(self, epoch: int, logs: Dict[str, float], run: Run) -> None:
        """After an epoch and its validation."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch (or an early stop)."""


class _Monitor:
    """Tracks the best value of ``logs[monitor]``: an improvement is ``min_delta`` better
    (lower in mode ``"min"``, higher in ``"max"``)."""

    def __init__(self, monitor, mode, min_delta):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))
        self.best = math.inf if mode == "min" else -math.inf

    def improved(self, logs):
        """Whether ``logs`` holds a new best (which is then recorded)."""
        if self.monitor not in logs:
            raise KeyError(f"{self.monitor!r} is not among this epoch's values "
                           f"{sorted(logs)}: monitor one of them (val_* needs validation=)")
        value = logs[self.monitor]
        better = value < self.best - self.min_delta if self.mode == "min" \
            else value > self.best + self.min_delta
        if better:
            self.best = value
        return better


class BestWeights(Callback):
    """Keeps a copy of the model's weights from its best epoch by ``monitor`` and puts
    them back when training ends.

    Parameters
    ----------
    monitor : str
        A key of the epoch's logs (``"val_loss"``, ``"loss"``, ``"val_accuracy"``...).
    mode : {"min", "max"}
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min"):
        self.monitor, self.mode = monitor, mode
        self._monitor = _Monitor(monitor, mode, 0.0)
        self.best_epoch: Optional[int] = None
        self._weights = None

    def on_train_begin(self, run):
        self._monitor = _Monitor(self.monitor, self.mode, 0.0)
        self.best_epoch, self._weights = None, None

    def on_epoch_end(self, epoch, logs, run):
        if self._monitor.improved(logs):
            self.best_epoch, self._weights = epoch, run.model.state_dict()

    def on_train_end(self, run):
        if self._weights is not None:
            run.model.load_state_dict(self._weights)


class EarlyStopping(Callback):
    """Stops training once ``patience`` epochs in a row brought no improvement of
    ``monitor`` by more than ``min_delta`` (Keras's ``EarlyStopping``: with ``patience=0``
    the first epoch without improvement stops it).

    Parameters
    ----------
    monitor : str
        A key of the epoch's logs.
    patience : int
    min_delta : float
    mode : {"min", "max"}
    restore_best_weights : bool
        Put back the weights of the best epoch when training ends (a `BestWeights`).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "min", restore_best_weights: bool = False):
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.patience = positive_int("patience", patience, minimum=0)
        self._best = BestWeights(monitor, mode) if restore_best_weights else None
        self.stopped_epoch: Optional[int] = None
        _Monitor(monitor, mode, min_delta)  # validates mode now rather than mid-training

    def on_train_begin(self, run):
        self._monitor = _Monitor(self.monitor, self.mode, self.min_delta)
        self.wait, self.stopped_epoch = 0, None
        if self._best is not None:
            self._best.on_train_begin(run)

    def on_epoch_end(self, epoch, logs, run):
        if self._best is not None:
            self._best.on_epoch_end(epoch, dict(logs), run)
        if self._monitor.improved(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch, run.stop_training = epoch, True

    def on_train_end(self, run):
        if self._best is not None:
            self._best.on_train_end(run)


class GradientClipping(Callback):
    """``clip_grad_norm(model, max_norm, norm_type)`` before every optimiser step."""

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm, self.norm_type = max_norm, norm_type

    def on_before_step(self, run):
        clip_grad_norm(run.model, self.max_norm, self.norm_type)


class LearningRateSchedule(Callback):
    """Steps a schedule from ``clstm.optim`` at the end of every epoch and logs ``"lr"``
    (the rate the epoch trained with). ``ReduceLROnPlateau`` gets ``logs[monitor]``
    (default ``"val_loss"``, else ``"loss"`` when there is no validation)."""

    def __init__(self, schedule, monitor: Optional[str] = None):
        self.schedule, self.monitor = schedule, monitor

    def on_epoch_end(self, epoch, logs, run):
        logs["lr"] = run.optimizer.lr
        if isinstance(self.schedule, ReduceLROnPlateau):  # it needs the monitored value
            monitor = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
            self.schedule.step(logs[monitor])
        else:
            self.schedule.step()


class Metric(Callback):
    """Logs ``fn(pred, target)`` per epoch: ``name`` over the training batches (the mean,
    weighted by batch size, of the values on each batch as it was trained) and
    ``"val_" + name`` on the validation data.

    Parameters
    ----------
    name : str
    fn : callable ``(pred, target) -> float``
        Such as `accuracy`.
    """

    def __init__(self, name: str, fn: Callable[[Any, Any], float]):
        self.name, self.fn = name, fn

    def on_train_begin(self, run):
        self._sum, self._count = 0.0, 0

    def on_batch_end(self, run, pred, target, lengths):
        n = np.shape(target)[run.batch_axis[1]]
        self._sum += float(self.fn(pred, target)) * n
        self._count += n

    def on_epoch_end(self, epoch, logs, run):
        logs[self.name] = self._sum / max(self._count, 1)
        self._sum, self._count = 0.0, 0
        if run.val_pred is not None:
            logs["val_" + self.name] = float(self.fn(run.val_pred, run.val_y))


def accuracy(logits, target) -> float:
    """The fraction of ``argmax(logits, axis=-1) == target`` (integer class targets,
    classes on the last axis, as ``cross_entropy``)."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(target)))


class _Progress:
    """One home for what ``fit`` prints: a tqdm bar per epoch when tqdm is installed and
    stderr is a terminal, else one line per epoch on stdout, or nothing."""

    def __init__(self, enabled, epochs, n_batches):
        self.enabled, self.epochs, self.n_batches = enabled, epochs, n_batches
        self.tqdm = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm
        self.bar = None

    def start_epoch(self, epoch):
        self.start = time.perf_counter()
        if self.tqdm is not None:
            self.bar = self.tqdm(total=self.n_batches, unit="batch", leave=True,
                                 desc=f"epoch {epoch + 1}/{self.epochs}")

    def batch(self, loss):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def end_epoch(self, epoch, logs):
        text = "  ".join(f"{k} {v:.4g}" for k, v in logs.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
        elif self.enabled:
            print(f"epoch {epoch + 1}/{self.epochs}: {text}  "
                  f"({time.perf_counter() - self.start:.1f} s)", flush=True)


def _call(fn, takes_lengths, *args, lengths=None, **kw):
    return fn(*args, lengths=lengths, **kw) if lengths is not None and takes_lengths \
        else fn(*args, **kw)


def predict(model, x, batch_size: int = 256, lengths=None,
            batch_axis: Union[int, Sequence[int]] = 0) -> np.ndarray:
    """The model's outputs for every sample of ``x``, in batches.

    Parameters
    ----------
    model : callable ``model(x[, lengths=])``
    x : array, or a list of sequences (padded, their lengths used)
    batch_size : int
    lengths : int array ``(N,)``, optional
    batch_axis : int or (x_axis, out_axis)
        The axis of ``x`` (and of the outputs) that indexes samples; a pair when they
        differ, e.g. ``(1, 0)`` for time-major input and one output per sequence.

    Returns
    -------
    array : the outputs concatenated along the output's sample axis.
    """
    x_axis, out_axis = _axes(batch_axis, 2)
    x, lengths = sample_inputs(x, lengths, x_axis)
    takes = "lengths" in keywords_taken(model, ("lengths",))
    if lengths is not None and not takes:
        raise TypeError(f"predict got lengths but {type(model).__name__} takes no lengths")
    outs = [_first(_call(model, takes, xb, lengths=lb))
            for (xb,), lb in iterate_batches([x], batch_size, batch_axis=x_axis,
                                             lengths=lengths)]
    return np.concatenate(outs, axis=out_axis)


def fit(model, loss: Callable, optimizer, x, y, *, epochs: int, batch_size: int,
        lengths=None, batch_axis: Union[int, Sequence[int]] = 0, validation=None,
        shuffle: Union[bool, np.random.Generator] = True, callbacks: Sequence[Callback] = (),
        progress: bool = True) -> History:
    """Train ``model`` on ``(x, y)`` with mini-batches, as Keras's ``model.fit``.

    Each batch: ``optimizer.zero_grad()``; ``pred, backward = model.forward_train(xb[,
    lengths=lb])``; ``value, dpred = loss(pred, yb[, lengths=lb])``; ``backward(dpred)``;
    ``optimizer.step()``. A model whose ``forward_train`` names an ``input_grad`` argument
    (``Sequential``, ``LSTM``, ``GRU``) gets ``input_grad=False``: nothing here uses the
    gradient of ``xb``.

    Parameters
    ----------
    model : a module with ``forward_train`` (``Sequential``, ``LSTM``...)
    loss : callable ``(pred, target) -> (value, dpred)``
        ``clstm.mse_loss``, ``clstm.cross_entropy``...; given ``lengths=`` too if it takes
        them (``clstm.losses.sequence_loss``).
    optimizer : a ``clstm.optim`` optimiser over the model's parameters
    x : array, or a list of sequences (padded with ``clstm.data.pad_sequences``, their
        lengths used unless ``lengths`` is given)
    y : array of targets
    epochs : int
    batch_size : int
    lengths : int array ``(N,)``, optional
        Each sample's length, passed per batch to the model (and to the loss if it takes
        them).
    batch_axis : int or (x_axis, y_axis)
        The axis of ``x`` and ``y`` that indexes samples: 0 (Keras's layout) for
        batch-first data, 1 for time-major ``(T, N, ...)``; a pair when they differ, e.g.
        ``(1, 0)`` for time-major ``x`` with one target per sequence.
    validation : None, a float in (0, 1), or (x_val, y_val[, lengths_val])
        A fraction holds out the *last* samples (before shuffling), as Keras's
        ``validation_split``. Evaluated after every epoch with `predict`: ``val_loss``.
    shuffle : bool or numpy.random.Generator
        Reshuffle the training samples every epoch (True: NumPy's global generator, so
        ``np.random.seed`` makes runs repeatable; a Generator: that one).
    callbacks : sequence of `Callback`
    progress : bool
        A tqdm bar per epoch on a terminal when tqdm is installed, one line per epoch
        otherwise; nothing when False.

    Returns
    -------
    History
        ``history["loss"]`` (the mean of the batch losses, weighted by batch size),
        ``history["val_loss"]`` and whatever the callbacks log, one value per epoch.

    Raises
    ------
    ValueError
        Arrays that disagree on the number of samples, bad ``lengths``, a bad
        ``validation``.
    TypeError
        ``lengths`` for a model that takes none.
    """
    epochs = positive_int("epochs", epochs, minimum=0)
    batch_size = positive_int("batch_size", batch_size)
    axes = _axes(batch_axis, 2)
    x, lengths = sample_inputs(x, lengths, axes[0])
    y = as_array("y", y)
    n = n_samples([x, y], axes, ["x", "y"])
    train, validation = split_validation(x, y, lengths, validation, axes, n)
    x, y, lengths = train
    model_takes = "lengths" in keywords_taken(model.forward_train, ("lengths",))
    # the input's gradient is never used here: a model that can skip it does
    no_dx = {"input_grad": False} if keywords_taken(model.forward_train, ("input_grad",),
                                                    named=True) else {}
    loss_takes = "lengths" in keywords_taken(loss, ("lengths",))
    if lengths is not None and not model_takes:
        raise TypeError(f"fit got lengths but {type(model).__name__}.forward_train takes no "
                        f"lengths")
    if isinstance(shuffle, (int, np.integer)) and not isinstance(shuffle, bool):
        raise TypeError("shuffle must be a bool or a numpy.random.Generator (for a seed, "
                        "pass np.random.default_rng(seed))")

    history = History()
    run = Run(model, optimizer, history, validation, axes)
    bar = _Progress(bool(progress), epochs, -(-x.shape[axes[0]] // batch_size))
    for cb in callbacks:
        cb.on_train_begin(run)
    for epoch in range(epochs):
        run.epoch = epoch
        bar.start_epoch(epoch)
        total, count = 0.0, 0
        for (xb, yb), lb in iterate_batches([x, y], batch_size, batch_axis=axes,
                                            lengths=lengths, shuffle=shuffle):
            optimizer.zero_grad()
            pred, backward = _call(model.forward_train, model_takes, xb, lengths=lb, **no_dx)
            pred = _first(pred)
            value, dpred = _call(loss, loss_takes, pred, yb, lengths=lb)
            for cb in callbacks:
                cb.on_batch_end(run, pred, yb, lb)
            backward(dpred)
            for cb in callbacks:
                cb.on_before_step(run)
            optimizer.step()
            b = yb.shape[axes[1]]
            total, count = total + float(value) * b, count + b
            bar.batch(float(value))
        logs = {"loss": total / count}
        if validation is not None:
            vx, vy, vl = validation
            run.val_pred = predict(model, vx, batch_size, vl, axes)
            logs["val_loss"] = float(_call(loss, loss_takes, run.val_pred, vy, lengths=vl)[0])
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs, run)
        history._append(epoch, logs)
        bar.end_epoch(epoch, logs)
        if run.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(run)
    return history
