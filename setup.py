"""Build the compiled core from src/clstm/*.pyx into the `clstm` package.

OpenMP is used when the compiler can build and run a tiny OpenMP program; otherwise the
extension is built serial with a warning.  Environment switches:

* ``CLSTM_NO_OPENMP=1``       build serial even if OpenMP works
* ``CLSTM_FAIL_NO_OPENMP=1``  fail the build instead of falling back to serial
* ``CLSTM_CYTHON_DEBUG=1``    turn bounds/initialisation checks back on (hunting crashes)
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n > 0);
        return 0;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openmp_flag(compiler):
    return ["/openmp"] if compiler.compiler_type == "msvc" else ["-fopenmp"]


def _openmp_works(compiler, flags):
    """Compile, link and run a tiny OpenMP program with the extension's compiler."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        exe = os.path.join(tmp, "omp_test")
        compiler.link_executable(objs, exe, extra_postargs=flags)
        out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        return out.returncode == 0 and out.stdout.strip() == "1"
    except Exception:  # any compile, link or run failure means "no OpenMP"
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _accepted_flags(compiler, flags):
    """The flags this compiler accepts (each tried alone on an empty translation unit)."""
    ok = []
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "flag_test.c")
        with open(src, "w") as f:
            f.write("int clstm_flag_test;\n")
        for flag in flags:
            try:
                compiler.compile([src], output_dir=tmp, extra_postargs=["-Werror", flag])
                ok.append(flag)
            except Exception:
                pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ok


# -O3 for vectorised gate loops; -fno-trapping-math lets the float32 activations' selects
# vectorise; GCC gives up vectorising the backward gate loop (eight arrays) below 40 runtime
# alias checks. No -march=native: the build must run on any CPU of its architecture.
OPTIMISATION_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math",
                      "--param=vect-max-version-for-alias-checks=40"]


class BuildExt(build_ext):
    def build_extensions(self):
        flags = _openmp_flag(self.compiler)
        use_openmp = not _env_flag("CLSTM_NO_OPENMP") and _openmp_works(self.compiler, flags)
        if not use_openmp:
            msg = "clstm: building WITHOUT OpenMP; the kernels will run on one thread"
            if _env_flag("CLSTM_FAIL_NO_OPENMP"):
                raise RuntimeError(msg + " (CLSTM_FAIL_NO_OPENMP is set)")
            warnings.warn(msg)
            print("WARNING: " + msg, file=sys.stderr)
        # setuptools reuses built objects that look newer than their sources; a build in
        # the other OpenMP mode (the serial fallback after an OpenMP build) must not.
        mode = "openmp" if use_openmp else "serial"
        marker = os.path.join(self.build_temp, "clstm-build-mode")
        if not os.path.exists(marker) or open(marker).read() != mode:
            self.force = True
        os.makedirs(self.build_temp, exist_ok=True)
        with open(marker, "w") as f:
            f.write(mode)
        optimisation = ([] if self.compiler.compiler_type == "msvc"
                        else _accepted_flags(self.compiler, OPTIMISATION_FLAGS))
        for ext in self.extensions:
            ext.extra_compile_args += optimisation
            if use_openmp:
                ext.extra_compile_args += flags
                ext.extra_link_args += flags
        super().build_extensions()


debug = _env_flag("CLSTM_CYTHON_DEBUG")
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}

# A change to any declaration or C header rebuilds every module (they are few and small).
DEPENDS = sorted(glob(os.path.join("src", "clstm", "*.pxd"))
                 + glob(os.path.join("src", "clstm", "csrc", "*.h")))

extensions = [
    Extension("clstm." + os.path.splitext(os.path.basename(path))[0], [path],
              depends=DEPENDS,
              include_dirs=[numpy.get_include(), os.path.join("src", "clstm")],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for path in sorted(glob(os.path.join("src", "clstm", "*.pyx")))
]

setup(
    ext_modules=cythonize(extensions, include_path=["src"], compiler_directives=directives),
    cmdclass={"build_ext": BuildExt},
)
