"""clstm.onnx: clstm -> ONNX -> ONNX Runtime equals clstm, ONNX (built with onnx.helper) ->
clstm equals ONNX Runtime, and the errors for what clstm or ONNX cannot express. ONNX
Runtime 1.32 runs the LSTM operator in float32 only, so float64 (and ``layout=1``, which it
refuses) runs the exported graph on onnx's reference evaluator with the LSTM operator
computed by ``_onnx_lstm`` (the operator's specification in NumPy), itself checked against
ONNX Runtime in float32 here."""
import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.op_run import OpRun  # noqa: E402

import clstm  # noqa: E402
import clstm.onnx as connx  # noqa: E402
from clstm import reference as V  # noqa: E402
import _onnx_lstm  # noqa: E402

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


class _SpecLSTM(OpRun):
    """onnx.reference's LSTM ignores sequence_lens and activations: use the spec's."""
    op_domain = ""

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None,
             P=None, activation_alpha=None, activation_beta=None, activations=None,
             clip=None, direction=None, hidden_size=None, input_forget=None, layout=None):
        acts = None if activations is None else [
            a.decode() if isinstance(a, bytes) else a for a in activations]
        return _onnx_lstm.lstm(X, W, R, B, sequence_lens, initial_h, initial_c, P,
                               direction=direction or "forward", layout=layout or 0,
                               activations=acts, activation_alpha=activation_alpha,
                               activation_beta=activation_beta)


_SpecLSTM.__name__ = "LSTM"


class _SpecGRU(OpRun):
    """onnx.reference's GRU, replaced by the spec's (sequence_lens, linear_before_reset)."""
    op_domain = ""

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, activation_alpha=None,
             activation_beta=None, activations=None, clip=None, direction=None,
             hidden_size=None, layout=None, linear_before_reset=None):
        return _onnx_lstm.gru(X, W, R, B, sequence_lens, initial_h,
                              direction=direction or "forward",
                              linear_before_reset=linear_before_reset or 0)


_SpecGRU.__name__ = "GRU"


def run_spec(model, feed):
    return ReferenceEvaluator(model, new_ops=[_SpecLSTM, _SpecGRU]).run(None, feed)


def run_ort(model, feed):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def run_exported(model, feed, dtype):
    return (run_ort if dtype == np.float32 else run_spec)(model, feed)


def one_node_model(rng, *, T=5, B=3, I=4, H=6, direction="forward", dtype=np.float32,
                   bias=True, peephole=False, lengths=False, state=False, layout=0,
                   **attrs):
    """A one-LSTM-node model built with onnx.helper (graph inputs X [, sequence_lens,
    initial_h, initial_c]) and its feed."""
    D = 2 if direction == "bidirectional" else 1
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(dtype)
    inits = {"W": w(D, 4 * H, I), "R": w(D, 4 * H, H)}
    if bias:
        inits["B"] = w(D, 8 * H)
    if peephole:
        inits["P"] = w(D, 3 * H)
    x_shape = (B, T, I) if layout else (T, B, I)
    s_shape = (B, D, H) if layout else (D, B, H)
    feed = {"X": rng.standard_normal(x_shape).astype(dtype)}
    names = ["X", "W", "R", "B" if bias else "", "", "", "", "P" if peephole else ""]
    inputs = [helper.make_tensor_value_info("X", elem, list(x_shape))]
    if lengths:
        feed["sequence_lens"] = rng.integers(1, T + 1, B).astype(np.int32)
        names[4] = "sequence_lens"
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    if state:
        for n, k in (("initial_h", 5), ("initial_c", 6)):
            feed[n] = rng.standard_normal(s_shape).astype(dtype)
            names[k] = n
            inputs.append(helper.make_tensor_value_info(n, elem, list(s_shape)))
    while names[-1] == "":
        names.pop()
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H,
                            direction=direction, layout=layout, **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(n, elem, None)
                               for n in ("Y", "Y_h", "Y_c")],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feed


