"""ONNX interop: `export` clstm models to ONNX and `load` the LSTM and GRU nodes of ONNX
models into clstm modules (needs the optional ``onnx`` package: ``pip install "clstm-cpu[onnx]"``).

    >>> import clstm, clstm.onnx
    >>> lstm = clstm.LSTM(8, 16, num_layers=2, bidirectional=True, seed=0)
    >>> model = clstm.onnx.export(lstm, "lstm.onnx")          # doctest: +SKIP
    >>> again = clstm.onnx.load("lstm.onnx")                    # doctest: +SKIP

Layouts. clstm (as PyTorch) stacks the gate blocks i, f, g, o; ONNX's ``LSTM`` operator
stacks i, o, f, c, keeps ``W (D, 4H, I)``, ``R (D, 4H, H)``, the two biases side by side in
``B (D, 8H)`` and the peepholes in ``P (D, 3H)`` ordered i, o, f (clstm's
``weight_peephole_l{k}`` rows are i, f, o). One ONNX node is one layer, its ``D``
directions side by side; its output ``Y (T, D, B, H)`` becomes the next layer's
``(T, B, D*H)`` by a Transpose and a Reshape.

What the exported graph does: inputs ``x`` (``(T, B, I)``, or ``(B, T, I)`` for a
``batch_first`` model, through Transposes: ONNX Runtime's CPU LSTM refuses ``layout=1``),
optionally ``lengths`` (int32 ``(B,)``: every node's ``sequence_lens``) and ``h0``/``c0``
(``(L*D, B, H)``; ``h0`` only for a GRU); outputs ``y`` and, for an `LSTM`, ``h_n``/``c_n``
(a `GRU`: ``h_n``). A `GRU` becomes ONNX ``GRU`` nodes with ``linear_before_reset=1``
(PyTorch's reset-after form; gate blocks r, z, n -> ONNX's z, r, h). The batch and time
axes are dynamic. ONNX's LSTM has no projection, so ``proj_size > 0`` cannot be exported
(the projected ``h_t = W_hr (o * tanh(c_t))`` is what the next step sees, which the
operator cannot express; only an unrolled ``Loop`` could); unbatched input is not a graph
of its own (add the batch axis). ONNX Runtime 1.32 runs the LSTM operator in float32 only
("LSTM operator does not support double yet"): float64 models export, and other runtimes
(or ``onnx.reference``) run them. The activations' parameters are float32 attributes:
``hard_sigmoid`` exports as ``HardSigmoid`` with its default alpha 0.2 (exact), except next
to ``linear`` (``Affine``, whose alpha must be given), where the listed alpha is float32's
0.2 (a float64 model then differs by ~1e-8 relative).
"""
from __future__ import annotations

import os
from typing import IO, Any, List, Optional, Tuple, Union

import numpy as np

from .layers import Dropout, Linear, Sequential
from .rnn import GRU, LSTM

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

#: The opset the exported models import (the LSTM operator's ``layout`` is opset 14).
OPSET = 17

# clstm's Keras names <-> ONNX's activation functions with the (alpha, beta) they take.
_TO_ONNX = {"sigmoid": ("Sigmoid", None), "tanh": ("Tanh", None), "relu": ("Relu", None),
            "hard_sigmoid": ("HardSigmoid", (0.2, 0.5)), "linear": ("Affine", (1.0, 0.0))}
# ONNX activations that consume an alpha (and a beta) from activation_alpha/_beta, in order,
# with the defaults ONNX Runtime uses when the lists run out.
_TAKES_ALPHA = {"affine": (1.0, 0.0), "leakyrelu": (0.01, None),
                "thresholdedrelu": (1.0, None), "scaledtanh": (1.0, 1.0),
                "hardsigmoid": (0.2, 0.5), "elu": (1.0, None)}


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("clstm.onnx needs the onnx package: pip install onnx "
                          "(or pip install \"clstm-cpu[onnx]\")") from exc
    return onnx


def _gate_order(H):
    """Indices taking clstm's i, f, g, o blocks to ONNX's i, o, f, c (and back: `_inverse`)."""
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 3, 1, 2)])


def _inverse(order):
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return inv


