"""The machine's compute roofs, measured in the same run as the benchmark (one ``RESULT {json}`` line).

* GEMM float32 and bfloat16: ``torch.mm`` of two n x n matrices (n = 2048 by default), 2 n^3 FLOPs,
  best and median of ``repeats`` timed calls after a warm-up.
* Conv4 forward + backward on 80 images (one 5-way 1-shot task's support + query) in float32: FLOPs
  from ``FlopCounterMode``, which is what the meta-learning workloads are made of.

``--device cuda``: the same on the GPU, n = 8192 by default, exact float32 (TF32 off for cuBLAS and cuDNN:
``common.setup_device``), ``torch.cuda.synchronize()`` around every timed call, 3 warm-up calls; and a
check that float32 really is exact float32: the relative error of a float32 matmul and convolution
against float64 on the GPU (~1e-7 in float32, ~1e-4 with TF32).

    python bench/peers/roofs.py --threads 2 [--size 2048] [--repeats 10] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time



def _timed(fn, repeats, sync=None, warmup=1, max_seconds=None):
    """Best and median time of ``fn``; stops early once ``max_seconds`` are spent (an emulated dtype, e.g.
    bfloat16 on a CPU without bfloat16 instructions, where one 2048^3 product takes ~15 s)."""
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(repeats):
        if times and max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _float32_check(torch, F, device) -> dict:
    """Relative error of a float32 matmul and 3x3 convolution against float64, on ``device``."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)
    x, w = torch.rand(64, 64, 28, 28, generator=gen), torch.randn(64, 64, 3, 3, generator=gen) / 24

    def rel(lo, hi):
        return float((lo.double() - hi).norm() / hi.norm())

    a, b, x, w = (t.to(device) for t in (a, b, x, w))
    out = {"matmul_rel_err": rel(a @ b, a.double() @ b.double()),
           "conv_rel_err": rel(F.conv2d(x, w, padding=1), F.conv2d(x.double(), w.double(), padding=1))}
    out["exact_float32"] = out["matmul_rel_err"] < 1e-5 and out["conv_rel_err"] < 1e-5
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=None, help="GEMM size n (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.peers import common

    common.set_threads(args.threads)
    cuda = args.device == "cuda"
    device_info = common.setup_device(args.device)  # cuda: TF32 off; raises without a GPU
    sync = common.synchronizer(args.device)
    warmup = 3 if cuda else 1
    if args.size is None:
        args.size = 8192 if cuda else 2048
    load_start = os.getloadavg()
    out = {"threads": torch.get_num_threads(), "gemm_size": args.size, "load_start": load_start}
    if args.device != "cpu":
        out["device"] = args.device
        out.update(device_info)
    n = args.size
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        if args.device != "cpu":
            a, b = a.to(args.device), b.to(args.device)
        best, median = _timed(lambda: torch.mm(a, b), args.repeats, sync, warmup, max_seconds=20.0)
        out[f"gemm_{name}_gflops"] = 2 * n**3 / best / 1e9
        out[f"gemm_{name}_gflops_median"] = 2 * n**3 / median / 1e9
    if cuda:
        out["float32_check"] = _float32_check(torch, F, args.device)

    torch.manual_seed(0)
    model = common.user_model("conv4", 5)
    x = torch.rand(80, 1, 28, 28)
    y = torch.arange(5).repeat_interleave(16)
    if args.device != "cpu":
        model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    flops = counter.get_total_flops()
    best, median = _timed(fwd_bwd, max(args.repeats, 20), sync, warmup)
    out["conv4_fwd_bwd_80img_flops"] = flops
    out["conv4_fwd_bwd_gflops"] = flops / best / 1e9
    out["conv4_fwd_bwd_gflops_median"] = flops / median / 1e9
    out["conv4_fwd_bwd_ms_median"] = median * 1e3
    out["load_end"] = os.getloadavg()
    out["machine"] = common.machine_info(args.device)
    common.emit(out)


if __name__ == "__main__":
    main()
