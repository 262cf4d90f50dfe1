"""Can onnxruntime's com.microsoft MoE / QMoE ops, with ONE expert and k = 1, stand in for a LLaMA gated MLP
and take fewer CUDA kernels per layer at batch-1 decode?

Why: archc's decode step on an H200 is bound by kernel count (~300 kernels per token, 2-7 us each). Per
layer the MLP is, in fp16, MatMul(gate), MatMul(up), Sigmoid*Mul (fused to QuickGelu), Mul, MatMul(down);
in int4, MatMulNBits(gate|up stacked), Split, Sigmoid*Mul, Mul, MatMulNBits(down). MoE (fp16) and QMoE
(int4) with one expert, k = 1, activation_type=swiglu, alpha 1, beta 0 and no limit compute exactly
down(silu(x Wg^T) * (x Wu^T)) (with one expert the router's softmax weight is 1.0 whatever router_probs
holds), and onnxruntime 1.31's CUDA kernels for them have a small-M path with fused SwiGLU and finalize.

What: ONNX models, each a chain of L residual blocks x = x + MLP_i(x) with distinct random weights per
block (so no common-subexpression elimination merges them and the weights stream from HBM, not L2), for
the variants
    fp16_current  MatMul(gate), MatMul(up), Sigmoid, Mul, Mul, MatMul(down)   (archc's cuda lowering, dense)
    fp16_moe      MoE(1 expert, swiglu, swiglu_fusion=1)
    int4_current  MatMulNBits(gate|up), Split, Sigmoid, Mul, Mul, MatMulNBits(down)  (archc's --quant int4:
                  symmetric, block 32, round-to-nearest, exporters/quantize.py)
    int4_qmoe     QMoE with the same int4 codes and scales, block 32, symmetric, weights_prepacked=0
Every variant is checked against a numpy reference written from the formula (int4: with numpy-dequantized
weights), with negative controls (gate and up swapped; gate|up concatenated where the op reads them
interleaved) that must fail the same check, so a wrong layout cannot pass.

    python3 -m benchmarks.moe_mlp_probe --device cpu --out out/moe_cpu.json     # correctness + smoke (small sizes)
    python3 -m benchmarks.moe_mlp_probe --device cuda --out out/moe_cuda.json   # H200: check + timing, L 22

On cuda each variant is timed as one session (CUDA provider, enable_cuda_graph=1), IO binding of fixed
device buffers, RunOptions gpu_graph_id, warm-up runs, then the median wall time of --runs runs of the
whole chain (each run is a graph replay plus onnxruntime's end-of-run synchronize, so a fixed ~tens of us
per run, the same for every variant, is in each figure), reported per block; the fp16 output of each
timed chain is checked against the reference too (the CUDA kernels' layouts are not the CPU's to vouch
for). A variant whose session or capture fails is tried again without the graph (cuda_graph false), and
one that still fails is recorded as an error without stopping the others. On cpu the same timing code
runs at the small sizes as a smoke run (its figures mean nothing for the GPU).
Each block also has the residual Add (one kernel, the same in every variant; archc fuses it into the
next SkipLayerNormalization). The node types onnxruntime keeps after optimization (optimized_model_filepath)
are recorded per block: a 2-block chain's less a 1-block chain's, at small sizes. Nodes, not kernels: how
many kernels MoE / QMoE launch is what the timing (or a CUPTI trace, benchmarks/profile_ort.py) tells.

Layouts (from onnxruntime 1.31's schemas and CPU kernels, checked here):
- MoE fc1_experts_weights [E, 2F, H] and fc2_experts_weights [E, H, F]: archc's [out, in] = [N, K] per
  expert, no transpose. swiglu_fusion=1 interleaves rows: row 2i is gate row i, row 2i+1 is up row i.
  The CPU kernels refuse swiglu_fusion 0 and 2 ("CPU MoE only supports interleaved SwiGLU format"), so
  the probe uses 1 on both devices.
- QMoE fc1 [E, 2F, H/2] uint8 is MatMulNBits's B [N, K/32, 16] reshaped to [N, K/2] (same bytes, low
  nibble first), its scales [E, 2F, H/32] are MatMulNBits's [N, K/32]; no zero points = 8, as archc's
  symmetric export. The interleave is a row permutation of the stacked gate|up B and scales.
- onnxruntime 1.31's CPU MoE in fp16 returns all zeros when its output is the graph's output (directly or
  through an Identity the optimizer removes) and the right values when another node consumes it (here the
  residual Add always does). The CPU run records this quirk apart (`cpu_quirks`); it fails nothing.
- CUDA (not runnable here): onnxruntime's CUDA MoE notes say QMoE's CUTLASS path wants weights prepacked
  per architecture (pack_weights_for_cuda_mixed_gemm; SM90's layout differs from the others) and never
  reads fc3 (gate and up always fused in fc1). weights_prepacked=0 declares the raw [E, N, K/2] layout;
  whether 1.31's CUDA kernel then packs them itself is what the checked GPU output says.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import outputs

VARIANTS = ("fp16_current", "fp16_moe", "int4_current", "int4_qmoe")
MOE_VARIANTS = ("fp16_moe", "int4_qmoe")
BLOCK = 32  # int4 block size, archc's default (archc.quant.DEFAULT_BLOCK_SIZE)

# Relative error max|y - ref| / max|ref - x| of the chain's output (rel_error). fp32: the reference is float64 on the same
# (float32) weights, so only summation order differs. fp16: activations rounded to fp16 between ops (and
# QuickGelu / MoE fp16 epilogues); measured 1.4e-3 on the CPU sizes and 0.9e-3 to 1.1e-3 on CPU at the GPU sizes
# (L = 22, all four variants); the bound leaves room for the GPU kernels' own accumulation orders.
TOL = {"float32": 1e-4, "float16": 1e-2}
# Negative controls must miss by far more than the tolerance: a layout mistake gives an O(1) relative error.
CONTROL_MIN = 0.1

DOWN_GAIN = 0.25  # std of down's weights over 1/sqrt(in): the chain's increment stays O(0.2) per 22 blocks
CPU_SIZES = {"hidden": 256, "inter": 512, "layers": 2}
CUDA_SIZES = {"hidden": 2048, "inter": 5632, "layers": 22}


@dataclass
class Block:
    """One MLP's weights, float32, archc's [out, in] layout: gate, up [F, H], down [H, F]."""
    gate: object
    up: object
    down: object


def make_blocks(layers: int, hidden: int, inter: int, seed: int) -> list[Block]:
    """Distinct weights per block, uniform with std gain/sqrt(in) (uniform rather than normal: numpy draws it
    several times faster, which matters at 22 x 35M weights). The gated MLP is quadratic in x and the chain
    has no norm, so down's gain DOWN_GAIN keeps 22 blocks from overflowing fp16 (with gain 1 they do)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def w(n, k, gain=1.0):
        a = rng.random((n, k), dtype=np.float32)
        a -= np.float32(0.5)
        a *= np.float32(gain * math.sqrt(12.0 / k))
        return a

    return [Block(w(inter, hidden), w(inter, hidden), w(hidden, inter, DOWN_GAIN)) for _ in range(layers)]


