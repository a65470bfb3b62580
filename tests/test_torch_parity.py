"""Loaded PyTorch weights give PyTorch's numbers: outputs, final states and every gradient.
Skipped when PyTorch is not installed (`pip install torch==2.13.0` installs the CPU build)."""
import numpy as np
import pytest

import clstm
from _helpers import assert_close

torch = pytest.importorskip("torch")

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def torch_run(module, x, h0, c0, dy, dh, dc):
    x, h0, c0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    y, (h_n, c_n) = module(x, (h0, c0))
    loss = (y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dh)).sum() \
        + (c_n * torch.tensor(dc)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return ([t.detach().numpy() for t in (y, h_n, c_n)],
            [t.grad.numpy() for t in (x, h0, c0)], grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, B, I, H, bias, batch_first", [
    (1, 1, 1, 1, True, False),
    (7, 3, 5, 4, True, False),
    (7, 3, 5, 4, False, False),
    (12, 5, 8, 16, True, True),
    (40, 1, 3, 32, True, False),
])
def test_matches_torch_nn_lstm(dtype, T, B, I, H, bias, batch_first):
    torch.manual_seed(T * 100 + H)
    module = torch.nn.LSTM(I, H, bias=bias, batch_first=batch_first).to(TORCH_DTYPE[dtype])
    lstm = clstm.LSTM(I, H, bias=bias, batch_first=batch_first, dtype=dtype)
    lstm.load_state_dict(module.state_dict())  # tensors straight in
    rng = np.random.default_rng(T)
    x_shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(x_shape).astype(dtype)
    h0, c0, dh, dc = rng.standard_normal((4, 1, B, H)).astype(dtype)
    dy = rng.standard_normal(x_shape[:2] + (H,)).astype(dtype)

    (outs_t, input_grads_t, param_grads_t) = torch_run(module, x, h0, c0, dy, dh, dc)
    y, (h_n, c_n) = lstm(x, (h0, c0))
    for a, b, name in zip((y, h_n, c_n), outs_t, ("y", "h_n", "c_n")):
        assert_close(a, b, dtype, factor=10, what=name)
    (y2, _), backward = lstm.forward_train(x, (h0, c0))
    np.testing.assert_array_equal(y2, y)
    dx, (dh0, dc0) = backward(dy, (dh, dc))
    for a, b, name in zip((dx, dh0, dc0), input_grads_t, ("dx", "dh0", "dc0")):
        assert_close(a, b, dtype, factor=10, what=name)
    assert set(lstm.grads) == set(param_grads_t)
    for name, g in param_grads_t.items():
        assert_close(lstm.grads[name], g, dtype, factor=10, what=name)


def test_state_dict_loads_into_torch():
    lstm = clstm.LSTM(4, 6, seed=3)
    module = torch.nn.LSTM(4, 6)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    with torch.no_grad():
        y_t, _ = module(torch.from_numpy(x))
    assert_close(lstm(x)[0], y_t.numpy(), np.float32, factor=10)