# ---------------------------------------------------------------------------- export
class _Builder:
    """Nodes, initialisers and unique names of the graph being built."""

    def __init__(self, onnx, elem):
        self.onnx, self.elem = onnx, elem
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem, array):
        name = self.name(stem)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, n_out=1, stem=None, **attrs):
        outs = [self.name(stem or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]


def _activation_attrs(lstm, D):
    """The LSTM node's activations attributes (none for the default sigmoid/tanh pair)."""
    act = getattr(lstm, "activation", "tanh")
    rec = getattr(lstm, "recurrent_activation", "sigmoid")
    if (act, rec) == ("tanh", "sigmoid"):
        return {}
    funcs, alphas, betas = [], [], []
    for name in (rec, act, act) * D:  # f (gates), g (cell input), h (cell output)
        op, ab = _TO_ONNX[name]
        funcs.append(op)
        if ab is not None:
            alphas.append(ab[0])
            betas.append(ab[1])
    attrs = {"activations": funcs}
    # HardSigmoid's defaults are clstm's (0.2, 0.5), exactly in float64 too, where the
    # attribute (float32) would round 0.2; Affine has no usable default in ONNX Runtime, so
    # with one the lists are given (then consumed in order by the functions taking them)
    if "Affine" in funcs:
        attrs.update(activation_alpha=alphas, activation_beta=betas)
    return attrs


def _export_lstm(b, lstm, x, lengths, h0, c0):
    """The layers of ``lstm`` on ``x`` (T, B, I): returns (y (T, B, D*H), h_n, c_n)."""
    if lstm.proj_size:
        raise ValueError("ONNX's LSTM operator has no projection: cannot export an LSTM with "
                         f"proj_size={lstm.proj_size} (proj_size must be 0)")
    H, D, L = lstm.hidden_size, lstm.num_directions, lstm.num_layers
    order = _gate_order(H)
    p = lstm.state_dict()
    peephole = any(name.startswith("weight_peephole") for name in p)
    h_parts, c_parts = [], []
    for k in range(L):
        sfxs = [f"_l{k}", f"_l{k}_reverse"][:D]
        inputs = [x, b.const(f"W{k}", np.stack([p["weight_ih" + s][order] for s in sfxs])),
                  b.const(f"R{k}", np.stack([p["weight_hh" + s][order] for s in sfxs]))]
        inputs.append(b.const(f"B{k}", np.stack([
            np.concatenate([p["bias_ih" + s][order], p["bias_hh" + s][order]])
            for s in sfxs])) if lstm.bias else "")
        inputs.append(lengths or "")
        for state in (h0, c0):
            inputs.append(b.node("Slice", [state, b.const("start", np.array([k * D])),
                                           b.const("end", np.array([(k + 1) * D]))])
                          if state else "")
        if peephole:
            # clstm's rows i, f, o -> ONNX's P = [p_i, p_o, p_f]
            inputs.append(b.const(f"P{k}", np.stack([
                p["weight_peephole" + s][[0, 2, 1]].reshape(-1) for s in sfxs])))
        while inputs[-1] == "":
            inputs.pop()
        y4, h, c = b.node("LSTM", inputs, 3, stem=f"lstm{k}", hidden_size=H,
                          direction="bidirectional" if D == 2 else "forward",
                          **_activation_attrs(lstm, D))
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
        y = b.node("Transpose", [y4], perm=[0, 2, 1, 3])
        x = b.node("Reshape", [y, b.const("shape", np.array([0, 0, D * H]))])
        h_parts.append(h)
        c_parts.append(c)
    h_n = b.node("Concat", h_parts, axis=0, stem="h_n") if L > 1 else h_parts[0]
    c_n = b.node("Concat", c_parts, axis=0, stem="c_n") if L > 1 else c_parts[0]
    return x, h_n, c_n


def _gru_gate_order(H):
    """Indices taking clstm's (PyTorch's) GRU blocks r, z, n to ONNX's z, r, h."""
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in (1, 0, 2)])


