"""clstm.dask on real local clusters of worker processes: predict equals the local model,
data-parallel fit equals single-process training on the same batches (float64, 1e-10), the
thread policy, bad input, the lazy import and the example. Skipped without dask."""
import functools
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
import dask.array as da  # noqa: E402
import distributed  # noqa: E402

import clstm  # noqa: E402
import clstm.dask as cd  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "dask_scale_out.py"
F64 = np.float64


def _cluster(n_workers, threads):
    cluster = distributed.LocalCluster(processes=True, n_workers=n_workers,
                                       threads_per_worker=threads, dashboard_address=":0")
    return cluster, distributed.Client(cluster, set_as_default=False)


@pytest.fixture(scope="module")
def client():
    """2 worker processes x 1 thread: the machine's two cores."""
    cluster, c = _cluster(2, 1)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def client_1x2():
    """1 worker process x 2 threads: the thread policy, and fit's worker-count independence."""
    cluster, c = _cluster(1, 2)
    yield c
    c.close()
    cluster.close()


def _data(T=7, N=40, I=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, N, I)), rng.integers(0, T + 1, N)


# ------------------------------------------------------------------------ predict
def test_predict_lstm_equals_local_run(client):
    lstm = clstm.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=F64, seed=1)
    x, lengths = _data()
    xd = da.from_array(x, chunks=(3, 9, 3))  # chunked along time too: merged by predict
    for lens in (None, lengths, da.from_array(lengths, chunks=13)):
        want = lstm(x, lengths=None if lens is None else lengths)[0]
        got = cd.predict(lstm, xd, lengths=lens)
        assert got.chunks[1] == xd.chunks[1]
        np.testing.assert_allclose(got.compute(scheduler=client), want, rtol=0, atol=1e-12)
    # batch_size splits each block into model calls; NumPy input is wrapped
    got = cd.predict(lstm, x, lengths=lengths, batch_size=4).compute(scheduler=client)
    np.testing.assert_allclose(got, lstm(x, lengths=lengths)[0], rtol=0, atol=1e-12)


def test_predict_sequential_batch_first_and_cells(client):
    model = clstm.Sequential(clstm.LSTM(3, 6, batch_first=True, dtype=F64, seed=2),
                             clstm.Linear(6, 2, dtype=F64, seed=3))
    x, lengths = _data()
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))  # (B, T, I)
    got = cd.predict(model, da.from_array(xb, chunks=(11, 7, 3)), lengths=lengths)
    lstm_y = model[0](xb, lengths=lengths)[0]
    np.testing.assert_allclose(got.compute(scheduler=client), model[1](lstm_y), rtol=0,
                               atol=1e-12)
    cell = clstm.LSTMCell(3, 4, dtype=F64, seed=4)
    x2 = x[0]  # (B, I)
    for m in (cell, cell.freeze()):
        got = cd.predict(m, da.from_array(x2, chunks=(15, 3))).compute(scheduler=client)
        np.testing.assert_allclose(got, cell(x2)[0], rtol=0, atol=1e-12)


def test_predict_snapshots_the_model_and_ships_it_once(client):
    lstm = clstm.LSTM(3, 64, dtype=F64, seed=5)
    x = da.random.default_rng(0).standard_normal((4, 64, 3), chunks=(4, 4, 3))  # 16 chunks
    y = cd.predict(lstm, x)
    want = lstm(x.compute())[0]
    lstm.load_state_dict({k: v + 1 for k, v in lstm.state_dict().items()})  # after predict
    np.testing.assert_allclose(y.compute(scheduler=client), want, rtol=0, atol=1e-12)
    # The model is one key of the graph, not a copy per chunk: the whole graph pickles to
    # about one model.
    graph = dict(y.__dask_graph__())
    assert len(pickle.dumps(graph)) < 1.5 * len(pickle.dumps(lstm))


