"""Scale clstm out on Dask: score a large synthetic dataset with `clstm.dask.predict` on a
local cluster of worker processes and in a single process, then train a small model
data-parallel with `clstm.dask.fit`.

    pip install "clstm-cpu[dask]"
    python examples/dask_scale_out.py            # 1M sequences of T=50, I=8 (a few minutes)
    python examples/dask_scale_out.py --quick    # seconds
    python examples/dask_scale_out.py --comm     # per-step communication at ~1M parameters

Inference runs three ways over the same lazily generated array (its chunks are generated
where they are scored, in every configuration): one process with the synchronous scheduler
and clstm on 2 threads; a LocalCluster of 1 worker x 2 threads; 2 workers x 1 thread.
Timings are wall clock, the median of --repeats runs; on a shared machine they are noisy.
On a real cluster, replace LocalCluster(...) by Client("tcp://scheduler:8786") (see
docs/dask.md). The last line is ``RESULT key=value ...``.
"""
import argparse
import statistics
import time

import numpy as np

import clstm
import clstm.dask

try:
    import dask.array as da
    import distributed
except ImportError:  # pragma: no cover
    raise SystemExit('this example needs the dask extra: pip install "clstm-cpu[dask]"')


def cluster(n_workers, threads):
    c = distributed.LocalCluster(processes=True, n_workers=n_workers,
                                 threads_per_worker=threads, dashboard_address=":0")
    return c, distributed.Client(c)


