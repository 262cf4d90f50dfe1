"""CUDA lowering: onnxruntime's com.microsoft fused operators where they fit, else the portable lowering.

Overrides (each node falls back to exporters/onnx_lowering_portable.py on its own, with the reason
recorded in the model's `archc.lowering` metadata):
- attention -> GroupQueryAttention in its own packed layout (see _packed_layout): one q|k|v GEMM fed
  as the packed query, RoPE inside the op (cos/sin caches + position_ids gathered into the layout;
  a partial rotary width gets a com.microsoft RotaryEmbedding in front instead), causal and
  sliding-window masking inside the fused kernels (no bias tensor), past and present may share one
  max-length buffer. Its CUDA kernels take fp16/bf16 only, so fp32 falls back; so do ALiBi (an
  additive bias would force the op's slow unfused path), prefix masks (the op is always causal) and
  head sizes not a multiple of 16. The fallback is MultiHeadAttention (fp32/fp16, the mask as
  attention_bias; q|k|v from one GEMM + Split, the q|k|v bias inside the op where no RoPE precedes
  it) when kv_heads == n_heads, else the portable Attention.
- residual + following norm -> SkipLayerNormalization / SkipSimplifiedLayerNormalization: the
  residual sum comes out of the fused op (output 3) and feeds the rest of the stream. The bias of
  the attention-output / MLP-down projection feeding that residual is the SkipLayerNormalization's
  `bias` input (see _bias_folds).
- packed layout once: when every attention node is a GroupQueryAttention (kv_cache "shared"), the
  token stream is rotated into the op's packed layout once, at the inputs (input_ids and
  position_ids, GatherElements), and back once, in front of the head (GatherND). Everything between
  is position-wise except attention, which then needs no rotation of its own (per-layer rotation
  was 3 GatherND per layer, ~135 us of a 1.43 ms decode step on the 1.1B shape).
- gated MLP -> a MatMul each for gate and up, activation, Mul, as onnxruntime-genai's builder does
  (GATE_UP = two_gemms); or one MatMul with [gate; up] concatenated ([d_model, 2 d_ff] initializer),
  Split, activation, Mul (one_gemm: one GEMM launch fewer per decode step, but the Split copies the
  prefill's [B, S, 2 d_ff]; see GATE_UP). With --quant: one_gemm's stacked MatMulNBits + Split (GATE_UP_QUANT);
  GateUp.qmoe, selectable for A/B runs, makes a SwiGLU MLP one com.microsoft QMoE node with a single expert
  (gate|up interleaved in fc1; _lower_qmoe) where QMoE can take it (_qmoe_unfit): measured slower overall.
  With --kernels archc (Ctx.kernels), GateUp.archc_op: an fp16 SwiGLU MLP's gate|up, SiLU and Mul as one archc.GatedMLP
  custom op (exporters/ort_ops; _lower_archc_op) where it can take the MLP (_archc_op_unfit); with --quant int4 sym b32
  one archc.GatedMLPNBits on one_gemm's stacked MatMulNBits bytes (_nbits_op_unfit).
- --kernels archc also makes q|k|v (GroupQueryAttention's packed GEMM, MultiHeadAttention's), o and down archc.Linear
  (-NBits) where they fit, folds an RMSNorm into the projections that read it (gamma input) and a residual Add into the
  projection that feeds it (residual input): no SkipSimplifiedLayerNormalization is left in a LLaMA-style layer. The plan
  decides it (exporters/onnx_archc_folds.py); a norm whose residual sum an archc Linear made and that no archc op takes
  (the final norm) is a SimplifiedLayerNormalization; everything not folded keeps the fusions above.

Why node counts matter: where CUDA graphs are out (MultiHeadAttention: BLOOM, GLM), a decode step is
bound by onnxruntime's ~7 us of host time per node (benchmarks/node_count.py counts them per layer).
A bias Add + Gelu is left to onnxruntime's optimizer, which fuses it into FastGelu on CUDA
(profile of BLOOM on an H200: one FastGelu kernel per layer, benchmarks/results/profile_bloom.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from onnx import TensorProto

from archc.components import ComponentKind, NormSettings, UnknownSetting
from archc.dtypes import DType
from archc.spec import Activation, MaskKind, NormKind
from exporters import onnx_archc_folds as folds_
from exporters import onnx_lowering_portable as portable
from exporters.onnx_archc_folds import ArchcFolds
from exporters.onnx_export import ORT_OPS_DOMAIN, Ctx, Kernels, KvCache, WeightLayout, input_of, inputs_of
from exporters.quantize import qmoe_weight

LOWERING = "cuda ONNX lowering"

# Projections' weight layout on this target (WeightLayout): chosen by measurement, benchmarks/gemv_layout.py
# and benchmarks/ab_decode.py (RESULTS.md, optimisation log).
WEIGHT_LAYOUT = WeightLayout.in_out


class GateUp(str, Enum):
    """How a gated MLP's gate and up projections are computed on this target."""

    one_gemm = "one_gemm"  # x @ [Wg; Wu] as one MatMul, then Split in halves (one GEMM launch fewer per layer)
    two_gemms = "two_gemms"  # a MatMul each, as onnxruntime-genai's builder does (no Split copy of [B, S, 2F])
    # --quant only: the whole MLP as ONE com.microsoft QMoE node with a single expert, k = 1 (gate|up interleaved
    # in fc1, SwiGLU and down inside the op). H200, TinyLlama shape, M = 1 under CUDA graphs
    # (benchmarks/moe_mlp_probe.py): 20.7 us per MLP block against 26.1 us for one_gemm's MatMulNBits + Split +
    # QuickGelu + Mul + MatMulNBits. Where QMoE cannot take the MLP (_qmoe_unfit) the MLP is one_gemm's.
    qmoe = "qmoe"
    # --kernels archc only: gate|up, SiLU and Mul as ONE archc.GatedMLP (archc's onnxruntime custom-op library,
    # exporters/ort_ops: a warp-per-row CUDA kernel at M <= 4, cuBLAS + silu*mul beyond) on [Wg; Wu] in torch's
    # [out, in] layout, then the down MatMul. A hand-written M = 1 kernel of this shape ran 13.3 us against 20.1 us for
    # cuBLAS's two GEMMs + SiLU + Mul on an H200 (benchmarks/gemv_kernel_probe.py); benchmarks/ort_ops_check.py measures
    # the op inside onnxruntime. With --quant int4 (sym, b32): archc.GatedMLPNBits on the stacked gate|up's MatMulNBits
    # bytes (benchmarks/ort_ops_nbits_check.py). Where the op cannot take the MLP (_archc_op_unfit) the MLP is GATE_UP's /
    # GATE_UP_QUANT's.
    archc_op = "archc_op"


