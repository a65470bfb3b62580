"""``forward_train(..., input_grad=False)``: backward skips dx (the first layer's product
with w_ih and its packing) and every other result stays the same bit for bit; Sequential
and ``fit`` pass it on."""
import numpy as np
import pytest

import clstm
from clstm._inputs import keywords_taken

MODELS = {
    "lstm": lambda **kw: clstm.LSTM(3, 8, **kw),
    "lstm-2-layers-bidirectional": lambda **kw: clstm.LSTM(3, 8, num_layers=2,
                                                          bidirectional=True, **kw),
    "lstm-projection-dropout": lambda **kw: clstm.LSTM(3, 8, num_layers=2, proj_size=5,
                                                      dropout=0.3, **kw),
    "lstm-peephole-recurrent-dropout": lambda **kw: clstm.LSTM(
        3, 8, peephole=True, recurrent_dropout=0.25, **kw),
    "lstm-batch-first": lambda **kw: clstm.LSTM(3, 8, batch_first=True, **kw),
    "gru": lambda **kw: clstm.GRU(3, 8, **kw),
    "gru-2-layers-bidirectional": lambda **kw: clstm.GRU(3, 8, num_layers=2,
                                                        bidirectional=True, **kw),
}


def train_step(model, x, lengths, input_grad, n_threads):
    """One forward_train + backward with fixed upstream gradients and dropout draws: the
    outputs, the returned gradients and the accumulated parameter gradients."""
    model.zero_grad()
    clstm.set_num_threads(n_threads)
    try:
        (y, state), backward = model.forward_train(x, lengths=lengths,
                                                   rng=np.random.default_rng(3),
                                                   input_grad=input_grad)
        rng = np.random.default_rng(4)
        dy = rng.standard_normal(y.shape).astype(model.dtype)
        dstate = tuple(rng.standard_normal(s.shape).astype(model.dtype)
                       for s in (state if isinstance(state, tuple) else (state,)))
        dx, dstate0 = backward(dy, dstate if isinstance(state, tuple) else dstate[0])
    finally:
        clstm.set_num_threads(None)
    grads = {k: g.copy() for k, g in model.grads.items()}
    return y, state, dx, dstate0, grads


def flat(value):
    return [a for v in (value if isinstance(value, tuple) else (value,)) for a in
            (flat(v) if isinstance(v, tuple) else [v])]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [None, [6, 0, 3, 6, 1]])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_without_input_grad_everything_else_is_the_same(name, dtype, lengths, n_threads):
    model = MODELS[name](dtype=dtype, seed=5)
    T, B = 6, 5
    x = np.random.default_rng(2).standard_normal((B, T, 3) if model.batch_first
                                                 else (T, B, 3)).astype(dtype)
    y1, s1, dx1, ds1, g1 = train_step(model, x, lengths, True, n_threads)
    y0, s0, dx0, ds0, g0 = train_step(model, x, lengths, False, n_threads)
    assert dx0 is None and dx1.shape == x.shape and np.abs(dx1).max() > 0
    for a, b in zip(flat((y1, s1, ds1)), flat((y0, s0, ds0))):
        np.testing.assert_array_equal(a, b)
    assert g1.keys() == g0.keys()
    for k in g1:
        assert np.abs(g1[k]).max() > 0, k
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


@pytest.mark.parametrize("model_name, strategy, n_threads, B", [
    (model, *path) for model in ("lstm", "gru")
    for path in [("serial", 1, 40), ("batch", 2, 40), ("units", 2, 40)]] + [
    ("lstm", "step", 1, 1)])  # (the one-step path runs the LSTM only)
