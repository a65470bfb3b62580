"""Losses: reductions, class and element weights, masks and lengths. Gradients against
central finite differences (float64), values against direct formulas on the kept elements,
and against torch.nn.functional where PyTorch is installed."""
import math

import numpy as np
import pytest

import clstm
from clstm import losses
from _helpers import numeric_gradient

REDUCTIONS = ["mean", "sum", "none"]


def close(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def scalar(loss_value):
    """The scalar a gradient refers to: the loss, or the sum of the per-element losses."""
    return float(np.sum(loss_value))


def pointwise_cases(rng):
    shape = (4, 3, 2)
    x = rng.standard_normal(shape) * 2
    t = rng.standard_normal(shape)
    probs = rng.uniform(0, 1, shape)
    return [
        ("mse", lambda a, b, **k: losses.mse_loss(a, b, **k), x, t, {}),
        ("l1", lambda a, b, **k: losses.l1_loss(a, b, **k), x, t, {}),
        ("huber", lambda a, b, **k: losses.huber_loss(a, b, delta=0.7, **k), x, t, {}),
        ("bce", lambda a, b, **k: losses.binary_cross_entropy_with_logits(a, b, **k), x,
         probs, {}),
        ("bce_weighted", lambda a, b, **k: losses.binary_cross_entropy_with_logits(
            a, b, weight=rng_weight, pos_weight=np.array([0.5, 3.0]), **k), x, probs, {}),
    ]


rng_weight = np.random.default_rng(9).uniform(0.2, 2.0, (3, 2))
MASK = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0]], bool)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", range(5))
def test_pointwise_gradients_match_finite_differences(case, reduction, masked):
    name, fn, x, t, _ = pointwise_cases(np.random.default_rng(case))[case]
    kw = dict(reduction=reduction, mask=MASK if masked else None)
    loss, dx = fn(x, t, **kw)
    assert dx.shape == x.shape and dx.dtype == np.float64
    numeric = numeric_gradient(lambda: scalar(fn(x, t, **kw)[0]), x)
    close(dx, numeric, rtol=1e-6, atol=1e-9)
    if reduction == "none":
        assert loss.shape == x.shape
        if masked:
            assert np.all(loss[~MASK] == 0)
    else:
        assert isinstance(loss, float)


def direct(name, x, t, delta=0.7, weight=None, pos_weight=None):
    """Per-element losses from the textbook formulas."""
    d = x - t
    if name == "mse":
        return d ** 2
    if name == "l1":
        return np.abs(d)
    if name == "huber":
        return np.where(np.abs(d) < delta, 0.5 * d ** 2, delta * (np.abs(d) - 0.5 * delta))
    sig = 1 / (1 + np.exp(-x))
    pw = 1.0 if pos_weight is None else pos_weight
    w = 1.0 if weight is None else weight
    return -w * (pw * t * np.log(sig) + (1 - t) * np.log(1 - sig))


@pytest.mark.parametrize("case", range(5))
def test_pointwise_values_and_masks(case):
    name, fn, x, t, _ = pointwise_cases(np.random.default_rng(case))[case]
    kw = {}
    if name == "bce_weighted":
        kw = dict(weight=rng_weight, pos_weight=np.array([0.5, 3.0]))
    per = direct(name.split("_")[0], x, t, **kw)
    close(fn(x, t, reduction="none")[0], per)
    close(fn(x, t, reduction="sum")[0], per.sum())
    close(fn(x, t)[0], per.mean())
    close(fn(x, t, mask=MASK)[0], per[MASK].mean())  # mean over the elements kept
    close(fn(x, t, mask=MASK, reduction="sum")[0], per[MASK].sum())
    nothing = np.zeros(4, bool)
    loss, dx = fn(x, t, mask=nothing)
    assert math.isnan(loss) and np.all(dx == 0)


def test_bce_is_stable_for_large_logits():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    t = np.array([1.0, 0.0, 0.5, 1.0, 0.0])
    loss, dx = losses.binary_cross_entropy_with_logits(x, t, reduction="none")
    tiny = math.log1p(math.exp(-30))  # -log(sigmoid(30)): ~1e-13, no overflow or log(0)
    close(loss, [800.0, tiny, math.log(2), tiny, 800.0], rtol=1e-12, atol=1e-14)
    close(dx, [-1.0, 1 / (1 + math.exp(30)), 0.0, -1 / (1 + math.exp(30)), 1.0], rtol=1e-12)


