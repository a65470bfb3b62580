"""Loaded PyTorch weights give PyTorch's numbers: outputs, final states and every gradient.
Skipped when PyTorch is not installed (`pip install torch==2.13.0` installs the CPU build)."""
import numpy as np
import pytest

import clstm
from _helpers import assert_close

torch = pytest.importorskip("torch")

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")


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


def torch_run_packed(module, x, h0, c0, lengths, dy, dh, dc, batch_first):
    """PyTorch through pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    x, h0, c0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    T = x.shape[1] if batch_first else x.shape[0]
    if lengths is None:
        y, (h_n, c_n) = module(x, (h0, c0))
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        y, (h_n, c_n) = module(packed, (h0, c0))
        y, _ = pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    loss = (y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dh)).sum() \
        + (c_n * torch.tensor(dc)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    return ([t.detach().numpy() for t in (y, h_n, c_n)],
            [t.grad.numpy() for t in (x, h0, c0)], grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("lengths", [None, [6, 2, 7, 1, 7]])
def test_every_feature_matches_torch(dtype, num_layers, bidirectional, proj_size, lengths):
    T, B, I, H = 7, 5, 4, 5
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size)
    _compare(dtype, T, B, I, H, kw, lengths, batch_first=False, n_threads=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw, batch_first, n_threads", [
    (dict(num_layers=2, bidirectional=True, bias=False), True, 1),
    (dict(num_layers=2, bidirectional=True, proj_size=2), True, 3),
    (dict(num_layers=3, proj_size=4), False, 1),
])
@pytest.mark.parametrize("lengths", [None, [3, 9, 9, 1, 4, 8]])
def test_layout_bias_and_threads_match_torch(dtype, kw, batch_first, n_threads, lengths):
    _compare(dtype, 9, 6, 3, 6, kw, lengths, batch_first, n_threads)


def _compare(dtype, T, B, I, H, kw, lengths, batch_first, n_threads):
    torch.manual_seed(T + B + H)
    module = torch.nn.LSTM(I, H, batch_first=batch_first, **kw).to(TORCH_DTYPE[dtype])
    lstm = clstm.LSTM(I, H, batch_first=batch_first, dtype=dtype, **kw)
    lstm.load_state_dict(module.state_dict())
    assert list(lstm.state_dict()) == list(module.state_dict())  # names and order
    n_states = lstm.num_layers * lstm.num_directions
    P = lstm.output_size
    rng = np.random.default_rng(B)
    x_shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(x_shape).astype(dtype)
    h0, dh = rng.standard_normal((2, n_states, B, P)).astype(dtype)
    c0, dc = rng.standard_normal((2, n_states, B, H)).astype(dtype)
    dy = rng.standard_normal(x_shape[:2] + (lstm.num_directions * P,)).astype(dtype)
    outs_t, input_grads_t, param_grads_t = torch_run_packed(module, x, h0, c0, lengths, dy,
                                                            dh, dc, batch_first)
    clstm.set_num_threads(n_threads)
    try:
        y, (h_n, c_n) = lstm(x, (h0, c0), lengths=lengths)
        (y2, _), backward = lstm.forward_train(x, (h0, c0), lengths=lengths)
        dx, (dh0, dc0) = backward(dy, (dh, dc))
    finally:
        clstm.set_num_threads(None)
    for a, b, name in zip((y, h_n, c_n), outs_t, ("y", "h_n", "c_n")):
        assert_close(a, b, dtype, factor=10, what=name)
    np.testing.assert_array_equal(y2, y)
    for a, b, name in zip((dx, dh0, dc0), input_grads_t, ("dx", "dh0", "dc0")):
        assert_close(a, b, dtype, factor=10, what=name)
    assert set(lstm.grads) == set(param_grads_t)
    for name, g in param_grads_t.items():
        assert_close(lstm.grads[name], g, dtype, factor=10, what=name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_matches_torch(bidirectional):
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=bidirectional).double()
    lstm = clstm.LSTM(3, 4, num_layers=2, bidirectional=bidirectional, dtype=np.float64)
    lstm.load_state_dict(module.state_dict())
    n = lstm.num_layers * lstm.num_directions
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3))
    h0, c0 = rng.standard_normal((2, n, 4))
    with torch.no_grad():
        y_t, (h_t, c_t) = module(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
    y, (h_n, c_n) = lstm(x, (h0, c0))
    assert y.shape == tuple(y_t.shape) and h_n.shape == tuple(h_t.shape)
    for a, b in ((y, y_t), (h_n, h_t), (c_n, c_t)):
        assert_close(a, b.numpy(), np.float64, factor=10)


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(bias):
    torch.manual_seed(2)
    module = torch.nn.LSTMCell(5, 7, bias=bias).double()
    cell = clstm.LSTMCell(5, 7, bias=bias, dtype=np.float64)
    cell.load_state_dict(module.state_dict())
    assert list(cell.state_dict()) == list(module.state_dict())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5))
    h0, c0, dh, dc = rng.standard_normal((4, 4, 7))
    xt, ht, ct = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    h_t, c_t = module(xt, (ht, ct))
    ((h_t * torch.tensor(dh)).sum() + (c_t * torch.tensor(dc)).sum()).backward()
    for step in (cell, cell.freeze()):
        h, c = step(x, (h0, c0))
        assert_close(h, h_t.detach().numpy(), np.float64, factor=10)
        assert_close(c, c_t.detach().numpy(), np.float64, factor=10)
    (h2, c2), backward = cell.forward_train(x, (h0, c0))
    dx, (dh0, dc0) = backward(dh, dc)
    for a, b in ((dx, xt), (dh0, ht), (dc0, ct)):
        assert_close(a, b.grad.numpy(), np.float64, factor=10)
    for name, p in module.named_parameters():
        assert_close(cell.grads[name], p.grad.numpy(), np.float64, factor=10, what=name)
    # unbatched
    h1, c1 = cell(x[0], (h0[0], c0[0]))
    assert h1.shape == (7,)
    assert_close(h1, h[0], np.float64)
