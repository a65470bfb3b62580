"""The training toolkit: Linear, Sequential, save/load, losses, optimisers, gradient clipping.

Every claim is checked without PyTorch (finite differences, direct formulas, a hand-written
NumPy version of torch.optim's update rules); the PyTorch parity tests skip when it is not
installed."""
import math

import numpy as np
import pytest

import clstm
from clstm.optim import SGD, Adam
from _helpers import numeric_gradient


def close(actual, expected, rtol=1e-6, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def torch_or_skip():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------------------- Linear
def test_linear_init_is_torch_bound_weight_then_bias():
    lin = clstm.Linear(5, 3, seed=4, dtype=np.float64)
    rng = np.random.default_rng(4)
    bound = 1 / math.sqrt(5)
    np.testing.assert_array_equal(lin.weight, rng.uniform(-bound, bound, (3, 5)))
    np.testing.assert_array_equal(lin.bias, rng.uniform(-bound, bound, (3,)))
    assert list(lin.state_dict()) == ["weight", "bias"]
    assert lin.weight is lin.params["weight"]
    no_bias = clstm.Linear(5, 3, bias=False)
    assert no_bias.bias is None and list(no_bias.params) == ["weight"]
    assert lin.weight.dtype == np.float64 and no_bias.weight.dtype == np.float32
    assert repr(no_bias) == "Linear(5, 3, bias=False, dtype=float32)"


@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 2, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_is_affine_map(shape, bias):
    lin = clstm.Linear(4, 3, bias=bias, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal(shape)
    expected = np.einsum("...i,oi->...o", x, lin.weight) + (lin.bias if bias else 0)
    close(lin(x), expected, rtol=1e-12)
    y, _ = lin.forward_train(x)
    close(y, expected, rtol=1e-12)
    assert lin(x.astype(np.float32)).dtype == np.float64  # cast to the layer's dtype


@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 2, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_finite_differences(shape, bias):
    lin = clstm.Linear(4, 3, bias=bias, dtype=np.float64, seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape[:-1] + (3,))

    def loss():
        return float(np.sum(lin(x) * dy))

    y, backward = lin.forward_train(x)
    dx = backward(dy)
    assert dx.shape == x.shape
    close(dx, numeric_gradient(loss, x), rtol=1e-7, atol=1e-9)
    for name, p in lin.params.items():
        close(lin.grads[name], numeric_gradient(loss, p), rtol=1e-7, atol=1e-9)


def test_linear_backward_accumulates_and_ignores_later_mutation():
    lin = clstm.Linear(3, 2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    expected_dw, expected_dx = dy.T @ x, dy @ lin.weight
    _, backward = lin.forward_train(x)
    x[...] = 7.0  # the caller reuses its buffer...
    lin.weight[...] = -1.0  # ...and an optimiser steps, before backward
    dx = backward(dy)
    close(dx, expected_dx, rtol=1e-12)
    close(lin.grads["weight"], expected_dw, rtol=1e-12)
    close(lin.grads["bias"], dy.sum(0), rtol=1e-12)
    _, backward = lin.forward_train(np.zeros((5, 3)))
    backward(dy)  # gradients add up until zero_grad
    close(lin.grads["weight"], expected_dw, rtol=1e-12)
    close(lin.grads["bias"], 2 * dy.sum(0), rtol=1e-12)
    lin.zero_grad()
    assert not any(g.any() for g in lin.grads.values())


def test_linear_bad_input():
    lin = clstm.Linear(3, 2)
    with pytest.raises(TypeError, match="x must be a float"):
        lin(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\).*\(2, 4\)"):
        lin(np.ones((2, 4)))
    with pytest.raises(ValueError, match="x must have shape"):
        lin(np.float32(1.0))
    _, backward = lin.forward_train(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 2\)"):
        backward(np.ones((2, 3)))
    with pytest.raises(TypeError, match="dy must be a float"):
        backward(np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        clstm.Linear(0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        clstm.Linear(2, 2, dtype=np.int32)
    lin.params["weight"] = np.ones((2, 3), np.int64)  # replaced behind its back
    with pytest.raises(ValueError, match="parameter weight must be a C-contiguous"):
        lin(np.ones(3))


def test_linear_matches_torch():
    torch = torch_or_skip()
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).double()
    lin = clstm.Linear(4, 3, dtype=np.float64)
    lin.load_state_dict(module.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    dy = np.random.default_rng(1).standard_normal((2, 5, 3))
    xt = torch.tensor(x, requires_grad=True)
    (module(xt) * torch.tensor(dy)).sum().backward()
    y, backward = lin.forward_train(x)
    close(y, module(xt).detach().numpy(), rtol=1e-12)
    close(backward(dy), xt.grad.numpy(), rtol=1e-12)
    for name, p in module.named_parameters():
        close(lin.grads[name], p.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------- Sequential
def tiny_model(dtype=np.float64, **lstm_kw):
    return clstm.Sequential(clstm.LSTM(2, 3, dtype=dtype, seed=0, **lstm_kw),
                            clstm.Linear(6 if lstm_kw.get("bidirectional") else 3, 2,
                                         dtype=dtype, seed=1))


def test_sequential_names_share_the_childrens_arrays():
    model = tiny_model()
    lstm, lin = model[0], model[1]
    assert len(model) == 2 and list(model) == [lstm, lin]
    assert list(model.params) == ["0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0",
                                  "0.bias_hh_l0", "1.weight", "1.bias"]
    assert list(model.grads) == list(model.params)
    assert model.params["0.weight_hh_l0"] is lstm.params["weight_hh_l0"]
    assert model.params["1.weight"] is lin.params["weight"]
    assert model.grads["1.bias"] is lin.grads["bias"]
    assert model[1:][0] is lin and len(model[:1]) == 1
    # state_dict / load_state_dict / zero_grad through the base class, in place
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    np.testing.assert_array_equal(lin.params["bias"], sd["1.bias"])
    assert model.params["1.bias"] is lin.params["bias"]
    for g in model.grads.values():
        g[...] = 1
    model.zero_grad()
    assert not any(g.any() for g in list(lstm.grads.values()) + list(lin.grads.values()))
    with pytest.raises(KeyError, match=r"missing keys \['1.bias'\]"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "1.bias"})
    with pytest.raises(TypeError, match="module 1"):
        clstm.Sequential(lstm, np.zeros(3))


def test_sequential_forward_composes():
    model = tiny_model(bidirectional=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 2))
    expected = model[1](model[0](x)[0])
    close(model(x), expected, rtol=1e-12)
    y, _ = model.forward_train(x)
    close(y, expected, rtol=1e-12)


@pytest.mark.parametrize("lstm_kw", [{}, {"bidirectional": True, "num_layers": 2}])
def test_sequential_gradients_match_finite_differences(lstm_kw):
    model = tiny_model(**lstm_kw)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2))
    dy = rng.standard_normal((3, 2, 2))

    def loss():
        return float(np.sum(model(x) * dy))

    _, backward = model.forward_train(x)
    dx = backward(dy)
    close(dx, numeric_gradient(loss, x), rtol=1e-6, atol=1e-8)
    for name, p in model.params.items():
        close(model.grads[name], numeric_gradient(loss, p), rtol=1e-6, atol=1e-8)


def test_sequential_matches_torch():
    torch = torch_or_skip()
    torch.manual_seed(0)
    t_lstm = torch.nn.LSTM(2, 3, num_layers=2, bidirectional=True).double()
    t_lin = torch.nn.Linear(6, 2).double()
    model = tiny_model(num_layers=2, bidirectional=True)
    # ModuleList names its children "0", "1" as Sequential does
    model.load_state_dict(torch.nn.ModuleList([t_lstm, t_lin]).state_dict())
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2))
    xt = torch.tensor(x, requires_grad=True)
    yt = t_lin(t_lstm(xt)[0])
    (yt * torch.tensor(dy)).sum().backward()
    y, backward = model.forward_train(x)
    close(y, yt.detach().numpy(), rtol=1e-10)
    close(backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    named = dict(torch.nn.ModuleList([t_lstm, t_lin]).named_parameters())
    assert list(named) == list(model.grads)
    for name, p in named.items():
        close(model.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------- save / load
def saved_model(seed):
    return clstm.Sequential(clstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=seed),
                            clstm.Linear(8, 2, seed=seed + 1))


def test_save_load_round_trip(tmp_path):
    src, dst = saved_model(0), saved_model(10)
    path = tmp_path / "model.weights"  # used as given: no .npz appended
    src.save(path)
    with np.load(path) as f:
        assert f.files == list(src.state_dict())
    arrays = dict(dst.params)
    dst.load(str(path))
    for name, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.params[name], value)
        assert dst.params[name] is arrays[name]  # loaded in place
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(dst(x), src(x))


