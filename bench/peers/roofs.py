"""The machine's compute roofs, measured in the same run as the benchmark (one ``RESULT {json}`` line).

* GEMM float32 and bfloat16: ``torch.mm`` of two n x n matrices (n = 2048 by default), 2 n^3 FLOPs,
  best and median of ``repeats`` timed calls after a warm-up.
* Conv4 forward + backward on 80 images (one 5-way 1-shot task's support + query) in float32: FLOPs
  from ``FlopCounterMode``, which is what the meta-learning workloads are made of.

    python bench/peers/roofs.py --threads 2 [--size 2048] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import common

    common.set_threads(args.threads)
    load_start = os.getloadavg()
    out = {"threads": torch.get_num_threads(), "gemm_size": args.size, "load_start": load_start}
    n = args.size
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        best, median = _timed(lambda: torch.mm(a, b), args.repeats)
        out[f"gemm_{name}_gflops"] = 2 * n**3 / best / 1e9
        out[f"gemm_{name}_gflops_median"] = 2 * n**3 / median / 1e9

    torch.manual_seed(0)
    model = common.Conv4BN(5)
    x = torch.rand(80, 1, 28, 28)
    y = torch.arange(5).repeat_interleave(16)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    flops = counter.get_total_flops()
    best, median = _timed(fwd_bwd, max(args.repeats, 20))
    out["conv4_fwd_bwd_80img_flops"] = flops
    out["conv4_fwd_bwd_gflops"] = flops / best / 1e9
    out["conv4_fwd_bwd_gflops_median"] = flops / median / 1e9
    out["conv4_fwd_bwd_ms_median"] = median * 1e3
    out["load_end"] = os.getloadavg()
    out["machine"] = common.machine_info()
    common.emit(out)


if __name__ == "__main__":
    main()