# Chosen by measurement (benchmarks/prefill_vs_genai.py, profile_ort.py --gate-up; RESULTS.md, optimisation log):
# on the TinyLlama-1.1B shape (H200, fp16) the Split copies [B, S, 2 d_ff] in the prefill (22 x 9.5 us at 1 x 512,
# 830 us at 1 x 2048, 3.1 ms at 16 x 512), while two M = 1 GEMMs cost the decode step about what the Split saves
# (GPU busy 1316 against 1305 us). Dense weights only; GATE_UP_QUANT is the same choice for --quant exports
# (MatMulNBits), measured apart (benchmarks/ab_decode.py gate_up_quant=..., RESULTS.md optimisation log): int4 decode
# 826/833 tok/s stacked against 799/839 as two MatMulNBits in two rounds, no difference, so the stacked one stays.
# QMoE (GateUp.qmoe) is selectable but not the default: in the whole model (benchmarks/ab_decode.py, H200, int4
# --quant-head, results/ab_qmoe_h200.json) it gained only 1-3% in decode (876.0 / 853.5 against 851.0 / 845.3 tok/s,
# two rounds, same tokens) and more than doubled the prefill (10.9 / 11.4 against 4.8 / 5.0 ms at 1 x 512; 34.6 ms
# at 1 x 2048, where genai takes 13.0): onnxruntime 1.31's MoE GEMM profiler finds no config for the [2 d_ff, d_model]
# fc1 ("No valid GEMM config found"), so M > 1 runs a slow path. The fp16 MoE op was slower even at M = 1 (57.7
# against 34.1 us per block, moe_mlp_probe), so GATE_UP has no MoE member.
GATE_UP = GateUp.two_gemms
GATE_UP_QUANT = GateUp.one_gemm

MS = "com.microsoft"
I32 = TensorProto.INT32


class AttentionOp(str, Enum):
    """Which operator an attention node becomes on this target (_attention_op)."""

    gqa_packed = "gqa_packed"  # GroupQueryAttention on one packed q|k|v GEMM (_qkv_packed), RoPE inside the op
    gqa_rotary = "gqa_rotary"  # partial rotary width: q, k, v apart, com.microsoft RotaryEmbedding, GroupQueryAttention
    mha = "mha"  # com.microsoft MultiHeadAttention (GroupQueryAttention cannot take it, MultiHeadAttention can)
    portable = "portable"  # the portable Attention (neither can)


# ------------------------------------------------------------------------------------------------
# The plan: decided once, before any node is lowered


@dataclass
class PackedLayout:
    """GroupQueryAttention's packed token layout (see _packed_layout): the ONNX values that rotate
    the stream into it and back, and the op's sequence-length inputs."""

    to_packed: str | None  # [B,S,1] GatherND index; None where the stream is rotated once at the inputs
    to_packed_2d: str  # [B,S]: packed slot i holds token to_packed_2d[b, i]
    from_packed: str  # [B,S,1] GatherND index back to the contract's order
    seqlens_k: str  # int32 [B]: sum(attention_mask) - 1
    total: str  # int32 scalar: the attention mask's width


@dataclass
class CudaPlan:
    """What the cuda lowering decided for the whole graph before lowering any node."""

    skip_fuse: dict[str, str]  # residual node -> the norm node whose SkipLayerNormalization emits it
    bias_fold: dict[str, str]  # branch node -> its output-projection bias, added inside that SkipLayerNormalization
    gqa_unfit: dict[str, str | None]  # attention node -> why GroupQueryAttention cannot take it (None: it can)
    attention_op: dict[str, AttentionOp]  # attention node -> the operator it becomes
    rotated_once: bool  # every attention is a GroupQueryAttention: the stream is rotated into its layout once
    archc: ArchcFolds = field(default_factory=ArchcFolds)  # --kernels archc: projections, norms, residuals its ops take
    layout: PackedLayout | None = field(default=None)  # made on first use, then shared


def plan(ctx: Ctx) -> None:
    g = ctx.graph
    ctx.weight_layout = WEIGHT_LAYOUT
    order = {n: i for i, n in enumerate(g.nodes())}
    attn = g.nodes(ComponentKind.attention)
    reasons = {a: gqa_unfit(ctx, a) for a in attn}
    ops = {a: _attention_op(ctx, a, reasons[a]) for a in attn}
    archc = _plan_archc(ctx, order, ops)
    # residuals in graph order: a residual's skip (an earlier residual) is decided before it (folds_.fold_residual)
    fuse: dict[str, str] = {}
    set_at = dict(order)  # where each node's ONNX value is made: a skip-fused residual's by its norm
    for r in sorted(g.nodes(ComponentKind.residual), key=order.__getitem__):
        if ctx.kernels is Kernels.archc and folds_.fold_residual(ctx, r, order, set_at, archc):
            continue
        n = _skip_fuse_norm(ctx, r, order, archc.folded_norms())
        if n is not None:
            fuse[r], set_at[r] = n, order[n]
    rotated_once = bool(attn) and all(r is None for r in reasons.values())
    ctx.cuda_plan = CudaPlan(skip_fuse=fuse, bias_fold=_bias_folds(ctx, fuse), gqa_unfit=reasons, attention_op=ops,
                             rotated_once=rotated_once, archc=archc)
    if rotated_once:
        ctx.kv_cache = KvCache.shared  # past and present may be one max-length buffer (GQA)


def _skip_fuse_norm(ctx: Ctx, r: str, order: dict[str, int], folded: set[str]) -> str | None:
    """The norm whose SkipLayerNormalization-family op emits residual `r` (its sum is the op's output 3), or None:
    the norm reading r first in graph order (so the sum exists before anything else reads it), alpha 1, an op of the
    family computes it, and no archc op took the norm (folds_)."""
    g = ctx.graph
    if g.settings(r).alpha != 1.0:
        return None
    consumers = sorted(g.g.successors(r), key=order.__getitem__)
    if not consumers:
        return None
    n = consumers[0]
    if g.node(n)["kind"] != ComponentKind.norm.value or g.input_of(n, "x") != r or n in folded:
        return None
    return n if _skip_fusable(n, g.settings(n)) else None