@pytest.mark.parametrize("make", [lambda s: clstm.LSTM(2, 3, proj_size=2, seed=s),
                                  lambda s: clstm.LSTMCell(2, 3, seed=s),
                                  lambda s: clstm.Linear(2, 3, seed=s)])
def test_every_module_saves_and_loads(tmp_path, make):
    src, dst = make(0), make(1)
    src.save(tmp_path / "m.npz")
    dst.load(tmp_path / "m.npz")
    for name, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.params[name], value)


def test_load_mismatches_name_the_file_and_change_nothing(tmp_path):
    model = saved_model(0)
    before = model.state_dict()
    good = saved_model(1).state_dict()

    def write(name, state):
        path = tmp_path / name
        np.savez(path, **state)
        return path

    cases = [
        ("missing.npz", {k: v for k, v in good.items() if k != "1.bias"}, KeyError,
         r"missing keys \['1.bias'\]"),
        ("extra.npz", {**good, "2.weight": np.zeros(3)}, KeyError,
         r"unexpected keys \['2.weight'\]"),
        ("shape.npz", {**good, "1.weight": np.zeros((2, 4), np.float32)}, ValueError,
         r"1.weight must have shape \(2, 8\), got \(2, 4\)"),
        ("dtype.npz", {**good, "1.bias": np.zeros(2, np.int32)}, TypeError, "1.bias"),
    ]
    for name, state, exc, message in cases:
        path = write(name, state)
        with pytest.raises(exc, match=message) as info:
            model.load(path)
        assert str(path) in str(info.value)
        for k, v in before.items():
            np.testing.assert_array_equal(model.params[k], v)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single.npy.*single .npy array"):
        model.load(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="junk.npz"):
        model.load(tmp_path / "junk.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz"):
        model.load(tmp_path / "empty.npz")
    np.savez(tmp_path / "objects.npz", **{**good, "1.bias": np.array([None, 1], object)})
    with pytest.raises(ValueError, match="objects.npz: not a .npz archive of parameters"):
        model.load(tmp_path / "objects.npz")
    with pytest.raises(FileNotFoundError):
        model.load(tmp_path / "absent.npz")