def _export_gru(b, gru, x, lengths, h0):
    """The layers of ``gru`` on ``x`` (T, B, I): ONNX GRU nodes with linear_before_reset=1
    (PyTorch's reset-after form). Returns (y (T, B, D*H), h_n, None)."""
    H, D, L = gru.hidden_size, gru.num_directions, gru.num_layers
    order = _gru_gate_order(H)
    p = gru.state_dict()
    h_parts = []
    for k in range(L):
        sfxs = [f"_l{k}", f"_l{k}_reverse"][:D]
        inputs = [x, b.const(f"W{k}", np.stack([p["weight_ih" + s][order] for s in sfxs])),
                  b.const(f"R{k}", np.stack([p["weight_hh" + s][order] for s in sfxs])),
                  b.const(f"B{k}", np.stack([
                      np.concatenate([p["bias_ih" + s][order], p["bias_hh" + s][order]])
                      for s in sfxs])) if gru.bias else "",
                  lengths or "",
                  b.node("Slice", [h0, b.const("start", np.array([k * D])),
                                   b.const("end", np.array([(k + 1) * D]))]) if h0 else ""]
        while inputs[-1] == "":
            inputs.pop()
        y4, h = b.node("GRU", inputs, 2, stem=f"gru{k}", hidden_size=H,
                       direction="bidirectional" if D == 2 else "forward",
                       linear_before_reset=1)
        y = b.node("Transpose", [y4], perm=[0, 2, 1, 3])
        x = b.node("Reshape", [y, b.const("shape", np.array([0, 0, D * H]))])
        h_parts.append(h)
    return x, (b.node("Concat", h_parts, axis=0, stem="h_n") if L > 1 else h_parts[0]), None


def _export_linear(b, lin, x):
    y = b.node("MatMul", [x, b.const("weight_T", lin.weight.T)])
    return b.node("Add", [y, b.const("bias", lin.bias)]) if lin.has_bias else y


