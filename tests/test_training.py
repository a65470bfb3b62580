"""clstm.fit / clstm.predict and the callbacks: the loop against hand-written loops and
closed forms, layouts (batch_axis), lengths, validation, callbacks, progress output."""
import io
import math
import sys

import numpy as np
import pytest

import clstm
from clstm.optim import SGD, Adam, StepLR
from clstm.training import (BestWeights, Callback, EarlyStopping, GradientClipping,
                            LearningRateSchedule, Metric, accuracy)


def linear_problem(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.standard_normal((n, 1))
    return x, y


def test_full_batch_fit_is_gradient_descent_on_the_mse():
    x, y = linear_problem()
    lin = clstm.Linear(3, 1, dtype=np.float64, seed=0)
    w, b = lin.weight.copy(), lin.bias.copy()
    hist = clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=3, batch_size=100,
                     shuffle=False, progress=False)
    losses = []
    for _ in range(3):  # the closed-form gradient of mean((x w^T + b - y)^2)
        r = x @ w.T + b - y
        losses.append(float(np.mean(r ** 2)))
        w, b = w - 0.1 * 2 * r.T @ x / len(x), b - 0.1 * 2 * r.sum(0) / len(x)
    np.testing.assert_allclose(lin.weight, w, rtol=1e-12)
    np.testing.assert_allclose(lin.bias, b, rtol=1e-12)
    np.testing.assert_allclose(hist["loss"], losses, rtol=1e-12)
    assert hist.epoch == [0, 1, 2] and set(hist.history) == {"loss"}


def manual_fit(model, opt, x, y, epochs, batch_size, rng):
    """The loop fit should run, written out: shuffled mini-batches, Adam, mse."""
    means = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            pred, backward = model.forward_train(x[idx])
            loss, d = clstm.mse_loss(pred, y[idx])
            backward(d)
            opt.step()
            total += loss * len(idx)
        means.append(total / len(x))
    return means


def seq_model(batch_first=True, seed=0):
    return clstm.Sequential(clstm.LSTM(2, 5, batch_first=batch_first, dtype=np.float64,
                                       seed=seed),
                            clstm.LastStep(batch_first=batch_first),
                            clstm.Linear(5, 1, dtype=np.float64, seed=seed + 1))


def seq_problem(n=10, T=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 2))
    return x, x.sum(axis=(1, 2))[:, None] * 0.3


def test_minibatch_fit_matches_the_hand_written_loop_and_predict():
    x, y = seq_problem()
    ours, theirs = seq_model(), seq_model()
    hist = clstm.fit(ours, clstm.mse_loss, Adam(ours, lr=0.01), x, y, epochs=3, batch_size=4,
                     shuffle=np.random.default_rng(7), progress=False)
    expected = manual_fit(theirs, Adam(theirs, lr=0.01), x, y, 3, 4, np.random.default_rng(7))
    np.testing.assert_allclose(hist["loss"], expected, rtol=1e-12)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.params[k], v, rtol=1e-12, atol=1e-15)
    full = theirs(x)
    for bs in (1, 3, 100):
        np.testing.assert_allclose(clstm.predict(ours, x, batch_size=bs), full, rtol=1e-12)