# ------------------------------------------------------------------------------- losses
def test_mse_loss_value_gradient_and_dtype():
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    loss, dx = clstm.mse_loss(x, t)
    assert isinstance(loss, float)
    close(loss, sum((a - b) ** 2 for a, b in zip(x.ravel(), t.ravel())) / x.size, rtol=1e-12)
    close(dx, numeric_gradient(lambda: clstm.mse_loss(x, t)[0], x), rtol=1e-7, atol=1e-10)
    loss32, dx32 = clstm.mse_loss(x.astype(np.float32), t)
    assert dx32.dtype == np.float32 and isinstance(loss32, float)
    close(loss32, loss, rtol=1e-5)
    assert math.isnan(clstm.mse_loss(np.zeros((0, 2)), np.zeros((0, 2)))[0])
    with pytest.raises(ValueError, match=r"target must have input's shape \(3, 4, 2\)"):
        clstm.mse_loss(x, t[0])
    with pytest.raises(TypeError, match="input must be a float"):
        clstm.mse_loss(np.ones(3, np.int64), np.ones(3))
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        clstm.mse_loss(np.ones(3, np.float16), np.ones(3))


def direct_cross_entropy(logits, target, ignore_index=-100):
    """-mean log softmax[target] over kept targets, one row at a time, no tricks."""
    terms = []
    for row, t in zip(logits.reshape(-1, logits.shape[-1]), target.ravel()):
        if t != ignore_index:
            terms.append(-math.log(math.exp(row[t]) / sum(math.exp(v) for v in row)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 5), (4,)])
def test_cross_entropy_value_and_gradient(shape):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape)
    target = rng.integers(0, shape[-1], shape[:-1])
    loss, dlogits = clstm.cross_entropy(logits, target)
    assert isinstance(loss, float) and dlogits.shape == logits.shape
    close(loss, direct_cross_entropy(logits, target), rtol=1e-12)
    numeric = numeric_gradient(lambda: clstm.cross_entropy(logits, target)[0], logits)
    close(dlogits, numeric, rtol=1e-7, atol=1e-10)


