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
    assert first[0].startswith("# Measures: clstm's LSTM layer, inference and a training step")
    assert first[1] == "# Against: clstm's NumPy reference (clstm.reference)."
    assert first[2].startswith("# Not compared: PyTorch and ONNX Runtime")
    assert first[2].endswith("To add the peers: pip install torch==2.13.0 onnxruntime onnx")
    assert first[3].startswith("# Ratios: t/clstm above 1 means clstm is faster")
    # the ratio column says what it is, in the cell section too
    assert "# t/clstm = this row's median time / clstm's" in out.stdout
    assert "# t/LSTMCell = this row's time per step / clstm.LSTMCell's" in out.stdout
    # and whether clstm won
    assert "# verdict: clstm was faster than reference in " in out.stdout
    for line in ("grid     inference vs reference", "grid     train     vs reference",
                 "float64  train     vs reference", "lengths  inference vs reference",
                 "bidirectional train     vs reference"):
        assert line in out.stdout
    results = json.loads((tmp_path / "out.json").read_text())["results"]
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