def _plan_archc(ctx: Ctx, order: dict[str, int], ops: dict[str, AttentionOp]) -> ArchcFolds:
    """--kernels archc: which projections and norms archc's ops take (exporters/onnx_archc_folds.py), from what this
    lowering does with each node; nothing for --kernels onnxruntime."""
    if ctx.kernels is Kernels.onnxruntime:
        return ArchcFolds()
    if ctx.kernels is not Kernels.archc:
        raise UnknownSetting("kernels", "kernels", ctx.kernels, LOWERING)
    g = ctx.graph
    qkv_why = {a: _qkv_gemm_unfit(op) for a, op in ops.items()}
    out_why: dict[str, str | None] = {a: _o_gemm_unfit(op) for a, op in ops.items()}
    gated_why = {}
    for m in g.nodes(ComponentKind.mlp):
        route, not_archc = _mlp_route(ctx, m, g.node(m))
        out_why[m] = _down_gemm_unfit(route)
        gated_why[m] = None if route is GateUp.archc_op else not_archc
    return folds_.plan_folds(ctx, order, qkv_why, out_why, gated_why)


def _qkv_gemm_unfit(op: AttentionOp) -> str | None:
    """Why an attention's q|k|v is not one plain GEMM an archc Linear could be (None: it is, _qkv_packed)."""
    if op in (AttentionOp.gqa_packed, AttentionOp.mha):
        return None
    if op is AttentionOp.gqa_rotary:
        return "partial rotary width: q, k and v apart"
    if op is AttentionOp.portable:
        return "the portable Attention's own projections"
    raise UnknownSetting("attention", "op", op, LOWERING)


def _o_gemm_unfit(op: AttentionOp) -> str | None:
    """Why an attention's o projection is not one this lowering emits (None: it is)."""
    if op in (AttentionOp.gqa_packed, AttentionOp.gqa_rotary, AttentionOp.mha):
        return None
    if op is AttentionOp.portable:
        return "the portable Attention's own projections"
    raise UnknownSetting("attention", "op", op, LOWERING)


def _down_gemm_unfit(route: GateUp | None) -> str | None:
    """Why an MLP's down projection is not one this lowering emits (None: it is), by its _mlp_route."""
    if route is None or route in (GateUp.archc_op, GateUp.one_gemm, GateUp.two_gemms):
        return None
    if route is GateUp.qmoe:
        return "down inside QMoE"
    raise UnknownSetting("mlp", "gate_up", route, LOWERING)


def _archc(ctx: Ctx) -> ArchcFolds:
    return _plan(ctx).archc


def _skip_fusable(name: str, s: NormSettings) -> bool:
    """Whether a SkipLayerNormalization-family op computes this norm."""
    if s.norm is NormKind.layernorm:
        return True  # SkipLayerNormalization, with or without beta
    if s.norm is NormKind.rmsnorm:
        return not s.bias  # SkipSimplifiedLayerNormalization has no beta
    raise UnknownSetting(name, "norm", s.norm, LOWERING)


def _plan(ctx: Ctx) -> CudaPlan:
    assert ctx.cuda_plan is not None, "onnx_lowering_cuda.plan runs before any cuda lowering"
    return ctx.cuda_plan


OUT_BIAS = {"attention": "o.bias", "mlp": "down.bias"}  # a branch's output-projection bias


def _bias_folds(ctx: Ctx, fuse: dict[str, str]) -> dict[str, str]:
    """{branch node: its output-projection bias} for biases handed to the SkipLayerNormalization that
    fuses the residual the branch feeds (its `bias` input, added to input + skip in the op and
    included in the residual sum, output 3), instead of an Add after the projection.

    Only where the projection feeds nothing but that residual, and one bias per residual: a parallel
    block's second branch keeps its Add. Not SkipSimplifiedLayerNormalization (RMSNorm): its bias is
    input 3 in the schema, but onnxruntime sources disagree across versions on which index the CPU
    and CUDA kernels read (4 in older CPU code), which cannot be checked here on CUDA; no library
    family has RMSNorm with biased projections."""
    g, folds = ctx.graph, {}
    for r, n in fuse.items():
        kind = g.settings(n).norm
        if kind is NormKind.rmsnorm:
            continue
        if kind is not NormKind.layernorm:
            raise UnknownSetting(n, "norm", kind, LOWERING)
        for b in g.inputs_at(r, "branch"):
            local = OUT_BIAS.get(g.node(b)["kind"])
            if local in g.node(b)["params"] and list(g.g.successors(b)) == [r]:
                folds[b] = local
                break
    return folds


def _without_folded_bias(ctx: Ctx, name: str, node: dict) -> dict:
    """The node as its lowering should see it: without the bias a SkipLayerNormalization adds."""
    local = _plan(ctx).bias_fold.get(name)
    return node if local is None else dict(node, params={k: v for k, v in node["params"].items() if k != local})


def _note_folded_bias(ctx: Ctx, name: str) -> None:
    """Recorded without layer names, so `archc compile`'s summary groups the layers in one line."""
    local = _plan(ctx).bias_fold.get(name)
    if local is not None:
        ctx.lowering[name] = f"{ctx.lowering.get(name, 'portable')}; {local} added in the residual's SkipLayerNormalization"


def _skip_op(name: str, s: NormSettings) -> str:
    if s.norm is NormKind.layernorm:
        return "SkipLayerNormalization"
    if s.norm is NormKind.rmsnorm:
        return "SkipSimplifiedLayerNormalization"
    raise UnknownSetting(name, "norm", s.norm, LOWERING)


def lower_residual(ctx: Ctx, name: str, node: dict):
    archc = _archc(ctx)
    if name in archc.residual_out:  # the last branch's archc Linear made the sum (onnx_archc_folds)
        out = ctx.env[archc.residual_out[name]]
        for b in archc.residual_rest[name]:
            out = ctx.op("Add", [out, ctx.env[b]])
        ctx.lowering[name] = folds_.residual_words(ctx, archc, name)
        return out
    fused_into = _plan(ctx).skip_fuse.get(name)
    if fused_into is None:
        y = portable.lower_residual(ctx, name, node)
        how = "portable"
    else:
        y = None  # the norm node emits the sum
        how = f"cuda:{_skip_op(fused_into, ctx.graph.settings(fused_into))} (fused into {fused_into})"
    ctx.lowering[name] = how + (f" (not folded into an archc Linear: {archc.residual_why[name]})" if name in archc.residual_why else "")
    return y


