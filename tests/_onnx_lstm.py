"""ONNX's LSTM (and GRU) operator in NumPy, written from the operator's specification in its own
notation (gate blocks i, o, f, c; B = [Wb, Rb]; P = [P_i, P_o, P_f]; activations f, g, h per
direction), independent of clstm's code. It is the float64 oracle (ONNX Runtime 1.32's LSTM
runs float32 only) and the ``layout=1`` one (ONNX Runtime refuses it); the tests check it
against ONNX Runtime in float32 first."""
import numpy as np

_FUNCS = {
    "sigmoid": lambda z, a, b: 1 / (1 + np.exp(-z)),
    "tanh": lambda z, a, b: np.tanh(z),
    "relu": lambda z, a, b: np.maximum(z, 0),
    "hardsigmoid": lambda z, a, b: np.clip(a * z + b, 0, 1),
    "affine": lambda z, a, b: a * z + b,
}
_DEFAULTS = {"hardsigmoid": (0.2, 0.5), "affine": (1.0, 0.0)}


def _functions(activations, alphas, betas, n):
    """[(f, g, h)] per direction; alpha/beta consumed in order by the functions taking them."""
    names = activations or ["Sigmoid", "Tanh", "Tanh"] * n
    alphas, betas = list(alphas or []), list(betas or [])
    funcs = []
    for name in names:
        key = name.lower()
        a, b = _DEFAULTS.get(key, (None, None))
        if key in _DEFAULTS:
            a = alphas.pop(0) if alphas else a
            b = betas.pop(0) if betas else b
        funcs.append(lambda z, key=key, a=a, b=b: _FUNCS[key](z, a, b))
    return [funcs[3 * d:3 * d + 3] for d in range(n)]


def lstm(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
         direction="forward", layout=0, activations=None, activation_alpha=None,
         activation_beta=None):
    """Y, Y_h, Y_c of ONNX's LSTM (Y zero past each sequence's length)."""
    if layout:
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
        initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
    T, Bn, _ = X.shape
    n = W.shape[0]
    H = R.shape[-1]
    dt = X.dtype
    B = np.zeros((n, 8 * H), dt) if B is None else B
    P = np.zeros((n, 3 * H), dt) if P is None else P
    lens = np.full(Bn, T) if sequence_lens is None else np.asarray(sequence_lens)
    h0 = np.zeros((n, Bn, H), dt) if initial_h is None else initial_h
    c0 = np.zeros((n, Bn, H), dt) if initial_c is None else initial_c
    Y = np.zeros((T, n, Bn, H), dt)
    Yh, Yc = np.zeros((n, Bn, H), dt), np.zeros((n, Bn, H), dt)
    fgh = _functions(activations, activation_alpha, activation_beta, n)
    for d in range(n):
        rev = direction == "reverse" or d == 1
        f, g, h = fgh[d]
        Wi, Wo, Wf, Wc = np.split(W[d], 4)
        Ri, Ro, Rf, Rc = np.split(R[d], 4)
        Wb, Rb = np.split(B[d], 2)
        bi, bo, bf, bc = np.split(Wb + Rb, 4)
        Pi, Po, Pf = np.split(P[d], 3)
        for b in range(Bn):
            Ht, Ct = h0[d, b], c0[d, b]
            steps = range(lens[b])
            for t in (reversed(steps) if rev else steps):
                x = X[t, b]
                it = f(x @ Wi.T + Ht @ Ri.T + Pi * Ct + bi)
                ft = f(x @ Wf.T + Ht @ Rf.T + Pf * Ct + bf)
                ct = g(x @ Wc.T + Ht @ Rc.T + bc)
                Ct = ft * Ct + it * ct
                ot = f(x @ Wo.T + Ht @ Ro.T + Po * Ct + bo)
                Ht = ot * h(Ct)
                Y[t, d, b] = Ht
            Yh[d, b], Yc[d, b] = Ht, Ct
    if layout:
        return Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2), Yc.transpose(1, 0, 2)
    return Y, Yh, Yc


def gru(X, W, R, B=None, sequence_lens=None, initial_h=None, *, direction="forward",
        linear_before_reset=1):
    """Y, Y_h of ONNX's GRU with its default activations (gate blocks z, r, h; B = [Wb, Rb])."""
    T, Bn, _ = X.shape
    n, H, dt = W.shape[0], R.shape[-1], X.dtype
    B = np.zeros((n, 6 * H), dt) if B is None else B
    lens = np.full(Bn, T) if sequence_lens is None else np.asarray(sequence_lens)
    h0 = np.zeros((n, Bn, H), dt) if initial_h is None else initial_h
    Y, Yh = np.zeros((T, n, Bn, H), dt), np.zeros((n, Bn, H), dt)
    s = lambda v: 1 / (1 + np.exp(-v))
    for d in range(n):
        rev = direction == "reverse" or d == 1
        Wz, Wr, Wh = np.split(W[d], 3)
        Rz, Rr, Rh = np.split(R[d], 3)
        Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(B[d], 6)
        for b in range(Bn):
            Ht = h0[d, b]
            steps = range(lens[b])
            for t in (reversed(steps) if rev else steps):
                x = X[t, b]
                z = s(x @ Wz.T + Ht @ Rz.T + Wbz + Rbz)
                r = s(x @ Wr.T + Ht @ Rr.T + Wbr + Rbr)
                if linear_before_reset:
                    h = np.tanh(x @ Wh.T + r * (Ht @ Rh.T + Rbh) + Wbh)
                else:
                    h = np.tanh(x @ Wh.T + (r * Ht) @ Rh.T + Rbh + Wbh)
                Ht = (1 - z) * h + z * Ht
                Y[t, d, b] = Ht
            Yh[d, b] = Ht
    return Y, Yh
