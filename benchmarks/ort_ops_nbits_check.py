"""archc.GatedMLPNBits (int4 gate|up on MatMulNBits's bytes) in onnxruntime: is it right, is it captured, is it faster?

    python3 -m benchmarks.ort_ops_nbits_check --lib $LIB --out $OUT/ort_ops_nbits     # GPU: check + timing (< 1 min, H200)
    python3 -m benchmarks.ort_ops_nbits_check --device cpu --out out/ort_ops_nbits_cpu  # the CPU kernel, small sizes

The library and the GPU machine's setup are benchmarks/ort_ops_check.py's (build here with --headers-out, carry
out/ort_ops; there, rebuild with that machine's nvcc only if the carried library does not load).

(a) check: the op alone (x [M, K] fed; B [2F, K/32, 16] uint8 and scales [2F, K/32] fp16 initializers, as in a compiled
    --quant int4 --kernels archc model) against numpy in float64: the weight dequantized from the layout
    exporters/quantize.py documents (codes low nibble first, (q - 8) * scale), then silu(x Wg^T) * (x Wu^T). On cuda every
    node must run on the CUDA provider; M = 1, 4 (the int4 warp-per-row-pair kernel), 16, 512 (dequantize into scratch,
    cuBLAS + silu*mul), K = 2080 (65 blocks: a lane's partial last step) at M = 1, 3, block_size 16 at M = 1 (not the
    int4 kernel's: the dequantize path); with enable_cuda_graph at M = 1, 4 and 16, the input rewritten after the
    capture. Negative controls: the reference reading the high nibble first, and with gate and up swapped, must miss.
(b) timing: a chain of --layers int4 LLaMA MLP blocks x = x + down(gate_up(x)) at TinyLlama-1.1B's shape, weights
    quantized by archc's quantizer (benchmarks/moe_mlp_probe.py), as two graphs on the SAME bytes: `matmulnbits`
    (MatMulNBits(gate|up) + Split + Sigmoid + Mul + Mul, archc's --quant int4 lowering today) and `archc_op`
    (GatedMLPNBits), each with the same MatMulNBits down and residual Add; CUDA graphs, IO binding, median of --runs
    (benchmarks/ort_ops_check.py time_one), per block at M = 1 and 16. Each timed output is checked against the chain
    in float64 on the dequantized weights.
Writes DIR/ort_ops_nbits_check.json; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import outputs
from benchmarks.ort_ops_check import CONTROL_MIN, TOL, find_library, gpu_name, rel, session

RESULT_FILE = "ort_ops_nbits_check.json"
BLOCK = 32  # archc's default int4 block: what the CUDA kernel takes
SIZES = {"cuda": {"K": 2048, "F": 5632, "layers": 6, "rows": (1, 4, 16, 512), "graph_rows": (1, 4, 16), "tail_K": 2080},
         "cpu": {"K": 64, "F": 96, "layers": 2, "rows": (1, 4, 16, 40), "graph_rows": (), "tail_K": 96}}
TIMED_ROWS = (1, 16)


def op_model(K: int, F: int, b, scales, block_size: int = BLOCK):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("GatedMLPNBits", ["x", "b", "scales"], ["y"], domain="archc", name="gated_mlp_nbits", K=K, bits=4,
                            block_size=block_size)
    g = helper.make_graph([node], "gated_mlp_nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["m", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["m", F])],
                          [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "scales")])
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 21), helper.make_operatorsetid("archc", 1)],
                             ir_version=10, producer_name="archc.ort_ops_nbits_check")


def dequant(b, scales, K: int, low_first: bool = True):
    """float64 [N, K] from B [N, kb, bs/2] and scales [N, kb]: exporters/quantize.py's documented layout."""
    import numpy as np

    n, kb, half = b.shape
    lo, hi = (b & 15).astype(np.int8), (b >> 4).astype(np.int8)
    first, second = (lo, hi) if low_first else (hi, lo)
    q = np.stack([first, second], axis=-1).reshape(n, kb, 2 * half)
    return ((q - 8).astype(np.float64) * scales.astype(np.float64)[..., None]).reshape(n, kb * 2 * half)[:, :K]


def swiglu(x, w):
    import numpy as np

    F = w.shape[0] // 2
    x = x.astype(np.float64)
    g, u = x @ w[:F].T, x @ w[F:].T
    return g / (1 + np.exp(-g)) * u