def lower_norm(ctx: Ctx, name: str, node: dict):
    archc = _archc(ctx)
    if name in archc.folded_norms():  # its consumers apply it (onnx_archc_folds.stream_in): no op, no value
        ctx.lowering[name] = folds_.norm_words(ctx, archc, name)
        return None
    not_folded = f" (not folded into archc ops: {archc.norm_why[name]})" if name in archc.norm_why else ""
    y = _lower_norm(ctx, name, node)
    ctx.lowering[name] = ctx.lowering.get(name, "portable") + not_folded
    return y


def _lower_norm(ctx: Ctx, name: str, node: dict):
    r = ctx.graph.input_of(name, "x")
    plan_ = _plan(ctx)
    s: NormSettings = node["settings"]
    if r in plan_.archc.residual_out and s.norm is NormKind.rmsnorm and not s.bias:
        # the sum came out of an archc Linear: the norm alone, onnxruntime's fused RMSNorm kernel (fp32 statistics)
        ctx.lowering[name] = "cuda:SimplifiedLayerNormalization (on the residual sum an archc Linear made)"
        return ctx.op("SimplifiedLayerNormalization", [input_of(ctx, name, "x"), portable.norm_scale(ctx, name, node)],
                      axis=-1, epsilon=float(s.eps), stash_type=1)
    if plan_.skip_fuse.get(r) != name:
        return portable.lower_norm(ctx, name, node)
    op = _skip_op(name, s)
    skip, branches = input_of(ctx, r, "skip"), inputs_of(ctx, r, "branch")
    x = branches[0] if len(branches) == 1 else ctx.op("Sum", branches)
    ins = [x, skip, portable.norm_scale(ctx, name, node)]
    if s.norm is NormKind.layernorm and s.bias:
        ins.append(ctx.weight(f"{name}.bias"))
    folded = [(b, plan_.bias_fold[b]) for b in ctx.graph.inputs_at(r, "branch") if b in plan_.bias_fold]
    for b, local in folded:  # at most one (see _bias_folds); input 4, after the optional beta
        ins = ins + [""] * (4 - len(ins)) + [ctx.weight(f"{b}.{local}")]
    y, total = ctx.fresh(f"{op}"), ctx.fresh("input_skip_bias_sum")
    ctx.op(op, ins, domain=MS, out=[y, "", "", total], epsilon=float(s.eps))  # mean, inv_std_var unused
    ctx.env[r] = total
    ctx.lowering[name] = f"cuda:{op}" + "".join(f" (+ {ctx.graph.node(b)['role']} {local} as its bias input)" for b, local in folded)
    return y


# ------------------------------------------------------------------------------------------------
# Attention


def gqa_unfit(ctx: Ctx, name: str) -> str | None:
    """Why GroupQueryAttention cannot take this attention node (None: it can)."""
    g = ctx.graph
    mask = g.input_of(name, "mask")
    kind = g.settings(mask).mask
    if kind is MaskKind.causal:  # sliding windows too: local_window_size
        mask_reason = None
    elif kind is MaskKind.prefix:
        mask_reason = "prefix mask (the op is always causal)"
    else:
        raise UnknownSetting(mask, "mask", kind, LOWERING)
    if ctx.dtype is DType.float32 and not ctx.fused_fp32:
        return "fp32 (its CUDA kernels take fp16/bf16)"
    if g.settings(name).head_dim % 16:
        return "head_size % 16 != 0"
    if g.input_of(name, "bias") is not None:
        return "ALiBi bias"
    return mask_reason


def _mha_unfit(ctx: Ctx, s) -> str | None:
    """Why MultiHeadAttention cannot take an attention node GroupQueryAttention cannot take (None: it can).
    Its CUDA kernel is registered for float and float16 only (onnxruntime 1.31): a bf16 model would have no kernel
    for it anywhere, so bf16 takes the portable Attention."""
    if ctx.dtype is DType.bfloat16:
        return "no bf16 CUDA kernel"
    if s.kv_heads < s.n_heads:
        return "kv_heads < n_heads"
    return None


def _attention_op(ctx: Ctx, name: str, gqa_reason: str | None) -> AttentionOp:
    g = ctx.graph
    s = g.settings(name)
    if gqa_reason is not None:
        return AttentionOp.portable if _mha_unfit(ctx, s) is not None else AttentionOp.mha
    rot = g.input_of(name, "rotary")
    if rot is None or g.settings(rot).rotary_dim == s.head_dim:
        return AttentionOp.gqa_packed
    return AttentionOp.gqa_rotary


def lower_attention(ctx: Ctx, name: str, node: dict):
    portable.check_kernel(name, node["settings"].kernel)  # onnxruntime picks the kernel (see check_kernel)
    y = _lower_attention(ctx, name, _without_folded_bias(ctx, name, node))
    if ctx.kernels is Kernels.archc:
        archc = _archc(ctx)
        ctx.lowering[name] += f"; {folds_.words(ctx, archc, name, folds_.QKV)} + {folds_.words(ctx, archc, name, folds_.O)}"
    _note_folded_bias(ctx, name)
    return y