def timed(fn, repeats):
    """Median wall time of ``repeats`` calls, and the last result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def inference(args):
    model = clstm.Sequential(clstm.LSTM(args.input, args.hidden, seed=0),
                             clstm.Linear(args.hidden, 1, seed=1))
    x = da.random.default_rng(0).standard_normal(
        (args.steps, args.rows, args.input), chunks=(args.steps, args.chunk, args.input),
        dtype=np.float32)
    # one score per sequence: the head's output at the last step (sliced inside each task,
    # so only (rows,) floats come back)
    def scores(x):
        return clstm.dask.predict(model, x)[-1, :, 0]

    what = "scoring the input kept in memory" if args.persist else "generating and scoring"
    print(f"{what}: {args.rows} sequences of T={args.steps}, I={args.input} with "
          f"LSTM({args.input}, {args.hidden}) + Linear({args.hidden}, 1) in chunks of "
          f"{args.chunk}; median of {args.repeats}")
    clstm.set_num_threads(2)
    configs = [(2, 1)] if args.quick else [(1, 2), (2, 1)]
    clusters = [cluster(n_workers, threads) for n_workers, threads in configs]
    x_local = x.persist(scheduler="synchronous") if args.persist else x
    runs = {"1 process x 2 threads (synchronous)": lambda: scores(x_local).compute(
        scheduler="synchronous")}
    for (n_workers, threads), (_, client) in zip(configs, clusters):
        client.wait_for_workers(n_workers)
        xc = client.persist(x) if args.persist else x
        scores(xc)[:args.chunk].compute(scheduler=client)  # warm-up: workers import clstm
        runs[f"LocalCluster {n_workers} worker(s) x {threads} thread(s)"] = \
            lambda client=client, xc=xc: scores(xc).compute(scheduler=client)
    # the configurations take turns, so a burst of foreign load hits them alike
    times, results = {name: [] for name in runs}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t, results[name] = timed(run, 1)
            times[name].append(t)
    for c, client in clusters:
        client.close()
        c.close()
    rows = [(name, statistics.median(ts)) for name, ts in times.items()]
    local = results[rows[0][0]]
    matches = all(np.allclose(r, local, rtol=0, atol=1e-5) for r in results.values())
    print(f"{'configuration':44s} {'seconds':>8s} {'sequences/s':>12s} {'vs 1 process':>12s}")
    for name, t in rows:
        print(f"{name:44s} {t:8.2f} {args.rows / t:12.0f} {rows[0][1] / t:11.2f}x")
    if args.quick:  # check against the plain model on the whole array
        want = model(x_local.compute(scheduler="synchronous"))[-1, :, 0]
        matches &= bool(np.allclose(local, want, rtol=0, atol=1e-5))
    return matches, rows


def training(args, client):
    """A noisy sine: predict the next value at every step. Data-parallel on the cluster."""
    rng = np.random.default_rng(1)
    n, T = args.train_rows, 20
    phase = rng.uniform(0, 2 * np.pi, n)
    t = np.arange(T + 1)[:, None] * 0.3 + phase  # (T+1, n)
    wave = (np.sin(t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    x, y = wave[:-1, :, None], wave[1:, :, None]  # time-major (T, n, 1)
    model = clstm.Sequential(clstm.LSTM(1, 32, seed=2), clstm.Linear(32, 1, seed=3))
    opt = clstm.optim.Adam(model, lr=1e-2)
    print(f"training LSTM(1, 32) + Linear(32, 1) on {n} sequences, batch 128, "
          f"{len(client.nthreads())} workers")
    hist = clstm.dask.fit(model, clstm.mse_loss, opt, x, y, client=client,
                          epochs=args.epochs, batch_size=128, batch_axis=1, seed=0)
    return hist


def communication(args):
    """Per-step cost of fit's parameter broadcast and gradient reduction at ~1M parameters:
    fit steps whose shards are one sequence of one step (compute ~0), against the same
    steps run locally; plus the broadcast alone."""
    model = clstm.LSTM(128, 440, seed=0)  # 4*440*(128+440) + 8*440 = 1,003,200 parameters
    n_params = sum(p.size for p in model.params.values())
    x = np.zeros((1, 64, 128), np.float32)
    y = np.zeros((1, 64, 440), np.float32)
    steps = 32
    opt = clstm.optim.SGD(model, lr=0.0)
    c, client = cluster(2, 1)
    with c, client:
        client.wait_for_workers(2)
        fit = dict(client=client, epochs=1, batch_size=2, batch_axis=1, progress=False)
        clstm.dask.fit(model, clstm.mse_loss, opt, x[:, :8], y[:, :8], **fit)  # warm-up
        per_run = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            clstm.dask.fit(model, clstm.mse_loss, opt, x, y, **fit)
            per_run.append((time.perf_counter() - t0) / steps)
        t_step = statistics.median(per_run)
        flat = np.concatenate([p.ravel() for p in model.params.values()])
        bcast = []
        for _ in range(steps):
            t0 = time.perf_counter()
            f = client.scatter(flat, broadcast=True, hash=False)
            bcast.append(time.perf_counter() - t0)
            del f
        t_bcast = statistics.median(bcast)
        # the scheduler's latency: one task that does nothing, submitted and gathered
        t_noop = timed(lambda: client.gather(client.submit(int, pure=False)), steps)[0]
    t0 = time.perf_counter()
    for i in range(steps):  # the same work in one process: two 1-row shards, one step
        for r in (2 * i, 2 * i + 1):
            model.zero_grad()
            (out, _), back = model.forward_train(x[:, r:r + 1], input_grad=False)
            back(clstm.mse_loss(out, y[:, r:r + 1])[1])
        opt.step()
    t_local = (time.perf_counter() - t0) / steps
    # compute to set against it: one thread's training step on 64 sequences of T=50
    clstm.set_num_threads(1)
    xb, yb = np.ones((50, 64, 128), np.float32), np.zeros((50, 64, 440), np.float32)

    def train_step():
        model.zero_grad()
        (out, _), back = model.forward_train(xb, input_grad=False)
        back(clstm.mse_loss(out, yb)[1])

    t_seq = timed(train_step, args.repeats)[0] / 64
    clstm.set_num_threads(None)
    mb = flat.nbytes / 1e6
    print(f"LSTM(128, 440): {n_params} float32 parameters ({mb:.1f} MB per copy), 2 workers")
    print(f"fit step, 1-row shards:            {1e3 * t_step:7.1f} ms")
    print(f"  the same step in one process:    {1e3 * t_local:7.1f} ms")
    print(f"  communication + scheduling:      {1e3 * (t_step - t_local):7.1f} ms")
    print(f"  of which the broadcast alone:    {1e3 * t_bcast:7.1f} ms")
    print(f"a no-op task's round trip:         {1e3 * t_noop:7.1f} ms")
    print(f"training compute, 1 thread, T=50:  {1e3 * t_seq:7.2f} ms per sequence")
    return t_step - t_local, t_bcast, t_seq


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds: small sizes")
    ap.add_argument("--comm", action="store_true",
                    help="only measure fit's per-step communication at ~1M parameters")
    ap.add_argument("--rows", type=int, default=1_000_000, help="sequences to score")
    ap.add_argument("--steps", type=int, default=50, help="time steps T")
    ap.add_argument("--input", type=int, default=8, help="features I")
    ap.add_argument("--hidden", type=int, default=64, help="LSTM hidden size")
    ap.add_argument("--chunk", type=int, default=20_000, help="sequences per chunk")
    ap.add_argument("--persist", action="store_true",
                    help="generate the input first and keep it in memory: time scoring only")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    ap.add_argument("--train-rows", type=int, default=8192, help="training sequences")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if args.comm:
        comm, bcast, t_seq = communication(args)
        print(f"RESULT comm_ms={1e3 * comm:.1f} broadcast_ms={1e3 * bcast:.1f} "
              f"train_ms_per_seq={1e3 * t_seq:.2f}")
        return
    if args.quick:
        args.rows, args.steps, args.hidden, args.chunk = 2000, 10, 16, 500
        args.repeats, args.train_rows, args.epochs = 1, 1024, 2
    matches, rows = inference(args)
    c, client = cluster(2, 1)
    with c, client:
        hist = training(args, client)
    best = min(rows[1:], key=lambda r: r[1])  # the fastest cluster configuration
    print(f"RESULT predict_matches_local={matches} rows={args.rows} "
          f"single_seq_per_s={args.rows / rows[0][1]:.0f} "
          f"cluster_seq_per_s={args.rows / best[1]:.0f} "
          f"first_loss={hist['loss'][0]:.5f} final_loss={hist['loss'][-1]:.5f}")


if __name__ == "__main__":
    main()