def export(model: Union[LSTM, GRU, Sequential], path_or_file: Optional[PathOrFile] = None, *,
           lengths: bool = False, state: bool = False, opset: int = OPSET) -> Any:
    """Write ``model`` as an ONNX model that computes what ``model(x, ...)`` computes.

    Parameters
    ----------
    model : LSTM, GRU or Sequential
        An `LSTM` (any layers and directions, ``batch_first``, peepholes and activations;
        not ``proj_size``), a `GRU`, or a `Sequential` of `LSTM`, `GRU`, `Linear` and
        `Dropout` (the identity in inference) modules.
    path_or_file : str, path or binary file, optional
        Where to write the model; None only returns it.
    lengths : bool
        Add an int32 input ``lengths (B,)``: each row's length, as ``model(x,
        lengths=...)`` (every LSTM node's ``sequence_lens``).
    state : bool
        Add the inputs ``h0``, ``c0`` (``(L*D, B, H)``) of the first LSTM (``h0`` of a
        first GRU).
    opset : int
        The ONNX opset imported (>= 14).

    Returns
    -------
    onnx.ModelProto
        Inputs ``x`` (+ ``lengths``, ``h0``, ``c0``); outputs ``y`` (+ ``h_n``, ``c_n``
        for an `LSTM`, ``h_n`` for a `GRU`).

    Raises
    ------
    ValueError
        ``proj_size > 0`` (ONNX's LSTM has no projection), a module `Sequential` cannot
        export, ``state`` for a model without an LSTM, an opset below 14.
    ImportError
        Without the ``onnx`` package.
    """
    onnx = _onnx()
    if int(opset) < 14:
        raise ValueError(f"opset must be >= 14 (the LSTM operator's layout), got {opset}")
    modules = list(model) if isinstance(model, Sequential) else [model]
    for i, m in enumerate(modules):
        if not isinstance(m, (LSTM, GRU, Linear, Dropout)):
            raise ValueError(f"clstm.onnx.export exports LSTM, GRU, Linear and Dropout "
                             f"modules; module {i} is a {type(m).__name__}")
    lstms = [m for m in modules if isinstance(m, (LSTM, GRU))]  # the recurrent layers
    if state and not lstms:
        raise ValueError("state=True needs an LSTM or GRU in the model (its state inputs)")
    dtype = np.dtype(next(m.dtype for m in modules if not isinstance(m, Dropout)))
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    b = _Builder(onnx, elem)
    first = modules[0]
    batch_first = bool(lstms and lstms[0].batch_first)
    n_in = first.input_size if isinstance(first, (LSTM, GRU)) else \
        getattr(first, "in_features", None)
    x_info = (["B", "T", n_in] if batch_first else ["T", "B", n_in]) if lstms else None
    graph_inputs = [onnx.helper.make_tensor_value_info("x", elem, x_info)]
    len_name = h0 = c0 = None
    if lengths:
        graph_inputs.append(onnx.helper.make_tensor_value_info("lengths",
                                                               onnx.TensorProto.INT32, ["B"]))
        len_name = "lengths"
    if state:
        m = lstms[0]
        shape = [m.num_layers * m.num_directions, "B", m.hidden_size]
        names = ("h0", "c0") if isinstance(m, LSTM) else ("h0",)
        graph_inputs += [onnx.helper.make_tensor_value_info(n, elem, shape) for n in names]
        h0, c0 = "h0", ("c0" if isinstance(m, LSTM) else None)
    x, h_n, c_n, seq_major = "x", None, None, False
    for m in modules:
        if isinstance(m, (LSTM, GRU)):
            if m.batch_first != batch_first:
                raise ValueError("the recurrent layers of an exported Sequential must agree "
                                 "on batch_first")
            if m.dtype != dtype:
                raise ValueError(f"the modules of an exported Sequential must share one dtype "
                                 f"({dtype.name}), got {m.dtype.name}")
            if batch_first and not seq_major:
                x = b.node("Transpose", [x], perm=[1, 0, 2])
                seq_major = True
            x, h_n, c_n = (_export_lstm(b, m, x, len_name, h0, c0) if isinstance(m, LSTM)
                           else _export_gru(b, m, x, len_name, h0))
            h0 = c0 = None  # the state goes to the first LSTM only, as Sequential's
        elif isinstance(m, Linear):
            x = _export_linear(b, m, x)
    if seq_major:
        x = b.node("Transpose", [x], perm=[1, 0, 2])
    last = next((m for m in reversed(modules) if not isinstance(m, Dropout)))
    n_out = last.out_features if isinstance(last, Linear) else \
        last.num_directions * last.hidden_size
    y_shape = None if not lstms else ["B", "T", n_out] if batch_first else ["T", "B", n_out]
    outputs = [("y", x, y_shape)]
    if isinstance(model, (LSTM, GRU)):
        s_shape = [model.num_layers * model.num_directions, "B", model.hidden_size]
        outputs.append(("h_n", h_n, s_shape))
        if isinstance(model, LSTM):
            outputs.append(("c_n", c_n, s_shape))
    for name, src, _ in outputs:
        b.nodes.append(onnx.helper.make_node("Identity", [src], [name]))
    graph = onnx.helper.make_graph(
        b.nodes, "clstm", graph_inputs,
        [onnx.helper.make_tensor_value_info(n, elem, shape) for n, _, shape in outputs],
        b.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="clstm")
    onnx.checker.check_model(proto)
    if path_or_file is not None:
        data = proto.SerializeToString()
        if hasattr(path_or_file, "write"):
            path_or_file.write(data)
        else:
            with open(path_or_file, "wb") as f:
                f.write(data)
    return proto


# ------------------------------------------------------------------------------ load
# Nodes that only move data between the LSTM and Linear layers: passed over on load.
_GLUE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice",
         "Shape", "Gather", "Cast", "Constant", "Split", "Flatten"}


def _activation(attrs, d, D, onnx_name_of):
    """(activation, recurrent_activation) of direction d, in clstm's names."""
    funcs = [f.decode() if isinstance(f, bytes) else f for f in attrs.get("activations", [])]
    if not funcs:
        return "tanh", "sigmoid"
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    named = []
    for f in funcs:
        key = f.lower()
        a = b = None
        if key in _TAKES_ALPHA:
            a, b = _TAKES_ALPHA[key]
            a = alphas.pop(0) if alphas else a
            if b is not None:
                b = betas.pop(0) if betas else b
        named.append(onnx_name_of(f, a, b))
    if len(named) != 3 * D:
        raise ValueError(f"the LSTM attribute activations must list 3 functions per direction "
                         f"({3 * D}), got {funcs}")
    rec, g, h = named[3 * d:3 * d + 3]
    if g != h:
        raise ValueError(f"the LSTM attribute activations: clstm applies one activation to the "
                         f"cell input and the cell output (Keras's), got {funcs[3 * d + 1]} "
                         f"and {funcs[3 * d + 2]}")
    return g, rec


