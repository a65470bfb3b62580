"""Embedding, Dropout, AttentionPooling, LastStep, and Sequential passing lengths and state:
values from direct formulas, gradients against central finite differences (float64), and
PyTorch parity where it is installed."""
import numpy as np
import pytest

import clstm
from _helpers import numeric_gradient


def close(actual, expected, rtol=1e-7, atol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------- Embedding
def test_embedding_init_lookup_and_padding_row():
    emb = clstm.Embedding(7, 3, padding_idx=-2, seed=5, dtype=np.float64)
    expected = np.random.default_rng(5).standard_normal((7, 3))  # N(0, 1), as PyTorch
    expected[5] = 0
    np.testing.assert_array_equal(emb.weight, expected)
    assert emb.padding_idx == 5 and emb.weight.dtype == np.float64
    idx = np.array([[0, 5, 6], [6, 6, 1]])
    out = emb(idx)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, expected[idx])
    assert emb(np.int8(3)).shape == (3,)  # a scalar index gives one vector
    assert clstm.Embedding(4, 2).weight.dtype == np.float32
    assert repr(emb) == "Embedding(7, 3, padding_idx=5, dtype=float64)"


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 2, 3)])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_gradient_accumulates_per_row(shape, padding_idx):
    emb = clstm.Embedding(6, 3, padding_idx=padding_idx, seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 6, shape)
    idx.ravel()[:3] = [2, 4, 4]  # a padding index and a repeated row, whatever the draw
    dout = rng.standard_normal(shape + (3,))
    out, backward = emb.forward_train(idx)
    assert backward(dout) is None  # no gradient for integer input
    numeric = numeric_gradient(lambda: float(np.sum(emb(idx) * dout)), emb.weight)
    if padding_idx is not None:
        numeric[padding_idx] = 0  # PyTorch's rule: the padding row never gets a gradient
    close(emb.grads["weight"], numeric)
    _, backward = emb.forward_train(idx)
    backward(dout)
    close(emb.grads["weight"], 2 * numeric)  # accumulates


def test_embedding_bad_input():
    emb = clstm.Embedding(4, 2)
    with pytest.raises(TypeError, match="indices must be an integer array"):
        emb(np.array([0.0, 1.0]))
    with pytest.raises(IndexError, match=r"indices must be in \[0, 4\).*got 4"):
        emb(np.array([0, 4]))
    with pytest.raises(IndexError, match="got -1"):
        emb([-1])
    with pytest.raises(ValueError, match="padding_idx must be in"):
        clstm.Embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="padding_idx must be >= -4"):
        clstm.Embedding(4, 2, padding_idx=-5)
    with pytest.raises(ValueError, match="embedding_dim must be >= 1"):
        clstm.Embedding(4, 0)
    _, backward = emb.forward_train([1, 2])
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 2\)"):
        backward(np.zeros((2, 3), np.float32))


