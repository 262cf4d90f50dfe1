"""How fast do M = 1 matrix products (a decode step's projections) stream their weights through
cuBLAS, by shape and by weight layout? On one card, in one run:

    python3 -m benchmarks.gemv_layout --out out/gemv.json

For each projection shape of LLaMA-1.1B (q|k|v, o, gate|up, up, down), L distinct fp16 weights (about
--weight-mb together, so the L2 cache cannot serve them), each product computed R times, captured as
one torch.cuda.CUDAGraph and timed with CUDA events (launch overhead out of the figure). Variants:
x @ W with W [K, N] (the layout archc's ONNX MatMul reads) and F.linear(x, W) with W [N, K] (torch's
Linear layout, what FusedMatMul transB=1 reads). Reported: microseconds per product and the weight
bytes over that time as a fraction of the copy bandwidth measured in the same run.

onnxruntime's own GEMMs are measured inside the real decode step instead (benchmarks/profile_ort.py:
CUPTI kernel times per kernel name). An earlier version of this script also timed single-op
onnxruntime models; those figures were invalid (onnxruntime's common-subexpression elimination merged
the repeated products, and CUDA Concat takes at most 32 inputs under graph capture), so it was removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import outputs


ROOT = Path(__file__).resolve().parent.parent

R = 4  # passes over the weights per run
SHAPES = {"qkv": (2048, 2560), "o": (2048, 2048), "gate|up": (2048, 11264), "up": (2048, 5632), "down": (5632, 2048)}


def time_captured(step, products: int, iters: int) -> float:
    """Seconds per product: `step` (which runs `products` products) captured as one CUDA graph and
    replayed `iters` times between two CUDA events, so launch overhead stays out of the figure."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / iters / products


def time_torch(K, N, L, trans, iters) -> float:
    import torch
    import torch.nn.functional as F

    ws = [torch.randn((N, K) if trans else (K, N), device="cuda", dtype=torch.float16) * 0.02 for _ in range(L)]
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)

    def step():
        return [F.linear(x, w) if trans else x @ w for _ in range(R) for w in ws]

    return time_captured(step, L * R, iters)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weight-mb", type=int, default=256, help="distinct weights per shape, in MB together")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path, help="JSON file (an existing one: --force)")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out))
    from archc.bench.harness import environment, measure_limits

    lim = measure_limits("cuda", dtypes=("fp16",))
    bw = lim["copy_bytes_per_s"]
    rows = []
    for name, (K, N) in SHAPES.items():
        nbytes = K * N * 2
        L = max(2, args.weight_mb * 2**20 // nbytes)
        for variant, fn in (("torch x@W [K,N]", lambda: time_torch(K, N, L, False, args.iters)),
                            ("torch linear [N,K]", lambda: time_torch(K, N, L, True, args.iters))):
            try:
                t = fn()
                row = {"shape": name, "K": K, "N": N, "variant": variant, "us": t * 1e6, "frac_bw": nbytes / t / bw}
            except Exception as e:  # noqa: BLE001 - a variant that cannot run is reported
                row = {"shape": name, "K": K, "N": N, "variant": variant, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": environment(), "limits": lim, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