def random_weight(K: int, F: int, seed: int, block_size: int = BLOCK):
    """Random codes and scales (the op's semantics do not depend on how they were chosen); |W| ~ 2 / sqrt(K)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kb = -(-K // block_size)
    b = rng.integers(0, 256, (2 * F, kb, block_size // 2), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.5, (2 * F, kb)) * (2 / np.sqrt(K) / 4.6)).astype(np.float16)
    return b, scales


def check_row(M: int, K: int, F: int, y, x, w, **extra) -> dict:
    import numpy as np

    err = rel(y, swiglu(x, w))
    swapped = rel(y, swiglu(x, np.concatenate([w[F:], w[:F]])))
    ok = err <= TOL and swapped >= CONTROL_MIN and extra.get("control_high_nibble_first", 1.0) >= CONTROL_MIN
    return {"M": M, "K": K, "F": F, **extra, "rel_error": err, "tol": TOL, "control_gate_up_swapped": swapped,
            "status": "pass" if ok else "FAIL"}


def check_plain(lib: Path, device: str, sz: dict, seed: int) -> list[dict]:
    import numpy as np

    rows = []
    F = sz["F"]
    for K, bs, Ms in ((sz["K"], BLOCK, sz["rows"]), (sz["tail_K"], BLOCK, (1, 3)), (sz["K"], 16, (1,))):
        b, s = random_weight(K, F, seed + K + bs, bs)
        w = dequant(b, s, K)
        swapped_nibbles = dequant(b, s, K, low_first=False)
        try:
            sess = session(op_model(K, F, b, s, bs), lib, device)
        except Exception as e:  # noqa: BLE001 - recorded; the other checks still run
            rows.append({"K": K, "F": F, "block_size": bs, "status": "error", "error": " ".join(str(e).split())[:500]})
            continue
        for M in Ms:
            x = np.random.default_rng(seed + M).standard_normal((M, K)).astype(np.float16)
            y = sess.run(None, {"x": x})[0]
            path = ("int4 warp-per-row-pair" if M <= 4 and bs == BLOCK and K % BLOCK == 0 else "dequantize + cuBLAS + silu*mul") \
                if device == "cuda" else "cpu"
            rows.append(check_row(M, K, F, y, x, w, block_size=bs, cuda_graph=False, path=path,
                                  control_high_nibble_first=rel(y, swiglu(x, swapped_nibbles))))
    return rows


def check_graph(lib: Path, sz: dict, seed: int) -> list[dict]:
    """Under enable_cuda_graph: fixed device buffers; after the capture the input is rewritten in place and the replayed
    graph must compute from the new values (ort_ops_check.check_graph's method)."""
    import numpy as np
    import onnxruntime as ort

    K, F = sz["K"], sz["F"]
    b, s = random_weight(K, F, seed + K + BLOCK)
    w = dequant(b, s, K)
    rows = []
    for M in sz["graph_rows"]:
        row = {"M": M, "K": K, "F": F, "cuda_graph": True}
        try:
            sess = session(op_model(K, F, b, s), lib, "cuda", graph=True)
            rng = np.random.default_rng(seed + 100 + M)
            x1, x2 = (rng.standard_normal((M, K)).astype(np.float16) for _ in range(2))
            x_dev = ort.OrtValue.ortvalue_from_numpy(x1, "cuda", 0)
            y_dev = ort.OrtValue.ortvalue_from_numpy(np.zeros((M, F), np.float16), "cuda", 0)
            io = sess.io_binding()
            io.bind_ortvalue_input("x", x_dev)
            io.bind_ortvalue_output("y", y_dev)
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", "1")
            for _ in range(4):  # plain runs, the capture, replays
                sess.run_with_iobinding(io, ro)
            first = check_row(M, K, F, y_dev.numpy(), x1, w)
            x_dev.update_inplace(x2)
            sess.run_with_iobinding(io, ro)
            row.update(check_row(M, K, F, y_dev.numpy(), x2, w), rel_error_before_rewrite=first["rel_error"])
            if first["status"] != "pass":
                row["status"] = "FAIL"
        except Exception as e:  # noqa: BLE001
            row.update(status="error", error=" ".join(str(e).split())[:500])
        rows.append(row)
    return rows


# (b) timing


def chain_model(variant: str, qblocks, K: int, F: int):
    """x [1, tokens, K] through len(qblocks) int4 MLP blocks on the same bytes; `matmulnbits` is archc's --quant int4
    lowering of the gate/up part today, `archc_op` the custom op; the down projection is MatMulNBits in both."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, name, domain="", outs=None, **attrs):
        nodes.append(helper.make_node(op, ins, outs or [name], name=name, domain=domain, **attrs))
        return name

    x = "x"
    for i, qb in enumerate(qblocks):
        p = f"b{i}"
        (gb, gs), (ub, us), (db, ds) = qb.gate, qb.up, qb.down
        b, s = init(f"{p}.gate_up.q4", np.concatenate([gb, ub])), init(f"{p}.gate_up.scales", np.concatenate([gs, us]))
        if variant == "matmulnbits":
            gu = node("MatMulNBits", [x, b, s], f"{p}.gate_up", domain="com.microsoft", K=K, N=2 * F, bits=4, block_size=BLOCK,
                      accuracy_level=0)
            node("Split", [gu, init(f"{p}.split", np.array([F, F], np.int64))], f"{p}.split", outs=[f"{p}.gate", f"{p}.up"], axis=-1)
            act = node("Mul", [f"{p}.gate", node("Sigmoid", [f"{p}.gate"], f"{p}.sigmoid")], f"{p}.silu")
            h = node("Mul", [act, f"{p}.up"], f"{p}.h")
        elif variant == "archc_op":
            h = node("GatedMLPNBits", [x, b, s], f"{p}.h", domain="archc", K=K, bits=4, block_size=BLOCK)
        else:
            raise ValueError(variant)
        d = node("MatMulNBits", [h, init(f"{p}.down.q4", db), init(f"{p}.down.scales", ds)], f"{p}.down", domain="com.microsoft",
                 K=F, N=K, bits=4, block_size=BLOCK, accuracy_level=0)
        x = node("Add", [x, d], f"{p}.residual")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="y"))
    g = helper.make_graph(nodes, variant, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, "tokens", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, "tokens", K])], inits)
    return helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 21), helper.make_operatorsetid("com.microsoft", 1),
                                               helper.make_operatorsetid("archc", 1)], ir_version=10,
                             producer_name="archc.ort_ops_nbits_check")


def run_timing(lib: Path, device: str, sz: dict, seed: int, work: Path, warmup: int, runs: int) -> list[dict]:
    import numpy as np

    from benchmarks import moe_mlp_probe as probe
    from benchmarks.ort_ops_check import time_one

    K, F = sz["K"], sz["F"]
    blocks = probe.make_blocks(sz["layers"], K, F, seed)
    qblocks = probe.quantize_blocks(blocks, "float16")
    xs = {t: (np.random.default_rng(seed + t).standard_normal((1, t, K)) * 0.5).astype(np.float16) for t in TIMED_ROWS}
    # one reference pass for every input (rows are independent): each weight is dequantized once
    ref = probe.reference(np.concatenate(list(xs.values()), axis=1), blocks, qblocks, "float16")
    cut = np.cumsum([0, *TIMED_ROWS])
    refs = {t: ref[:, cut[i]:cut[i + 1]] for i, t in enumerate(xs)}
    rows = []
    for variant in ("matmulnbits", "archc_op"):
        path = probe.save(chain_model(variant, qblocks, K, F), work / f"{variant}.onnx")
        for tokens, x in xs.items():
            row = {"variant": variant, "M": tokens, "layers": sz["layers"]}
            try:
                row.update(time_one(path, lib, device, x, refs[tokens], warmup, runs, sz["layers"]))
            except Exception as e:  # noqa: BLE001 - recorded; the other variant still runs
                row.update(status="error", error=" ".join(str(e).split())[:500])
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        for f in work.glob(f"{variant}.onnx*"):
            f.unlink()
    return rows


def saving(rows: list[dict]) -> dict:
    out = {}
    for M in TIMED_ROWS:
        t = {r["variant"]: r.get("us_per_block") for r in rows if r["M"] == M}
        if t.get("matmulnbits") and t.get("archc_op"):
            out[f"M{M}"] = {"matmulnbits_us_per_block": t["matmulnbits"], "archc_op_us_per_block": t["archc_op"],
                            "saved_us_per_layer": t["matmulnbits"] - t["archc_op"], "speedup": t["matmulnbits"] / t["archc_op"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ort_ops_nbits_check", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help=f"folder for {RESULT_FILE} (an existing file there: --force)")
    outputs.add_force(ap)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda: the check above; cpu: a smoke run of the same code")
    ap.add_argument("--lib", help="the op library (default: ARCHC_ORT_OPS_LIB, else built here)")
    ap.add_argument("--layers", type=int, help="int4 MLP blocks in the timed chain (cuda 6: 105 MB of codes and scales, twice the L2)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    result_path = a.out / RESULT_FILE
    outputs.check_outputs(ap, a.force, ("--out", result_path))
    if a.layers is not None and a.layers < 1:
        print(f"ort_ops_nbits_check: --layers {a.layers}: must be at least 1", file=sys.stderr)
        return 2
    from archc.errors import UserError
    from exporters.ort_ops.build import info

    try:
        lib = find_library(a.lib, a.device)
        if "GatedMLPNBits" not in info(lib).get("ops", "").split(","):
            raise UserError(f"{lib}: an older archc op library without GatedMLPNBits; rebuild it with "
                            f"`python3 -m exporters.ort_ops.build --{a.device} -o FILE`")
    except UserError as e:
        print(f"ort_ops_nbits_check: {e}", file=sys.stderr)
        return 2
    import onnxruntime as ort

    sz = dict(SIZES[a.device], **({"layers": a.layers} if a.layers else {}))
    t0 = time.perf_counter()
    result = {"kind": "archc-ort-ops-nbits-check", "device": a.device, "gpu": gpu_name() if a.device == "cuda" else None,
              "onnxruntime": ort.__version__, "library": str(lib), "sizes": dict(sz), "tol": TOL, "control_min": CONTROL_MIN}
    check = check_plain(lib, a.device, sz, a.seed) + (check_graph(lib, sz, a.seed) if a.device == "cuda" else [])
    for r in check:
        print(json.dumps(r), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="ort_ops_nbits_check-") as tmp:
        timing = run_timing(lib, a.device, sz, a.seed, Path(tmp), a.warmup, a.runs)
    ok = all(r["status"] == "pass" for r in check + timing)
    result.update(check=check, timing=timing, saving=saving(timing), warmup=a.warmup, runs=a.runs, ok=ok,
                  seconds=time.perf_counter() - t0)
    a.out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"ok": ok, "saving": result["saving"], "seconds": round(result["seconds"], 1)}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
