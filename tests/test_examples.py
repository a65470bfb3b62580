"""The worked examples in examples/: each runs with --quick in a subprocess (in a temporary
directory, against the installed clstm) and its claims are checked from the RESULT line it
prints. The examples live in the repository, not in the installed package."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # seconds per run; --quick runs take a few


def run(name, *args, cwd, block=(), expect_rc=0):
    """Run ``examples/{name}.py --quick *args`` in ``cwd``; return (stdout, RESULT fields).
    ``block`` names top-level modules made unimportable (a stub raising ImportError put
    first on PYTHONPATH), to exercise the paths for a machine without them."""
    env = dict(os.environ)
    if block:
        stubs = cwd / "_blocked"
        stubs.mkdir(exist_ok=True)
        for module in block:
            (stubs / f"{module}.py").write_text(f"raise ImportError('{module} blocked by the "
                                                f"test')\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs),
                                                          env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    out = proc.stdout
    assert proc.returncode == expect_rc, \
        f"{name} exited {proc.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n" \
        f"{proc.stderr[-3000:]}"
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert results, f"{name} printed no RESULT line:\n{out[-3000:]}"
    fields = dict(item.split("=", 1) for item in results[-1].split()[1:])
    return out, fields


def test_examples_exist():
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    assert {"gradient_check", "sine_forecast", "char_lm", "from_pytorch",
            "attention_classifier", "peephole_onnx"} <= names


def test_gradient_check_passes(tmp_path):
    out, r = run("gradient_check", cwd=tmp_path)
    assert r["gradient_check"] == "PASS"
    assert float(r["worst_rel_error"]) < 1e-6
    for name in ("weight_ih_l1_reverse", "bias_hh_l0", "x ", "h0 ", "c0 "):
        assert name in out  # one row per parameter and per input


def test_gradient_check_exits_nonzero_when_over_tolerance(tmp_path):
    # No finite difference agrees to 1e-14: the check must say FAIL and exit 1.
    _, r = run("gradient_check", "--tol", "1e-14", cwd=tmp_path, expect_rc=1)
    assert r["gradient_check"] == "FAIL"


def test_sine_forecast_beats_naive_baseline(tmp_path):
    out, r = run("sine_forecast", cwd=tmp_path)
    test_mse, naive_mse = float(r["test_mse"]), float(r["naive_mse"])
    noise_var = float(r["noise_var"])
    assert r["sine_forecast"] == "PASS"
    assert test_mse < 0.7 * naive_mse
    assert noise_var < test_mse < 2.5 * noise_var  # near the irreducible error
    assert int(r["epochs"]) == 3 and float(r["val_loss"]) < 2.5 * noise_var  # fit's history
    png = tmp_path / "sine_forecast.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "skipping the plot" in out and not png.exists()


def test_sine_forecast_without_matplotlib(tmp_path):
    out, r = run("sine_forecast", "--out", "plot.png", cwd=tmp_path, block=["matplotlib"])
    assert "matplotlib is not installed: skipping the plot" in out
    assert not (tmp_path / "plot.png").exists()
    assert float(r["test_mse"]) < float(r["naive_mse"])


def test_attention_classifier_accuracy_and_attention_on_the_pattern(tmp_path):
    out, r = run("attention_classifier", cwd=tmp_path)
    assert r["attention_classifier"] == "PASS"
    assert float(r["accuracy"]) > 0.9 > float(r["chance"])
    assert float(r["peak_on_pattern"]) > 0.8
    assert float(r["attention_mass"]) > 2 * float(r["uniform_mass"])
    png = tmp_path / "attention_classifier.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "skipping the plot" in out and not png.exists()


def test_char_lm_beats_unigram_entropy(tmp_path):
    out, r = run("char_lm", cwd=tmp_path)
    unigram = float(r["unigram_entropy"])
    assert r["char_lm"] == "PASS" and r["unit"] == "nats"
    assert 2.5 < unigram < 4.7  # ~3.2 nats for English text; log(V) at most
    assert float(r["final_loss"]) < unigram - 0.5
    assert float(r["val_loss"]) < unigram - 0.4
    assert "--- sample" in out and "unigram entropy" in out


def test_from_pytorch_without_torch(tmp_path):
    out, r = run("from_pytorch", cwd=tmp_path, block=["torch"])
    assert r["from_pytorch"] == "SKIPPED"
    assert "PyTorch is not installed" in out


def test_from_pytorch_agrees_with_torch(tmp_path):
    pytest.importorskip("torch")
    out, r = run("from_pytorch", cwd=tmp_path)
    assert r["from_pytorch"] == "PASS"
    assert float(r["max_abs_diff"]) < 1e-4 and float(r["state_max_abs_diff"]) < 1e-4
    assert float(r["torch_ms"]) > 0 and float(r["clstm_ms"]) > 0


def test_peephole_onnx_trains_and_onnx_runtime_agrees(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out, r = run("peephole_onnx", cwd=tmp_path)
    assert r["peephole_onnx"] == "PASS"
    assert float(r["mse_after"]) < 0.5 * float(r["mse_before"])
    assert float(r["ort_max_abs_diff"]) < 2e-5 and float(r["reload_max_abs_diff"]) == 0


def test_peephole_onnx_without_onnxruntime(tmp_path):
    out, r = run("peephole_onnx", cwd=tmp_path, block=["onnxruntime"])
    assert r["peephole_onnx"] == "SKIPPED" and "not installed" in out
    assert float(r["mse_after"]) < float(r["mse_before"])
