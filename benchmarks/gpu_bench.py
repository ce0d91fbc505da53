"""GPU benchmark: fastnn's numba.cuda float32 GEMM vs cuBLAS, and an MLP epoch on cuda vs CPU vs torch.

    python benchmarks/gpu_bench.py --out results.json      # on a machine with an NVIDIA GPU
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --smoke --out smoke.json

GEMM: C = A @ B, square n x n float32 at n = 1024, 2048, 4096, 8192, inputs
already on the GPU; GFLOP/s = 2 n^3 / best time of --repeats runs. cuBLAS is
reached through CuPy (cupy.matmul) or else PyTorch (torch.matmul, TF32 off so
that both sides do full float32 math); with neither, that column is skipped.

MLP: Dense(784, 256)-ReLU-Dense(256, 128)-ReLU-Dense(128, 10), cross-entropy, SGD
with momentum, one epoch over 60,000 synthetic samples at each batch size, after
one warm-up epoch (JIT compilation): fastnn's cuda backend (weights, gradients
and optimizer state stay on the GPU; each batch is copied in), fastnn's best CPU
backend (the default: cython, else numba, else numpy) and, if present, PyTorch on
the GPU (data resident on the GPU, the same model and optimizer).

--smoke runs everything at tiny sizes, which is what the CUDA simulator can do:
it checks that the script works, not how fast anything is.
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

try:
    import fastnn as fnn
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    import fastnn as fnn


def _best_time(fn, repeats, sync):
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


# ------------------------------------------------------------------- cuBLAS


def _cublas():
    """(name, matmul(a_host, b_host) -> timer) for CuPy or PyTorch on the GPU, or None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            def make(a, b):
                da, db = cupy.asarray(a), cupy.asarray(b)
                return lambda: cupy.matmul(da, db), cupy.cuda.Device().synchronize
            return "cupy", make
    except Exception:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False

            def make(a, b):
                da, db = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
                return lambda: torch.matmul(da, db), torch.cuda.synchronize
            return "torch", make
    except Exception:
        pass
    return None


def bench_gemm(sizes, repeats):
    from numba import cuda
    from fastnn._kernels.cuda import _device as dev, gemm

    cublas = _cublas()
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        da, db = dev.to_device(a), dev.to_device(b)
        flops = 2.0 * n ** 3
        t = _best_time(lambda: gemm._gemm(da, db, False, False), repeats, cuda.synchronize)
        check = dev.to_host(gemm._gemm(da, db, False, False))
        err = float(np.max(np.abs(check - a @ b)) / (np.max(np.abs(a @ b)) or 1))
        row = {"n": n, "tile": list(gemm.choose_config(n, n)), "fastnn_s": t,
               "fastnn_gflops": flops / t / 1e9, "max_rel_err": err,
               "cublas_via": None, "cublas_s": None, "cublas_gflops": None, "ratio": None}
        if cublas is not None:
            name, make = cublas
            fn, sync = make(a, b)
            tc = _best_time(fn, repeats, sync)
            row.update(cublas_via=name, cublas_s=tc, cublas_gflops=flops / tc / 1e9, ratio=tc / t)
        rows.append(row)
        print(f"  gemm n={n}: {row['fastnn_gflops']:.4g} GFLOP/s"
              + (f", cuBLAS {row['cublas_gflops']:.4g} ({row['ratio']:.2f}x)" if cublas else ""),
              flush=True)
    return rows


# ---------------------------------------------------------------------- MLP


def _data(samples, dims, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, dims[0])).astype(np.float32)
    y = rng.integers(0, dims[-1], samples)
    return X, y


def _fastnn_epoch(backend, dims, X, y, batch):
    from fastnn.layers import Dense, ReLU
    layers = []
    for i, (fin, fout) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(Dense(fin, fout))
        if i < len(dims) - 2:
            layers.append(ReLU())
    model = fnn.Sequential(*layers, backend=backend, dtype="float32", seed=0)
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.05, momentum=0.9))
    trainer.fit(X, y, epochs=1, batch_size=batch, progress=False)          # warm-up / JIT
    start = time.perf_counter()
    history = trainer.fit(X, y, epochs=1, batch_size=batch, progress=False)
    return time.perf_counter() - start, history.history["loss"][-1]


def _torch_epoch(dims, X, y, batch):
    import torch
    layers = []
    for i, (fin, fout) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(torch.nn.Linear(fin, fout))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xd, yd = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)

    def epoch():
        order = torch.randperm(len(Xd), device="cuda", generator=gen)
        total = torch.zeros((), device="cuda")
        for lo in range(0, len(Xd), batch):
            idx = order[lo:lo + batch]
            out = model(Xd[idx])
            loss = loss_fn(out, yd[idx])
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        return float(total) / len(Xd)

    epoch()
    torch.cuda.synchronize()
    start = time.perf_counter()
    loss = epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - start, loss


