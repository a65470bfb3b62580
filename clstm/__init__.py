"""clstm: a fast CPU LSTM for NumPy, speaking torch.nn.LSTM's dialect.

    >>> import numpy as np, clstm
    >>> lstm = clstm.LSTM(input_size=8, hidden_size=16, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((5, 3, 8), np.float32))
    >>> y.shape, h_n.shape
    ((5, 3, 16), (1, 3, 16))

Modules: `clstm.functional` (compiled kernels, one layer), `clstm.reference` (the NumPy
reference with the same signatures). ``model.freeze()`` gives an inference-only snapshot on
prepacked weights (`FrozenLSTM`, `FrozenLSTMCell`). Training toolkit: `Linear`,
`Embedding`, `Dropout`, `AttentionPooling`, `LastStep`, `Sequential`, `clstm.losses`
(`mse_loss`, `cross_entropy`...), `clstm.optim` (`SGD`, `Adam`, schedules,
`clip_grad_norm`), `fit` / `predict` and their callbacks (`clstm.training`), `clstm.data`
(`pad_sequences`, `windows`), `save` / `load` (architecture and weights).
"""


def _import_the_compiled_core():
    """Import the compiled core first: when Python finds clstm's source folder instead of
    the installed build (running in the repository root), say so rather than fail deeper
    with a confusing circular-import message."""
    import importlib
    import os
    try:
        importlib.import_module(f"{__name__}._runtime")
    except ImportError as exc:
        raise ImportError(
            f"clstm's compiled modules are not in {os.path.dirname(__file__)}: this is "
            "clstm's source folder, not an installed build (Python finds the source folder "
            "first when it runs in the repository root). Install clstm with `pip install .` "
            "in the repository root, then run Python from any other directory "
            "(`cd ..`).") from exc


_import_the_compiled_core()
del _import_the_compiled_core
from . import data, functional, losses, optim, reference, training
from ._threads import get_num_threads, openmp_enabled, set_num_threads
from ._version import __version__
from .cells import FrozenGRUCell, FrozenLSTMCell, GRUCell, LSTMCell
from .frozen import FrozenGRU, FrozenLSTM
from .functional import release_memory
from .layers import AttentionPooling, Dropout, Embedding, LastStep, Linear, Sequential
from .losses import (binary_cross_entropy_with_logits, cross_entropy, huber_loss, l1_loss,
                     mse_loss)
from .optim import clip_grad_norm
from .rnn import GRU, LSTM
from .serialization import load, save
from .training import fit, predict

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "FrozenLSTM", "FrozenGRU", "FrozenLSTMCell",
           "FrozenGRUCell", "Linear", "Sequential",
           "functional", "reference", "losses", "optim", "mse_loss", "cross_entropy",
           "clip_grad_norm", "get_num_threads", "set_num_threads", "openmp_enabled",
           "release_memory", "Embedding", "Dropout", "AttentionPooling", "LastStep", "l1_loss",
           "huber_loss",
           "binary_cross_entropy_with_logits", "data", "training", "fit", "predict", "save",
           "load", "__version__"]
