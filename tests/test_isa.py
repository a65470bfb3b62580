"""Every multiply kernel on this machine: the dispatcher picks one per instruction set
(AVX-512, AVX2+FMA, base), and CLSTM_ISA=v3 / base forces a lower one, so the kernel tests
run again in a subprocess with each (a machine only ever runs its best kernel otherwise)."""
import os
import pathlib
import subprocess
import sys

import pytest

from clstm import _runtime

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.mark.parametrize("isa", ["v3", "base"])
def test_kernel_tests_pass_on_every_kernel(isa, tmp_path):
    env = dict(os.environ, CLSTM_ISA=isa)
    probe = subprocess.run([sys.executable, "-c", "from clstm import _runtime; "
                            "print(_runtime.kernel_isa())"], env=env, capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.strip()
    best = _runtime.kernel_isa()
    expected = {"base": "base", "v3": "x86-64-v3" if best != "base" else "base"}[isa]
    assert probe == expected, (probe, best)
    if probe == best:
        pytest.skip(f"this build has no kernel below {best} to force")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          str(TESTS / "test_kernels.py")], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)  # not the source tree
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