def test_embedding_matches_torch():
    torch = pytest.importorskip("torch")
    emb = clstm.Embedding(9, 4, padding_idx=3, seed=0, dtype=np.float64)
    ref = torch.nn.Embedding(9, 4, padding_idx=3).double()
    ref.load_state_dict({"weight": torch.from_numpy(emb.weight.copy())})
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 9, (5, 6))
    dout = rng.standard_normal((5, 6, 4))
    out, backward = emb.forward_train(idx)
    t_out = ref(torch.from_numpy(idx))
    t_out.backward(torch.from_numpy(dout))
    backward(dout)
    close(out, t_out.detach().numpy(), rtol=0, atol=0)
    close(emb.grads["weight"], ref.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    emb.load_state_dict(ref.state_dict())  # names agree


# ------------------------------------------------------------------------------- Dropout
def test_dropout_training_masks_and_inference_passes_through():
    x = np.random.default_rng(0).standard_normal((200, 50)) + 3.0  # no zeros in x
    drop = clstm.Dropout(0.3, seed=4)
    np.testing.assert_array_equal(drop(x), x)
    out, backward = drop.forward_train(x)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    close(out[kept], x[kept] / 0.7, rtol=1e-15, atol=0)
    dout = np.random.default_rng(1).standard_normal(x.shape)
    close(backward(dout), np.where(kept, dout / 0.7, 0.0), rtol=1e-15, atol=0)
    # the layer's seed makes the masks reproducible; an explicit rng overrides it
    again, _ = clstm.Dropout(0.3, seed=4).forward_train(x)
    np.testing.assert_array_equal(again, out)
    other, _ = drop.forward_train(x, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(other, out)
    assert drop.forward_train(x.astype(np.float32))[0].dtype == np.float32
    np.testing.assert_array_equal(clstm.Dropout(0.0).forward_train(x)[0], x)
    np.testing.assert_array_equal(clstm.Dropout(1.0).forward_train(x)[0], 0 * x)
    # for a fixed mask (the same generator state) backward is the derivative
    x64 = np.random.default_rng(2).standard_normal((3, 4))
    _, backward = drop.forward_train(x64, rng=np.random.default_rng(9))
    dout = np.random.default_rng(3).standard_normal((3, 4))
    numeric = numeric_gradient(lambda: float(np.sum(
        drop.forward_train(x64, rng=np.random.default_rng(9))[0] * dout)), x64)
    close(backward(dout), numeric)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="p must be a probability"):
            clstm.Dropout(bad)
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        drop(np.arange(3))


# ------------------------------------------------------------------------------- attention
def direct_attention(h, W, b, v, lengths):
    """Batch-major h (B, T, H): Yang et al.'s pooling written one row and one step at a
    time, from the paper's formulas."""
    B, T, H = h.shape
    s, weights = np.zeros((B, H)), np.zeros((B, T))
    for r in range(B):
        n = lengths[r]
        scores = [np.tanh(W @ h[r, t] + b) @ v for t in range(n)]
        if n:
            e = np.exp(np.array(scores) - max(scores))
            weights[r, :n] = e / e.sum()
        s[r] = sum((weights[r, t] * h[r, t] for t in range(n)), np.zeros(H))
    return s, weights


def attention_problem(batch_first, T=6, B=4, H=5, A=3, seed=0):
    pool = clstm.AttentionPooling(H, A, batch_first=batch_first, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 1)
    h = rng.standard_normal((B, T, H) if batch_first else (T, B, H))
    return pool, h, rng


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_forward_matches_the_formulas(batch_first):
    pool, h, _ = attention_problem(batch_first)
    lengths = np.array([6, 2, 0, 5])
    s, weights = pool(h, lengths=lengths)
    h_bm = h if batch_first else h.transpose(1, 0, 2)
    s_ref, w_ref = direct_attention(h_bm, pool.weight, pool.bias, pool.context, lengths)
    close(s, s_ref, rtol=1e-12, atol=1e-14)
    close(weights, w_ref if batch_first else w_ref.T, rtol=1e-12, atol=1e-14)
    assert weights.shape == h.shape[:2]
    # padded steps do not matter; a length-0 row is zeros, not nan
    h_bm[1, 2:] = 1e6
    s2, _ = pool(h, lengths=lengths)
    close(s2, s_ref, rtol=1e-12, atol=1e-14)
    assert np.all(s2[2] == 0) and np.isfinite(s2).all()
    # no lengths: every step counts
    s_all, _ = pool(h)
    close(s_all, direct_attention(h_bm, pool.weight, pool.bias, pool.context,
                                  [h_bm.shape[1]] * 4)[0], rtol=1e-12, atol=1e-14)


def test_attention_large_scores_stay_finite_and_unbatched():
    pool = clstm.AttentionPooling(2, 2, dtype=np.float64, seed=0)
    pool.context = np.array([1e5, -1e5])  # scores of about 1e5: exp would overflow
    h = np.random.default_rng(0).standard_normal((7, 2))  # unbatched (T, H)
    s, w = pool(h)
    assert s.shape == (2,) and w.shape == (7,)
    assert np.isfinite(s).all() and abs(w.sum() - 1) < 1e-12
    assert pool(h.astype(np.float32))[0].dtype == np.float64  # cast to the layer's dtype
    s0, w0 = pool(np.zeros((0, 3, 2)))  # no steps at all: zeros, not nan
    assert s0.shape == (3, 2) and np.all(s0 == 0) and w0.shape == (0, 3)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths", [None, [6, 1, 0, 4]])
def test_attention_gradients_match_finite_differences(batch_first, lengths):
    pool, h, rng = attention_problem(batch_first)
    ds = rng.standard_normal((4, 5))
    dw = rng.standard_normal(h.shape[:2])

    def loss():
        s, w = pool(h, lengths=lengths)
        return float(np.sum(s * ds) + np.sum(w * dw))

    _, backward = pool.forward_train(h, lengths=lengths)
    dh = backward(ds, dw)
    close(dh, numeric_gradient(loss, h))
    for name, p in pool.params.items():
        close(pool.grads[name], numeric_gradient(loss, p))
    if lengths is not None:  # padded steps get no gradient
        dh_bm = dh if batch_first else dh.transpose(1, 0, 2)
        assert np.all(dh_bm[1, 1:] == 0) and np.all(dh_bm[2] == 0)


def test_attention_gradient_without_dweights_and_unbatched():
    pool = clstm.AttentionPooling(3, 4, dtype=np.float64, seed=2)
    rng = np.random.default_rng(3)
    h, ds = rng.standard_normal((5, 3)), rng.standard_normal(3)
    (s, w), backward = pool.forward_train(h)
    dh = backward(ds)
    close(dh, numeric_gradient(lambda: float(pool(h)[0] @ ds), h))


def test_attention_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    pool, h, rng = attention_problem(True, T=7, B=3, H=4, A=6)
    lengths = np.array([7, 3, 0])
    ds, dw = rng.standard_normal((3, 4)), rng.standard_normal((3, 7))
    (s, w), backward = pool.forward_train(h, lengths=lengths)
    dh = backward(ds, dw)

    th = torch.tensor(h, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in pool.params.items()}
    u = torch.tanh(th @ tp["weight"].T + tp["bias"])
    score = (u @ tp["context"]).masked_fill(
        torch.arange(7)[None, :] >= torch.from_numpy(lengths)[:, None], float("-inf"))
    tw = torch.nan_to_num(torch.softmax(score, dim=1))  # a fully masked row: 0/0 -> 0
    ts = (tw[..., None] * th).sum(1)
    ((ts * torch.from_numpy(ds)).sum() + (tw * torch.from_numpy(dw)).sum()).backward()
    close(s, ts.detach().numpy(), rtol=1e-12, atol=1e-14)
    close(w, tw.detach().numpy(), rtol=1e-12, atol=1e-14)
    close(dh, th.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, p in tp.items():
        close(pool.grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_attention_init_and_bad_input():
    pool = clstm.AttentionPooling(4, 9, seed=7)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(pool.weight, rng.uniform(-0.5, 0.5, (9, 4)).astype(np.float32))
    np.testing.assert_array_equal(pool.bias, rng.uniform(-0.5, 0.5, 9).astype(np.float32))
    np.testing.assert_array_equal(pool.context,
                                  rng.uniform(-1 / 3, 1 / 3, 9).astype(np.float32))
    assert list(pool.state_dict()) == ["weight", "bias", "context"]
    with pytest.raises(ValueError, match=r"h must have 4 features.*\(T, B, 4\)"):
        pool(np.zeros((3, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"h must be 3-D \(T, B, F\)"):
        pool(np.zeros((3,), np.float32))
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 3\]"):
        pool(np.zeros((3, 2, 4), np.float32), lengths=[4, 1])
    _, backward = pool.forward_train(np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"ds must have shape \(2, 4\)"):
        backward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"dweights must have shape \(3, 2\)"):
        backward(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))


# ------------------------------------------------------------------------------- LastStep
@pytest.mark.parametrize("batch_first", [False, True])
def test_last_step_picks_each_rows_last_valid_step_and_its_gradient(batch_first):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 3) if batch_first else (5, 4, 3))
    x_bm = x if batch_first else x.transpose(1, 0, 2)
    last = clstm.LastStep(batch_first=batch_first)
    np.testing.assert_array_equal(last(x), x_bm[:, -1])
    lengths = [5, 1, 0, 3]
    out, backward = last.forward_train(x, lengths=lengths)
    np.testing.assert_array_equal(out, [x_bm[0, 4], x_bm[1, 0], np.zeros(3), x_bm[3, 2]])
    dout = rng.standard_normal((4, 3))
    dx = backward(dout)
    close(dx, numeric_gradient(lambda: float(np.sum(last(x, lengths) * dout)), x))
    assert last(x.astype(np.float32)).dtype == np.float32
    assert last(x_bm[0]).shape == (3,)  # unbatched (T, F)
    empty = last.forward_train(x[:0] if not batch_first else x[:, :0], lengths=[0] * 4)
    assert np.all(empty[0] == 0) and empty[1](dout).shape[:2] == ((4, 0) if batch_first
                                                                 else (0, 4))


