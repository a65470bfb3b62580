"""Property-based fuzz over the public entry points (hypothesis, about 30 s in all).

Every generated call either matches the NumPy reference (`clstm.reference`, tolerances as
`_helpers.assert_close`) or raises TypeError/ValueError whose message names the argument
that was spoiled. Examples are derandomized, so a failure reproduces in CI and locally.
"""
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import clstm  # noqa: E402
from clstm import functional as F, reference as R  # noqa: E402
from _helpers import assert_close  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from([np.float32, np.float64])


def expect_error(name, call):
    """``call()`` raises TypeError or ValueError naming ``name`` (checked as a word)."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert re.search(rf"\b{name}\b", str(info.value)), (name, str(info.value))


def randn(rng, shape, dtype):
    return (0.5 * rng.standard_normal(shape)).astype(dtype)


LAYOUTS = st.sampled_from(["C", "F", "strided", "list"])


def in_layout(a, layout):
    """The same values as a Fortran-ordered or strided array, or nested lists."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        return np.repeat(a, 2, axis=-1)[..., ::2]
    return a.tolist() if layout == "list" and a.size else a


# Spoilers: (argument name, how to spoil a valid value). Each gives a value the entry point
# must refuse with an error naming the argument.
def _wrong_last_axis(a):
    return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)


SPOILERS = {
    "last axis": _wrong_last_axis,
    "extra axis": lambda a: a[None, None],
    "complex": lambda a: a.astype(np.complex64),
    "integers": lambda a: a.astype(np.int64),
    "bools": lambda a: a > 0,
    "strings": lambda a: a.astype(str),
    "objects": lambda a: np.array(a.tolist() + [None], dtype=object)
    if a.ndim == 1 else np.full(a.shape, None, object),
}
ARRAY_SPOILERS = {how: (lambda spoil: lambda a: spoil(np.asarray(a)))(spoil)
                  for how, spoil in SPOILERS.items()}
LENGTH_SPOILERS = {
    "too long": lambda T, B: np.full(B, T + 1),
    "negative": lambda T, B: np.full(B, -1),
    "wrong count": lambda T, B: np.full(B + 1, T),
    "fractional": lambda T, B: np.full(B, 0.5),
    "2-D": lambda T, B: np.full((B, 1), T),
}


def spoiled_lengths(how, T, B):
    """Lengths spoiled as ``how`` says, or, for an empty batch (whose empty lengths are
    valid whatever their dtype), one length too many."""
    return LENGTH_SPOILERS[how](T, B) if B else np.zeros(1, int)


@st.composite
def lstm_configs(draw):
    H = draw(st.integers(1, 9))
    return dict(input_size=draw(st.integers(1, 7)), hidden_size=H,
                num_layers=draw(st.integers(1, 3)), bias=draw(st.booleans()),
                batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
                proj_size=draw(st.integers(0, H - 1)) if H > 1 and draw(st.booleans()) else 0,
                dtype=draw(DTYPES), seed=draw(st.integers(0, 2**16)))


@st.composite
def lstm_calls(draw):
    """(model config, x, state or None, lengths or None, batched, an rng for data)."""
    cfg = draw(lstm_configs())
    T = draw(st.integers(0, 6) | st.just(1))
    B = draw(st.integers(0, 5) | st.just(1))
    batched = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    I, H, dtype = cfg["input_size"], cfg["hidden_size"], cfg["dtype"]
    P = cfg["proj_size"] or H
    n = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    if batched:
        x = randn(rng, (B, T, I) if cfg["batch_first"] else (T, B, I), dtype)
    else:
        B = 1
        x = randn(rng, (T, I), dtype)
    x = in_layout(x, draw(LAYOUTS))
    state = None
    if draw(st.booleans()):
        lead = (n, B) if batched else (n,)
        state = (randn(rng, lead + (P,), dtype), randn(rng, lead + (H,), dtype))
    lengths = None
    if batched and draw(st.booleans()):
        lengths = rng.integers(0, T + 1, B)
    return cfg, x, state, lengths, batched, rng


def time_major(cfg, x, batched):
    """x as the reference takes it: (T, B, I)."""
    x = np.asarray(x, cfg["dtype"])
    if not batched:
        return x[:, None, :]
    return x.transpose(1, 0, 2) if cfg["batch_first"] else x