@pytest.mark.parametrize("dx_in_loop", [False, True])
def test_every_path_skips_dx_alone(model_name, strategy, n_threads, B, dx_in_loop,
                                   monkeypatch):
    """The paths of `clstm._dispatch` (the one-step kernel; dx after the backward time loop
    or, `_dispatch.step_dx`, inside it) at sizes where the packed products run whole
    panels."""
    from clstm import _dispatch
    from clstm.functional import Packing
    monkeypatch.setattr(_dispatch, "STEP_DX_MIN_DG_BYTES", 0 if dx_in_loop else 1 << 62)
    monkeypatch.setattr(_dispatch, "STEP_DX_MIN_ROWS_PER_THREAD", 1)
    T = 1 if strategy == "step" else 7
    model = {"lstm": clstm.LSTM, "gru": clstm.GRU}[model_name](48, 64, seed=1)
    model.strategy = strategy
    G = 64 * (4 if model_name == "lstm" else 3)
    if strategy in ("serial", "batch"):
        assert _dispatch.step_dx(Packing(T, B), strategy, n_threads, 48, G, G + 64 * (
            model_name == "gru"), np.float32) == dx_in_loop
    x = np.random.default_rng(0).standard_normal((T, B, 48)).astype(np.float32)
    _dispatch._uniform_plan.cache_clear()  # (plans are remembered per shape)
    try:
        y1, s1, dx1, ds1, g1 = train_step(model, x, None, True, n_threads)
        y0, s0, dx0, ds0, g0 = train_step(model, x, None, False, n_threads)
    finally:
        _dispatch._uniform_plan.cache_clear()
    assert dx0 is None and dx1 is not None
    for a, b in zip(flat((y1, s1, ds1)), flat((y0, s0, ds0))):
        np.testing.assert_array_equal(a, b)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


@pytest.mark.parametrize("bad", [None, "False", 0, 1.0])
def test_input_grad_must_be_a_bool(bad):
    x = np.ones((2, 1, 3), np.float32)
    for model in (clstm.LSTM(3, 4), clstm.GRU(3, 4), clstm.Sequential(clstm.LSTM(3, 4))):
        with pytest.raises(TypeError, match="input_grad must be True or False"):
            model.forward_train(x, input_grad=bad)
    (y, _), backward = clstm.LSTM(3, 4).forward_train(x, input_grad=np.bool_(False))
    assert backward(np.ones_like(y))[0] is None


def test_unbatched_input():
    model = clstm.LSTM(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    results = []
    for input_grad in (True, False):
        (y, _), backward = model.forward_train(x, input_grad=input_grad)
        results.append(backward(np.ones_like(y)))
    (dx1, (dh1, dc1)), (dx0, (dh0, dc0)) = results
    assert dx0 is None and dx1.shape == x.shape and dh0.shape == dc0.shape == (1, 4)
    np.testing.assert_array_equal(dh0, dh1)
    np.testing.assert_array_equal(dc0, dc1)


CELLS = {
    "lstm-cell": lambda **kw: clstm.LSTMCell(3, 8, **kw),
    "lstm-cell-peephole-recurrent-dropout": lambda **kw: clstm.LSTMCell(
        3, 8, peephole=True, recurrent_dropout=0.25, **kw),
    "gru-cell": lambda **kw: clstm.GRUCell(3, 8, **kw),
}


def cell_step(cell, x, state, input_grad, n_threads):
    """One step of a cell: forward_train + backward with fixed upstream gradients (and a
    fixed recurrent mask)."""
    cell.zero_grad()
    clstm.set_num_threads(n_threads)
    try:
        kw = {"input_grad": input_grad}
        if isinstance(cell, clstm.LSTMCell):
            kw["rng"] = np.random.default_rng(3)
        out, backward = cell.forward_train(x, state, **kw)
        rng = np.random.default_rng(4)
        d = tuple(rng.standard_normal(a.shape).astype(cell.dtype) for a in flat(out))
        dx, dstate = backward(*d)
    finally:
        clstm.set_num_threads(None)
    return out, dx, dstate, {k: g.copy() for k, g in cell.grads.items()}


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [None, 1, 40])  # None: unbatched
@pytest.mark.parametrize("n_threads", [1, 2])
def test_cells_without_input_grad(name, dtype, B, n_threads):
    """`LSTMCell` and `GRUCell`: dx None, every other result the same bit for bit (B = 40
    runs whole packed panels and, at 2 threads, a split)."""
    cell = CELLS[name](dtype=dtype, seed=5)
    rng = np.random.default_rng(2)
    shape = (3,) if B is None else (B, 3)
    x = rng.standard_normal(shape).astype(dtype)
    h = rng.standard_normal(shape[:-1] + (8,)).astype(dtype)
    state = (h, 0.5 * h) if isinstance(cell, clstm.LSTMCell) else h
    out1, dx1, ds1, g1 = cell_step(cell, x, state, True, n_threads)
    out0, dx0, ds0, g0 = cell_step(cell, x, state, False, n_threads)
    assert dx0 is None and dx1.shape == x.shape and np.abs(dx1).max() > 0
    for a, b in zip(flat((out1, ds1)), flat((out0, ds0))):
        np.testing.assert_array_equal(a, b)
    assert g1.keys() == g0.keys()
    for k in g1:
        assert np.abs(g1[k]).max() > 0, k
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