def test_last_step_bad_input():
    last = clstm.LastStep()
    with pytest.raises(ValueError, match="no time steps"):
        last(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        last(np.zeros((4, 2, 3)), lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        last(np.zeros((4, 2, 3), int))


# ------------------------------------------------------------------------------- Sequential
def test_sequential_passes_lengths_and_state():
    rng = np.random.default_rng(0)
    lstm = clstm.LSTM(3, 4, batch_first=True, dtype=np.float64, seed=0)
    head = clstm.Linear(4, 2, dtype=np.float64, seed=1)
    model = clstm.Sequential(lstm, clstm.LastStep(batch_first=True), head)
    x = rng.standard_normal((5, 6, 3))
    lengths = np.array([6, 2, 0, 5, 1])
    state = (rng.standard_normal((1, 5, 4)), rng.standard_normal((1, 5, 4)))
    # LastStep after an LSTM with lengths gives h_n: each row's state at its own last step
    # (for a length-0 row LastStep gives zeros, h_n the initial state: zeros here)
    _, (h_n, _) = lstm(x, lengths=lengths)
    close(model(x, lengths=lengths), head(h_n[0]), rtol=1e-12, atol=1e-14)
    y, _ = model.forward_train(x, lengths=lengths)
    close(y, head(h_n[0]), rtol=1e-12, atol=1e-14)
    # state goes to the first module that takes one: the LSTM after an Embedding
    emb = clstm.Embedding(10, 3, dtype=np.float64, seed=2)
    idx = rng.integers(0, 10, (5, 6))
    with_emb = clstm.Sequential(emb, lstm)
    close(with_emb(idx, state=state), lstm(emb(idx), state)[0], rtol=1e-12, atol=1e-14)
    y, backward = with_emb.forward_train(idx, state=state)
    close(y, lstm(emb(idx), state)[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="none of its modules takes lengths"):
        clstm.Sequential(head)(x[:, 0], lengths=lengths)
    with pytest.raises(TypeError, match="none of its modules takes state"):
        clstm.Sequential(emb, clstm.LastStep())(idx, state=state)


def test_sequential_attention_model_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    f64 = dict(dtype=np.float64)
    model = clstm.Sequential(
        clstm.Embedding(7, 3, padding_idx=0, seed=0, **f64),
        clstm.LSTM(3, 4, batch_first=True, seed=1, **f64),
        clstm.Dropout(0.0),
        clstm.AttentionPooling(4, 3, batch_first=True, seed=2, **f64),
        clstm.Linear(4, 2, seed=3, **f64))
    idx = rng.integers(1, 7, (3, 5))
    lengths = np.array([5, 2, 3])
    idx[1, 2:] = idx[2, 3:] = 0
    dy = rng.standard_normal((3, 2))

    def loss():
        return float(np.sum(model(idx, lengths=lengths) * dy))

    y, backward = model.forward_train(idx, lengths=lengths)
    close(y, model(idx, lengths=lengths), rtol=1e-12, atol=1e-14)
    assert backward(dy) is None  # the Embedding takes no input gradient
    for name in ("0.weight", "1.weight_hh_l0", "1.bias_ih_l0", "3.weight", "3.context",
                 "4.weight"):
        close(model.grads[name], numeric_gradient(loss, model.params[name]), rtol=1e-6,
              atol=1e-8)
    assert np.all(model.grads["0.weight"][0] == 0)  # the padding row


def test_sequential_hands_the_dropout_generator_on():
    import clstm as c

    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    model = c.Sequential(c.LSTM(4, 6, num_layers=2, dropout=0.5, dtype=np.float64, seed=1),
                         c.Dropout(0.3), c.Linear(6, 2, dtype=np.float64, seed=2))
    y1, _ = model.forward_train(x, rng=np.random.default_rng(7))
    y2, _ = model.forward_train(x, rng=np.random.default_rng(7))
    y3, _ = model.forward_train(x, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(y1, y2)  # every mask from the generator given
    assert not np.allclose(y1, y3)
    lstm, drop, lin = model
    rng = np.random.default_rng(7)  # the same draws, module by module, in order
    (h, _), _ = lstm.forward_train(x, rng=rng)
    h, _ = drop.forward_train(h, rng=rng)
    y4, _ = lin.forward_train(h)
    np.testing.assert_array_equal(y1, y4)
