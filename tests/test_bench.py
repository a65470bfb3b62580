"""Smoke test of the benchmark script: it runs, checks every implementation's output against
clstm's, and prints its summary. No timing assertions: speed is measured, not tested."""
import os
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_lstm.py"


def test_quick_benchmark_runs_and_outputs_agree(tmp_path):
    env = dict(os.environ, CLSTM_BENCH_NO_TORCH="1", CLSTM_BENCH_NO_ORT="1")
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "3", "--json",
                          str(tmp_path / "out.json")], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "MISMATCH" not in out.stdout
    assert "inference vs reference" in out.stdout and "train     vs reference" in out.stdout
    assert (tmp_path / "out.json").stat().st_size > 0