def _lower_attention(ctx: Ctx, name: str, node: dict):
    reason = _plan(ctx).gqa_unfit[name]
    op = _plan(ctx).attention_op[name]
    if op is AttentionOp.mha:
        return _multi_head_attention(ctx, name, node, reason)
    if op is AttentionOp.portable:
        why_not = _mha_unfit(ctx, node["settings"])
        ctx.lowering[name] = f"portable (not GroupQueryAttention: {reason}; not MultiHeadAttention: {why_not})"
        return portable.lower_attention(ctx, name, node)
    s, p = node["settings"], node["params"]
    am = ctx.env["attention_mask"]
    rot = input_of(ctx, name, "rotary")
    window = ctx.graph.settings(ctx.graph.input_of(name, "mask")).sliding_window
    lay = _packed_layout(ctx, am)
    once = _rotated_once(ctx)  # the stream is already in the packed layout (see lower_input)

    def to_packed(t: str) -> str:
        return t if once else ctx.op("GatherND", [t, lay.to_packed], batch_dims=1)

    past_k, past_v = portable.cache_io(ctx, node)
    attrs = dict(domain=MS, num_heads=s.n_heads, kv_num_heads=s.kv_heads, scale=float(s.softmax_scale),
                 local_window_size=window if window else -1)
    if op is AttentionOp.gqa_packed:
        # one q|k|v projection, packed into the op's query input; RoPE inside the op, at the
        # packed layout's positions, which are cumsum(mask) - 1 (see _packed_layout)
        qkv = _qkv_packed(ctx, name, node)
        qkv = to_packed(qkv)
        ins = [qkv, "", "", past_k, past_v, lay.seqlens_k, lay.total]
        if rot is not None:
            cos, sin = rot.cache(ctx)
            pos = to_packed(rot.positions)
            ins += [cos, sin, pos]
            attrs.update(do_rotary=1, rotary_interleaved=rot.interleaved)
            how = "GroupQueryAttention (packed qkv, rotary inside)"
        else:
            how = "GroupQueryAttention (packed qkv)"
        y, pk, pv = ctx.op("GroupQueryAttention", ins, 3, **attrs)
    elif op is AttentionOp.gqa_rotary:  # partial rotary width: com.microsoft RotaryEmbedding in front of the op
        q, k, v = portable.qkv(ctx, name, node)
        cos, sin = rot.cache(ctx)
        kw = dict(interleaved=rot.interleaved, rotary_embedding_dim=rot.dim, domain=MS)
        q = ctx.op("RotaryEmbedding", [q, rot.positions, cos, sin], num_heads=s.n_heads, **kw)
        k = ctx.op("RotaryEmbedding", [k, rot.positions, cos, sin], num_heads=s.kv_heads, **kw)
        q, k, v = (to_packed(t) for t in (q, k, v))
        y, pk, pv = ctx.op("GroupQueryAttention", [q, k, v, past_k, past_v, lay.seqlens_k, lay.total], 3, **attrs)
        how = "RotaryEmbedding + GroupQueryAttention"
    else:
        raise UnknownSetting(name, "attention op", op, LOWERING)
    if not once:
        y = ctx.op("GatherND", [y, lay.from_packed], batch_dims=1)
    portable.cache_out(ctx, node, pk, pv, dim="present_sequence_length")
    ctx.lowering[name] = f"cuda:{how}"
    return folds_.out_projection(ctx, _archc(ctx), name, y, folds_.O, p)


def _multi_head_attention(ctx: Ctx, name: str, node: dict, why: str) -> str:
    """com.microsoft MultiHeadAttention (fp32/fp16, CUDA kernels with an additive bias) for MHA nodes
    GroupQueryAttention cannot take: the mask node's [B,1,S,T] mask (+ ALiBi [B,H,1,T]) as
    attention_bias, past/present concatenated by the op; RoPE in front (com.microsoft RotaryEmbedding).

    q, k and v come from one GEMM (x @ [Wq; Wk; Wv]^T) and one Split, not three MatMuls. The
    op's packed-QKV input would save the Split, but onnxruntime takes it without past only. Without
    RoPE the [bq; bk; bv] bias goes in as the op's own `bias` input ([3 hidden], added to q, k and v
    inside the op's transpose kernels, so the present cache holds k + bk as before); with RoPE the
    bias must precede the rotation, so it stays one Add on the GEMM output."""
    s, p = node["settings"], node["params"]
    rot = input_of(ctx, name, "rotary")
    bias_inside = "q.bias" in p and rot is None
    qkv = _qkv_packed(ctx, name, node, add_bias=not bias_inside)
    hq, hkv = s.n_heads * s.head_dim, s.kv_heads * s.head_dim
    q, k, v = ctx.op("Split", [qkv, ctx.const(np.array([hq, hkv, hkv], np.int64), "split")], 3, axis=-1)
    bias = ctx.weight_concat([f"{name}.{t}.bias" for t in "qkv"], f"{name}.qkv.bias") if bias_inside else ""
    if rot is not None:
        cos, sin = rot.cache(ctx)
        kw = dict(interleaved=rot.interleaved, rotary_embedding_dim=rot.dim, domain=MS)
        q = ctx.op("RotaryEmbedding", [q, rot.positions, cos, sin], num_heads=s.n_heads, **kw)
        k = ctx.op("RotaryEmbedding", [k, rot.positions, cos, sin], num_heads=s.kv_heads, **kw)
    past_k, past_v = portable.cache_io(ctx, node)
    y, pk, pv = ctx.op("MultiHeadAttention", [q, k, v, bias, "", portable.attention_bias(ctx, name), past_k, past_v], 3,
                       domain=MS, num_heads=s.n_heads, scale=float(s.softmax_scale))
    portable.cache_out(ctx, node, pk, pv)
    how = "q|k|v one GEMM + Split" + (", bias inside the op" if bias_inside else ", bias Add before RoPE" if "q.bias" in p else "")
    ctx.lowering[name] = f"cuda:MultiHeadAttention (not GroupQueryAttention: {why}; {how})"
    return folds_.out_projection(ctx, _archc(ctx), name, y, folds_.O, p)


def _qkv_packed(ctx: Ctx, name: str, node: dict, add_bias: bool = True) -> str:
    """x @ [Wq; Wk; Wv]^T (+ [bq; bk; bv] unless add_bias is False): one GEMM, [B, S, (H + 2 KV) * hd]; with
    --kernels archc one archc Linear where it fits, applying the RMSNorm in front where the plan folded it (then x is
    the norm's input, onnx_archc_folds.stream_in)."""
    archc, fulls = _archc(ctx), [f"{name}.{t}.weight" for t in "qkv"]
    if folds_.is_linear(archc, name, folds_.QKV):  # no bias (onnx_archc_folds.linear_unfit)
        x, norm = folds_.stream_in(ctx, archc, name)
        return folds_.linear(ctx, x, fulls, f"{name}.qkv.weight", norm=norm)
    assert name not in archc.gamma, "a folded norm's consumers compute their first projection as an archc op"
    x, p = input_of(ctx, name, "x"), node["params"]
    y = ctx.matmul_wt(x, [f"{name}.{t}.weight" for t in "qkv"], f"{name}.qkv.weight")
    if add_bias and "q.bias" in p:
        y = ctx.op("Add", [y, ctx.weight_concat([f"{name}.{t}.bias" for t in "qkv"], f"{name}.qkv.bias")])
    return y


