"""Saving a model with its architecture: ``clstm.save(model, path)`` writes the weights
(``model.state_dict()``, one array per name, exactly as ``model.save``) and a JSON
description of the modules to one ``.npz``; ``clstm.load(path)`` rebuilds the modules from
the description and loads the weights. The description is the zip archive's comment, so
the file's arrays are the weights alone: ``model.load(path)`` and ``numpy.load`` read it as
any weights file. No pickle anywhere.

The description names each module's class and its constructor arguments, e.g.
``{"type": "Sequential", "modules": [{"type": "LSTM", "config": {"input_size": 1, ...}},
...]}``. Every module class of clstm is described; others raise TypeError (save their
weights with ``model.save`` and rebuild them in code).
"""
import functools
import json
import zipfile

import numpy as np

from ._params import read_npz
from .layers import AttentionPooling, Dropout, Embedding, LastStep, Linear, Sequential

FORMAT, VERSION = "clstm.model", 1
_MAX_COMMENT = 65535  # bytes: the zip format's limit


def _attrs(*names):
    return lambda m: {name: getattr(m, name) for name in names}


def _with_dtype(config):
    return lambda m: {**config(m), "dtype": m.dtype.name}


@functools.lru_cache(maxsize=None)
def _configs():
    """class -> its constructor arguments, read from the public attributes. Built on first
    use from the package's own names, so it does not depend on which module defines the
    recurrent classes."""
    from . import GRU, LSTM, GRUCell, LSTMCell
    return {
        LSTM: _with_dtype(_attrs("input_size", "hidden_size", "num_layers", "bias",
                                 "batch_first", "dropout", "bidirectional", "proj_size")),
        GRU: _with_dtype(_attrs("input_size", "hidden_size", "num_layers", "bias",
                                "batch_first", "dropout", "bidirectional")),
        GRUCell: _with_dtype(_attrs("input_size", "hidden_size", "bias")),
        LSTMCell: _with_dtype(_attrs("input_size", "hidden_size", "bias")),
        Linear: _with_dtype(lambda m: {"in_features": m.in_features,
                                       "out_features": m.out_features, "bias": m.has_bias}),
        Embedding: _with_dtype(_attrs("num_embeddings", "embedding_dim", "padding_idx")),
        AttentionPooling: _with_dtype(_attrs("hidden_size", "attention_size", "batch_first")),
        LastStep: _attrs("batch_first"),
        # the seed of the training masks, when it is one JSON can hold
        Dropout: lambda m: {"p": m.p, "seed": m.seed if isinstance(m.seed, int) else None},
    }


def _classes():
    return {cls.__name__: cls for cls in _configs()}


def describe(module) -> dict:
    """The JSON-ready description of ``module`` (and its children).

    Raises
    ------
    TypeError
        A module clstm cannot describe.
    """
    if type(module) is Sequential:
        return {"type": "Sequential", "modules": [describe(m) for m in module]}
    config = _configs().get(type(module))
    if config is None:
        raise TypeError(f"clstm.save cannot describe a {type(module).__name__} (it knows "
                        f"{sorted(_classes()) + ['Sequential']}); save its weights with "
                        f"model.save(path) and rebuild it in code")
    return {"type": type(module).__name__, "config": config(module)}


def build(description: dict):
    """The modules ``description`` (from `describe`) stands for, freshly initialised.

    Raises
    ------
    ValueError
        An unknown module type or a malformed description.
    """
    try:
        kind = description["type"]
        if kind == "Sequential":
            return Sequential(*(build(d) for d in description["modules"]))
        cls = _classes()[kind]
        return cls(**description["config"])
    except KeyError as exc:
        raise ValueError(f"not a clstm module description (unknown type or missing "
                         f"{exc}): {json.dumps(description)[:200]}") from None
    except TypeError as exc:
        raise ValueError(f"bad arguments in the description of a {description.get('type')}: "
                         f"{exc}") from None


def save(model, path) -> None:
    """Write ``model``'s architecture and weights to ``path`` (an uncompressed ``.npz``;
    the name is used as given).

    Parameters
    ----------
    model : a clstm module (``Sequential``, ``LSTM``, ``Linear``...)
    path : str or path-like

    Raises
    ------
    TypeError
        A module clstm cannot describe (nothing is written).
    """
    text = json.dumps({"format": FORMAT, "version": VERSION, "module": describe(model)},
                      separators=(",", ":")).encode()
    if len(text) > _MAX_COMMENT:
        raise ValueError(f"the description of this model takes {len(text)} bytes, more than "
                         f"a zip comment holds ({_MAX_COMMENT}); save its weights with "
                         f"model.save(path)")
    arrays = model.state_dict() if hasattr(model, "state_dict") else {}  # Dropout: none
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with zipfile.ZipFile(path, "a") as archive:
        archive.comment = text


def load(path):
    """The model saved by `save` at ``path``, rebuilt and with its weights.

    Raises
    ------
    ValueError
        Not such a file (weights saved by ``model.save`` have no architecture: build the
        model and call ``model.load(path)``), or weights that do not fit the description.
    KeyError
        Weights missing or unexpected for the description (naming the file).
    """
    arrays = read_npz(path, "a .npz archive written by clstm.save")
    with zipfile.ZipFile(path) as zf:  # (a readable .npz is a readable zip)
        comment = zf.comment
    if not comment:
        raise ValueError(f"{path} has weights but no architecture (written by model.save?): "
                         f"build the model in code and call model.load({str(path)!r})")
    try:
        header = json.loads(comment.decode())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"format {header.get('format')!r} version "
                             f"{header.get('version')!r}, expected {FORMAT!r} {VERSION}")
        model = build(header["module"])
        if hasattr(model, "load_state_dict"):
            model.load_state_dict(arrays, strict=True)
        elif arrays:
            raise KeyError(f"unexpected keys {sorted(arrays)} for a {type(model).__name__}")
    except (KeyError, ValueError, TypeError) as exc:
        raise type(exc)(f"{path}: {exc.args[0] if exc.args else exc}") from None
    return model
