"""Would a split-K formulation of the M = 1 GEMMs stream the weights faster in onnxruntime? (GPU)

    PYTHONPATH=/tmp/site:$PWD python3 -m benchmarks.splitk_probe --out DIR

For each projection of the TinyLlama-1.1B decode step (q|k|v [2048 -> 2560], o [2048 -> 2048],
down [5632 -> 2048], gate|up [2048 -> 11264]) a tiny ONNX graph holds `--copies` distinct fp16
weights (more bytes than the H200's 50 MB L2) and multiplies one [1, K] row by each:
- split 1: MatMul [1, K] x [K, N] (what the cuda target emits),
- split s: the row reshaped to [s, 1, K/s], the weight stored as [s, K/s, N] (the same bytes), one
  batched MatMul [s, 1, K/s] x [s, K/s, N] -> [s, 1, N], then ReduceSum over the s partial rows.
Each graph runs under onnxruntime's CUDA graphs (as archc's decode step does); a CUPTI trace of
`--runs` replays gives the kernel time per product (the ReduceSum included), and the weight bytes over
it the share of the copy bandwidth. Writes DIR/splitk_probe.json (an existing one: --force).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import outputs

SHAPES = {"qkv": (2048, 2560), "o": (2048, 2048), "down": (5632, 2048), "gate_up": (2048, 11264)}


def model(K: int, N: int, s: int, copies: int, seed: int | None = None):
    """The probe's graph; weights constant per copy (fast to build at 1.1B sizes), or seeded random values
    (seed; the CPU test checks the split-K product against numpy with them)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = None if seed is None else np.random.default_rng(seed)

    nodes, inits, outs = [], [], []
    x = "x"
    if s > 1:
        inits.append(numpy_helper.from_array(np.array([s, 1, K // s], np.int64), "xshape"))
        nodes.append(helper.make_node("Reshape", ["x", "xshape"], ["xs"]))
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        x = "xs"
    for i in range(copies):
        w = (np.full((K, N), 0.01 + 0.001 * i, np.float16) if rng is None
             else rng.standard_normal((K, N)).astype(np.float16))
        w = w if s == 1 else w.reshape(s, K // s, N)  # rows j*K/s .. (j+1)*K/s - 1 form slice j: the same bytes
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        if s == 1:
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"p{i}"]))
            nodes.append(helper.make_node("ReduceSum", [f"p{i}", "axis0"], [f"y{i}"], keepdims=0))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT16, [1, N]))
    g = helper.make_graph(nodes, "splitk", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, K])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def measure(K: int, N: int, s: int, copies: int, runs: int, copy_tbs: float | None) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch
    from benchmarks.kernel_trace import kernel_events

    m = model(K, N, s, copies)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    x = ort.OrtValue.ortvalue_from_numpy(np.full((1, K), 0.5, np.float16), "cuda", 0)
    ys = [ort.OrtValue.ortvalue_from_shape_and_type([1, N], np.float16, "cuda", 0) for _ in range(copies)]
    io = sess.io_binding()
    io.bind_ortvalue_input("x", x)
    for i, y in enumerate(ys):
        io.bind_ortvalue_output(f"y{i}", y)
    for _ in range(5):
        sess.run_with_iobinding(io)
    torch.cuda.synchronize()
    ev = kernel_events(lambda: sess.run_with_iobinding(io), runs)
    per = sum(e["dur"] for e in ev) / runs / copies
    names = sorted({e["name"][:60] for e in ev})
    got = ys[0].numpy().astype(np.float32)
    want = np.float32(0.5 * 0.01 * K)
    mb = K * N * 2 / 1e6
    return {"K": K, "N": N, "split": s, "us_per_product": round(per, 2), "kernels_per_product": len(ev) / runs / copies,
            "weight_MB": round(mb, 2), "TB_s": round(mb / per, 3),  # MB per us = TB/s
            "share_of_copy": round(mb / per / copy_tbs, 3) if copy_tbs else None,
            "rel_err": float(abs(got[0, 0] - want) / want), "kernels": names}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of splitk_probe.json (made if absent)")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--splits", default="1,2,4,8")
    outputs.add_force(ap)
    args = ap.parse_args()
    outputs.check_outputs(ap, args.force, ("--out", args.out / "splitk_probe.json"))
    import torch

    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(10):
        b.copy_(a)
    ev1.record()
    torch.cuda.synchronize()
    copy_tbs = 2 * a.numel() * 10 / (ev0.elapsed_time(ev1) * 1e-3) / 1e12
    del a, b
    rows = []
    for name, (K, N) in SHAPES.items():
        for s in (int(x) for x in args.splits.split(",")):
            try:
                r = measure(K, N, s, args.copies, args.runs, copy_tbs)
            except Exception as e:  # noqa: BLE001
                r = {"K": K, "N": N, "split": s, "error": str(e)[:300]}
            r["proj"] = name
            rows.append(r)
            print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "splitk_probe.json").write_text(json.dumps({"copy_TB_s": copy_tbs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
