"""Writes every generated source file of fastnn from its generator: python -m fastnn._kernels.generate

Python cannot spell a register-tile microkernel without naming every
accumulator, and the Cython header's tile sizes must match the table the Numba
side reads, so these files are generated, never edited by hand:

  numba_cpu/_micro.py   GEMM microkernels          numba_cpu/_gen_micro.py + tiles.py
  numba_cpu/_lanes.py   16-lane row products (RNN)  numba_cpu/_gen_lanes.py
  cython/fnn_tiles.h    Cython GEMM tile sizes      tiles.py (c_header)

`--check` writes nothing and exits 1 if a file differs from what its generator
makes (tests/test_generated.py does the same comparison).
"""
import os
import sys

COMMAND = "python -m fastnn._kernels.generate"
HERE = os.path.dirname(os.path.abspath(__file__))


def _load(rel):
    """A generator module, loaded from its file: importing it as
    fastnn._kernels.numba_cpu.X would first import the package, which imports
    the very files being generated."""
    import importlib.util
    name = "_fastnn_gen_" + os.path.basename(rel)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sources():
    """{path relative to fastnn/_kernels: the text its generator makes now}."""
    from . import tiles
    micro = _load(os.path.join("numba_cpu", "_gen_micro.py"))
    lanes = _load(os.path.join("numba_cpu", "_gen_lanes.py"))
    return {
        os.path.join("numba_cpu", "_micro.py"): micro.source(COMMAND, tiles.TILES["numba"]),
        os.path.join("numba_cpu", "_lanes.py"): lanes.source(COMMAND),
        os.path.join("cython", "fnn_tiles.h"): tiles.c_header(COMMAND),
    }


def stale(root=HERE):
    """Relative paths under root whose content differs from its generator's."""
    out = []
    for rel, text in sources().items():
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as f:
                same = f.read() == text.encode()
        except FileNotFoundError:
            same = False
        if not same:
            out.append(rel)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = stale()
        for rel in bad:
            print("stale:", rel, f"(run `{COMMAND}`)")
        return 1 if bad else 0
    for rel, text in sources().items():
        path = os.path.join(HERE, rel)
        with open(path, "wb") as f:
            f.write(text.encode())
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