# int4, archc's way (exporters/quantize.py)

def quantize(w, dtype: str):
    """(B uint8 [N, K/32, 16], scales [N, K/32]) as archc's --quant int4 export writes them (symmetric,
    block 32, round-to-nearest), scales in the compute dtype."""
    from archc.dtypes import DType
    from archc.quant import QuantKind, QuantMethod, QuantScheme, QuantSettings
    from exporters.quantize import quantize as archc_quantize

    q = QuantSettings(kind=QuantKind.int4, block_size=BLOCK, scheme=QuantScheme.symmetric, method=QuantMethod.rtn)
    packed, scales, zp = archc_quantize(w, q, DType(dtype))
    assert zp is None  # symmetric: onnxruntime's default zero point 8
    return packed, scales


def dequantize(packed, scales):
    """numpy oracle of MatMulNBits / QMoE dequantization: (code - 8) * scale, codes low nibble first."""
    import numpy as np

    n, kb, _ = packed.shape
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, kb, BLOCK).astype(np.float32)
    return ((codes - 8) * scales.astype(np.float32)[..., None]).reshape(n, kb * BLOCK)


@dataclass
class QBlock:
    gate: tuple
    up: tuple
    down: tuple


def quantize_blocks(blocks: list[Block], dtype: str) -> list[QBlock]:
    return [QBlock(quantize(b.gate, dtype), quantize(b.up, dtype), quantize(b.down, dtype)) for b in blocks]