def _packed_layout(ctx: Ctx, am: str) -> PackedLayout:
    """GroupQueryAttention's own layout: row b's real tokens first, its length in seqlens_k[b] + 1
    (causal and sliding-window masking then run inside the fused kernels, no bias tensor).
    The contract's left-padded new tokens are rotated left by the row's padding before the op and
    back after it (GatherND over [B,S,1] indices; the identity for a decode step): once for the
    whole stream when every attention is a GroupQueryAttention (lower_input, lower_head), else
    around each attention node.
    seqlens_k = sum(attention_mask) - 1 (int32 [B]); total_sequence_length = attention_mask width."""
    plan_ = _plan(ctx)
    if plan_.layout is not None:
        return plan_.layout
    scope, ctx.scope = ctx.scope, "gqa_layout"
    one = ctx.const(np.array([1], np.int64), "one")
    T, S = ctx.dim(am, 1), ctx.dim("input_ids", 1)
    # S as a device tensor [B,1] computed from input_ids: the shape value S lives on the host, and
    # feeding it to device arithmetic makes onnxruntime insert a MemcpyFromHost, which rules out
    # CUDA-graph capture of the decode step (shape-only host nodes are allowed, copies are not).
    s_dev = ctx.op("ReduceSum", [ctx.op("Add", [ctx.op("Mul", ["input_ids", ctx.const(np.int64(0), "zero")]), one]), one],
                   keepdims=1)
    # A row's padding = its mask's leading zeros (at most S). Not "S minus the ones among the last S
    # columns": onnxruntime-genai with CUDA graphs feeds the prompt step a static [B, max_length]
    # mask (the prompt's mask first, zeros after it), where the last S columns are not the new
    # tokens; leading zeros are the padding in both layouts (a decode step, S = 1, rotates nothing).
    leading = ctx.op("ReduceSum", [ctx.op("Cast", [ctx.op("Equal", [ctx.op("CumSum", [am, one]), ctx.const(np.int64(0), "zero")])],
                                          to=TensorProto.INT64), one], keepdims=1)  # [B,1]
    pad = ctx.op("Min", [leading, s_dev])  # [B,1]
    n_real = ctx.op("Sub", [s_dev, pad])  # [B,1]
    i = ctx.op("Unsqueeze", [ctx.op("Range", [ctx.const(np.int64(0), "zero"), ctx.op("Squeeze", [S]), ctx.const(np.int64(1), "step")]),
                             ctx.const(np.array([0], np.int64), "axes")])  # [1,S]
    last = ctx.const(np.array([-1], np.int64), "axes")
    to_packed_2d = ctx.op("Mod", [ctx.op("Add", [i, pad]), s_dev])  # [B,S]: packed slot i holds token to_packed[b,i]
    # the [B,S,1] GatherND index only where each attention rotates its own q|k|v (else nothing reads it)
    to_packed = None if _rotated_once(ctx) else ctx.op("Unsqueeze", [to_packed_2d, last])
    # (i - pad) mod S, written (i + n_real) mod S: non-negative before the Mod, one kernel fewer
    from_packed = ctx.op("Unsqueeze", [ctx.op("Mod", [ctx.op("Add", [i, n_real]), s_dev]), last])
    seqlens = ctx.op("Cast", [ctx.op("Sub", [ctx.op("ReduceSum", [am, one], keepdims=0), ctx.const(np.int64(1), "one")])], to=I32)
    total = ctx.op("Cast", [ctx.op("Squeeze", [T])], to=I32)
    ctx.scope = scope
    plan_.layout = PackedLayout(to_packed=to_packed, to_packed_2d=to_packed_2d, from_packed=from_packed, seqlens_k=seqlens, total=total)
    return plan_.layout


# ------------------------------------------------------------------------------------------------
# The packed layout, once for the whole stream


def _rotated_once(ctx: Ctx) -> bool:
    """Every attention node is a GroupQueryAttention: the only position-mixing ops of the stream read
    the packed layout, so the stream is rotated into it once (inputs) and back once (head)."""
    return _plan(ctx).rotated_once


def lower_input(ctx: Ctx, name: str, node: dict) -> str:
    """input_ids / position_ids ([B,S], or [B,2,S] for 2D positions) are rotated into the packed
    layout with GatherElements along their seq axis; so are the embeddings and RoPE positions read
    from them. The attention mask is not rotated: GroupQueryAttention reads only its row sums."""
    x = portable.lower_input(ctx, name, node)
    shape = list(node["settings"].shape)
    if not _rotated_once(ctx) or "seq" not in shape:
        return x
    lay = _packed_layout(ctx, "attention_mask")  # the graph input's name (its node may come later)
    axis = shape.index("seq")
    idx = lay.to_packed_2d
    if len(shape) != 2:  # [B,2,S]: the same index for every row
        idx = ctx.op("Expand", [ctx.op("Unsqueeze", [idx, ctx.const(np.array([1], np.int64), "axes")]), ctx.op("Shape", [x])])
    ctx.lowering[name] = "cuda:GatherElements (into GroupQueryAttention's packed layout, once for every layer)"
    return ctx.op("GatherElements", [x, idx], axis=axis)


def lower_head(ctx: Ctx, name: str, node: dict):
    if not _rotated_once(ctx):
        return portable.lower_head(ctx, name, node)
    lay = _packed_layout(ctx, "attention_mask")
    x = ctx.op("GatherND", [input_of(ctx, name, "x"), lay.from_packed], batch_dims=1)
    ctx.lowering[name] = "cuda:GatherND (back from the packed layout, once) + MatMul"
    return portable.lower_head(ctx, name, node, x)


# ------------------------------------------------------------------------------------------------
# Gated MLP


def lower_mlp(ctx: Ctx, name: str, node: dict):
    y = _lower_mlp(ctx, name, _without_folded_bias(ctx, name, node))
    _note_folded_bias(ctx, name)
    return y


def _mlp_route(ctx: Ctx, name: str, node: dict) -> tuple[GateUp | None, str]:
    """How this lowering computes an MLP's gate and up (None: not a gated MLP it takes, so the portable lowering's),
    and why archc.GatedMLP cannot take it where --kernels archc asked for it ("" where it can, or was not asked)."""
    p = node["params"]
    archc = ctx.kernels is Kernels.archc
    if not archc and ctx.kernels is not Kernels.onnxruntime:
        raise UnknownSetting(name, "kernels", ctx.kernels, LOWERING)
    if "gate.weight" not in p or ("gate.bias" in p) != ("up.bias" in p):
        why = "no gate (not a gated MLP)" if "gate.weight" not in p else "gate/up biases"
        return None, why if archc else ""
    mode = GATE_UP_QUANT if ctx.quant.active else GATE_UP  # MatMulNBits kernels differ from cuBLAS's: measured apart
    not_archc = ""
    if archc:
        why = _archc_op_unfit(ctx, name, node)
        if why is None:
            return GateUp.archc_op, ""
        not_archc = why
    if mode is GateUp.qmoe:
        if not ctx.quant.active:  # GATE_UP = qmoe: dense weights have no QMoE (the fp16 MoE op was slower, GateUp.qmoe)
            raise UnknownSetting(name, "gate_up", mode, LOWERING)
        if _qmoe_unfit(ctx, name, node) is None:
            return GateUp.qmoe, not_archc
        mode = GateUp.one_gemm  # the stacked MatMulNBits path where QMoE cannot take the MLP (_qmoe_unfit says why)
    if mode is GateUp.archc_op:  # chosen by --kernels archc (Ctx.kernels), never as GATE_UP: it needs the library
        raise UnknownSetting(name, "gate_up", mode, LOWERING)
    return mode, not_archc