def _torch_gpu():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def bench_mlp(dims, samples, batches, cuda_backend):
    X, y = _data(samples, dims)
    cpu = fnn.default_backend()
    rows = []
    for batch in batches:
        t_gpu, loss_gpu = _fastnn_epoch(cuda_backend, dims, X, y, batch)
        t_cpu, loss_cpu = _fastnn_epoch(cpu, dims, X, y, batch)
        row = {"batch": batch, "cuda_s": t_gpu, "cuda_loss": loss_gpu,
               "cpu_backend": cpu, "cpu_s": t_cpu, "cpu_loss": loss_cpu,
               "torch_cuda_s": None, "torch_loss": None}
        if _torch_gpu():
            row["torch_cuda_s"], row["torch_loss"] = _torch_epoch(dims, X, y, batch)
        rows.append(row)
        print(f"  mlp batch={batch}: cuda {t_gpu:.3f}s, {cpu} {t_cpu:.3f}s"
              + (f", torch {row['torch_cuda_s']:.3f}s" if row["torch_cuda_s"] else ""), flush=True)
    return rows


# -------------------------------------------------------------------- main


def _device_info():
    from numba import cuda
    from fastnn._kernels.cuda import _device as dev
    if dev.SIMULATED:
        return {"name": "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", "simulated": True}
    d = cuda.get_current_device()
    name = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
    return {"name": name, "simulated": False, "compute_capability": list(d.compute_capability),
            "sms": int(d.MULTIPROCESSOR_COUNT)}


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_tables(result):
    print(f"\nDevice: {result['device']['name']}")
    print("\nfloat32 GEMM (n x n @ n x n)")
    print(f"{'n':>6} {'fastnn GFLOP/s':>15} {'cuBLAS GFLOP/s':>15} {'fastnn/cuBLAS':>14}  tile")
    for r in result["gemm"]:
        print(f"{r['n']:>6} {r['fastnn_gflops']:>15.4g} {_fmt(r['cublas_gflops'], '>15.4g'):>15} "
              f"{_fmt(r['ratio'], '>14.2f'):>14}  {r['tile']}")
    m = result["mlp"]
    print(f"\nMLP epoch {'-'.join(map(str, m['dims']))}, {m['samples']} samples (seconds)")
    print(f"{'batch':>6} {'fastnn cuda':>12} {'fastnn ' + (m['rows'][0]['cpu_backend'] if m['rows'] else 'cpu'):>14} "
          f"{'torch cuda':>11}")
    for r in m["rows"]:
        print(f"{r['batch']:>6} {r['cuda_s']:>12.3f} {r['cpu_s']:>14.3f} {_fmt(r['torch_cuda_s'], '>11.3f'):>11}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_bench.json", help="JSON file for the results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (e.g. under NUMBA_ENABLE_CUDASIM=1)")
    parser.add_argument("--sizes", type=int, nargs="+", help="GEMM sizes n (default 1024 2048 4096 8192)")
    parser.add_argument("--batches", type=int, nargs="+", help="MLP batch sizes (default 256 1024 4096)")
    parser.add_argument("--samples", type=int, help="MLP samples (default 60000)")
    parser.add_argument("--repeats", type=int, help="GEMM timing runs, best taken (default 5)")
    args = parser.parse_args(argv)

    from fastnn._kernels import cuda as cuda_kernels
    ok, why = cuda_kernels.available()
    if not ok:
        parser.exit(2, f"gpu_bench: the cuda backend cannot run here: {why}\n")
    if "cuda" in fnn.backends():
        cuda_backend = fnn.get_backend("cuda")
    else:  # the simulator switched on after fnn.backends() looked
        cuda_backend = fnn.backend.Backend("cuda", cuda_kernels)

    if args.smoke:
        sizes, batches, samples, repeats, dims = [16, 40], [48, 96], 96, 1, (24, 16, 8, 10)
    else:
        sizes, batches, samples, repeats, dims = [1024, 2048, 4096, 8192], [256, 1024, 4096], 60000, 5, (784, 256, 128, 10)
    sizes = args.sizes or sizes
    batches = args.batches or batches
    samples = args.samples or samples
    repeats = args.repeats or repeats

    import numba
    result = {"device": _device_info(), "smoke": args.smoke, "python": platform.python_version(),
              "numba": numba.__version__, "numpy": np.__version__}
    print(f"gpu_bench on {result['device']['name']}", flush=True)
    result["gemm"] = bench_gemm(sizes, repeats)
    result["mlp"] = {"dims": list(dims), "samples": samples,
                     "rows": bench_mlp(dims, samples, batches, cuda_backend)}
    print_tables(result)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