def _clstm_name(func, alpha, beta):
    key = func.lower()
    for name, (op, ab) in _TO_ONNX.items():
        if op.lower() == key and (ab is None or np.allclose((alpha, beta), ab, rtol=0,
                                                             atol=1e-7)):
            return name
    raise ValueError(f"the LSTM attribute activations: clstm has no {func}"
                     + ("" if alpha is None else f" with alpha={alpha}, beta={beta}")
                     + f" (it has {', '.join(f'{op}{ab or ()}' for op, ab in _TO_ONNX.values())})")


def _node_weights(op, node, attrs, inits, n_gates, state_inputs):
    """W, R, B (P for an LSTM) of an ONNX LSTM/GRU node whose weights are initialisers, its
    number of directions and hidden size; a ValueError naming what clstm lacks."""
    if "clip" in attrs:
        raise ValueError(f"the {op} attribute clip ({attrs['clip']}) has no clstm equivalent")
    names = list(node.input) + [""] * (8 - len(node.input))

    def weight(i, what):
        if not names[i]:
            return None
        if names[i] not in inits:
            raise ValueError(f"the {op} input {what} ({names[i]!r}) must be an initializer "
                             f"(constant weights) to load into clstm")
        return inits[names[i]]

    for i, what in state_inputs:
        if names[i] in inits:
            raise ValueError(f"the {op} input {what} is a constant: clstm modules hold no "
                             f"state (make it a graph input and pass it as state=)")
    W, R, B, P = weight(1, "W"), weight(2, "R"), weight(3, "B"), weight(7, "P")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"the {op} attribute direction must be forward, reverse or "
                         f"bidirectional, got {direction!r}")
    if direction == "reverse":
        # a reverse-only layer is not a clstm layer (clstm's reverse direction comes with
        # bidirectional=True); refuse rather than mislabel it
        raise ValueError(f"the {op} attribute direction='reverse' (a reverse-only layer) has "
                         "no clstm equivalent: clstm's reverse direction comes with "
                         "bidirectional=True")
    D = 2 if direction == "bidirectional" else 1
    if W is None or R is None or W.ndim != 3 or W.shape[0] != D:
        raise ValueError(f"the {op} input W must have shape ({D}, {n_gates}*hidden_size, "
                         f"input_size) for direction={direction}")
    H = R.shape[-1]
    if attrs.get("hidden_size", H) != H or W.shape[1] != n_gates * H or \
            R.shape != (D, n_gates * H, H):
        raise ValueError(f"the {op} inputs W {W.shape}, R {R.shape} and attribute "
                         f"hidden_size {attrs.get('hidden_size')} disagree")
    return W, R, B, P, D, H


def _lstm_from_node(node, attrs, inits, dtype_hint):
    """One clstm.LSTM (one layer) from an ONNX LSTM node whose weights are initialisers."""
    if attrs.get("input_forget", 0):
        raise ValueError("the LSTM attribute input_forget=1 (coupled input and forget gates) "
                         "has no clstm equivalent")
    W, R, B, P, D, H = _node_weights("LSTM", node, attrs, inits, 4,
                                     ((5, "initial_h"), (6, "initial_c")))
    acts = {_activation(attrs, d, D, _clstm_name) for d in range(D)}
    if len(acts) > 1:
        raise ValueError("the LSTM attribute activations differ between the directions; "
                         "clstm has one pair per model")
    activation, recurrent = acts.pop()
    kwargs = {}
    if (activation, recurrent) != ("tanh", "sigmoid"):
        kwargs.update(activation=activation, recurrent_activation=recurrent)
    if P is not None:
        kwargs["peephole"] = True
    dtype = W.dtype if W.dtype in (np.float32, np.float64) else dtype_hint
    lstm = LSTM(W.shape[2], H, bias=B is not None, bidirectional=D == 2, dtype=dtype,
                **kwargs)
    inv = _inverse(_gate_order(H))
    state = {}
    for d, s in enumerate(("_l0", "_l0_reverse")[:D]):
        state["weight_ih" + s] = W[d][inv]
        state["weight_hh" + s] = R[d][inv]
        if B is not None:
            state["bias_ih" + s] = B[d][:4 * H][inv]
            state["bias_hh" + s] = B[d][4 * H:][inv]
        if P is not None:
            p_i, p_o, p_f = P[d].reshape(3, H)
            state["weight_peephole" + s] = np.stack([p_i, p_f, p_o])
    lstm.load_state_dict(state)
    return lstm, int(attrs.get("layout", 0))