def clstm_on_feed(model, feed, layout=0):
    """Run a loaded clstm LSTM on a one-node feed; results in ONNX's layout."""
    x = feed["X"]
    state = None
    if "initial_h" in feed:
        state = (feed["initial_h"], feed["initial_c"])
        if layout:
            state = tuple(s.transpose(1, 0, 2) for s in state)
    y, (h, c) = model(x, state, lengths=feed.get("sequence_lens"))
    D = model.num_directions
    if layout:  # y (B, T, D*H) -> (B, T, D, H); states (D, B, H) -> (B, D, H)
        return (y.reshape(*y.shape[:2], D, -1), h.transpose(1, 0, 2), c.transpose(1, 0, 2))
    return y.reshape(*y.shape[:2], D, -1).transpose(0, 2, 1, 3), h, c


# ------------------------------------------------------------------ the oracles agree
@pytest.mark.parametrize("attrs", [
    {}, dict(activations=["HardSigmoid", "Tanh", "Tanh"] * 2, activation_alpha=[0.3, 0.25],
             activation_beta=[0.4, 0.6]),
    dict(activations=["Sigmoid", "Affine", "Affine", "Sigmoid", "Tanh", "Affine"],
         activation_alpha=[0.7, 1.3, 0.9], activation_beta=[0.1, -0.2, 0.3]),
    dict(activations=["Sigmoid", "Relu", "Relu", "HardSigmoid", "Tanh", "Tanh"])])
def test_the_spec_oracle_is_onnx_runtime(attrs):
    """The float64 / layout=1 oracle against ONNX Runtime in float32, with every input
    (peepholes, lengths, initial state, both directions) and alpha/beta consumed in order."""
    model, feed = one_node_model(np.random.default_rng(1), direction="bidirectional",
                                 peephole=True, lengths=True, state=True, **attrs)
    got = _onnx_lstm.lstm(*(feed.get(k) for k in ("X",)), *(numpy_helper.to_array(t)
                          for t in model.graph.initializer[:3]),
                          feed["sequence_lens"], feed["initial_h"], feed["initial_c"],
                          numpy_helper.to_array(model.graph.initializer[3]),
                          direction="bidirectional", **attrs)
    for a, b in zip(got, run_ort(model, feed)):
        np.testing.assert_allclose(a, b, **TOL[np.float32])


