"""Peak memory of a fit on a large float64 np.memmap (the issue's 1.2 GB case).

Writes a (rows, 64) float64 file (1.2 GB by default) to a temporary folder, then in a fresh
process fits an MLP on it for one shuffled epoch (float32 model) and reports the RSS before the
fit and its peak during the fit (VmHWM, reset just before), beside the file's size.

    python benchmarks/memmap_fit_memory.py [--gb 1.2] [--batch-size 2000] [--backend cython]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import sys, time, numpy as np, fastnn as fnn
path, rows, batch, backend = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
X = np.load(path, mmap_mode="r")
y = (np.arange(rows) * 7919) % 10
model = fnn.Sequential(fnn.layers.Dense(64, 128), fnn.layers.ReLU(), fnn.layers.Dense(128, 10),
                       backend=backend, seed=0)
trainer = fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.01))
trainer.fit(X[:4000], y[:4000], epochs=1, batch_size=batch, progress=False)
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
start = time.perf_counter()
trainer.fit(X, y, epochs=1, batch_size=batch, progress=False)
print(base, status("VmHWM"), X.nbytes, time.perf_counter() - start)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.2)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--backend", default="cython")
    args = ap.parse_args(argv)
    rows = int(args.gb * 1e9 / (64 * 8))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, 64))
        step = 200_000
        for lo in range(0, rows, step):
            mm[lo:lo + step] = np.random.default_rng(lo).random((min(step, rows - lo), 64))
        mm.flush()
        del mm
        out = subprocess.run([sys.executable, "-c", CHILD, path, str(rows), str(args.batch_size), args.backend],
                             capture_output=True, text=True, check=True)
    base, peak, size, secs = out.stdout.split()
    base, peak, size = int(base), int(peak), int(size)
    print(f"float64 memmap of {size / 1e9:.2f} GB ({rows} x 64), one shuffled epoch, batch {args.batch_size}, "
          f"{args.backend}: RSS {base / 1e6:.0f} MB before fit, peak {peak / 1e6:.0f} MB during it "
          f"({float(secs):.1f} s)")
    return base, peak, size


if __name__ == "__main__":
    main(sys.argv[1:])