def test_cross_entropy_ignore_index_and_stability():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 3))
    target = rng.integers(0, 3, 8)
    target[[1, 4, 5]] = -100
    loss, dlogits = clstm.cross_entropy(logits, target)
    keep = target != -100
    close(loss, direct_cross_entropy(logits[keep], target[keep]), rtol=1e-12)
    assert not dlogits[~keep].any()
    # the kept rows' gradient is the kept-only problem's gradient (same mean over 5 targets)
    close(dlogits[keep], clstm.cross_entropy(logits[keep], target[keep])[1], rtol=1e-12)
    close(dlogits, numeric_gradient(lambda: clstm.cross_entropy(logits, target)[0], logits),
          rtol=1e-7, atol=1e-10)
    # an ignore_index that is also a class: those targets are ignored
    t2 = np.array([0, 1, 2, 1])
    close(clstm.cross_entropy(logits[:4], t2, ignore_index=1)[0],
          direct_cross_entropy(logits[[0, 2]], t2[[0, 2]]), rtol=1e-12)
    # huge logits: exp would overflow without the shift; the loss only sees differences
    loss_big, d_big = clstm.cross_entropy(logits + 1000.0, target)
    close(loss_big, loss, rtol=1e-9)
    close(d_big, dlogits, rtol=1e-7, atol=1e-12)
    loss32, d32 = clstm.cross_entropy(logits.astype(np.float32) * 50, target)
    assert np.isfinite(loss32) and d32.dtype == np.float32 and np.isfinite(d32).all()


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    loss, dlogits = clstm.cross_entropy(logits, np.full(3, -100))
    assert math.isnan(loss)
    assert dlogits.shape == (3, 4) and not dlogits.any()
    loss, dlogits = clstm.cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert math.isnan(loss) and dlogits.shape == (0, 4)


