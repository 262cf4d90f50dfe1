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

import sys
from pathlib import Path

from benchmarks.ort_ops_check import (CONTROL_MIN, TIMED_ROWS, TOL, add_run_args, graph_rows, parser, rel, run_main,
                                      session, time_variants)

RESULT_FILE = "ort_ops_nbits_check.json"
BLOCK = 32  # archc's default int4 block: what the CUDA kernel takes
SIZES = {"cuda": {"K": 2048, "F": 5632, "layers": 6, "rows": (1, 4, 16, 512), "graph_rows": (1, 4, 16), "tail_K": 2080},
         "cpu": {"K": 64, "F": 96, "layers": 2, "rows": (1, 4, 16, 40), "graph_rows": (), "tail_K": 96}}


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
    graph must compute from the new values (ort_ops_check.check_graph's method: ort_ops_check.graph_rows)."""
    K, F = sz["K"], sz["F"]
    b, s = random_weight(K, F, seed + K + BLOCK)
    w = dequant(b, s, K)
    return graph_rows(lib, sz, seed, lambda: op_model(K, F, b, s), lambda M, y, x: check_row(M, K, F, y, x, w))


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

    K, F = sz["K"], sz["F"]
    blocks = probe.make_blocks(sz["layers"], K, F, seed)
    qblocks = probe.quantize_blocks(blocks, "float16")
    xs = {t: (np.random.default_rng(seed + t).standard_normal((1, t, K)) * 0.5).astype(np.float16) for t in TIMED_ROWS}
    # one reference pass for every input (rows are independent): each weight is dequantized once
    ref = probe.reference(np.concatenate(list(xs.values()), axis=1), blocks, qblocks, "float16")
    cut = np.cumsum([0, *TIMED_ROWS])
    refs = {t: ref[:, cut[i]:cut[i + 1]] for i, t in enumerate(xs)}
    return time_variants(("matmulnbits", "archc_op"), lambda v: chain_model(v, qblocks, K, F), lib, device, sz, xs, refs, work,
                         warmup, runs)


def main(argv: list[str] | None = None) -> int:
    ap = parser("ort_ops_nbits_check", __doc__)
    ap.add_argument("--out", required=True, type=Path, help=f"folder for {RESULT_FILE} (an existing file there: --force)")
    add_run_args(ap, "int4 MLP blocks in the timed chain (cuda 6: 105 MB of codes and scales, twice the L2)")
    return run_main(ap, argv, "ort_ops_nbits_check", RESULT_FILE, "archc-ort-ops-nbits-check", SIZES, check_plain, check_graph,
                    run_timing, baseline="matmulnbits", need_op="GatedMLPNBits")


if __name__ == "__main__":
    sys.exit(main())