def _gru_from_node(node, attrs, inits, dtype_hint):
    """One clstm.GRU (one layer) from an ONNX GRU node: PyTorch's "reset after" form, which
    is ONNX's ``linear_before_reset=1``, with the default activations."""
    if not attrs.get("linear_before_reset", 0):
        raise ValueError("the GRU attribute linear_before_reset=0 (the reset gate applied "
                         "before the recurrent product) has no clstm equivalent: clstm's GRU "
                         "is PyTorch's, linear_before_reset=1")
    W, R, B, _, D, H = _node_weights("GRU", node, attrs, inits, 3, ((5, "initial_h"),))
    funcs = [f.decode() if isinstance(f, bytes) else f for f in attrs.get("activations", [])]
    if funcs and [f.lower() for f in funcs] != ["sigmoid", "tanh"] * D:
        raise ValueError(f"the GRU attribute activations: clstm's GRU has Sigmoid and Tanh "
                         f"only, got {funcs}")
    dtype = W.dtype if W.dtype in (np.float32, np.float64) else dtype_hint
    gru = GRU(W.shape[2], H, bias=B is not None, bidirectional=D == 2, dtype=dtype)
    inv = _inverse(_gru_gate_order(H))
    state = {}
    for d, s in enumerate(("_l0", "_l0_reverse")[:D]):
        state["weight_ih" + s] = W[d][inv]
        state["weight_hh" + s] = R[d][inv]
        if B is not None:
            state["bias_ih" + s] = B[d][:3 * H][inv]
            state["bias_hh" + s] = B[d][3 * H:][inv]
    gru.load_state_dict(state)
    return gru, int(attrs.get("layout", 0))


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _merge(layers, batch_first):
    """Consecutive one-layer LSTMs (or GRUs) into one multi-layer model when they agree on
    everything but the input size (else None)."""
    first = layers[0]
    cls = type(first)
    keys = ("hidden_size", "bias", "bidirectional", "dtype")
    extra = ("activation", "recurrent_activation", "peephole") if cls is LSTM else ()
    if any(type(m) is not cls or getattr(m, k) != getattr(first, k)
           for m in layers for k in keys + extra):
        return None
    merged = cls(first.input_size, first.hidden_size, len(layers), bias=first.bias,
                 batch_first=batch_first, bidirectional=first.bidirectional,
                 dtype=first.dtype, **{k: getattr(first, k) for k in extra})
    state = {}
    for k, m in enumerate(layers):
        for name, value in m.state_dict().items():
            state[name.replace("_l0", f"_l{k}")] = value
    merged.load_state_dict(state)
    return merged