def test_cross_entropy_bad_input():
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\).*got 4"):
        clstm.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"got -1"):
        clstm.cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer array of class indices.*float64"):
        clstm.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer array.*bool"):
        clstm.cross_entropy(logits, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"target must have shape \(3,\).*\(2,\)"):
        clstm.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="logits must be a float"):
        clstm.cross_entropy(np.zeros((3, 4), np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="C >= 1"):
        clstm.cross_entropy(np.zeros((3, 0)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        clstm.cross_entropy(logits, np.array([0, 1, 2]), ignore_index=1.5)


def test_losses_match_torch():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    xt = torch.tensor(x, requires_grad=True)
    out = F.mse_loss(xt, torch.tensor(t))
    out.backward()
    loss, dx = clstm.mse_loss(x, t)
    close(loss, out.item(), rtol=1e-12)
    close(dx, xt.grad.numpy(), rtol=1e-12)

    logits = rng.standard_normal((3, 4, 5))  # (T, B, C): torch wants the classes on axis 1
    target = rng.integers(0, 5, (3, 4))
    target[0, 1] = target[2, 3] = -100
    for ignore_index, tgt in ((-100, target), (2, np.where(target < 0, 1, target))):
        lt = torch.tensor(logits, requires_grad=True)
        out = F.cross_entropy(lt.permute(0, 2, 1), torch.tensor(tgt),
                              ignore_index=ignore_index)
        out.backward()
        loss, dlogits = clstm.cross_entropy(logits, tgt, ignore_index=ignore_index)
        close(loss, out.item(), rtol=1e-12)
        close(dlogits, lt.grad.numpy(), rtol=1e-12, atol=1e-15)
    # every target ignored: torch's loss is nan and its gradient zero
    lt = torch.tensor(logits[0], requires_grad=True)
    out = F.cross_entropy(lt, torch.full((4,), -100))
    out.backward()
    loss, dlogits = clstm.cross_entropy(logits[0], np.full(4, -100))
    assert math.isnan(out.item()) and math.isnan(loss)
    np.testing.assert_array_equal(dlogits, lt.grad.numpy())


# ------------------------------------------------------------------------------- optimisers
# A hand-written NumPy version of torch.optim's single-tensor update rules (torch/optim/sgd.py
# and adam.py), one function per step, state in a plain dict.
def ref_sgd_step(p, g, state, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
    d_p = g + weight_decay * p
    if momentum != 0:
        if "buf" not in state:
            state["buf"] = d_p.copy()
        else:
            state["buf"] = momentum * state["buf"] + (1 - dampening) * d_p
        d_p = d_p + momentum * state["buf"] if nesterov else state["buf"]
    return p - lr * d_p


def ref_adam_step(p, g, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  amsgrad=False):
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    g = g + weight_decay * p
    m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
    if amsgrad:
        v = state["vmax"] = np.maximum(state.get("vmax", 0.0), v)
    m_hat = m / (1 - b1 ** t)
    return p - lr * m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps)


OPTIMISERS = [
    (SGD, ref_sgd_step, dict(lr=0.1)),
    (SGD, ref_sgd_step, dict(lr=0.05, momentum=0.9)),
    (SGD, ref_sgd_step, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    (SGD, ref_sgd_step, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (Adam, ref_adam_step, dict()),
    (Adam, ref_adam_step, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    (Adam, ref_adam_step, dict(lr=0.02, amsgrad=True)),
    (Adam, ref_adam_step, dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
]
N_STEPS = 7


def grad_sequence(shapes, seed=0):
    """Gradients that change sign and scale from step to step (amsgrad's max matters)."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s) * (3.0 if k % 3 == 0 else 0.2) for s in shapes]
            for k in range(N_STEPS)]


def run_clstm(cls, kw, init, grad_seq):
    params = {f"p{i}": a.copy() for i, a in enumerate(init)}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    arrays = list(params.values())
    opt = cls([(params, grads)], **kw)
    for gs in grad_seq:
        for g, new in zip(grads.values(), gs):
            g[...] = new
        opt.step()
        for g, new in zip(grads.values(), gs):
            np.testing.assert_array_equal(g, new)  # step does not touch the gradients
    assert all(a is b for a, b in zip(params.values(), arrays))  # updated in place
    return list(params.values())


@pytest.mark.parametrize("cls, ref, kw", OPTIMISERS)
def test_optimisers_match_the_torch_formulas(cls, ref, kw):
    init = [np.random.default_rng(9).standard_normal(s) for s in ((3, 4), (5,))]
    grad_seq = grad_sequence([a.shape for a in init])
    expected = []
    for i, p in enumerate(init):
        state = {}
        for gs in grad_seq:
            p = ref(p, gs[i], state, **kw)
        expected.append(p)
    for a, e in zip(run_clstm(cls, kw, init, grad_seq), expected):
        close(a, e, rtol=1e-6, atol=1e-12)
        assert not np.allclose(a, init[0] if a.shape == init[0].shape else init[1])


@pytest.mark.parametrize("cls, ref, kw", OPTIMISERS)
def test_optimisers_match_torch_optim(cls, ref, kw):
    torch = torch_or_skip()
    init = [np.random.default_rng(9).standard_normal(s) for s in ((3, 4), (5,))]
    grad_seq = grad_sequence([a.shape for a in init])
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    topt = getattr(torch.optim, cls.__name__)(tparams, foreach=False, **kw)
    for gs in grad_seq:
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        topt.step()
    for a, tp in zip(run_clstm(cls, kw, init, grad_seq), tparams):
        close(a, tp.detach().numpy(), rtol=1e-6, atol=1e-12)


def test_optimiser_param_forms_and_model_references():
    def model_and_grads():
        model = clstm.Sequential(clstm.LSTM(2, 3, seed=0), clstm.Linear(3, 1, seed=1))
        for k, g in enumerate(model.grads.values()):
            g[...] = np.random.default_rng(k).standard_normal(g.shape).astype(g.dtype)
        return model

    results = []
    for form in ("module", "modules", "pairs", "children", "duplicates"):
        model = model_and_grads()
        arrays = dict(model[0].params)
        params = {"module": model, "modules": [model], "pairs": [(model.params, model.grads)],
                  "children": [model[0], model[1]],
                  "duplicates": [model, model[1], (model[0].params, model[0].grads)]}[form]
        opt = Adam(params, lr=0.1)
        opt.step()
        assert all(model[0].params[k] is a for k, a in arrays.items())
        results.append(model.state_dict())
        opt.zero_grad()
        assert not any(g.any() for g in model.grads.values())
    for r in results[1:]:  # every form, duplicates stepped once, gives the same update
        for k in r:
            np.testing.assert_array_equal(r[k], results[0][k])
    untouched = clstm.Sequential(clstm.LSTM(2, 3, seed=0), clstm.Linear(3, 1, seed=1))
    assert not np.allclose(results[0]["1.weight"], untouched.params["1.weight"])


def test_optimiser_validation():
    lin = clstm.Linear(2, 2)
    for bad, match in ((dict(lr=-1.0), "Invalid lr"), (dict(lr=0.1, momentum=-0.5),
                       "Invalid momentum"), (dict(lr=0.1, weight_decay=-1), "weight_decay"),
                       (dict(lr=float("nan")), "Invalid lr")):
        with pytest.raises(ValueError, match=match):
            SGD(lin, **bad)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        SGD(lin, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        SGD(lin, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    for bad, match in ((dict(lr=-1e-3), "Invalid lr"), (dict(eps=-1.0), "Invalid eps"),
                       (dict(betas=(1.0, 0.9)), "Invalid beta1"),
                       (dict(betas=(0.9, -0.1)), "Invalid beta2"),
                       (dict(weight_decay=-0.1), "Invalid weight_decay")):
        with pytest.raises(ValueError, match=match):
            Adam(lin, **bad)
    with pytest.raises(TypeError, match="betas must be a pair"):
        Adam(lin, betas=0.9)
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD(lin, lr="fast")
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(TypeError, match=r"params\[0\] must be a module"):
        Adam([np.zeros(3)])
    with pytest.raises(TypeError, match="same shape"):
        Adam([({"w": np.zeros(3)}, {"w": np.zeros(4)})])
    with pytest.raises(KeyError, match="no gradient for parameter 'w'"):
        Adam([({"w": np.zeros(3)}, {})])


# ------------------------------------------------------------------------------- clipping
def grad_pairs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    grads = {"a": scale * rng.standard_normal((3, 4)), "b": scale * rng.standard_normal(5)}
    return [({k: np.zeros_like(v) for k, v in grads.items()}, grads)]


def norm_of(values, norm_type):
    if norm_type == math.inf:
        return np.abs(values).max()
    return np.sum(np.abs(values) ** norm_type) ** (1 / norm_type)


# max_norm as a multiple of the gradients' norm: clipped, just above (coef in (1, 2)), far above
RATIOS = [0.1, 1.5, 100.0]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("ratio", RATIOS)
def test_clip_grad_norm_formula(norm_type, ratio):
    pairs = grad_pairs()
    before = np.concatenate([g.ravel() for g in pairs[0][1].values()])
    expected = norm_of(before, norm_type)
    max_norm = ratio * expected
    total = clstm.clip_grad_norm(pairs, max_norm, norm_type)
    assert isinstance(total, float)
    close(total, expected, rtol=1e-12)
    after = np.concatenate([g.ravel() for g in pairs[0][1].values()])
    if expected > max_norm:
        close(after, before * max_norm / (expected + 1e-6), rtol=1e-12)
    else:
        np.testing.assert_array_equal(after, before)


def test_clip_grad_norm_on_modules_and_validation():
    model = clstm.Sequential(clstm.LSTM(2, 3, seed=0), clstm.Linear(3, 1, seed=1))
    for g in model.grads.values():
        g[...] = 1.0
    n = sum(g.size for g in model.grads.values())
    close(clstm.clip_grad_norm(model, 1.0), math.sqrt(n), rtol=1e-6)
    close(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                        for g in model.grads.values())), 1.0, rtol=1e-5)
    assert clstm.clip_grad_norm([], 1.0) == 0.0
    with pytest.raises(ValueError, match="Invalid max_norm"):
        clstm.clip_grad_norm(model, -1.0)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clstm.clip_grad_norm(model, 1.0, norm_type=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("ratio", RATIOS)
def test_clip_grad_norm_matches_torch(norm_type, ratio):
    torch = torch_or_skip()
    pairs = grad_pairs(seed=1, scale=2.0)
    max_norm = ratio * norm_of(np.concatenate([g.ravel() for g in pairs[0][1].values()]),
                               norm_type)
    tparams = []
    for g in pairs[0][1].values():
        tp = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        tp.grad = torch.tensor(g.copy())
        tparams.append(tp)
    t_total = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type, foreach=False)
    total = clstm.clip_grad_norm(pairs, max_norm, norm_type)
    close(total, t_total.item(), rtol=1e-12)
    for g, tp in zip(pairs[0][1].values(), tparams):
        close(g, tp.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------- end to end
def test_adam_trains_an_lstm_to_output_the_running_sum():
    model = clstm.Sequential(clstm.LSTM(1, 8, seed=0), clstm.Linear(8, 1, seed=1))
    opt = Adam(model, lr=0.02)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(100):
        x = rng.uniform(-0.5, 0.5, (6, 16, 1)).astype(np.float32)
        target = np.cumsum(x, axis=0)
        opt.zero_grad()
        y, backward = model.forward_train(x)
        loss, dy = clstm.mse_loss(y, target)
        backward(dy)
        clstm.clip_grad_norm(model, 1.0)
        opt.step()
        losses.append(loss)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first / 20, (first, last)  # about 200x with these seeds
