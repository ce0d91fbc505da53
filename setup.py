"""Build the Cython kernels of fastnn: the same kernel source compiled three times.

fastnn/_kernels/cython/_{avx512,avx2,generic}.pyx each include kernels.pxi;
they differ only in the ISA flags given here, and fastnn._kernels.cython picks
the best one the running CPU supports at import time. So a wheel built here
runs on any x86-64 CPU (and the generic module anywhere else).

Environment knobs (build time):
  FASTNN_NATIVE=1     also compile the avx512/avx2 modules with -march=native
                      (tuned for, and maybe only runnable on, this machine's CPU)
  FASTNN_NO_OPENMP=1  build without OpenMP even if the compiler has it
"""
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

PKG = "fastnn._kernels.cython"
SRC = os.path.join("fastnn", "_kernels", "cython")
MSVC = sys.platform == "win32" and "GCC" not in sys.version


def _compiler_cmd():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _compiles(flags, code="int main(void){return 0;}\n", link_flags=()):
    """Whether the C compiler accepts flags on a tiny program."""
    if MSVC:
        return False
    cc = _compiler_cmd()
    if shutil.which(cc[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write(code)
        cmd = cc + list(flags) + [src, "-o", os.path.join(tmp, "t.out")] + list(link_flags)
        try:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return r.returncode == 0


OMP_TEST = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n<0;}\n"


def _openmp_flags():
    if os.environ.get("FASTNN_NO_OPENMP"):
        return [], []
    if MSVC:
        return ["/openmp"], []
    if _compiles(["-fopenmp"], OMP_TEST, ["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    print("fastnn setup: the C compiler does not accept -fopenmp; building single-threaded kernels")
    return [], []


X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

if MSVC:
    BASE = ["/O2"]
    ISAS = {"avx512": ["/arch:AVX512"], "avx2": ["/arch:AVX2"], "generic": []}
else:
    BASE = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function",
            "-Wno-unreachable-code", "-Wno-maybe-uninitialized"]
    ISAS = {
        "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma",
                   "-mprefer-vector-width=512"],
        "avx2": ["-mavx2", "-mfma"],
        "generic": [],
    }
    # flags this compiler does not know are dropped (older compilers)
    BASE = [f for f in BASE if _compiles([f, "-Werror"] if f.startswith("-Wno") else [f])]
    # opt-in: tune the SIMD modules for this CPU (the generic module stays portable)
    if os.environ.get("FASTNN_NATIVE") == "1" and _compiles(["-march=native"]):
        ISAS["avx512"] = ["-march=native"] + ISAS["avx512"]
        ISAS["avx2"] = ["-march=native"] + ISAS["avx2"] + ["-mno-avx512f"]

OMP_COMPILE, OMP_LINK = _openmp_flags()

extensions = []
for isa, isa_flags in ISAS.items():
    if isa != "generic" and not X86:
        continue
    if isa_flags and not MSVC and not _compiles(isa_flags):
        print(f"fastnn setup: the C compiler cannot target {isa}; skipping that kernel module")
        continue
    extensions.append(Extension(
        f"{PKG}._{isa}",
        [os.path.join(SRC, f"_{isa}.pyx")],
        include_dirs=[numpy.get_include(), SRC],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=BASE + isa_flags + OMP_COMPILE,
        extra_link_args=OMP_LINK,
    ))

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3, "boundscheck": False, "wraparound": False,
            "cdivision": True, "initializedcheck": False, "nonecheck": False,
        },
        quiet=True,
    ),
)