def _lower_mlp(ctx: Ctx, name: str, node: dict):
    """Gated (Shazeer 2020) down(act(gate(x)) * up(x)), gate and up per GATE_UP: two GEMMs, or one
    GEMM x @ [Wg; Wu]^T, [B,S,2F], split in halves. onnxruntime 1.31 has no fused split+gated-activation
    op with both a CUDA and a CPU kernel (ONNX SwiGLU is opset 28), so the halves need a Split; SiLU's
    x*Sigmoid(x) is fused by onnxruntime (QuickGelu). With --kernels archc the down projection is an archc Linear
    where it fits (onnx_archc_folds), and the lowering record says how down went."""
    p = node["params"]
    mode, why = _mlp_route(ctx, name, node)
    not_archc = f" (not archc.GatedMLP: {why})" if why else ""  # where --kernels archc asked for it
    archc = _archc(ctx)
    down = "" if ctx.kernels is Kernels.onnxruntime else f" + {folds_.words(ctx, archc, name, folds_.DOWN)}"
    if mode is None:
        h = portable.mlp_hidden(ctx, name, node)
        ctx.lowering[name] = ("portable" if ctx.kernels is Kernels.onnxruntime else f"portable{not_archc}{down}")
        return folds_.out_projection(ctx, archc, name, h, folds_.DOWN, p)
    if mode is GateUp.archc_op:
        return _lower_archc_op(ctx, name, node, down)
    if mode is GateUp.qmoe:
        return _lower_qmoe(ctx, name, node, not_archc)
    act = node["settings"].activation
    x, F = input_of(ctx, name, "x"), p["up.weight"][0]
    if mode is GateUp.one_gemm:
        y = ctx.matmul_wt(x, [f"{name}.gate.weight", f"{name}.up.weight"], f"{name}.gate_up.weight")
        if "gate.bias" in p:
            y = ctx.op("Add", [y, ctx.weight_concat([f"{name}.gate.bias", f"{name}.up.bias"], f"{name}.gate_up.bias")])
        gate, up = ctx.op("Split", [y, ctx.const(np.array([F, F], np.int64), "split")], 2, axis=-1)
        how = "cuda:MatMul (gate|up in one GEMM) + Split"
    elif mode is GateUp.two_gemms:
        gate, up = portable.linear(ctx, x, f"{name}.gate", p), portable.linear(ctx, x, f"{name}.up", p)
        how = "cuda:MatMul (gate and up, one GEMM each)"
    else:
        raise UnknownSetting(name, "gate_up", mode, LOWERING)
    h = ctx.op("Mul", [portable.activation(ctx, name, act, gate), up])
    ctx.lowering[name] = how + not_archc + down
    return folds_.out_projection(ctx, archc, name, h, folds_.DOWN, p)


def _archc_op_unfit(ctx: Ctx, name: str, node: dict) -> str | None:
    """Why archc's gated-MLP op cannot take this gated MLP (None: it can). archc.GatedMLP computes silu(x Wg^T) * (x Wu^T)
    in fp16 (fp32 accumulation) from one [2F, K] weight and nothing else; with --quant, archc.GatedMLPNBits does the same
    from the stacked gate|up's MatMulNBits bytes (_nbits_op_unfit says which). Neither takes:
    - gate/up biases: no bias input (a down bias is fine: the down projection stays ONNX);
    - activations other than swiglu (SiLU gate): GeGLU etc. keep the ONNX path;
    - dtype other than fp16: the kernels are fp16 only (bf16 and fp32 would be other kernels, not measured)."""
    p = node["params"]
    if "gate.bias" in p or "up.bias" in p:
        return "gate/up biases"
    if node["settings"].activation is not Activation.swiglu:
        return f"activation {node['settings'].activation.value}"
    if ctx.dtype is not DType.float16:
        return f"dtype {ctx.dtype.value}"
    if ctx.quant.active:
        return _nbits_op_unfit(ctx, node)
    return None


def _nbits_op_unfit(ctx: Ctx, node: dict) -> str | None:
    """Why archc.GatedMLPNBits cannot take a --quant MLP (None: it can): onnx_archc_folds.nbits_unfit on K = d_model."""
    return folds_.nbits_unfit(ctx, "GatedMLPNBits", node["params"]["up.weight"][1], "d_model")


def _lower_archc_op(ctx: Ctx, name: str, node: dict, down: str) -> str:
    """down(archc.GatedMLP(x, [Wg; Wu], gamma?)): the op's weight is gate's rows then up's, each [F, d_model] as archc
    holds them (torch's Linear layout, whatever the target's WEIGHT_LAYOUT: the kernel reads a row per output). With
    --quant, down(archc.GatedMLPNBits(x, B, scales, gamma?)) on the very initializers one_gemm's stacked MatMulNBits
    would read ({name}.gate_up.weight.q4 / .scales, exporters/quantize.py), so the model's bytes and size are those of
    the --kernels onnxruntime export. Where the plan folded the RMSNorm in front (onnx_archc_folds), x is the norm's
    input and gamma/epsilon the norm's. down: an archc Linear(-NBits) where it fits, else MatMul(NBits); `down` is its
    lowering words."""
    archc = _archc(ctx)
    x, norm = folds_.stream_in(ctx, archc, name)
    gamma, attrs = ([], {}) if norm is None else ([norm[0]], {"epsilon": norm[1]})
    folded = "" if norm is None else "; RMSNorm folded in"
    fulls = [f"{name}.gate.weight", f"{name}.up.weight"]
    if ctx.quant.active:
        from exporters.quantize import initializer_parts, quantized_weight

        q = ctx.quant
        _, k = quantized_weight(ctx, fulls, f"{name}.gate_up.weight")
        parts = [part for part, _ in initializer_parts(f"{name}.gate_up.weight", q, ctx.dtype)]
        h = ctx.op("GatedMLPNBits", [x, *parts, *gamma], domain=ORT_OPS_DOMAIN, K=k, bits=q.bits, block_size=q.block_size,
                   **attrs)
        ctx.lowering[name] = (f"archc:GatedMLPNBits {q.kind.value} sym b{q.block_size} (gate|up codes, SiLU and Mul in one "
                              f"custom op{folded}){down}")
    else:
        w = ctx.weight_concat(fulls, f"{name}.gate_up.weight")
        h = ctx.op("GatedMLP", [x, w, *gamma], domain=ORT_OPS_DOMAIN, **attrs)
        ctx.lowering[name] = f"archc:GatedMLP (gate|up, SiLU and Mul in one custom op{folded}){down}"
    return folds_.out_projection(ctx, archc, name, h, folds_.DOWN, node["params"])