def reference_forward(model, cfg, x, state, lengths, batched, train=False):
    xt = time_major(cfg, x, batched)
    T, B = xt.shape[:2]
    n = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    H, P = cfg["hidden_size"], cfg["proj_size"] or cfg["hidden_size"]
    if state is None:
        h0, c0 = np.zeros((n, B, P), xt.dtype), np.zeros((n, B, H), xt.dtype)
    else:
        h0, c0 = (s.reshape(n, B, s.shape[-1]) for s in state)
    return R.lstm_stack_forward(xt, model.state_dict(), h0, c0,
                                num_layers=cfg["num_layers"],
                                bidirectional=cfg["bidirectional"], lengths=lengths,
                                train=train)


def to_caller(cfg, y, batched):
    if not batched:
        return y[:, 0]
    return y.transpose(1, 0, 2) if cfg["batch_first"] else y


def state_to_caller(s, batched):
    return s if batched else s[:, 0]


def check_lstm_output(cfg, out, ref, batched, factor=4.0):
    (y, (h, c)), (ry, rh, rc) = out, ref[:3]
    dtype = cfg["dtype"]
    assert y.dtype == np.dtype(dtype)
    assert_close(y, to_caller(cfg, ry, batched), dtype, factor, "y")
    assert_close(h, state_to_caller(rh, batched), dtype, factor, "h_n")
    assert_close(c, state_to_caller(rc, batched), dtype, factor, "c_n")


@settings(max_examples=1200, **SETTINGS)
@given(lstm_calls(), st.booleans())
def test_lstm_and_frozen_match_the_reference(call, frozen):
    cfg, x, state, lengths, batched, _ = call
    model = clstm.LSTM(**cfg)
    run = model.freeze() if frozen else model
    check_lstm_output(cfg, run(x, state, lengths),
                      reference_forward(model, cfg, x, state, lengths, batched), batched)


@settings(max_examples=700, **SETTINGS)
@given(lstm_calls())
def test_lstm_training_matches_the_reference(call):
    cfg, x, state, lengths, batched, rng = call
    model = clstm.LSTM(**cfg)
    (y, (h, c)), backward = model.forward_train(x, state, lengths)
    ref = reference_forward(model, cfg, x, state, lengths, batched, train=True)
    check_lstm_output(cfg, (y, (h, c)), ref, batched)
    dy = randn(rng, y.shape, cfg["dtype"])
    dh, dc = randn(rng, h.shape, cfg["dtype"]), randn(rng, c.shape, cfg["dtype"])
    dx, (dh0, dc0) = backward(dy, (dh, dc))
    n = h.shape[0]
    B = ref[1].shape[1]
    g = R.lstm_stack_backward(ref[3], time_major(cfg, dy, batched),
                              dh.reshape(n, B, dh.shape[-1]), dc.reshape(n, B, dc.shape[-1]))
    dtype, factor = cfg["dtype"], 8.0
    assert_close(dx, to_caller(cfg, g["x"], batched), dtype, factor, "dx")
    assert_close(dh0, state_to_caller(g["h0"], batched), dtype, factor, "dh0")
    assert_close(dc0, state_to_caller(g["c0"], batched), dtype, factor, "dc0")
    for name, grad in model.grads.items():
        assert_close(grad, g[name], dtype, factor, name)


@settings(max_examples=1200, **SETTINGS)
@given(lstm_calls(), st.sampled_from(["x", "h0", "c0", "state", "lengths"]),
       st.sampled_from(sorted(ARRAY_SPOILERS)), st.sampled_from(sorted(LENGTH_SPOILERS)),
       st.booleans(), st.booleans())
def test_lstm_refuses_spoiled_arguments_naming_them(call, name, how, how_lengths, frozen,
                                                    train):
    cfg, x, state, lengths, batched, _ = call
    model = clstm.LSTM(**cfg)
    run = model.forward_train if train else model.freeze() if frozen else model
    if name == "x":
        x = ARRAY_SPOILERS[how](x)
    elif name in ("h0", "c0"):
        if state is None:
            state = tuple(np.zeros(s.shape, s.dtype) for s in model(x)[1])
        h0, c0 = state
        state = (ARRAY_SPOILERS[how](h0), c0) if name == "h0" else (h0, ARRAY_SPOILERS[how](c0))
    elif name == "state":
        state = ("not", "a", "pair") if how == "strings" else (x,)
    else:
        T, B = time_major(cfg, x, batched).shape[:2]
        lengths = spoiled_lengths(how_lengths, T, B)
    expect_error(name, lambda: run(x, state, lengths))


