"""Smoke test of the benchmark script: every section runs, every implementation's output
agrees with clstm's, and the summary, JSON, Markdown and plot are written. No timing
assertions: speed is measured, not tested."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from clstm import reference

pytestmark = pytest.mark.slow

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_lstm.py"


def test_quick_benchmark_runs_every_section(tmp_path):
    env = dict(os.environ, CLSTM_BENCH_NO_TORCH="1", CLSTM_BENCH_NO_ORT="1")
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "3",
                          "--json", "out.json", "--markdown", "out.md", "--plot", "out.png"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MISMATCH" not in out.stdout
    # the first lines: what is measured, against what, how to add the missing peers
    first = out.stdout.splitlines()[:4]
    assert first[0].startswith("# Measures: clstm's LSTM layer, inference (also by its frozen "
                               "snapshot, \"frozen\") and a training step")
    assert first[1] == ("# Against: clstm's NumPy reference (clstm.reference), a hoisted-GEMM "
                        "NumPy LSTM on NumPy's BLAS (numpy; one direction, equal lengths).")
    assert first[2].startswith("# Not compared: PyTorch and ONNX Runtime")
    assert first[2].endswith("To add the peers: pip install torch==2.13.0 onnxruntime onnx")
    assert first[3].startswith("# Ratios: t/clstm above 1 means clstm is faster")
    # the ratio column says what it is, in the cell section too
    assert "# t/clstm = this row's median time / clstm's" in out.stdout
    assert "# t/LSTMCell = this row's time per step / clstm.LSTMCell's" in out.stdout
    # and whether clstm won
    assert "# verdict: clstm was faster than reference in " in out.stdout
    for line in ("grid     inference vs numpy", "grid     inference vs reference",
                 "grid     train     vs reference",
                 "float64  train     vs reference", "lengths  inference vs reference",
                 "bidirectional train     vs reference"):
        assert line in out.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["args"]["model"] == "lstm"  # the default
    results = saved["results"]
    # the hoisted NumPy LSTM ran where it can (one direction, equal lengths), and agreed
    grid = [r for r in results if r["section"] == "grid"]
    assert {r["mode"] for r in grid if r["impl"] == "numpy"} == {"inference", "train"}
    assert not [r for r in results if r["impl"] == "numpy" and r["section"] == "lengths"]
    sections = {r["section"] for r in results}
    assert sections == {"grid", "float64", "lengths", "bidirectional", "cell", "threads",
                        "memory", "sgemm"}
    # the memory section measured something, and the output itself is part of the peak
    memory = [r for r in results if r["section"] == "memory"]
    assert memory and all(r["peak_mib"] >= 0.5 * r["output_mib"] for r in memory)
    markdown = (tmp_path / "out.md").read_text()
    assert "**grid**" in markdown and "| T, B, I, H |" in markdown
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in out.stdout
    else:
        assert (tmp_path / "out.png").stat().st_size > 0


def test_timing_mode_is_recorded(tmp_path):
    env = dict(os.environ, CLSTM_BENCH_NO_TORCH="1", CLSTM_BENCH_NO_ORT="1")
    for timing in ("cold", "warm"):
        out = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "3",
                              "--sections", "cell", "--timing", timing, "--json", "t.json"],
                             capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"timing={timing}" in out.stdout
        assert json.loads((tmp_path / "t.json").read_text())["machine"]["timing"] == timing


def test_variants_benchmark_runs(tmp_path):
    """bench/bench_variants.py --quick: every candidate of every mode prints a row."""
    script = BENCH.parent / "bench_variants.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 1 |")]
    names = {line.split("|")[4].strip() for line in rows}
    assert {"plain", "peephole", "recurrent_dropout=0.25"} <= names
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        assert "onnxruntime peephole" in names


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_input_grad_benchmark_runs(tmp_path, model):
    """bench/bench_input_grad.py: a row per implementation and mode (it asserts that each
    peer's dx or dh0 matches clstm's)."""
    script = BENCH.parent / "bench_input_grad.py"
    out = subprocess.run([sys.executable, str(script), "--sizes", "6,3,8,8", "--threads", "1",
                          "--repeats", "3", "--model", model],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {tuple(line.split()[1:3]) for line in out.stdout.splitlines()
            if line.startswith("6,3,8,8")}
    impls = ["clstm"] + (["torch"] if importlib.util.find_spec("torch") else [])
    assert rows == {(impl, mode) for impl in impls for mode in ("train", "train_no_dx")}


def test_quick_gru_benchmark_checks_every_peer(tmp_path):
    """--model gru: every section but cell runs on clstm.GRU, against whichever of
    torch.nn.GRU and ONNX Runtime's GRU operator are installed (here they are not disabled:
    their outputs must agree with clstm's) and the NumPy reference once it has a GRU."""
    has_torch = importlib.util.find_spec("torch") is not None
    has_ort = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    has_reference = hasattr(reference, "gru_forward") and hasattr(reference, "gru_backward")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLSTM_BENCH_NO_TORCH", "CLSTM_BENCH_NO_ORT")}
    out = subprocess.run([sys.executable, str(BENCH), "--model", "gru", "--quick",
                          "--repeats", "3", "--json", "out.json", "--markdown", "out.md"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MISMATCH" not in out.stdout
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# Measures: clstm's GRU layer, inference (also by its frozen "
                               "snapshot, \"frozen\") and a training step")
    against = lines[1]
    assert against.startswith("# Against: ")
    assert ("torch.nn.GRU" in against) == has_torch
    assert ("its GRU operator, linear_before_reset=1" in against) == has_ort
    assert ("clstm's NumPy reference" in against) == has_reference
    if not has_reference:  # said, first and last
        assert ("# Not compared: clstm's NumPy reference (clstm.reference has no "
                "gru_forward") in out.stdout
        assert "# (not compared with clstm's NumPy reference: " in out.stdout
    # the cell section says why it is skipped
    assert "# cell: times clstm.LSTMCell" in out.stdout
    assert "skipped for --model gru" in out.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["args"]["model"] == "gru"
    results = saved["results"]
    assert {r["section"] for r in results} == {"grid", "float64", "lengths", "bidirectional",
                                               "threads", "memory", "sgemm"}
    # every available peer ran and agreed with clstm (ONNX Runtime: float32 inference only)
    expected = {"clstm"} | {name for name, found in (("torch", has_torch),
                                                      ("onnxruntime", has_ort),
                                                      ("reference", has_reference)) if found}
    for section in ("grid", "lengths", "bidirectional"):
        rows = [r for r in results if r["section"] == section]
        assert {r["impl"] for r in rows if r["mode"] == "inference"} == expected | {"frozen"}
        assert {r["impl"] for r in rows if r["mode"] == "train"} == expected - {"onnxruntime"}
        assert all(r["max_rel_diff"] <= 1e-3 for r in rows)
    assert all(r["max_rel_diff"] <= 1e-9 for r in results if r["section"] == "float64")
    # GFLOP/s counts the GRU's 3 gate blocks: 6 (inference) and 18 (train) x T*B*H*(I+H)
    row = next(r for r in results if r["section"] == "grid" and r["impl"] == "clstm")
    T, B, I, H = map(int, row["size"].split(","))
    flops = {"inference": 6, "train": 18}[row["mode"]] * T * B * H * (I + H)
    assert row["gflops"] == pytest.approx(flops / row["median_ms"] / 1e6, rel=1e-6)
    markdown = (tmp_path / "out.md").read_text()
    assert "**grid** (GRU)" in markdown and "| T, B, I, H |" in markdown


def test_gru_without_peers_says_so(tmp_path):
    env = dict(os.environ, CLSTM_BENCH_NO_TORCH="1", CLSTM_BENCH_NO_ORT="1")
    out = subprocess.run([sys.executable, str(BENCH), "--model", "gru", "--quick",
                          "--repeats", "3", "--sections", "grid,cell"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# Measures: clstm's GRU layer")
    if not hasattr(reference, "gru_forward"):
        assert lines[1] == ("# Against: nothing (no peer available: clstm's timings "
                            "alone).")
    assert lines[2].startswith("# Not compared: PyTorch and ONNX Runtime")
    assert "skipped for --model gru" in out.stdout