def _qmoe_unfit(ctx: Ctx, name: str, node: dict) -> str | None:
    """Why a gated MLP cannot be one single-expert QMoE node (None: it can). Only what was checked on an H200
    (benchmarks/moe_mlp_probe.py: fp16, int4 symmetric block 32) and on the CPU (tests/emit_onnx/test_qmoe_mlp.py)
    is taken; everything else keeps the stacked MatMulNBits path:
    - biases: QMoE has fc1/fc2 bias inputs, but none was checked (LLaMA-style MLPs have none);
    - activations other than swiglu (SiLU gate): QMoE's swiglu with alpha 1, beta 0 is silu(g) * u; GeGLU etc. have no mode;
    - int8, asymmetric (zero points) and block sizes other than 32: not run on the GPU kernel;
    - a K (d_model or d_ff) not a whole number of blocks: MatMulNBits pads the last block, QMoE has no padding;
    - accuracy_level: a MatMulNBits attribute QMoE has no counterpart for;
    - dtype other than fp16: the GPU kernel was measured in fp16 only."""
    from archc.quant import QuantKind, QuantScheme

    p, q = node["params"], ctx.quant
    if any(f"{t}.bias" in p for t in ("gate", "up", "down")):
        return "biases"
    if node["settings"].activation is not Activation.swiglu:
        return f"activation {node['settings'].activation.value}"
    if q.kind is not QuantKind.int4 or q.scheme is not QuantScheme.symmetric or q.block_size != 32:
        return f"quantization {q.short()}"
    if q.accuracy_level != 0:
        return f"accuracy_level {q.accuracy_level}"
    if ctx.dtype is not DType.float16:
        return f"dtype {ctx.dtype.value}"
    F, H = p["up.weight"]
    if H % q.block_size or F % q.block_size:
        return f"d_model {H} / d_ff {F} not whole blocks of {q.block_size}"
    return None


def _lower_qmoe(ctx: Ctx, name: str, node: dict, not_archc: str) -> str:
    """down(silu(x Wg^T) * (x Wu^T)) as one com.microsoft QMoE with a single expert and k = 1: fc1 is [Wg; Wu]
    interleaved row by row (swiglu_fusion=1, the only mode the CPU kernel takes), fc2 is Wd, both in
    MatMulNBits's byte layout with a leading expert axis (exporters/quantize.py qmoe_weight), no zero points
    (symmetric: the default 8). The op softmaxes router_probs over the experts, so with one expert any finite
    value is the weight 1.0: one [rows, 1] zero tensor per model, shared by every layer (the stream's rows
    are the same B * S tokens in every layer). x may be [B, S, H]: QMoE takes it as B * S rows."""
    x = input_of(ctx, name, "x")
    q = ctx.quant
    F, H = node["params"]["up.weight"]
    key = ("qmoe_router",)
    if key not in ctx.memo:
        rows = ctx.op("ReduceProd", [ctx.op("Shape", [x], end=-1)], keepdims=1)
        shape = ctx.op("Concat", [rows, ctx.const(np.array([1], np.int64), "one")], axis=0)
        ctx.memo[key] = ctx.op("ConstantOfShape", [shape], value=_zero(ctx))
    fc1 = qmoe_weight(ctx, [f"{name}.gate.weight", f"{name}.up.weight"], f"{name}.gate_up_interleaved.weight")
    fc2 = qmoe_weight(ctx, [f"{name}.down.weight"], f"{name}.down.weight")
    ctx.lowering[name] = (f"cuda:QMoE {q.kind.value} sym b{q.block_size} (one expert, k=1: gate|up interleaved, "
                          f"SwiGLU and down inside the op){not_archc}")
    return ctx.op("QMoE", [x, ctx.memo[key], *fc1, "", *fc2, ""], domain=MS, k=1, activation_type="swiglu",
                  swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0, expert_weight_bits=q.bits,
                  block_size=q.block_size, weights_prepacked=0)


def _zero(ctx: Ctx):
    from onnx import helper

    return helper.make_tensor("value", ctx.elem, [1], [0.0])


def lower_mask(ctx: Ctx, name: str, node: dict):
    """Emitted only if a portable attention reads it (GroupQueryAttention masks inside the op)."""
    return portable.Deferred(portable.lower_mask, name, node)


K = ComponentKind
LOWERINGS = {K.attention: lower_attention, K.residual: lower_residual, K.norm: lower_norm, K.mask: lower_mask,
             K.input: lower_input, K.head: lower_head, K.mlp: lower_mlp}

# The kinds this target lowers as the portable lowering does, and why nothing fused serves them better.
PORTABLE_KINDS = {
    K.output: "a Cast (and the ArgMax of next_token): nothing to fuse",
    K.token_embedding: "one Gather: nothing to fuse",
    K.learned_position: "one Gather (and an Add for the offset): nothing to fuse",
    K.sinusoidal_position: "elementwise Sin/Cos on the positions: onnxruntime fuses nothing here either way",
    K.glm2d_position: "two Gathers and an Add: nothing to fuse",
    K.rotary: "tables only: the cuda attention reads RotaryTables.cache and rotates inside GroupQueryAttention "
              "or com.microsoft RotaryEmbedding",
    K.alibi: "the bias tensor itself: MultiHeadAttention or the portable Attention adds it to the scores",
    K.add: "one Sum: nothing to fuse",
    K.scale: "one Mul: nothing to fuse",
}
assert not set(LOWERINGS) & set(PORTABLE_KINDS) and set(LOWERINGS) | set(PORTABLE_KINDS) == set(ComponentKind), \
    "every ComponentKind is lowered here or declared portable with a reason"