def direct_weighted_ce(logits, target, weight, ignore_index=-100):
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = target != ignore_index
    picked = np.array([-log_p[i, c] * weight[c] for i, c in enumerate(target) if c != -100])
    return picked, weight[target[keep]]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_class_weights_and_mask(reduction):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5, 3))
    target = rng.integers(0, 3, (4, 5))
    target[0, 1] = -100
    weight = np.array([0.2, 1.0, 3.0])
    mask = np.array([True, True, False, True])
    kw = dict(weight=weight, reduction=reduction, mask=mask)
    loss, d = clstm.cross_entropy(logits, target, **kw)
    close(d, numeric_gradient(lambda: scalar(clstm.cross_entropy(logits, target, **kw)[0]),
                              logits), rtol=1e-6, atol=1e-9)
    keep = (target != -100) & mask[:, None]
    per, w = direct_weighted_ce(logits[keep], target[keep], weight)
    expected = {"mean": per.sum() / w.sum(), "sum": per.sum()}
    if reduction == "none":
        assert loss.shape == target.shape and np.all(loss[~keep] == 0)
        close(loss[keep], per)
    else:
        close(loss, expected[reduction])


def test_sequence_mask_and_sequence_loss():
    lengths = np.array([3, 0, 1])
    np.testing.assert_array_equal(losses.sequence_mask(lengths, 4),
                                  [[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(losses.sequence_mask(lengths, 4, batch_first=True),
                                  losses.sequence_mask(lengths, 4).T)
    rng = np.random.default_rng(1)
    y, t = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    seq_mse = losses.sequence_loss(clstm.mse_loss)
    keep = losses.sequence_mask(lengths, 4)
    loss, dy = seq_mse(y, t, lengths=lengths)
    close(loss, np.mean((y[keep] - t[keep]) ** 2))
    assert np.all(dy[~keep] == 0)
    close(seq_mse(y, t)[0], clstm.mse_loss(y, t)[0])  # no lengths: every step
    seq_ce = losses.sequence_loss(clstm.cross_entropy, batch_first=True)
    logits, target = rng.standard_normal((3, 4, 5)), rng.integers(0, 5, (3, 4))
    keep_bf = keep.T
    close(seq_ce(logits, target, lengths)[0],
          clstm.cross_entropy(logits[keep_bf], target[keep_bf])[0])
    assert seq_ce.__name__ == "sequence_cross_entropy"
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 4\]"):
        losses.sequence_mask([5], 4)


def test_loss_bad_input():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        clstm.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"mask must have input's shape \(3, 2\) or a prefix"):
        clstm.mse_loss(x, x, mask=np.ones(2, bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        clstm.mse_loss(x, x, mask=np.ones(3))
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\)"):
        clstm.cross_entropy(x, np.zeros(3, int), weight=np.ones(3))
    with pytest.raises(ValueError, match="weight must broadcast to input's shape"):
        losses.binary_cross_entropy_with_logits(x, x, weight=np.ones(3))
    with pytest.raises(ValueError, match="delta must be a number > 0"):
        losses.huber_loss(x, x, delta=0)
    with pytest.raises(TypeError, match="target must be a float32 or float64"):
        losses.l1_loss(x, np.zeros((3, 2), int))


# ------------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pointwise_losses_match_torch(reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((5, 4)) * 3, rng.standard_normal((5, 4))
    p = rng.uniform(0, 1, (5, 4))
    w, pw = rng.uniform(0.1, 2, (4,)), rng.uniform(0.1, 3, (4,))
    cases = [
        (clstm.mse_loss, F.mse_loss, t, {}, {}),
        (losses.l1_loss, F.l1_loss, t, {}, {}),
        (losses.huber_loss, F.huber_loss, t, {"delta": 0.5}, {"delta": 0.5}),
        (losses.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, p,
         {"weight": w, "pos_weight": pw},
         {"weight": torch.tensor(w), "pos_weight": torch.tensor(pw)}),
    ]
    for ours, theirs, target, kw, tkw in cases:
        xt = torch.tensor(x, requires_grad=True)
        out = theirs(xt, torch.tensor(target), reduction=reduction, **tkw)
        out.sum().backward()
        loss, dx = ours(x, target, reduction=reduction, **kw)
        close(loss, out.detach().numpy(), rtol=1e-12, atol=1e-14)
        close(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)
        # a mask is PyTorch's loss on the selected elements
        mask = np.array([True, False, True, True, False])
        xt = torch.tensor(x, requires_grad=True)
        theirs(xt[torch.from_numpy(mask)], torch.tensor(target[mask]), reduction="mean",
               **tkw).backward()
        loss, dx = ours(x, target, mask=mask, **kw)
        close(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 2, 4))  # (T, B, C): classes last, torch wants axis 1
    target = rng.integers(0, 4, (6, 2))
    target[2, 1] = 3
    target[4] = -1
    weight = rng.uniform(0.1, 2.0, 4)
    lt = torch.tensor(logits, requires_grad=True)
    out = torch.nn.functional.cross_entropy(lt.permute(1, 2, 0), torch.tensor(target.T),
                                            weight=torch.tensor(weight), ignore_index=-1,
                                            reduction=reduction)
    out.sum().backward()
    loss, d = clstm.cross_entropy(logits, target, weight=weight, ignore_index=-1,
                                  reduction=reduction)
    close(loss, out.detach().numpy().T if reduction == "none" else out.item(), rtol=1e-12)
    close(d, lt.grad.numpy(), rtol=1e-12, atol=1e-14)
