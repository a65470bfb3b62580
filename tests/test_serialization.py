"""clstm.save / clstm.load: the architecture as JSON beside the weights in one .npz."""
import json
import zipfile

import numpy as np
import pytest

import clstm

f64 = dict(dtype=np.float64)


def every_module_model():
    return clstm.Sequential(
        clstm.Embedding(11, 4, padding_idx=0, seed=0, **f64),
        clstm.LSTM(4, 6, num_layers=2, batch_first=True, dropout=0.25, bidirectional=True,
                   proj_size=3, seed=1, **f64),
        clstm.Dropout(0.1, seed=3),
        clstm.AttentionPooling(6, 5, batch_first=True, seed=2, **f64),
        clstm.Linear(6, 2, bias=False, seed=4, **f64))


def test_round_trip_rebuilds_every_module(tmp_path):
    model = every_module_model()
    path = tmp_path / "model.npz"
    clstm.save(model, path)
    loaded = clstm.load(path)
    assert repr(loaded) == repr(model)
    assert loaded[2].p == 0.1 and loaded[2].seed == 3 and loaded[0].padding_idx == 0
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.params[k], v)
    idx = np.random.default_rng(0).integers(0, 11, (3, 7))
    lengths = [7, 2, 5]
    np.testing.assert_array_equal(loaded(idx, lengths=lengths), model(idx, lengths=lengths))
    # the arrays are the weights alone (no pickle): model.load and numpy read the file as is
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(model.state_dict())
    fresh = every_module_model()
    fresh.load(path)
    np.testing.assert_array_equal(fresh(idx, lengths=lengths), model(idx, lengths=lengths))
    with zipfile.ZipFile(path) as zf:  # the description: JSON in the archive's comment
        header = json.loads(zf.comment)
    assert header["format"] == "clstm.model" and header["module"]["type"] == "Sequential"
    assert header["module"]["modules"][1]["config"]["proj_size"] == 3


@pytest.mark.parametrize("make", [
    lambda: clstm.LSTM(3, 4, seed=0),
    lambda: clstm.LSTMCell(3, 4, bias=False, seed=0, **f64),
    lambda: clstm.Sequential(clstm.LSTM(2, 3), clstm.LastStep(), clstm.Linear(3, 1)),
    lambda: clstm.Dropout(0.5),
])
def test_single_modules_round_trip(tmp_path, make):
    model = make()
    clstm.save(model, tmp_path / "m.npz")
    loaded = clstm.load(tmp_path / "m.npz")
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    if hasattr(model, "state_dict"):
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[k], v)


def test_load_errors_name_the_file(tmp_path):
    lin = clstm.Linear(2, 1)
    weights_only = tmp_path / "weights.npz"
    lin.save(weights_only)
    with pytest.raises(ValueError, match=r"weights.npz has weights but no architecture.*"
                                         r"model.load"):
        clstm.load(weights_only)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a .npz archive"):
        clstm.load(tmp_path / "junk.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad)
    with zipfile.ZipFile(bad, "a") as zf:
        zf.comment = json.dumps({"format": "clstm.model", "version": 1,
                                 "module": {"type": "Transformer", "config": {}}}).encode()
    with pytest.raises(ValueError, match="bad.npz: not a clstm module description"):
        clstm.load(bad)
    with zipfile.ZipFile(bad, "a") as zf:
        zf.comment = b'{"format": "clstm.model", "version": 99}'
    with pytest.raises(ValueError, match="bad.npz: format 'clstm.model' version 99"):
        clstm.load(bad)
    short = tmp_path / "short.npz"
    clstm.save(lin, short)
    with zipfile.ZipFile(short) as zf:
        comment = zf.comment
    np.savez(short, weight=lin.weight)  # the bias is gone
    with zipfile.ZipFile(short, "a") as zf:
        zf.comment = comment
    with pytest.raises(KeyError, match=r"short.npz: load_state_dict: missing keys \['bias'\]"):
        clstm.load(short)


def test_save_refuses_modules_it_cannot_describe(tmp_path):
    class Custom(clstm.Linear):
        pass

    with pytest.raises(TypeError, match="cannot describe a Custom"):
        clstm.save(clstm.Sequential(Custom(2, 2)), tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