def test_the_variants_reference_is_onnx_runtime_with_peepholes_and_activations():
    """clstm's NumPy reference of the variants (clstm's layout: gates i, f, g, o, peepholes
    rows i, f, o) against ONNX Runtime's LSTM with input P and Keras-2 hard_sigmoid."""
    rng = np.random.default_rng(2)
    for act, rec in [("tanh", "sigmoid"), ("relu", "hard_sigmoid"), ("linear", "sigmoid")]:
        lstm = clstm.LSTM(4, 5, bidirectional=True, seed=3)
        params = {k: v.astype(np.float64) for k, v in lstm.state_dict().items()}
        for s in ("_l0", "_l0_reverse"):
            params["weight_peephole" + s] = 0.5 * rng.standard_normal((3, 5))
        x = rng.standard_normal((6, 2, 4))
        h0, c0 = rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 5))
        lengths = np.array([6, 3])
        y, h, c, _ = V.lstm_stack_forward(x, params, h0, c0, num_layers=1, bidirectional=True,
                                          lengths=lengths, activation=act,
                                          recurrent_activation=rec)
        order = connx._gate_order(5)
        W = np.stack([params["weight_ih" + s][order] for s in ("_l0", "_l0_reverse")])
        R = np.stack([params["weight_hh" + s][order] for s in ("_l0", "_l0_reverse")])
        B = np.stack([np.concatenate([params["bias_ih" + s][order],
                                      params["bias_hh" + s][order]])
                      for s in ("_l0", "_l0_reverse")])
        P = np.stack([params["weight_peephole" + s][[0, 2, 1]].ravel()
                      for s in ("_l0", "_l0_reverse")])
        attrs = connx._activation_attrs(type("M", (), dict(activation=act,
                                                           recurrent_activation=rec)), 2)
        Y, Yh, Yc = _onnx_lstm.lstm(x, W, R, B, lengths, h0, c0, P,
                                    direction="bidirectional", **attrs)
        np.testing.assert_allclose(Y.transpose(0, 2, 1, 3).reshape(6, 2, 10), y, rtol=1e-12,
                                   atol=1e-13, err_msg=f"{act}, {rec}")
        np.testing.assert_allclose(Yh, h, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Yc, c, rtol=1e-12, atol=1e-13)
        f32 = lambda a: a.astype(np.float32)
        elem = TensorProto.FLOAT
        node = helper.make_node("LSTM", ["X", "W", "R", "B", "L", "H0", "C0", "P"],
                                ["Y", "Yh", "Yc"], hidden_size=5, direction="bidirectional",
                                **attrs)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info(n, elem, None) for n in
                          ("X", "H0", "C0")] +
            [helper.make_tensor_value_info("L", TensorProto.INT32, None)],
            [helper.make_tensor_value_info(n, elem, None) for n in ("Y", "Yh", "Yc")],
            [numpy_helper.from_array(f32(a), n) for n, a in
             dict(W=W, R=R, B=B, P=P).items()])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        out = run_ort(m, dict(X=f32(x), H0=f32(h0), C0=f32(c0), L=lengths.astype(np.int32)))
        np.testing.assert_allclose(out[0].transpose(0, 2, 1, 3).reshape(6, 2, 10), y,
                                   rtol=1e-4, atol=1e-5, err_msg=f"{act}, {rec}")
        np.testing.assert_allclose(out[1], h, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[2], c, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- export
def feed_for(model, rng, T=5, B=3, lengths=False, state=False):
    rnns = (clstm.LSTM, clstm.GRU)
    lstm = model if isinstance(model, rnns) else next(m for m in model if isinstance(m, rnns))
    first = model if isinstance(model, rnns) else model[0]
    n_in = getattr(first, "input_size", None) or first.in_features
    x = rng.standard_normal((B, T, n_in) if lstm.batch_first else (T, B, n_in)).astype(
        lstm.dtype)
    feed, kw = {"x": x}, {}
    if lengths:
        feed["lengths"] = kw["lengths"] = np.array([T, 1, 3][:B], np.int32)
    if state:
        n = lstm.num_layers * lstm.num_directions
        feed["h0"] = rng.standard_normal((n, B, lstm.hidden_size)).astype(lstm.dtype)
        if isinstance(lstm, clstm.GRU):
            kw["state"] = feed["h0"]
        else:
            feed["c0"] = rng.standard_normal((n, B, lstm.hidden_size)).astype(lstm.dtype)
            kw["state"] = (feed["h0"], feed["c0"])
    return feed, kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers,bidirectional,batch_first,lengths,state", [
    (1, False, False, False, False), (2, True, False, True, True), (3, False, True, True, False),
    (2, True, True, False, True), (1, True, False, True, False)])
def test_exported_lstm_runs_with_clstms_numbers(dtype, layers, bidirectional, batch_first,
                                                lengths, state):
    rng = np.random.default_rng(layers + 10 * bidirectional)
    lstm = clstm.LSTM(4, 6, layers, bidirectional=bidirectional, batch_first=batch_first,
                      dtype=dtype, seed=5)
    model = connx.export(lstm, lengths=lengths, state=state)
    feed, kw = feed_for(lstm, rng, lengths=lengths, state=state)
    y, (h, c) = lstm(feed["x"], **kw)
    got = run_exported(model, feed, dtype)
    for name, a, b in zip(("y", "h_n", "c_n"), got, (y, h, c)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=name)