CONSTRUCTOR_SPOILERS = [
    ("input_size", 0), ("input_size", 2.0), ("hidden_size", -1), ("hidden_size", "4"),
    ("num_layers", 0), ("num_layers", True), ("dropout", 1.0), ("dropout", "0.1"),
    ("dropout", -0.5), ("proj_size", -1), ("proj_size", 4), ("proj_size", 9), ("dtype", "int32"),
    ("dtype", np.float16), ("dtype", object), ("seed", -1), ("seed", "s"),
]


@settings(max_examples=400, **SETTINGS)
@given(lstm_configs(), st.sampled_from(CONSTRUCTOR_SPOILERS), st.booleans())
def test_constructors_refuse_bad_arguments_naming_them(cfg, spoil, cell):
    name, value = spoil
    if cell:
        if name not in ("input_size", "hidden_size", "dtype", "seed"):
            return
        cfg = {k: cfg[k] for k in ("input_size", "hidden_size", "bias", "dtype", "seed")}
    cfg = dict(cfg, **{name: value})
    if name == "proj_size" and isinstance(value, int) and value > 0:
        cfg["hidden_size"] = min(cfg["hidden_size"], value)  # proj_size >= hidden_size
    expect_error(name, lambda: (clstm.LSTMCell if cell else clstm.LSTM)(**cfg))


@st.composite
def cell_calls(draw):
    I, H = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    dtype = draw(DTYPES)
    batched = draw(st.booleans())
    B = draw(st.integers(0, 5) | st.just(1)) if batched else 1
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    lead = (B,) if batched else ()
    x = in_layout(randn(rng, lead + (I,), dtype), draw(LAYOUTS))
    state = (randn(rng, lead + (H,), dtype), randn(rng, lead + (H,), dtype)) \
        if draw(st.booleans()) else None
    cell = clstm.LSTMCell(I, H, bias=draw(st.booleans()), dtype=dtype, seed=draw(
        st.integers(0, 2**16)))
    return cell, x, state, batched, rng


def reference_step(cell, x, state, batched):
    p = cell.state_dict()
    x2 = np.asarray(x, cell.dtype).reshape(-1, cell.input_size)
    B, H = x2.shape[0], cell.hidden_size
    h0, c0 = (np.zeros((B, H), cell.dtype),) * 2 if state is None else \
        (s.reshape(B, H) for s in state)
    return R.lstm_forward(x2[None], p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                          p.get("bias_hh"), h0, c0, train=True)


@settings(max_examples=1000, **SETTINGS)
@given(cell_calls(), st.sampled_from(["live", "frozen", "train"]))
def test_cells_match_the_reference(call, how):
    cell, x, state, batched, rng = call
    dtype = cell.dtype
    _, rh, rc, cache = reference_step(cell, x, state, batched)
    shape = rh.shape if batched else rh.shape[1:]
    if how == "train":
        (h, c), backward = cell.forward_train(x, state)
    else:
        h, c = (cell.freeze() if how == "frozen" else cell)(x, state)
    assert_close(h, rh.reshape(shape), dtype, 4.0, "h")
    assert_close(c, rc.reshape(shape), dtype, 4.0, "c")
    if how == "train":
        dh, dc = randn(rng, shape, dtype), randn(rng, shape, dtype)
        dx, (dh0, dc0) = backward(dh, dc)
        g = R.lstm_backward(cache, None, dh.reshape(rh.shape), dc.reshape(rc.shape))
        assert_close(dx, g.dx.reshape(np.shape(x)), dtype, 8.0, "dx")
        assert_close(dh0, g.dh0.reshape(shape), dtype, 8.0, "dh0")
        assert_close(dc0, g.dc0.reshape(shape), dtype, 8.0, "dc0")
        assert_close(cell.grads["weight_ih"], g.dw_ih, dtype, 8.0, "dw_ih")
        assert_close(cell.grads["weight_hh"], g.dw_hh, dtype, 8.0, "dw_hh")