def test_time_major_batch_axis_trains_the_same_model():
    x, y = seq_problem()
    bf, tm = seq_model(True), seq_model(False)
    kw = dict(epochs=2, batch_size=3, shuffle=False, progress=False)
    h1 = clstm.fit(bf, clstm.mse_loss, Adam(bf, lr=0.01), x, y, **kw)
    # time-major x (T, N, I) with one target per sequence (N, 1): batch_axis=(1, 0)
    h2 = clstm.fit(tm, clstm.mse_loss, Adam(tm, lr=0.01), x.transpose(1, 0, 2), y,
                   batch_axis=(1, 0), **kw)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-12)
    for k, v in bf.state_dict().items():
        np.testing.assert_allclose(tm.params[k], v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(clstm.predict(tm, x.transpose(1, 0, 2), 4, batch_axis=(1, 0)),
                               clstm.predict(bf, x, 4), rtol=1e-12)
    with pytest.raises(ValueError, match=r"x 10 \(axis 1\), y 1 \(axis 1\).*batch_axis=\("):
        clstm.fit(tm, clstm.mse_loss, Adam(tm), x.transpose(1, 0, 2), y, batch_axis=1,
                  **kw)


def test_lists_of_sequences_are_padded_and_lengths_reach_model_and_loss():
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((n, 2)) for n in (3, 1, 4, 2, 4)]
    y = rng.standard_normal((5, 1))
    a, b = seq_model(), seq_model()
    kw = dict(epochs=2, batch_size=2, shuffle=False, progress=False)
    ha = clstm.fit(a, clstm.mse_loss, SGD(a, lr=0.1), seqs, y, **kw)
    padded, lengths = clstm.data.pad_sequences(seqs, batch_first=True)
    hb = clstm.fit(b, clstm.mse_loss, SGD(b, lr=0.1), padded, y, lengths=lengths, **kw)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)
    # the model saw the lengths: the padding does not change its predictions
    np.testing.assert_allclose(clstm.predict(a, seqs), clstm.predict(a, padded * 1, 2,
                               lengths), rtol=1e-12)
    padded[0, 3:] = 99.0
    np.testing.assert_allclose(clstm.predict(a, padded, lengths=lengths),
                               clstm.predict(a, seqs), rtol=1e-12)
    seen = []

    def loss_with_lengths(pred, target, lengths=None):
        seen.append(None if lengths is None else list(lengths))
        return clstm.mse_loss(pred, target)

    clstm.fit(a, loss_with_lengths, SGD(a, lr=0.1), padded, y, lengths=lengths, **kw)
    assert seen[:3] == [[3, 1], [4, 2], [4]]
    with pytest.raises(TypeError, match="predict got lengths but Linear takes no lengths"):
        clstm.predict(clstm.Linear(2, 1), padded, lengths=lengths)
    with pytest.raises(TypeError, match="takes no lengths"):
        clstm.fit(clstm.Linear(2, 1), clstm.mse_loss, SGD(clstm.Linear(2, 1), lr=0.1),
                  padded, y, lengths=lengths, **kw)


def test_sequence_loss_with_lengths_in_fit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 2))  # batch-first sequences, a target per step
    y = rng.standard_normal((6, 5, 1))
    lengths = np.array([5, 2, 3, 1, 4, 5])
    model = clstm.Sequential(clstm.LSTM(2, 3, batch_first=True, dtype=np.float64, seed=0),
                             clstm.Linear(3, 1, dtype=np.float64, seed=1))
    loss = clstm.losses.sequence_loss(clstm.mse_loss, batch_first=True)
    hist = clstm.fit(model, loss, SGD(model, lr=0.0), x, y, lengths=lengths, epochs=1,
                     batch_size=6, progress=False)  # lr 0: the loss of the initial model
    keep = clstm.losses.sequence_mask(lengths, 5, batch_first=True)
    pred = model(x, lengths=lengths)
    np.testing.assert_allclose(hist["loss"][0], np.mean((pred[keep] - y[keep]) ** 2),
                               rtol=1e-12)


def test_validation_split_and_data():
    x, y = linear_problem(n=20)
    lin = clstm.Linear(3, 1, dtype=np.float64, seed=0)
    hist = clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.05), x, y, epochs=2, batch_size=4,
                     validation=0.25, progress=False)
    # Keras's validation_split: the last 25% (5 samples), after the last epoch's training
    np.testing.assert_allclose(hist["val_loss"][-1], np.mean((lin(x[15:]) - y[15:]) ** 2),
                               rtol=1e-12)
    hist = clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.05), x[:15], y[:15], epochs=1,
                     batch_size=4, validation=(x[15:], y[15:]), progress=False)
    np.testing.assert_allclose(hist["val_loss"][-1], np.mean((lin(x[15:]) - y[15:]) ** 2),
                               rtol=1e-12)
    for bad, match in ((1.5, "fraction in"), (0.99, "empty"), ((x,), "a sequence of 1")):
        with pytest.raises(ValueError, match=match):
            clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=1, batch_size=4,
                      validation=bad, progress=False)
    with pytest.raises(TypeError, match="shuffle must be a bool or a numpy.random.Generator"):
        clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=1, batch_size=4,
                  shuffle=3, progress=False)


class FakeRun:
    def __init__(self, model):
        self.model, self.stop_training = model, False


def test_early_stopping_and_best_weights_on_scripted_values():
    lin = clstm.Linear(1, 1, dtype=np.float64)
    run = FakeRun(lin)
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    stop.on_train_begin(run)
    for epoch, val in enumerate([3.0, 2.0, 2.5, 1.9, 2.0, 2.1, 1.0]):
        lin.weight = [[float(epoch)]]
        stop.on_epoch_end(epoch, {"val_loss": val}, run)
        if run.stop_training:
            break
    assert (epoch, stop.stopped_epoch) == (5, 5)  # two epochs after the best (1.9 at 3)
    stop.on_train_end(run)
    assert lin.weight[0, 0] == 3.0  # the best epoch's weights are back
    best = BestWeights(monitor="val_acc", mode="max")
    best.on_train_begin(run)
    for epoch, acc in enumerate([0.5, 0.9, 0.7]):
        lin.weight = [[float(epoch)]]
        best.on_epoch_end(epoch, {"val_acc": acc}, run)
    best.on_train_end(run)
    assert lin.weight[0, 0] == 1.0 and best.best_epoch == 1
    with pytest.raises(KeyError, match="'val_loss' is not among"):
        _start(EarlyStopping(), run).on_epoch_end(0, {"loss": 1.0}, run)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping(mode="lower")