def test_export_puts_the_gates_in_onnxs_order():
    """PyTorch's blocks i, f, g, o against ONNX's i, o, f, c, block by block."""
    lstm = clstm.LSTM(3, 2, bidirectional=True, seed=1)
    model = connx.export(lstm)
    inits = {t.name.split("_")[0]: numpy_helper.to_array(t) for t in model.graph.initializer}
    H = 2
    for d, s in enumerate(("_l0", "_l0_reverse")):
        blocks = {k: lstm.state_dict()["weight_ih" + s][n * H:(n + 1) * H]
                  for n, k in enumerate("ifgo")}
        for n, k in enumerate("iofg"):  # ONNX's i, o, f, c(= g)
            np.testing.assert_array_equal(inits["W0"][d][n * H:(n + 1) * H], blocks[k])
        b = inits["B0"][d]
        np.testing.assert_array_equal(b[:H], lstm.state_dict()["bias_ih" + s][:H])
        np.testing.assert_array_equal(b[4 * H + H:4 * H + 2 * H],  # Rb's o block
                                      lstm.state_dict()["bias_hh" + s][3 * H:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exported_sequential_runs_with_clstms_numbers(dtype):
    rng = np.random.default_rng(7)
    model = clstm.Sequential(clstm.Linear(5, 4, dtype=dtype, seed=1),
                             clstm.LSTM(4, 6, 2, bidirectional=True, batch_first=True,
                                        dtype=dtype, seed=2),
                             clstm.Dropout(0.3),
                             clstm.LSTM(12, 3, batch_first=True, dtype=dtype, seed=4),
                             clstm.Linear(3, 2, bias=False, dtype=dtype, seed=3))
    proto = connx.export(model, lengths=True)
    x = rng.standard_normal((3, 5, 5)).astype(dtype)
    lengths = np.array([5, 2, 4], np.int32)
    (got,) = run_exported(proto, {"x": x, "lengths": lengths}, dtype)
    np.testing.assert_allclose(got, model(x, lengths=lengths), **TOL[dtype])


def test_export_writes_paths_and_files(tmp_path):
    lstm = clstm.LSTM(3, 4, seed=0)
    connx.export(lstm, tmp_path / "a.onnx")
    buf = io.BytesIO()
    connx.export(lstm, buf)
    assert (tmp_path / "a.onnx").read_bytes() == buf.getvalue()
    for source in (tmp_path / "a.onnx", str(tmp_path / "a.onnx"), io.BytesIO(buf.getvalue())):
        again = connx.load(source)
        for k, v in lstm.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[k], v)


def test_export_refuses_what_onnx_cannot_express():
    with pytest.raises(ValueError, match="proj_size"):
        connx.export(clstm.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="module 1 is a LastStep"):
        connx.export(clstm.Sequential(clstm.LSTM(3, 4), clstm.LastStep()))
    with pytest.raises(ValueError, match="opset must be >= 14"):
        connx.export(clstm.LSTM(3, 4), opset=13)
    with pytest.raises(ValueError, match="state=True needs an LSTM"):
        connx.export(clstm.Sequential(clstm.Linear(3, 4)), state=True)


# --------------------------------------------------------------------------- load
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("bias,lengths,state", [(True, False, False), (False, True, True),
                                                (True, True, True)])
def test_loaded_onnx_lstm_gives_onnx_runtimes_numbers(direction, bias, lengths, state):
    rng = np.random.default_rng(len(direction) + 2 * bias + lengths)
    model, feed = one_node_model(rng, direction=direction, bias=bias, lengths=lengths,
                                 state=state)
    lstm = connx.load(model)
    assert isinstance(lstm, clstm.LSTM) and lstm.bias == bias
    assert lstm.bidirectional == (direction == "bidirectional")
    for a, b in zip(clstm_on_feed(lstm, feed), run_ort(model, feed)):
        np.testing.assert_allclose(a, b, **TOL[np.float32])


@pytest.mark.parametrize("layout", [0, 1])
def test_loaded_float64_and_batch_major_models_follow_the_spec(layout):
    rng = np.random.default_rng(4 + layout)
    model, feed = one_node_model(rng, direction="bidirectional", dtype=np.float64,
                                 lengths=True, state=True, layout=layout)
    lstm = connx.load(model)
    assert lstm.dtype == np.float64 and lstm.batch_first == bool(layout)
    for a, b in zip(clstm_on_feed(lstm, feed, layout), run_spec(model, feed)):
        np.testing.assert_allclose(a, b, **TOL[np.float64])


def test_round_trip_keeps_every_parameter_and_the_structure():
    for model in (clstm.LSTM(3, 4, 3, bidirectional=True, batch_first=True, seed=1),
                  clstm.Sequential(clstm.LSTM(3, 4, 2, seed=1), clstm.Linear(4, 2, seed=2)),
                  clstm.LSTM(3, 4, bias=False, dtype=np.float64, seed=3)):
        again = connx.load(connx.export(model))
        assert type(again) is type(model) and repr(again) == repr(model)
        assert again.state_dict().keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)


def test_mixed_layers_load_as_a_sequential():
    """Layers of different sizes stay separate LSTMs in a Sequential, still ORT's numbers."""
    model = clstm.Sequential(clstm.LSTM(3, 4, seed=1), clstm.LSTM(4, 5, bidirectional=True,
                                                                   seed=2))
    again = connx.load(connx.export(model))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    assert isinstance(again, clstm.Sequential) and len(again) == 2
    np.testing.assert_allclose(again(x), model(x), rtol=0, atol=0)


