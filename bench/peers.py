"""The implementations bench_lstm.py compares: clstm, its NumPy reference, and (when
installed) PyTorch's module and ONNX Runtime's operator, all running one layer with the
weights of a given clstm layer: a ``clstm.LSTM`` (against ``torch.nn.LSTM`` and ONNX's
``LSTM``) or a ``clstm.GRU`` (against ``torch.nn.GRU`` and ONNX's ``GRU`` with
``linear_before_reset=1``, PyTorch's "reset after" semantics). Every factory looks at the
layer's class (`kind`) to pick the model.

Each factory takes ``(rnn, x, mode, lengths)`` and returns a zero-argument callable that
runs one inference forward (``mode="inference"``) or one training step (``"train"``:
forward + backward with dy = ones, all gradients) and returns a NumPy array to check
against clstm's: y for inference, dx for a training step. clstm's and PyTorch's also run
``"train_no_dx"``: a training step that needs no gradient of x (clstm's
``input_grad=False``, PyTorch's x without ``requires_grad``), returning dh0. A factory
returns None for a mode it cannot run. ``lengths`` (ints, (B,), or None) gives
variable-length rows: PyTorch then runs ``pack_padded_sequence`` /
``pad_packed_sequence`` around the module (as its users must), ONNX Runtime takes
``sequence_lens``.
"""
import os

import numpy as np

import clstm
from clstm import reference

MODELS = ("lstm", "gru")


def kind(rnn):
    """"gru" for a clstm.GRU, "lstm" for a clstm.LSTM."""
    return "gru" if isinstance(rnn, clstm.GRU) else "lstm"


def new_layer(model, input_size, hidden_size, **kw):
    """A one-layer clstm.LSTM or clstm.GRU (``kw``: dtype, seed, bidirectional)."""
    return {"lstm": clstm.LSTM, "gru": clstm.GRU}[model](input_size, hidden_size, **kw)


def load_torch():
    if os.environ.get("CLSTM_BENCH_NO_TORCH", "") not in ("", "0"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def load_onnxruntime():
    if os.environ.get("CLSTM_BENCH_NO_ORT", "") not in ("", "0"):
        return None
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnx, onnxruntime


def output_width(rnn):
    return rnn.num_directions * rnn.output_size


def make_clstm(rnn, x, mode, lengths=None):
    if mode == "inference":
        return lambda: rnn(x, lengths=lengths)[0]
    dy = np.ones((x.shape[0], x.shape[1], output_width(rnn)), rnn.dtype)
    with_dx = mode != "train_no_dx"

    def step():
        _, backward = rnn.forward_train(x, lengths=lengths, input_grad=with_dx)
        dx, dstate = backward(dy)
        return dx if with_dx else (dstate[0] if isinstance(dstate, tuple) else dstate)
    return step


def make_frozen(rnn, x, mode, lengths=None):
    """The layer's frozen snapshot (``rnn.freeze()``: weights packed once, as ONNX Runtime
    packs them at session creation), inference only: what the docs tell a server to run.
    The live layer packs its weights on every call, since training may change them."""
    if mode != "inference":
        return None
    frozen = rnn.freeze()
    return lambda: frozen(x, lengths=lengths)[0]


def reference_missing(model):
    """Why clstm's NumPy reference cannot run ``model`` here (None if it can): the GRU's
    needs ``clstm.reference.gru_forward`` and ``gru_backward``."""
    if model == "gru":
        missing = [f for f in ("gru_forward", "gru_backward") if not hasattr(reference, f)]
        if missing:
            return f"clstm.reference has no {' or '.join(missing)} yet"
    return None


def make_reference(rnn, x, mode, lengths=None):
    if kind(rnn) == "gru":
        return make_reference_gru(rnn, x, mode, lengths)
    lstm = rnn
    p = lstm.state_dict()
    if lstm.bidirectional:  # the reference's composition of layers and directions
        n = lstm.num_directions
        h0 = np.zeros((n, x.shape[1], lstm.hidden_size), lstm.dtype)
        kw = dict(num_layers=1, bidirectional=True, lengths=lengths)
        if mode == "inference":
            return lambda: reference.lstm_stack_forward(x, p, h0, h0, **kw)[0]

        def stack_step():
            y, _, _, cache = reference.lstm_stack_forward(x, p, h0, h0, train=True, **kw)
            return reference.lstm_stack_backward(cache, np.ones_like(y))["x"]
        return stack_step
    weights = (p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    h0 = np.zeros((x.shape[1], lstm.hidden_size), lstm.dtype)
    if mode == "inference":
        return lambda: reference.lstm_forward(x, *weights, h0, h0, lengths=lengths)[0]

    def step():
        y, _, _, cache = reference.lstm_forward(x, *weights, h0, h0, lengths=lengths,
                                                train=True)
        return reference.lstm_backward(cache, np.ones_like(y)).dx
    return step


def _grad_dx(grads):
    """dx out of the reference's backward result (a namedtuple with dx, or a dict)."""
    if hasattr(grads, "dx"):
        return grads.dx
    if isinstance(grads, dict):
        return grads["dx"] if "dx" in grads else grads["x"]
    return grads[0]


def make_reference_gru(gru, x, mode, lengths=None):
    """The GRU through ``reference.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, *, lengths,
    reverse, train)`` (y first, the cache last in what it returns) and
    ``reference.gru_backward(cache, dy)`` (dx as ``.dx``), lstm_forward's conventions; a
    bidirectional layer runs both directions and concatenates (sums dx)."""
    if reference_missing("gru"):
        return None
    p = gru.state_dict()
    h0 = np.zeros((x.shape[1], gru.hidden_size), gru.dtype)
    directions = [(s, s.endswith("_reverse")) for s in ("_l0", "_l0_reverse")
                  [:gru.num_directions]]

    def weights(s):
        return tuple(p[f"{name}{s}"] for name in ("weight_ih", "weight_hh", "bias_ih",
                                                 "bias_hh"))

    if mode == "inference":
        def forward():
            return np.concatenate([
                reference.gru_forward(x, *weights(s), h0, lengths=lengths, reverse=rev)[0]
                for s, rev in directions], axis=2)
        return forward

    def step():
        dx = 0
        for s, rev in directions:
            out = reference.gru_forward(x, *weights(s), h0, lengths=lengths, reverse=rev,
                                        train=True)
            dx = dx + _grad_dx(reference.gru_backward(out[-1], np.ones_like(out[0])))
        return dx
    return step


def torch_factory(torch):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    def make_torch(rnn, x, mode, lengths=None):
        dtype = torch.float64 if rnn.dtype == np.float64 else torch.float32
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind(rnn)]
        module = cls(rnn.input_size, rnn.hidden_size, dtype=dtype,
                     bidirectional=rnn.bidirectional)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in rnn.state_dict().items()})
        xt = torch.from_numpy(x)
        T = x.shape[0]
        lengths_t = None if lengths is None else torch.as_tensor(lengths)

        def run():
            if lengths_t is None:
                return module(xt)[0]
            packed = pack_padded_sequence(xt, lengths_t, enforce_sorted=False)
            return pad_packed_sequence(module(packed)[0], total_length=T)[0]

        if mode == "inference":
            def forward():
                with torch.no_grad():
                    return run().numpy()
            return forward
        dy = torch.ones(x.shape[0], x.shape[1], output_width(rnn), dtype=dtype)
        if mode == "train_no_dx":
            if lengths_t is not None:
                return None
            n_states = rnn.num_directions
            h0 = torch.zeros(n_states, x.shape[1], rnn.hidden_size, dtype=dtype,
                             requires_grad=True)
            state = (h0, torch.zeros_like(h0)) if kind(rnn) == "lstm" else h0

            def step_no_dx():
                h0.grad = None
                module.zero_grad(set_to_none=True)
                module(xt, state)[0].backward(dy)
                return h0.grad.numpy()
            return step_no_dx
        xt.requires_grad_(True)

        def step():
            xt.grad = None
            module.zero_grad(set_to_none=True)
            run().backward(dy)
            return xt.grad.numpy()
        return step
    return make_torch