def test_predict_batch_axis_pair(client):
    # an output whose batch moved: (T, B, I) -> (B, I), as a pooling head gives
    x = _data()[0]
    pool = functools.partial(np.sum, axis=0)
    got = cd.predict(pool, da.from_array(x, chunks=(7, 9, 3)), batch_axis=(1, 0))
    assert got.chunks[0] == (9, 9, 9, 9, 4)
    np.testing.assert_allclose(got.compute(scheduler=client), x.sum(axis=0), rtol=1e-14)
    with pytest.raises(ValueError, match="output must have the batch on axis 1"):
        cd.predict(pool, x, batch_axis=1)


def test_predict_bad_input():
    lstm = clstm.LSTM(3, 4, dtype=F64)
    x, lengths = _data()
    with pytest.raises(ValueError, match="lengths must have shape"):
        cd.predict(lstm, x, lengths=lengths[:-1])
    with pytest.raises(TypeError, match="lengths must be an integer"):
        cd.predict(lstm, x, lengths=lengths.astype(float))
    with pytest.raises(TypeError, match="lengths needs a model"):
        cd.predict(clstm.Linear(3, 2), x, lengths=lengths)
    with pytest.raises(ValueError, match="batch_axis=3 is out of range"):
        cd.predict(lstm, x, batch_axis=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cd.predict(lstm, x, batch_size=0)
    with pytest.raises(ValueError, match="x must have shape"):  # the model's own check
        cd.predict(lstm, x[..., :2])


# ------------------------------------------------------------------------ thread policy
def test_worker_threads_follow_the_worker(client, client_1x2):
    x = da.from_array(_data()[0], chunks=(7, 10, 3))
    lstm = clstm.LSTM(3, 4, dtype=F64)
    cd.predict(lstm, x).compute(scheduler=client_1x2)
    # the nanny holds OpenMP to one thread; clstm takes the worker's two anyway
    info = client_1x2.run(lambda: (os.environ.get("OMP_NUM_THREADS"), clstm.get_num_threads()))
    assert list(info.values()) == [("1", 2)]
    cd.predict(lstm, x).compute(scheduler=client)
    assert set(client.run(clstm.get_num_threads).values()) == {1}
    # the plugin, for tasks of one's own
    client_1x2.run(clstm.set_num_threads, 1)
    client_1x2.register_plugin(cd.ThreadPolicy())
    assert list(client_1x2.run(clstm.get_num_threads).values()) == [2]


# ------------------------------------------------------------------------ fit
def _model(dropout=0.0, seed=10):
    return clstm.Sequential(
        clstm.LSTM(3, 8, num_layers=2 if dropout else 1, dropout=dropout, dtype=F64, seed=seed),
        clstm.Linear(8, 2, dtype=F64, seed=seed + 1))


def _reference(model, opt, x, y, *, epochs, batch_size, seed, bounds, lengths=None,
               shard_by_shard=False):
    """Single-process training on fit's batches (axis 1 is the batch). With
    ``shard_by_shard`` each step's gradient is accumulated over the partitions' shards with
    the dropout generators fit documents; otherwise one forward over the whole batch."""
    lstm, head = model[0], model[1]
    rng, losses, step = np.random.default_rng(seed), [], 0
    for _ in range(epochs):
        for rows in cd._batches(x.shape[1], batch_size, True, rng):
            model.zero_grad()
            groups = [(rows, None)]
            if shard_by_shard:
                part = np.searchsorted(bounds, rows, side="right") - 1
                groups = [(rows[part == p], [seed, step, p]) for p in np.unique(part)]
            total = 0.0
            for r, key in groups:
                kw = {"lengths": None if lengths is None else lengths[r]}
                if key is not None:
                    kw["rng"] = np.random.default_rng(key)
                (h, _), back = lstm.forward_train(x[:, r], **kw)
                out, head_back = head.forward_train(h)
                value, dout = clstm.mse_loss(out, y[:, r])
                back(head_back(dout * (len(r) / len(rows))))
                total += value * len(r) / len(rows)
            opt.step()
            losses.append(total)
            step += 1
    return losses


def _assert_same(model_a, model_b, losses_a, losses_b):
    assert len(losses_a) == len(losses_b)
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-10, atol=0)
    for name, p in model_a.params.items():
        np.testing.assert_allclose(p, model_b.params[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_fit_equals_single_process(client):
    x, _ = _data(N=40)
    y = np.random.default_rng(1).standard_normal((7, 40, 2))
    dist, local = _model(), _model()
    with distributed.get_task_stream(client) as stream:
        hist = cd.fit(dist, clstm.mse_loss, clstm.optim.SGD(dist, lr=0.1, momentum=0.9), x,
                      y, client=client, epochs=2, batch_size=16, batch_axis=1, seed=3,
                      progress=False)
    # data-parallel indeed: both workers computed shards
    shard_workers = {t["worker"] for t in stream.data if "_shard_step" in str(t["key"])}
    assert len(shard_workers) == 2
    ref = _reference(local, clstm.optim.SGD(local, lr=0.1, momentum=0.9), x, y, epochs=2,
                     batch_size=16, seed=3, bounds=None)
    assert len(hist["batch_loss"]) == 6 and len(hist["loss"]) == 2  # 16 + 16 + 8 rows
    _assert_same(dist, local, hist["batch_loss"], ref)
    assert dist.params["0.weight_hh_l0"].tolist() != _model().params["0.weight_hh_l0"].tolist()


def test_fit_with_lengths_and_dask_input(client):
    x, lengths = _data(N=36)
    y = np.random.default_rng(2).standard_normal((7, 36, 2))
    xd = da.from_array(x, chunks=(7, 9, 3))  # 4 partitions on 2 workers
    dist, local = _model(), _model()
    hist = cd.fit(dist, clstm.mse_loss, clstm.optim.Adam(dist, lr=0.01), xd, y,
                  client=client, epochs=2, batch_size=12, lengths=da.from_array(lengths),
                  batch_axis=1, seed=4, progress=False)
    ref = _reference(local, clstm.optim.Adam(local, lr=0.01), x, y, epochs=2, batch_size=12,
                     seed=4, bounds=None, lengths=lengths)
    _assert_same(dist, local, hist["batch_loss"], ref)


def test_fit_with_dropout_equals_shard_by_shard_run(client, client_1x2):
    x, lengths = _data(N=30)
    y = np.random.default_rng(3).standard_normal((7, 30, 2))
    args = dict(epochs=2, batch_size=10, lengths=lengths, batch_axis=1, seed=5, progress=False)
    dist = _model(dropout=0.4)
    hist = cd.fit(dist, clstm.mse_loss, clstm.optim.SGD(dist, lr=0.1), x, y, client=client,
                  **args)
    local = _model(dropout=0.4)
    bounds = np.linspace(0, 30, 3).astype(int)  # NumPy input: one partition per worker
    ref = _reference(local, clstm.optim.SGD(local, lr=0.1), x, y, epochs=2, batch_size=10,
                     seed=5, bounds=bounds, lengths=lengths, shard_by_shard=True)
    _assert_same(dist, local, hist["batch_loss"], ref)
    # the masks matter (not the same as without dropout) ...
    plain = _model(dropout=0.4)
    ref_plain = _reference(plain, clstm.optim.SGD(plain, lr=0.1), x, y, epochs=2,
                           batch_size=10, seed=5, bounds=bounds, lengths=lengths)
    assert abs(ref_plain[-1] - ref[-1]) > 1e-6
    # ... and they depend on the partitions, not on the workers: the same two partitions
    # on one worker with two threads give the same run.
    one = _model(dropout=0.4)
    xd = da.from_array(x, chunks=(7, 15, 3))
    hist_one = cd.fit(one, clstm.mse_loss, clstm.optim.SGD(one, lr=0.1), xd, y,
                      client=client_1x2, **args)
    _assert_same(one, dist, hist_one["batch_loss"], hist["batch_loss"])


def test_fit_batch_axis_pair_and_loss_with_lengths(client):
    def last_step_mse(pred, target, lengths=None):
        """MSE of each sequence's output at its last step against one target per sequence;
        takes lengths, so fit must pass them. (Local: the workers cannot import this test
        module, so the function must travel by value, which cloudpickle does for these.)"""
        steps = np.maximum((pred.shape[0] if lengths is None else lengths) - 1, 0)
        rows = np.arange(pred.shape[1])
        value, dlast = clstm.mse_loss(pred[steps, rows], target)
        dpred = np.zeros_like(pred)
        dpred[steps, rows] = dlast
        return value, dpred

    x, lengths = _data(N=24)
    lengths = np.maximum(lengths, 1)
    y = np.random.default_rng(4).standard_normal((24, 2))  # one target per sequence
    dist, local = _model(), _model()
    hist = cd.fit(dist, last_step_mse, clstm.optim.SGD(dist, lr=0.1), x, y, client=client,
                  epochs=2, batch_size=8, lengths=lengths, batch_axis=(1, 0),
                  shuffle=np.random.default_rng(6), seed=6, progress=False)
    opt, rng, losses = clstm.optim.SGD(local, lr=0.1), np.random.default_rng(6), []
    for _ in range(2):
        for rows in cd._batches(24, 8, True, rng):
            local.zero_grad()
            (h, _), back = local[0].forward_train(x[:, rows], lengths=lengths[rows])
            out, head_back = local[1].forward_train(h)
            value, dout = last_step_mse(out, y[rows], lengths[rows])
            back(head_back(dout))
            opt.step()
            losses.append(value)
    _assert_same(dist, local, hist["batch_loss"], losses)


def test_fit_bad_input(client):
    x, lengths = _data(N=20)
    y = np.zeros((7, 20, 2))
    model = _model()
    opt = clstm.optim.SGD(model, lr=0.1)
    kw = dict(client=client, epochs=1, batch_size=4, batch_axis=1, progress=False)
    with pytest.raises(ValueError, match="y must have x's 20 samples on its batch axis 1"):
        cd.fit(model, clstm.mse_loss, opt, x, y[:, :19], **kw)
    with pytest.raises(ValueError, match=r"lengths must have shape \(20,\)"):
        cd.fit(model, clstm.mse_loss, opt, x, y, lengths=lengths[:3], **kw)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cd.fit(model, clstm.mse_loss, opt, x, y, **{**kw, "batch_size": 0})
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        cd.fit(model, clstm.mse_loss, opt, x, y, **{**kw, "client": "tcp://nowhere"})
    with pytest.raises(TypeError, match="model needs"):
        cd.fit(object(), clstm.mse_loss, opt, x, y, **kw)
    with pytest.raises(ValueError, match="batch_axis=5 is out of range for 3-D x"):
        cd.fit(model, clstm.mse_loss, opt, x, y, **{**kw, "batch_axis": 5})
    with pytest.raises(ValueError, match="batch_axis=2 is out of range for 2-D y"):
        cd.fit(model, clstm.mse_loss, opt, x, y[0], **{**kw, "batch_axis": (1, 2)})
    with pytest.raises(ValueError, match="optimizer must be built on model's parameters"):
        cd.fit(model, clstm.mse_loss, clstm.optim.SGD(_model(), lr=0.1), x, y, **kw)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        cd.fit(model, clstm.mse_loss, opt, x, y, seed=-1, **kw)


# ------------------------------------------------------------------------ packaging, example
def test_import_is_lazy_and_names_the_extra(tmp_path):
    code = "import sys, clstm; print('dask' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    (tmp_path / "dask.py").write_text("raise ImportError('no dask here')\n")
    proc = subprocess.run([sys.executable, "-c", "import clstm.dask"], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert 'pip install "clstm-cpu[dask]"' in proc.stderr


def test_example_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    fields = dict(item.split("=", 1) for item in result.split()[1:])
    assert fields["predict_matches_local"] == "True"
    assert float(fields["final_loss"]) < float(fields["first_loss"])