def lstm_node_model(**attrs):
    model, _ = one_node_model(np.random.default_rng(0), **attrs)
    return model


@pytest.mark.parametrize("attrs,match", [
    (dict(clip=3.0), "attribute clip"),
    (dict(input_forget=1), "attribute input_forget"),
    (dict(activations=["Sigmoid", "LeakyRelu", "LeakyRelu"]), "clstm has no LeakyRelu"),
    (dict(activations=["HardSigmoid", "Tanh", "Tanh"], activation_alpha=[0.3]),
     "clstm has no HardSigmoid with alpha=0.3"),
    (dict(activations=["Sigmoid", "Tanh", "Relu"]), "one activation to the cell input and"),
    (dict(direction="reverse"), "direction='reverse'"),
])
def test_load_names_what_clstm_lacks(attrs, match):
    with pytest.raises(ValueError, match=match):
        connx.load(lstm_node_model(**attrs))


def test_load_names_an_unknown_operator_and_variable_weights():
    model = lstm_node_model()
    model.graph.node.append(helper.make_node("Softmax", ["Y"], ["Z"]))
    with pytest.raises(ValueError, match="operator Softmax"):
        connx.load(model)
    model = lstm_node_model()
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, None))
    del model.graph.initializer[0]
    with pytest.raises(ValueError, match="input W .* must be an initializer"):
        connx.load(model)


# ------------------------------------------------------------- peepholes, activations
VARIANTS = [dict(peephole=True),
            dict(peephole=True, activation="relu", recurrent_activation="hard_sigmoid"),
            dict(activation="linear", recurrent_activation="sigmoid"),
            dict(peephole=True, activation="sigmoid", recurrent_activation="tanh")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_exported_variants_run_with_clstms_numbers(dtype, variant):
    """Peepholes go to input P (ONNX's i, o, f order), activations to the activations
    attribute; ONNX Runtime (float32) and the spec (float64) give clstm's numbers."""
    lstm = clstm.LSTM(4, 6, 2, bidirectional=True, dtype=dtype, seed=5, **variant)
    proto = connx.export(lstm, lengths=True, state=True)
    feed, kw = feed_for(lstm, np.random.default_rng(3), lengths=True, state=True)
    y, (h, c) = lstm(feed["x"], **kw)
    for name, a, b in zip(("y", "h_n", "c_n"), run_exported(proto, feed, dtype), (y, h, c)):
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=name)
    again = connx.load(proto)
    assert repr(again) == repr(lstm)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("attrs", [
    {}, dict(activations=["HardSigmoid", "Relu", "Relu"], activation_alpha=[0.2],
             activation_beta=[0.5]),
    dict(activations=["Sigmoid", "Affine", "Affine"], activation_alpha=[1.0, 1.0],
         activation_beta=[0.0, 0.0])])
def test_loaded_peephole_lstm_gives_onnx_runtimes_numbers(direction, attrs):
    D = 2 if direction == "bidirectional" else 1
    attrs = {k: v * D for k, v in attrs.items()}
    model, feed = one_node_model(np.random.default_rng(8), direction=direction, peephole=True,
                                 lengths=True, state=True, **attrs)
    lstm = connx.load(model)
    assert lstm.peephole
    for a, b in zip(clstm_on_feed(lstm, feed), run_ort(model, feed)):
        np.testing.assert_allclose(a, b, **TOL[np.float32])


def test_loaded_float64_peephole_lstm_follows_the_spec():
    model, feed = one_node_model(np.random.default_rng(9), direction="bidirectional",
                                 dtype=np.float64, peephole=True, lengths=True, state=True,
                                 activations=["HardSigmoid", "Tanh", "Tanh"] * 2)
    lstm = connx.load(model)
    assert lstm.recurrent_activation == "hard_sigmoid"
    for a, b in zip(clstm_on_feed(lstm, feed), run_spec(model, feed)):
        np.testing.assert_allclose(a, b, **TOL[np.float64])



# -------------------------------------------------------------------------------- GRU
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers,bidirectional,batch_first,lengths,state,bias", [
    (1, False, False, False, False, True), (2, True, False, True, True, True),
    (2, False, True, True, False, False)])