# The reference

def reference(x, blocks: list[Block], qblocks: list[QBlock] | None, dtype: str):
    """float64 chain x + down(silu(x Wg^T) * (x Wu^T)) from the formula, on the weights as the model stores
    them: rounded to `dtype`, or dequantized from the int4 codes."""
    import numpy as np

    y = x.astype(np.float64).reshape(-1, x.shape[-1])
    for i, b in enumerate(blocks):
        if qblocks is None:
            wg, wu, wd = (a.astype(dtype).astype(np.float64) for a in (b.gate, b.up, b.down))
        else:
            wg, wu, wd = (dequantize(*t).astype(np.float64) for t in (qblocks[i].gate, qblocks[i].up, qblocks[i].down))
        g, u = y @ wg.T, y @ wu.T
        y = y + (g / (1 + np.exp(-g)) * u) @ wd.T
    return y.reshape(x.shape)


# The models

def interleave(a, b):
    """Rows a0, b0, a1, b1, ...: swiglu_fusion=1's fc1 (gate row i at 2i, up row i at 2i+1)."""
    import numpy as np

    return np.stack([a, b], axis=1).reshape(2 * a.shape[0], *a.shape[1:])


def build_model(variant: str, blocks: list[Block], qblocks: list[QBlock] | None, dtype: str, tokens: int,
                mistake: str | None = None):
    """The ONNX chain of one variant. `mistake` (negative controls only): "swap" puts up where gate belongs
    and gate where up belongs; "concat" gives a MoE op gate|up concatenated where it reads them interleaved."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    hidden = blocks[0].gate.shape[1]
    inter = blocks[0].gate.shape[0]
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, name, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, domain=domain, **attrs))
        return name

    def gate_up(i, g, u):
        if mistake == "swap":
            return u, g
        if mistake in (None, "concat"):
            return g, u
        raise ValueError(f"unknown mistake {mistake!r}")

    def fused(a, b):  # fc1 of the MoE ops: interleaved, or (negative control) concatenated
        return np.concatenate([a, b]) if mistake == "concat" else interleave(a, b)

    if variant in MOE_VARIANTS:
        # One row per token, one column per expert. For this fixed-shape probe a constant [tokens, 1]; a real
        # lowering for any M makes it once per graph, shared by every layer's MoE, e.g.
        # ConstantOfShape(Concat(ReduceProd(Shape(input_ids)), [1])): with one expert the op's softmax turns
        # any finite value into the weight 1.0 (checked on CPU with 1.0, 0.5, -3.0).
        router = init("router_probs", np.ones((tokens, 1), dtype))
    x = "x"  # [1, tokens, hidden]; the MoE ops take it as it is (3D: batch * sequence token rows)
    for i, b in enumerate(blocks):
        p = f"b{i}"
        if variant == "fp16_current":
            g, u = gate_up(i, b.gate, b.up)
            gate = node("MatMul", [x, init(f"{p}.gate.T", g.astype(dtype).T)], f"{p}.gate")
            up = node("MatMul", [x, init(f"{p}.up.T", u.astype(dtype).T)], f"{p}.up")
            act = node("Mul", [gate, node("Sigmoid", [gate], f"{p}.sigmoid")], f"{p}.silu")
            h = node("Mul", [act, up], f"{p}.h")
            y = node("MatMul", [h, init(f"{p}.down.T", b.down.astype(dtype).T)], f"{p}.down")
        elif variant == "fp16_moe":
            g, u = gate_up(i, b.gate, b.up)
            fc1 = init(f"{p}.fc1", fused(g.astype(dtype), u.astype(dtype))[None])
            fc2 = init(f"{p}.fc2", b.down[None].astype(dtype))
            y = node("MoE", [x, router, fc1, "", fc2, ""], f"{p}.moe", domain="com.microsoft", k=1,
                     activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0)
        elif variant == "int4_current":
            (gb, gs), (ub, us) = gate_up(i, qblocks[i].gate, qblocks[i].up)
            db, ds = qblocks[i].down
            gu = node("MatMulNBits", [x, init(f"{p}.gate_up.q4", np.concatenate([gb, ub])),
                                      init(f"{p}.gate_up.scales", np.concatenate([gs, us]))], f"{p}.gate_up",
                      domain="com.microsoft", K=hidden, N=2 * inter, bits=4, block_size=BLOCK, accuracy_level=0)
            split = helper.make_node("Split", [gu, init(f"{p}.split", np.array([inter, inter], np.int64))],
                                     [f"{p}.gate", f"{p}.up"], name=f"{p}.split", axis=-1)
            nodes.append(split)
            act = node("Mul", [f"{p}.gate", node("Sigmoid", [f"{p}.gate"], f"{p}.sigmoid")], f"{p}.silu")
            h = node("Mul", [act, f"{p}.up"], f"{p}.h")
            y = node("MatMulNBits", [h, init(f"{p}.down.q4", db), init(f"{p}.down.scales", ds)], f"{p}.down",
                     domain="com.microsoft", K=inter, N=hidden, bits=4, block_size=BLOCK, accuracy_level=0)
        elif variant == "int4_qmoe":
            (gb, gs), (ub, us) = gate_up(i, qblocks[i].gate, qblocks[i].up)
            db, ds = qblocks[i].down
            fc1 = init(f"{p}.fc1", fused(gb.reshape(inter, -1), ub.reshape(inter, -1))[None])  # [1, 2F, H/2]
            fc1s = init(f"{p}.fc1.scales", fused(gs, us)[None])  # [1, 2F, H/32]
            fc2 = init(f"{p}.fc2", db.reshape(hidden, -1)[None])  # [1, H, F/2]
            fc2s = init(f"{p}.fc2.scales", ds[None])  # [1, H, F/32]
            y = node("QMoE", [x, router, fc1, fc1s, "", fc2, fc2s, ""], f"{p}.qmoe", domain="com.microsoft", k=1,
                     activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
                     expert_weight_bits=4, block_size=BLOCK, weights_prepacked=0)  # 0: raw [E, N, K/2], as given
        else:
            raise ValueError(f"unknown variant {variant!r}")
        x = node("Add", [x, y], f"{p}.residual")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="y"))
    graph = helper.make_graph(nodes, variant, [helper.make_tensor_value_info("x", elem, [1, tokens, hidden])],
                              [helper.make_tensor_value_info("y", elem, [1, tokens, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=10, producer_name="archc.moe_mlp_probe")


def save(model, path: Path) -> str:
    """Weights beside the graph (an fp16 chain of 22 blocks is ~1.5 GB, near protobuf's 2 GB)."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return str(path)


# Checking

def rel_error(y, ref, x) -> float:
    """max|y - ref| / max|ref - x|: measured against what the MLPs added to the input (the residual x
    would otherwise dominate the denominator and hide an MLP's error)."""
    import numpy as np

    y, d = y.astype(np.float64), ref - x.astype(np.float64)
    return float(np.abs(y - ref).max() / np.abs(d).max())


def check_row(variant, dtype, err) -> dict:
    return {"variant": variant, "dtype": dtype, "rel_error": err, "tol": TOL[dtype], "status": "pass" if err <= TOL[dtype] else "FAIL"}


def cpu_session(path_or_bytes, optimized: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def run_cpu(model, x, work: Path, name: str):
    return cpu_session(save(model, work / f"{name}.onnx")).run(None, {"x": x})[0]


def check_cpu(sizes: dict, seed: int, work: Path, variants: list[str]) -> tuple[list[dict], list[dict]]:
    """Every variant in fp32 and fp16 against the reference, then the negative controls (fp32) that must fail."""
    import numpy as np

    blocks = make_blocks(sizes["layers"], sizes["hidden"], sizes["inter"], seed)
    x32 = np.random.default_rng(seed + 1).standard_normal((1, 1, sizes["hidden"])).astype(np.float32)
    rows, controls = [], []
    for dtype in ("float32", "float16"):
        qblocks = quantize_blocks(blocks, dtype)
        x = x32.astype(dtype)
        for variant in variants:
            qb = qblocks if variant.startswith("int4") else None
            ref = reference(x, blocks, qb, dtype)
            y = run_cpu(build_model(variant, blocks, qb, dtype, 1), x, work, f"{variant}_{dtype}")
            rows.append(check_row(variant, dtype, rel_error(y, ref, x)))
            if dtype != "float32":
                continue
            for mistake in ("swap", "concat") if variant in MOE_VARIANTS else ("swap",):
                ym = run_cpu(build_model(variant, blocks, qb, dtype, 1, mistake), x, work, f"{variant}_{mistake}")
                err = rel_error(ym, ref, x)
                controls.append({"variant": variant, "dtype": dtype, "mistake": mistake, "rel_error": err,
                                 "status": "caught" if err >= CONTROL_MIN else "MISSED"})
    return rows, controls


def moe_output_quirk(seed: int) -> bool:
    """Whether the CPU MoE in fp16, its output being the graph's output, returns all zeros (onnxruntime 1.31
    does, while the same op feeding an Add is right): one block, no residual, output straight from MoE."""
    import numpy as np
    from onnx import helper

    b = make_blocks(1, 64, 128, seed)
    m = build_model("fp16_moe", b, None, "float16", 1)
    g = m.graph
    moe = next(n for n in g.node if n.op_type == "MoE")
    del g.node[:]
    g.node.append(moe)
    g.output[0].name = moe.output[0]
    x = np.random.default_rng(seed).standard_normal((1, 1, 64)).astype(np.float16)
    y = cpu_session(m.SerializeToString()).run(None, {"x": x})[0]
    assert np.any(reference(x, b, None, "float16") - x.astype(np.float64))  # the right answer is not zero
    return not bool(np.any(y))


def node_counts(device: str, seed: int, work: Path) -> dict:
    """Node types onnxruntime keeps after its optimizations, per block: the optimized 2-block chain less the
    1-block one, at small sizes (the fusions do not depend on the sizes)."""
    import onnx

    dtype = "float16" if device == "cuda" else "float32"
    out = {}
    for variant in VARIANTS:
        counts = []
        for layers in (1, 2):
            blocks = make_blocks(layers, 256, 512, seed)
            qb = quantize_blocks(blocks, dtype) if variant.startswith("int4") else None
            path = save(build_model(variant, blocks, qb, dtype, 1), work / f"count_{variant}_{layers}.onnx")
            opt = str(work / f"count_{variant}_{layers}.opt.onnx")
            try:
                if device == "cuda":
                    cuda_session(path, optimized=opt, graph=False)
                else:
                    cpu_session(path, optimized=opt)
            except Exception as e:  # recorded; the timing still runs (and says the same)
                counts = None
                out[variant] = {"error": " ".join(str(e).split())[:300]}
                break
            c: dict[str, int] = {}
            for n in onnx.load(opt, load_external_data=False).graph.node:
                c[n.op_type] = c.get(n.op_type, 0) + 1
            counts.append(c)
        if counts is None:
            continue
        ops = {op: counts[1].get(op, 0) - counts[0].get(op, 0) for op in sorted(set(counts[0]) | set(counts[1]))}
        ops = {op: n for op, n in ops.items() if n}
        out[variant] = {"nodes_per_block": sum(ops.values()), "ops": ops}
    return out


# CUDA timing

def cuda_session(path: str, optimized: str | None = None, graph: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1" if graph else "0"})])


def time_chain(path: str, x, warmup: int, runs: int, device: str, graph: bool) -> tuple[float, object]:
    """(median seconds per run of the chain, the output on the host). cuda: fixed device buffers bound once,
    with `graph` the first run captures a CUDA graph that each later run replays. cpu (the smoke run of this
    same code): CPU buffers, no graph."""
    if device == "cuda":
        sess = cuda_session(path, graph=graph)
    elif device == "cpu":
        sess = cpu_session(path)
    else:
        raise ValueError(f"unknown device {device!r}")
    return time_session(sess, x, warmup, runs, device, graph)


def time_session(sess, x, warmup: int, runs: int, device: str, graph: bool) -> tuple[float, object]:
    """time_chain's timing of an open session (also benchmarks/ort_ops_check.py's, whose sessions register the op
    library): (median seconds per run, the output on the host)."""
    import numpy as np
    import onnxruntime as ort

    # On cpu an OrtValue made from a numpy array uses that array's memory: y_host must outlive y_dev (an
    # inline np.zeros_like(x) here gave garbage outputs once it was collected); on cuda they are copies.
    y_host = np.zeros_like(x)
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    y_dev = ort.OrtValue.ortvalue_from_numpy(y_host, device, 0)
    io = sess.io_binding()
    io.bind_ortvalue_input("x", x_dev)
    io.bind_ortvalue_output("y", y_dev)
    ro = ort.RunOptions()
    if device == "cuda" and graph:
        ro.add_run_config_entry("gpu_graph_id", "1")
    for _ in range(warmup):
        sess.run_with_iobinding(io, ro)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run_with_iobinding(io, ro)  # returns after onnxruntime synchronizes the device
        times.append(time.perf_counter() - t0)
    y = y_dev.numpy().copy()
    del io, sess, x_dev, y_dev
    return statistics.median(times), y


def run_timing(sizes: dict, seed: int, work: Path, warmup: int, runs: int, variants: list[str], device: str,
               graph: bool) -> list[dict]:
    """Each variant's fp16 chain: checked against the reference, then timed. A variant that fails under CUDA
    graph capture is tried again without it (recorded as cuda_graph false), so one op's refusal costs the
    others nothing."""
    import numpy as np

    t0 = time.perf_counter()
    blocks = make_blocks(sizes["layers"], sizes["hidden"], sizes["inter"], seed)
    qblocks = quantize_blocks(blocks, "float16") if any(v.startswith("int4") for v in variants) else None
    x = (np.random.default_rng(seed + 1).standard_normal((1, 1, sizes["hidden"])) * 0.5).astype(np.float16)
    print(f"weights made and quantized in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows, refs = [], {}
    for variant in variants:
        qb = qblocks if variant.startswith("int4") else None
        row = {"variant": variant, "dtype": "float16"}
        path = save(build_model(variant, blocks, qb, "float16", 1), work / f"{variant}.onnx")
        for use_graph in (True, False) if (graph and device == "cuda") else (False,):
            try:
                med, y = time_chain(path, x, warmup, runs, device, use_graph)
            except Exception as e:  # a kernel onnxruntime lacks or refuses: recorded, the other variants still run
                row.update(status="error", **{"graph_error" if use_graph else "error": " ".join(str(e).split())[:500]})
                continue
            kind = variant.split("_")[0]  # the fp16 variants share their weights, as do the int4 ones
            if kind not in refs:
                refs[kind] = reference(x, blocks, qb, "float16")
            row.update(check_row(variant, "float16", rel_error(y, refs[kind], x)), cuda_graph=use_graph and device == "cuda",
                       us_per_chain=med * 1e6, us_per_block=med * 1e6 / sizes["layers"])
            break
        for f in work.glob(f"{variant}.onnx*"):
            f.unlink()
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    return rows


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["  ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:>14.3g}" if isinstance(v, float) else f"{v!s:>14}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moe_mlp_probe", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON results file")
    outputs.add_force(ap)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu: correctness check and negative controls at small sizes; cuda: check and timing at LLaMA-1.1B sizes")
    ap.add_argument("--layers", type=int, help="MLP blocks in the chain (cpu 2, cuda 22)")
    ap.add_argument("--hidden", type=int, help="hidden size (cpu 256, cuda 2048)")
    ap.add_argument("--inter", type=int, help="MLP inner size (cpu 512, cuda 5632)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cuda-graph", action="store_true", help="time without CUDA graph capture (launch overhead included)")
    ap.add_argument("--work", help="folder for the model files (default: a temporary folder, removed at the end)")
    a = ap.parse_args(argv)
    outputs.check_outputs(ap, a.force, ("--out", a.out))
    variants = a.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"moe_mlp_probe: --variants {','.join(bad)}: unknown; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    sizes = dict(CPU_SIZES if a.device == "cpu" else CUDA_SIZES)
    for k in sizes:
        if getattr(a, k) is not None:
            sizes[k] = getattr(a, k)
    if sizes["hidden"] % BLOCK or sizes["inter"] % BLOCK or min(sizes.values()) < 1:
        print(f"moe_mlp_probe: --hidden {sizes['hidden']} / --inter {sizes['inter']}: must be positive multiples of {BLOCK}",
              file=sys.stderr)
        return 2

    import onnxruntime as ort

    result = {"kind": "archc-moe-mlp-probe", "device": a.device, "onnxruntime": ort.__version__, "sizes": sizes,
              "tolerance": TOL, "control_min": CONTROL_MIN}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ok = True
        if a.device == "cpu":
            rows, controls = check_cpu(sizes, a.seed, work, variants)
            result.update(check=rows, negative_controls=controls, nodes=node_counts("cpu", a.seed, work),
                          cpu_quirks={"fp16_moe_as_graph_output_returns_zeros": moe_output_quirk(a.seed)})
            print(table(rows, ["variant", "dtype", "rel_error", "tol", "status"]))
            print(table(controls, ["variant", "mistake", "rel_error", "status"]))
            ok = all(r["status"] == "pass" for r in rows) and all(c["status"] == "caught" for c in controls)
            timing = run_timing(sizes, a.seed, work, a.warmup, a.runs, variants, "cpu", False)  # smoke: CPU figures mean little
        elif a.device == "cuda":
            result["nodes"] = node_counts("cuda", a.seed, work)
            timing = run_timing(sizes, a.seed, work, a.warmup, a.runs, variants, "cuda", not a.no_cuda_graph)
        else:
            raise ValueError(f"unknown device {a.device!r}")
        result.update(timing=timing, warmup=a.warmup, runs=a.runs)
        print(table(timing, ["variant", "us_per_block", "us_per_chain", "rel_error", "status", "cuda_graph"]))
        ok = ok and all(r["status"] == "pass" for r in timing)
        for v, n in result["nodes"].items():
            print(f"{v:>14}: " + (f"{n['nodes_per_block']} nodes per block after optimization: {n['ops']}" if "ops" in n else n["error"]))
    result["ok"] = ok
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