@settings(max_examples=1000, **SETTINGS)
@given(cell_calls(), st.sampled_from(["x", "h0", "c0", "state"]),
       st.sampled_from(sorted(ARRAY_SPOILERS)), st.sampled_from(["live", "frozen", "train"]))
def test_cells_refuse_spoiled_arguments_naming_them(call, name, how, which):
    cell, x, state, batched, _ = call
    if state is None:
        state = tuple(np.zeros_like(s) for s in cell(x))
    if name == "x":
        x = ARRAY_SPOILERS[how](x)
    elif name == "state":
        state = ("not", "a", "pair") if how == "strings" else (x,)
    else:
        h0, c0 = state
        state = (ARRAY_SPOILERS[how](h0), c0) if name == "h0" else (h0, ARRAY_SPOILERS[how](c0))
    run = cell.forward_train if which == "train" else cell.freeze() if which == "frozen" \
        else cell
    expect_error(name, lambda: run(x, state))


@st.composite
def functional_calls(draw):
    """Keyword arguments of one valid `lstm_forward` call, and an rng for gradients."""
    T, B, I, H = (draw(st.integers(0, 6)), draw(st.integers(0, 5)), draw(st.integers(1, 6)),
                  draw(st.integers(1, 8)))
    P = draw(st.integers(1, H - 1)) if H > 1 and draw(st.booleans()) else None
    dtype = draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    Po = P or H
    kw = dict(x=randn(rng, (T, B, I), dtype), w_ih=randn(rng, (4 * H, I), dtype),
              w_hh=randn(rng, (4 * H, Po), dtype), h0=randn(rng, (B, Po), dtype),
              c0=randn(rng, (B, H), dtype), reverse=draw(st.booleans()))
    bias = draw(st.sampled_from(["both", "ih", "none"]))
    kw["b_ih"] = randn(rng, (4 * H,), dtype) if bias != "none" else None
    kw["b_hh"] = randn(rng, (4 * H,), dtype) if bias == "both" else None
    if P:
        kw["w_hr"] = randn(rng, (P, H), dtype)
    if draw(st.booleans()):
        kw["lengths"] = rng.integers(0, T + 1, B)
    return kw, rng


@settings(max_examples=1000, **SETTINGS)
@given(functional_calls(), st.sampled_from([None, 1, 2]))
def test_functional_matches_the_reference(call, n_threads):
    kw, rng = call
    dtype = kw["w_ih"].dtype
    y, h, c, cache = F.lstm_forward(**kw, train=True, n_threads=n_threads)
    ry, rh, rc, rcache = R.lstm_forward(**kw, train=True)
    for a, e, what in ((y, ry, "y"), (h, rh, "h_n"), (c, rc, "c_n")):
        assert_close(a, e, dtype, 4.0, what)
    dy, dh, dc = (randn(rng, a.shape, dtype) for a in (y, h, c))
    grads, expected = F.lstm_backward(cache, dy, dh, dc), R.lstm_backward(rcache, dy, dh, dc)
    for name in expected._fields:
        e = getattr(expected, name)
        if e is not None:
            assert_close(getattr(grads, name), e, dtype, 8.0, "d" + name)


@settings(max_examples=1000, **SETTINGS)
@given(functional_calls(), st.sampled_from(["x", "w_ih", "w_hh", "b_ih", "h0", "c0", "w_hr",
                                            "lengths", "n_threads"]),
       st.sampled_from(sorted(ARRAY_SPOILERS)), st.sampled_from(sorted(LENGTH_SPOILERS)))
def test_functional_refuses_spoiled_arguments_naming_them(call, name, how, how_lengths):
    kw, _ = call
    T, B = kw["x"].shape[:2]
    if name == "lengths":
        kw["lengths"] = spoiled_lengths(how_lengths, T, B)
    elif name == "n_threads":
        kw["n_threads"] = {"complex": 0, "strings": "2", "objects": 1.5, "bools": True,
                           "integers": -3}.get(how, -1)
    else:
        if kw.get(name) is None:
            name = "x"
        if name == "w_ih" and how == "last axis":
            how = "extra axis"  # (its last axis is I, which x fixes only if x is checked first)
        kw[name] = ARRAY_SPOILERS[how](kw[name])
    expect_error(name, lambda: F.lstm_forward(**kw))