@pytest.mark.parametrize("bad", [None, "False", 0])
def test_cells_input_grad_must_be_a_bool(bad):
    x = np.ones((2, 3), np.float32)
    for cell in (clstm.LSTMCell(3, 4), clstm.GRUCell(3, 4)):
        with pytest.raises(TypeError, match="input_grad must be True or False"):
            cell.forward_train(x, input_grad=bad)


class Recorder:
    """A model that records the keywords its forward_train gets."""

    def __init__(self, module, explicit):
        self.module, self.seen = module, []
        self.params, self.grads = module.params, module.grads
        if explicit:
            def forward_train(x, input_grad=True):
                self.seen.append(input_grad)
                return self.module.forward_train(x, input_grad=input_grad)
        else:
            def forward_train(x, **kw):
                self.seen.append(kw)
                return self.module.forward_train(x)
        self.forward_train = forward_train

    def __call__(self, x):
        return self.module(x)


def test_sequential_passes_input_grad_to_its_first_module():
    lstm = clstm.LSTM(3, 4, batch_first=True, seed=0)
    model = clstm.Sequential(Recorder(lstm, explicit=True), clstm.LastStep(batch_first=True),
                             clstm.Linear(4, 2, seed=0))
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    out, backward = model.forward_train(x)
    assert backward(np.ones_like(out)).shape == x.shape
    grads = {k: g.copy() for k, g in model.grads.items()}
    model.zero_grad()
    out, backward = model.forward_train(x, input_grad=False)
    assert backward(np.ones_like(out)) is None
    assert model[0].seen == [True, False]
    for k in grads:
        np.testing.assert_array_equal(model.grads[k], grads[k], err_msg=k)


def test_sequential_without_a_first_module_that_takes_it():
    model = clstm.Sequential(clstm.Linear(3, 4, seed=0), clstm.LSTM(4, 2, seed=0))
    x = np.ones((2, 1, 3), np.float32)
    out, backward = model.forward_train(x, input_grad=False)
    assert backward(np.ones_like(out)) is None


@pytest.mark.parametrize("explicit", [True, False])
def test_fit_asks_only_a_model_that_names_input_grad(explicit):
    """fit never uses dx; it passes input_grad=False to a forward_train that names it, and
    nothing to one that only has **kwargs (which might hand it on to anything)."""
    model = Recorder(clstm.LSTM(3, 2, batch_first=True, seed=0), explicit)
    x = np.random.default_rng(0).standard_normal((8, 4, 3)).astype(np.float32)
    y = np.zeros((8, 4, 2), np.float32)

    def loss(pred, target):
        return float(((pred - target) ** 2).mean()), 2 * (pred - target) / pred.size

    clstm.fit(model, loss, clstm.optim.SGD(model.module, lr=0.1), x, y, epochs=1,
              batch_size=4, progress=False, shuffle=False)
    assert model.seen == ([False, False] if explicit else [{}, {}])
    assert keywords_taken(model.forward_train, ("input_grad",), named=True) == \
        (frozenset({"input_grad"}) if explicit else frozenset())