def test_exported_gru_runs_with_clstms_numbers(dtype, layers, bidirectional, batch_first,
                                               lengths, state, bias):
    """clstm's GRU (PyTorch's reset-after form) is ONNX's GRU with linear_before_reset=1."""
    gru = clstm.GRU(4, 5, layers, bidirectional=bidirectional, batch_first=batch_first,
                    bias=bias, dtype=dtype, seed=6)
    proto = connx.export(gru, lengths=lengths, state=state)
    feed, kw = feed_for(gru, np.random.default_rng(layers), lengths=lengths, state=state)
    y, h = gru(feed["x"], **kw)
    got = run_exported(proto, feed, dtype)
    assert len(got) == 2
    for name, a, b in zip(("y", "h_n"), got, (y, h)):
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=name)
    again = connx.load(proto)
    assert repr(again) == repr(gru)
    for k, v in gru.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)


def gru_node_model(rng, *, T=5, B=3, I=4, H=5, direction="forward", lengths=True,
                   **attrs):
    D = 2 if direction == "bidirectional" else 1
    w = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)
    inits = {"W": w(D, 3 * H, I), "R": w(D, 3 * H, H), "B": w(D, 6 * H)}
    feed = {"X": rng.standard_normal((T, B, I)).astype(np.float32),
            "initial_h": rng.standard_normal((D, B, H)).astype(np.float32)}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
              helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [D, B, H])]
    names = ["X", "W", "R", "B", "", "initial_h"]
    if lengths:
        feed["sequence_lens"] = np.array([T, 2, 4][:B], np.int32)
        names[4] = "sequence_lens"
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    node = helper.make_node("GRU", names, ["Y", "Y_h"], hidden_size=H, direction=direction,
                            **attrs)
    graph = helper.make_graph([node], "g", inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("Y", "Y_h")],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feed


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_loaded_onnx_gru_gives_onnx_runtimes_numbers(direction):
    model, feed = gru_node_model(np.random.default_rng(3), direction=direction,
                                 linear_before_reset=1)
    gru = connx.load(model)
    assert isinstance(gru, clstm.GRU)
    y, h = gru(feed["X"], feed["initial_h"], lengths=feed["sequence_lens"])
    Y, Yh = run_ort(model, feed)
    D = gru.num_directions
    np.testing.assert_allclose(y.reshape(5, 3, D, -1).transpose(0, 2, 1, 3), Y,
                               **TOL[np.float32])
    np.testing.assert_allclose(h, Yh, **TOL[np.float32])
    # and the spec oracle agrees with ONNX Runtime on the same node
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    spec = _onnx_lstm.gru(feed["X"], inits["W"], inits["R"], inits["B"],
                          feed["sequence_lens"], feed["initial_h"], direction=direction)
    np.testing.assert_allclose(spec[0], Y, **TOL[np.float32])


def test_load_names_what_clstms_gru_lacks():
    with pytest.raises(ValueError, match="linear_before_reset=0"):
        connx.load(gru_node_model(np.random.default_rng(0))[0])
    with pytest.raises(ValueError, match="clstm's GRU has Sigmoid and Tanh only"):
        connx.load(gru_node_model(np.random.default_rng(0), linear_before_reset=1,
                                  activations=["HardSigmoid", "Tanh"])[0])
    with pytest.raises(ValueError, match="GRU attribute clip"):
        connx.load(gru_node_model(np.random.default_rng(0), linear_before_reset=1,
                                  clip=2.0)[0])


def test_mixed_lstm_gru_linear_sequential_round_trip():
    model = clstm.Sequential(clstm.LSTM(3, 4, seed=1), clstm.GRU(4, 5, 2, seed=2),
                             clstm.Linear(5, 2, seed=3))
    proto = connx.export(model, lengths=True)
    x = np.random.default_rng(0).standard_normal((6, 3, 3)).astype(np.float32)
    lengths = np.array([6, 3, 1], np.int32)
    (got,) = run_ort(proto, {"x": x, "lengths": lengths})
    np.testing.assert_allclose(got, model(x, lengths=lengths), **TOL[np.float32])
    again = connx.load(proto)
    assert [type(m) for m in again] == [clstm.LSTM, clstm.GRU, clstm.Linear]
    assert again[1].num_layers == 2
    np.testing.assert_array_equal(again(x, lengths=lengths), model(x, lengths=lengths))