# PyTorch stacks the gate blocks i, f, g, o (LSTM) and r, z, n (GRU); ONNX wants i, o, f, c
# and z, r, h: the PyTorch block at each ONNX position.
ONNX_BLOCKS = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


def onnx_session(onnx, onnxruntime, rnn, x_shape, threads, with_lengths=False,
                 with_state=False):
    """An InferenceSession of a one-node model running ONNX's LSTM operator (for a
    clstm.LSTM) or GRU operator (for a clstm.GRU, with ``linear_before_reset=1``) with the
    weights of ``rnn`` (one layer, one or both directions). Inputs X (T, B, I), optionally
    sequence_lens (B,) int32 and initial_h (and, for the LSTM, initial_c) (D, B, H);
    outputs Y (T, D, B, H), Y_h (and Y_c)."""
    from onnx import TensorProto, helper, numpy_helper

    model = kind(rnn)
    H = rnn.hidden_size
    p = rnn.state_dict()
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in ONNX_BLOCKS[model]])
    sfxs = ("_l0", "_l0_reverse")[:rnn.num_directions]
    weights = {"W": np.stack([p["weight_ih" + s][order] for s in sfxs]),
               "R": np.stack([p["weight_hh" + s][order] for s in sfxs]),
               "B": np.stack([np.concatenate([p["bias_ih" + s][order], p["bias_hh" + s][order]])
                              for s in sfxs])}
    elem = TensorProto.DOUBLE if rnn.dtype == np.float64 else TensorProto.FLOAT
    B = x_shape[1]
    inputs = [helper.make_tensor_value_info("X", elem, list(x_shape))]
    states = ("initial_h", "initial_c") if model == "lstm" else ("initial_h",)
    outputs = ["Y", "Y_h", "Y_c"] if model == "lstm" else ["Y", "Y_h"]
    names = ["X", "W", "R", "B", ""] + [""] * len(states)
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
        names[4] = "sequence_lens"
    if with_state:
        inputs += [helper.make_tensor_value_info(n, elem, [len(sfxs), B, H]) for n in states]
        names[5:] = states
    while names[-1] == "":
        names.pop()
    attrs = dict(hidden_size=H, direction="bidirectional" if rnn.bidirectional else "forward")
    if model == "gru":
        attrs["linear_before_reset"] = 1  # PyTorch's: r multiplies (h W_hn.T + b_hn)
    node = helper.make_node(model.upper(), names, outputs, **attrs)
    graph = helper.make_graph(
        [node], model, inputs, [helper.make_tensor_value_info(n, elem, None)
                                for n in outputs],
        [numpy_helper.from_array(a, name) for name, a in weights.items()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def ort_factory(onnx, onnxruntime, threads):
    """ONNX Runtime's CPU LSTM or GRU operator, inference only."""
    def make_ort(rnn, x, mode, lengths=None):
        if mode != "inference" or rnn.dtype != np.float32:
            return None  # ONNX Runtime 1.32's LSTM and GRU run float32 only
        session = onnx_session(onnx, onnxruntime, rnn, x.shape, threads,
                               with_lengths=lengths is not None)
        feed = {"X": x}
        if lengths is not None:
            feed["sequence_lens"] = np.asarray(lengths, np.int32)
        T, B = x.shape[:2]
        # Y (T, D, B, H) -> clstm's (T, B, D*H)
        return lambda: session.run(["Y"], feed)[0].transpose(0, 2, 1, 3).reshape(T, B, -1)
    return make_ort


def _sigmoid(z):
    return 0.5 * np.tanh(0.5 * z) + 0.5


def numpy_lstm(x, w_ih, w_hh, b, dy=None):
    """What a competent user writes in NumPy (on NumPy's own BLAS): the input projection of
    every step in one GEMM, one GEMM per step, and in training the weight gradients as
    whole-sequence GEMMs. One layer, zero initial state; returns y, or dx with ``dy``."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    gx = (x.reshape(T * B, I) @ w_ih.T + b).reshape(T, B, 4 * H)
    acts = np.empty((T, B, 4 * H), x.dtype)
    cs = np.zeros((T + 1, B, H), x.dtype)
    hs = np.zeros((T + 1, B, H), x.dtype)
    for t in range(T):
        a = acts[t]
        np.matmul(hs[t], w_hh.T, out=a)
        a += gx[t]
        a[:, :2 * H] = _sigmoid(a[:, :2 * H])
        a[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
        a[:, 3 * H:] = _sigmoid(a[:, 3 * H:])
        cs[t + 1] = a[:, H:2 * H] * cs[t] + a[:, :H] * a[:, 2 * H:3 * H]
        hs[t + 1] = a[:, 3 * H:] * np.tanh(cs[t + 1])
    if dy is None:
        return hs[1:]
    dG = np.empty_like(acts)
    dh = np.zeros((B, H), x.dtype)
    dc = np.zeros((B, H), x.dtype)
    for t in reversed(range(T)):
        a, d = acts[t], dG[t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        dh += dy[t]
        tc = np.tanh(cs[t + 1])
        dc += dh * o * (1 - tc * tc)
        d[:, :H] = dc * g * i * (1 - i)
        d[:, H:2 * H] = dc * cs[t] * f * (1 - f)
        d[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        d[:, 3 * H:] = dh * tc * o * (1 - o)
        dc *= f
        dh = d @ w_hh
    dG2 = dG.reshape(T * B, 4 * H)
    dG2.T @ x.reshape(T * B, I)             # dw_ih
    dG2.T @ hs[:T].reshape(T * B, H)        # dw_hh
    dG2.sum(axis=0)                         # db
    return (dG2 @ w_ih).reshape(T, B, I)    # dx


def make_numpy(rnn, x, mode, lengths=None):
    """`numpy_lstm` on the layer's weights: one-directional LSTMs of equal lengths only."""
    if kind(rnn) != "lstm" or rnn.bidirectional or lengths is not None or rnn.proj_size:
        return None
    p = rnn.state_dict()
    w_ih, w_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    b = p["bias_ih_l0"] + p["bias_hh_l0"]
    if mode == "inference":
        return lambda: numpy_lstm(x, w_ih, w_hh, b)
    dy = np.ones((x.shape[0], x.shape[1], rnn.hidden_size), rnn.dtype)
    return lambda: numpy_lstm(x, w_ih, w_hh, b, dy)


def factories(threads, model="lstm"):
    """name -> factory for every implementation available here for ``model`` (clstm
    first, then its frozen snapshot "frozen" (inference); the reference only if
    `reference_missing` says nothing; "numpy", the hoisted-GEMM NumPy LSTM, for LSTMs)."""
    found = {"clstm": make_clstm, "frozen": make_frozen}
    if reference_missing(model) is None:
        found["reference"] = make_reference
    if model == "lstm":
        found["numpy"] = make_numpy
    torch = load_torch()
    if torch is not None:
        found["torch"] = torch_factory(torch)
    ort = load_onnxruntime()
    if ort is not None:
        found["onnxruntime"] = ort_factory(*ort, threads)
    return found