def load(path_or_model: Union[PathOrFile, Any]) -> Union[LSTM, GRU, Sequential]:
    """clstm modules from the LSTM, GRU (and MatMul/Gemm + Add) nodes of an ONNX model.

    The nodes are taken in the graph's order: every ``LSTM`` (``GRU``) node becomes one
    layer (consecutive layers that agree on size, directions, bias, peepholes and
    activations become one multi-layer `LSTM` or `GRU`), a ``MatMul`` by a constant (plus an
    ``Add`` of a
    constant, or a ``Gemm``) becomes a `Linear`. Data-moving nodes between them
    (Transpose, Reshape, Squeeze, Concat...) are passed over, so the model must be a chain
    of layers such as `export` writes: the result computes the same thing when it is (the
    tests check this against ONNX Runtime), but ``load`` does not trace what arbitrary
    data movement does.

    Mapped: ``W``, ``R``, ``B`` (-> ``bias_ih``/``bias_hh``, none without ``B``), ``P``
    (-> peepholes), ``direction`` forward or bidirectional, ``layout`` (1 -> batch_first),
    ``activations`` clstm has (Sigmoid, Tanh, Relu, HardSigmoid(0.2, 0.5), Affine(1, 0);
    the cell input and output functions must be equal), ``hidden_size``. GRU nodes need
    ``linear_before_reset=1`` (PyTorch's form) and the default activations.

    Parameters
    ----------
    path_or_model : str, path, binary file or onnx.ModelProto

    Returns
    -------
    LSTM, GRU or Sequential
        An `LSTM` (`GRU`) when the model is one, else a `Sequential` of them and `Linear`.

    Raises
    ------
    ValueError
        Naming what clstm lacks: the attributes ``clip``, ``input_forget``, an activation,
        ``direction='reverse'``, a GRU's ``linear_before_reset=0``, weights that are not
        constants, another operator.
    """
    onnx = _onnx()
    if isinstance(path_or_model, onnx.ModelProto):
        proto = path_or_model
    elif hasattr(path_or_model, "read"):
        proto = onnx.load_model_from_string(path_or_model.read())
    else:
        proto = onnx.load(os.fspath(path_or_model))
    graph = proto.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes are initialisers by another name
        if node.op_type == "Constant":
            inits[node.output[0]] = onnx.numpy_helper.to_array(_attrs(onnx, node)["value"])
    dtype = next((a.dtype for a in inits.values() if a.dtype in (np.float32, np.float64)),
                 np.dtype(np.float32))
    layers: List[Tuple[str, Any]] = []
    layout = None
    nodes = list(graph.node)
    skip = set()
    for n, node in enumerate(nodes):
        if n in skip or node.op_type in _GLUE:
            continue
        op, attrs = node.op_type, _attrs(onnx, node)
        if op in ("LSTM", "GRU"):
            read = _lstm_from_node if op == "LSTM" else _gru_from_node
            rnn, node_layout = read(node, attrs, inits, dtype)
            if layout is not None and node_layout != layout:
                raise ValueError(f"the {op} attribute layout differs between the nodes")
            layout = node_layout
            layers.append((op, rnn))
        elif op in ("MatMul", "Gemm"):
            if op == "Gemm":
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or \
                        attrs.get("beta", 1.0) != 1.0:
                    raise ValueError("a Gemm node with transA, alpha or beta other than the "
                                     "defaults has no clstm equivalent")
            if node.input[1] not in inits:
                raise ValueError(f"the {op} node's weight {node.input[1]!r} must be an "
                                 f"initializer to load into clstm")
            w = inits[node.input[1]]
            w = w if op == "Gemm" and attrs.get("transB", 0) else w.T  # -> (out, in)
            bias = inits.get(node.input[2]) if op == "Gemm" and len(node.input) > 2 else None
            if op == "MatMul" and n + 1 < len(nodes) and nodes[n + 1].op_type == "Add" and \
                    node.output[0] in nodes[n + 1].input:
                other = [i for i in nodes[n + 1].input if i != node.output[0]]
                if other and other[0] in inits:
                    bias = inits[other[0]]
                    skip.add(n + 1)
            lin = Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
            lin.load_state_dict({"weight": w, **({"bias": bias} if bias is not None else {})})
            layers.append(("linear", lin))
        else:
            raise ValueError(f"clstm.onnx.load: the operator {op} (node {node.name or n}) has "
                             f"no clstm equivalent (supported: LSTM, GRU, MatMul, Gemm, Add)")
    if not any(kind in ("LSTM", "GRU") for kind, _ in layers):
        raise ValueError("clstm.onnx.load: the model has no LSTM or GRU node")
    # an exported batch_first model transposes its input (B, T, I) before the first layer
    first_x = next(node for node in nodes if node.op_type in ("LSTM", "GRU")).input[0]
    batch_first = layout == 1 or any(
        node.op_type == "Transpose" and node.output[0] == first_x and
        node.input[0] in {i.name for i in graph.input} and
        list(_attrs(onnx, node).get("perm", [])) == [1, 0, 2] for node in nodes)
    modules, run = [], []
    for kind, m in layers + [("end", None)]:
        if kind in ("LSTM", "GRU") and (not run or type(run[0]) is type(m)):
            run.append(m)
            continue
        if run:
            merged = _merge(run, batch_first)
            if merged is None:
                for r in run:
                    modules.append(_merge([r], batch_first))
            else:
                modules.append(merged)
            run = []
        if kind in ("LSTM", "GRU"):
            run.append(m)
        elif m is not None:
            modules.append(m)
    return modules[0] if len(modules) == 1 else Sequential(*modules)