def _start(cb, run):
    cb.on_train_begin(run)
    return cb


def test_early_stopping_stops_fit():
    x, y = linear_problem()
    calls = []

    def rising_loss(pred, target):  # every call a higher loss: validation never improves
        calls.append(1)
        return float(len(calls)), np.zeros_like(pred)

    lin = clstm.Linear(3, 1, dtype=np.float64)
    hist = clstm.fit(lin, rising_loss, SGD(lin, lr=0.1), x, y, epochs=10, batch_size=100,
                     validation=0.5, callbacks=[EarlyStopping(patience=2)], progress=False)
    assert hist.epoch == [0, 1, 2]  # best at 0, no improvement at 1 and 2


def test_gradient_clipping_schedule_and_metric_callbacks():
    x, y = linear_problem(n=16)
    y = y * 100  # large gradients
    norms = []

    class Probe(Callback):
        def on_before_step(self, run):
            norms.append(math.sqrt(sum(float(np.sum(g ** 2))
                                       for g in run.model.grads.values())))

    lin = clstm.Linear(3, 1, dtype=np.float64, seed=0)
    opt = SGD(lin, lr=0.01)
    hist = clstm.fit(lin, clstm.mse_loss, opt, x, y, epochs=4, batch_size=8,
                     callbacks=[GradientClipping(0.5), Probe(),
                                LearningRateSchedule(StepLR(opt, step_size=2, gamma=0.1))],
                     progress=False)
    assert len(norms) == 8 and max(norms) <= 0.5 + 1e-9
    np.testing.assert_allclose(hist["lr"], [0.01, 0.01, 0.001, 0.001], rtol=1e-12)
    assert opt.lr == pytest.approx(1e-4)

    rng = np.random.default_rng(0)
    xc = rng.standard_normal((40, 2))
    yc = (xc[:, 0] > 0).astype(int)
    clf = clstm.Linear(2, 2, dtype=np.float64, seed=1)
    opt2 = Adam(clf, lr=0.1)
    plateau = clstm.optim.ReduceLROnPlateau(opt2, patience=0)
    hist = clstm.fit(clf, clstm.cross_entropy, opt2, xc, yc, epochs=3, batch_size=10,
                     validation=0.25, callbacks=[Metric("accuracy", accuracy),
                                                 LearningRateSchedule(plateau)],
                     progress=False)
    assert set(hist.history) == {"loss", "val_loss", "accuracy", "val_accuracy", "lr"}
    assert hist["val_accuracy"][-1] == np.mean(np.argmax(clf(xc[30:]), -1) == yc[30:])
    assert plateau.last_epoch == 3
    assert accuracy(np.array([[0.1, 0.9], [2.0, 1.0]]), [1, 1]) == 0.5


def test_progress_output(capsys, monkeypatch):
    x, y = linear_problem()
    lin = clstm.Linear(3, 1, dtype=np.float64)
    clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=2, batch_size=5,
              progress=False)
    assert capsys.readouterr().out == ""
    clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=2, batch_size=5,
              validation=0.25)
    out = capsys.readouterr().out.splitlines()  # not a terminal: one plain line per epoch
    assert len(out) == 2 and out[1].startswith("epoch 2/2: loss ") and "val_loss" in out[1]


def test_progress_bar_with_tqdm_on_a_terminal(monkeypatch, capsys):
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    x, y = linear_problem()
    lin = clstm.Linear(3, 1, dtype=np.float64)
    clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=2, batch_size=5)
    text = term.getvalue()
    assert "epoch 2/2" in text and "3/3" in text and "loss" in text
    assert capsys.readouterr().out == ""  # the bar replaces the plain lines


def test_progress_without_tqdm_on_a_terminal(monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    x, y = linear_problem()
    lin = clstm.Linear(3, 1, dtype=np.float64)
    clstm.fit(lin, clstm.mse_loss, SGD(lin, lr=0.1), x, y, epochs=1, batch_size=5)
    assert capsys.readouterr().out.startswith("epoch 1/1: loss ")
