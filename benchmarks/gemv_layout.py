"""How fast do M = 1 matrix products (a decode step's projections) stream their weights, by weight
layout and by runtime? On one card, in one run:

    PYTHONPATH=$PWD python3 benchmarks/gemv_layout.py --out out/gemv.json

For each projection shape of LLaMA-1.1B (q|k|v, o, gate|up, down) a model holds L distinct fp16
weights, about 256 MB together (so the L2 cache cannot serve them), and computes x @ W_i for each,
R times over; the step is captured as a CUDA graph (onnxruntime's enable_cuda_graph,
torch.cuda.CUDAGraph) so launch overhead is out of the figure, and one run is long enough (~1 ms)
that onnxruntime's host time per run (tens of µs) is a few percent of it. Variants:
- ort MatMul:      W [K, N] (what archc's exporter writes today), onnxruntime MatMul;
- ort FusedMatMul: W [N, K], com.microsoft FusedMatMul transB=1 (the torch Linear layout);
- torch matmul:    x @ W with W [K, N];  torch linear: F.linear(x, W) with W [N, K].
Reported: microseconds per product and the weight bytes over that time as a fraction of the copy
bandwidth measured in the same run (archc.bench.measure_limits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

R = 4  # passes over the weights per run
SHAPES = {"qkv": (2048, 2560), "o": (2048, 2048), "gate|up": (2048, 11264), "up": (2048, 5632), "down": (5632, 2048)}


def ort_model(K: int, N: int, L: int, trans: bool, rng) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    for i in range(L):
        w = (rng.standard_normal((N, K) if trans else (K, N), dtype=np.float32) * 0.02).astype(np.float16)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
    for r in range(R):
        for i in range(L):
            y = f"y{r}_{i}"
            if trans:
                nodes.append(helper.make_node("FusedMatMul", ["x", f"w{i}"], [y], domain="com.microsoft", transB=1))
            else:
                nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [y]))
            outs.append(y)
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=1))
    g = helper.make_graph(nodes, "gemv", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, R * L * N])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=8)
    return m.SerializeToString()


def time_ort(K, N, L, trans, rng, iters) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(ort_model(K, N, L, trans, rng), providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    x = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((1, K)).astype(np.float16), "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([1, R * L * N], np.float16, "cuda", 0)
    io = sess.io_binding()
    io.bind_ortvalue_input("x", x)
    io.bind_ortvalue_output("y", y)
    for _ in range(5):
        sess.run_with_iobinding(io)
    t0 = time.perf_counter()
    for _ in range(iters):
        sess.run_with_iobinding(io)
    dt = (time.perf_counter() - t0) / iters
    return dt / (L * R)


def time_torch(K, N, L, trans, iters) -> float:
    import torch
    import torch.nn.functional as F

    ws = [torch.randn((N, K) if trans else (K, N), device="cuda", dtype=torch.float16) * 0.02 for _ in range(L)]
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)

    def step():
        return [F.linear(x, w) if trans else x @ w for _ in range(R) for w in ws]

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
    return a.elapsed_time(b) / 1e3 / iters / (L * R)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weight-mb", type=int, default=256, help="distinct weights per shape, in MB together")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from archc.bench import environment, measure_limits

    lim = measure_limits("cuda", dtypes=("fp16",))
    bw = lim["copy_bytes_per_s"]
    rng = np.random.default_rng(0)
    rows = []
    for name, (K, N) in SHAPES.items():
        nbytes = K * N * 2
        L = max(2, args.weight_mb * 2**20 // nbytes)
        for variant, fn in (("ort MatMul [K,N]", lambda: time_ort(K, N, L, False, rng, args.iters)),
                            ("ort FusedMatMul transB [N,K]", lambda: time_ort(K, N, L, True, rng, args.iters)),
                            ("torch x@W [K,N]", lambda: time_torch(K, N, L, False, args.iters)),
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
