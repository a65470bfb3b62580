"""clstm.data: pad_sequences, windows, iterate_batches."""
import numpy as np
import pytest

from clstm.data import (iterate_batches, n_samples, pad_sequences, sample_inputs,
                        split_validation, windows)


def test_pad_sequences_both_layouts_and_features():
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([], int)]
    padded, lengths = pad_sequences(seqs, batch_first=True, padding_value=-1)
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    assert padded.dtype.kind == "i"
    time_major, _ = pad_sequences(seqs)
    np.testing.assert_array_equal(time_major, [[1, 4, 0], [2, 0, 0], [3, 0, 0]])
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((n, 2)) for n in (2, 5)]
    out, lengths = pad_sequences(feats, dtype=np.float32)
    assert out.shape == (5, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:2, 0], feats[0].astype(np.float32))
    assert np.all(out[2:, 0] == 0)


def test_pad_sequences_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((n, 3)) for n in (4, 1, 6)]
    for batch_first in (False, True):
        ours, _ = pad_sequences(seqs, batch_first=batch_first, padding_value=0.5)
        theirs = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs],
                                                 batch_first=batch_first, padding_value=0.5)
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_pad_sequences_bad_input():
    with pytest.raises(ValueError, match="sequences is empty"):
        pad_sequences([])
    with pytest.raises(ValueError, match=r"sequences\[1\] has shape \(2, 3\)"):
        pad_sequences([np.zeros((2, 2)), np.zeros((2, 3))])
    with pytest.raises(ValueError, match="must have a time axis"):
        pad_sequences([np.zeros(2), 3])


def test_windows():
    series = np.arange(10.0)
    x, y = windows(series, 3)
    assert x.shape == (7, 3, 1) and y.shape == (7, 1)
    np.testing.assert_array_equal(x[2, :, 0], [2, 3, 4])
    np.testing.assert_array_equal(y[:, 0], np.arange(3, 10))
    x, y = windows(np.c_[series, -series], 4, horizon=3)
    assert x.shape == (4, 4, 2)
    np.testing.assert_array_equal(y, [[i + 6, -(i + 6)] for i in range(4)])
    with pytest.raises(ValueError, match="too short for a window of 8 and a horizon of 3"):
        windows(series, 8, horizon=3)
    with pytest.raises(ValueError, match=r"series must have shape \(T,\) or \(T, F\)"):
        windows(np.zeros((3, 2, 2)), 1)
    with pytest.raises(ValueError, match="window must be >= 1"):
        windows(series, 0)


def test_iterate_batches_in_order_and_shuffled():
    x = np.arange(2 * 7 * 3).reshape(2, 7, 3)  # time-major: samples on axis 1
    y = np.arange(7) * 10
    lengths = np.arange(7) % 3
    batches = list(iterate_batches([x, y], 3, batch_axis=(1, 0), lengths=lengths))
    assert [len(b[0][1]) for b in batches] == [3, 3, 1]
    (xb, yb), lb = batches[1]
    np.testing.assert_array_equal(xb, x[:, 3:6])
    np.testing.assert_array_equal(yb, y[3:6])
    np.testing.assert_array_equal(lb, lengths[3:6])
    seen = []
    for (xb, yb), lb in iterate_batches([x, y], 2, batch_axis=(1, 0), lengths=lengths,
                                        shuffle=np.random.default_rng(3)):
        idx = yb // 10  # each sample's index travels with all its parts
        np.testing.assert_array_equal(xb, x[:, idx])
        np.testing.assert_array_equal(lb, lengths[idx])
        seen.extend(idx)
    assert sorted(seen) == list(range(7)) and seen != list(range(7))
    again = [b[0][1] for b in iterate_batches([x, y], 2, batch_axis=(1, 0),
                                              shuffle=np.random.default_rng(3))]
    np.testing.assert_array_equal(np.concatenate(again) // 10, seen)
    np.random.seed(5)
    first = np.concatenate([b[0][0] for b in iterate_batches([y], 3, shuffle=True)])
    np.random.seed(5)
    second = np.concatenate([b[0][0] for b in iterate_batches([y], 3, shuffle=True)])
    np.testing.assert_array_equal(first, second)  # True: the global generator
    (none, yb), _ = next(iterate_batches([None, y], 4))
    assert none is None and len(yb) == 4


def test_iterate_batches_bad_input():
    x, y = np.zeros((5, 2)), np.zeros(4)
    with pytest.raises(ValueError, match=r"disagree.*x 5 \(axis 0\), y 4 \(axis 0\)"):
        n_samples([x, y], 0, ["x", "y"])
    with pytest.raises(ValueError, match=r"lengths must have shape \(5,\)"):
        next(iterate_batches([x], 2, lengths=[1, 2]))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(iterate_batches([x], 0))
    with pytest.raises(ValueError, match="batch_axis 2 is not an axis"):
        next(iterate_batches([x], 2, batch_axis=2))
    with pytest.raises(ValueError, match="one axis per array"):
        next(iterate_batches([x, x], 2, batch_axis=(0,)))


def test_sample_inputs_and_split_validation_along_each_arrays_axis():
    x, lengths = sample_inputs([np.ones((2, 3)), np.ones((4, 3))], batch_axis=1)
    assert x.shape == (4, 2, 3) and list(lengths) == [2, 4]  # time-major padding
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 4\]"):
        sample_inputs(x, [5, 1], batch_axis=1)
    x = np.arange(3 * 10).reshape(3, 10)  # time-major: samples on axis 1
    y = np.arange(10)
    (tx, ty, tl), (vx, vy, vl) = split_validation(x, y, np.arange(10) % 4, 0.3, (1, 0), 10)
    np.testing.assert_array_equal(vx, x[:, 7:])
    np.testing.assert_array_equal(vy, [7, 8, 9])
    np.testing.assert_array_equal(tl, (np.arange(10) % 4)[:7])
    assert tx.shape == (3, 7) and len(ty) == 7 and len(vl) == 3
    train, held = split_validation(x, y, None, None, (1, 0), 10)
    assert held is None and train[0] is x
    with pytest.raises(ValueError, match=r"x_val 2 \(axis 1\), y_val 3 \(axis 0\)"):
        split_validation(x, y, None, (x[:, :2], y[:3]), (1, 0), 10)
