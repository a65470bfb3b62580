"""The implementations bench_lstm.py compares: clstm, its NumPy reference, and (when
installed) torch.nn.LSTM and ONNX Runtime's LSTM operator, all running one layer with the
weights of a given ``clstm.LSTM``.

Each factory takes ``(lstm, x, mode, lengths)`` and returns a zero-argument callable that
runs one inference forward (``mode="inference"``) or one training step (``"train"``:
forward + backward with dy = ones, all gradients) and returns a NumPy array to check
against clstm's: y for inference, dx for a training step. A factory returns None for a
mode it cannot run. ``lengths`` (ints, (B,), or None) gives variable-length rows: PyTorch
then runs ``pack_padded_sequence`` / ``pad_packed_sequence`` around the module (as its
users must), ONNX Runtime takes ``sequence_lens``.
"""
import os

import numpy as np

from clstm import reference


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


def output_width(lstm):
    return lstm.num_directions * lstm.output_size


def make_clstm(lstm, x, mode, lengths=None):
    if mode == "inference":
        return lambda: lstm(x, lengths=lengths)[0]
    dy = np.ones((x.shape[0], x.shape[1], output_width(lstm)), lstm.dtype)

    def step():
        _, backward = lstm.forward_train(x, lengths=lengths)
        return backward(dy)[0]
    return step


def make_reference(lstm, x, mode, lengths=None):
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


def torch_factory(torch):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    def make_torch(lstm, x, mode, lengths=None):
        dtype = torch.float64 if lstm.dtype == np.float64 else torch.float32
        module = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, dtype=dtype,
                               bidirectional=lstm.bidirectional)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
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
        xt.requires_grad_(True)
        dy = torch.ones(x.shape[0], x.shape[1], output_width(lstm), dtype=dtype)

        def step():
            xt.grad = None
            module.zero_grad(set_to_none=True)
            run().backward(dy)
            return xt.grad.numpy()
        return step
    return make_torch


def onnx_lstm_session(onnx, onnxruntime, lstm, x_shape, threads, with_lengths=False,
                      with_state=False):
    """An InferenceSession of a one-node model running ONNX's LSTM operator with the
    weights of ``lstm`` (one layer, one or both directions). Inputs X (T, B, I), optionally
    sequence_lens (B,) int32 and initial_h / initial_c (D, B, H); outputs Y (T, D, B, H),
    Y_h, Y_c."""
    from onnx import TensorProto, helper, numpy_helper

    H = lstm.hidden_size
    p = lstm.state_dict()
    # PyTorch stacks gates i, f, g, o; ONNX wants i, o, f, c.
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 3, 1, 2)])
    sfxs = ("_l0", "_l0_reverse")[:lstm.num_directions]
    weights = {"W": np.stack([p["weight_ih" + s][order] for s in sfxs]),
               "R": np.stack([p["weight_hh" + s][order] for s in sfxs]),
               "B": np.stack([np.concatenate([p["bias_ih" + s][order], p["bias_hh" + s][order]])
                              for s in sfxs])}
    elem = TensorProto.DOUBLE if lstm.dtype == np.float64 else TensorProto.FLOAT
    B = x_shape[1]
    inputs = [helper.make_tensor_value_info("X", elem, list(x_shape))]
    names = ["X", "W", "R", "B", "", "", ""]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
        names[4] = "sequence_lens"
    if with_state:
        inputs += [helper.make_tensor_value_info(n, elem, [len(sfxs), B, H])
                   for n in ("initial_h", "initial_c")]
        names[5:] = ["initial_h", "initial_c"]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H,
                            direction="bidirectional" if lstm.bidirectional else "forward")
    graph = helper.make_graph(
        [node], "lstm", inputs, [helper.make_tensor_value_info(n, elem, None)
                                 for n in ("Y", "Y_h", "Y_c")],
        [numpy_helper.from_array(a, name) for name, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def ort_factory(onnx, onnxruntime, threads):
    """ONNX Runtime's CPU LSTM operator, inference only."""
    def make_ort(lstm, x, mode, lengths=None):
        if mode != "inference" or lstm.dtype != np.float32:
            return None  # ONNX Runtime 1.32's LSTM runs float32 only
        session = onnx_lstm_session(onnx, onnxruntime, lstm, x.shape, threads,
                                    with_lengths=lengths is not None)
        feed = {"X": x}
        if lengths is not None:
            feed["sequence_lens"] = np.asarray(lengths, np.int32)
        T, B = x.shape[:2]
        # Y (T, D, B, H) -> clstm's (T, B, D*H)
        return lambda: session.run(["Y"], feed)[0].transpose(0, 2, 1, 3).reshape(T, B, -1)
    return make_ort


def factories(threads):
    """name -> factory for every implementation available here (clstm first)."""
    found = {"clstm": make_clstm, "reference": make_reference}
    torch = load_torch()
    if torch is not None:
        found["torch"] = torch_factory(torch)
    ort = load_onnxruntime()
    if ort is not None:
        found["onnxruntime"] = ort_factory(*ort, threads)
    return found
