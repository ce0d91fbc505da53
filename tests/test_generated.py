"""Generated code stays generated: every file fastnn._kernels.generate writes equals,
byte for byte, what its generator makes now (a hand edit, or a table change
without regenerating, fails here), and the generated pieces agree with the tile
table they come from."""
import os
import re

import numpy as np
import pytest

from fastnn._kernels import generate, tiles

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "fastnn", "_kernels")


@pytest.mark.parametrize("rel", sorted(generate.sources()))
def test_checked_in_file_is_what_its_generator_makes(rel):
    with open(os.path.join(KERNELS, rel), "rb") as f:
        checked_in = f.read()
    made = generate.sources()[rel].encode()
    assert checked_in == made, (f"{rel} differs from its generator's output: edit the generator "
                                f"(or fastnn/_kernels/tiles.py) and run `{generate.COMMAND}`")


@pytest.mark.parametrize("rel", sorted(generate.sources()))
def test_generated_file_says_so_at_the_top(rel):
    head = "\n".join(generate.sources()[rel].splitlines()[:5])
    assert "GENERATED" in head and generate.COMMAND in head


def test_generate_writes_and_check_reports(tmp_path):
    """The command's own check: a fresh tree is clean, a hand-edited file is stale."""
    for rel, text in generate.sources().items():
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert generate.stale(str(tmp_path)) == []
    rel = os.path.join("numba_cpu", "_micro.py")
    (tmp_path / rel).write_text((tmp_path / rel).read_text().replace("c0_0 += a0 * b0", "c0_0 += a0"))
    assert generate.stale(str(tmp_path)) == [rel]


def test_numba_microkernels_follow_the_table():
    from fastnn._kernels.numba_cpu import _micro, gemm
    for dtype, tag in (("float32", "f32"), ("float64", "f64")):
        t = tiles.tile("numba", dtype)
        assert (getattr(_micro, "MR_" + tag), getattr(_micro, "NR_" + tag)) == (t.mr, t.nr)
        assert gemm.BLOCKS[np.dtype(dtype)] == (t.mc, t.kc, t.nc)
        # the kernel holds exactly MR x NR accumulators
        src = generate.sources()[os.path.join("numba_cpu", "_micro.py")]
        body = src[src.index(f"def micro_{tag}("):]
        body = body[:body.index("\n\n\n")] if "\n\n\n" in body else body
        accs = set(re.findall(r"\bc(\d+)_(\d+)\b", body))
        assert len(accs) == t.mr * t.nr


def test_cython_header_follows_the_table():
    cy = pytest.importorskip("fastnn._kernels.cython")
    for isa in cy.built_isas():
        got = cy.kernels_for(isa)._get_blocking()
        for dtype in ("float32", "float64"):
            t = tiles.tile("cython-" + isa, dtype)
            assert got["tile_" + dtype] == (t.mr, t.nr)
            assert got[dtype] == (t.mc, t.kc, t.nc)
        assert got["direct_b_tiles"] == tiles.DIRECT_B_TILES["cython-" + isa]


@pytest.mark.parametrize("engine", sorted(tiles.TILES))
def test_table_is_consistent(engine):
    for dtype, t in tiles.TILES[engine].items():
        assert t.mc % t.mr == 0 and t.nc % t.nr == 0, (engine, dtype, t)
        assert min(t) >= 1
