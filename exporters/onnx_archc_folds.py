"""--kernels archc: the decode step's projections as archc's own ops, with the RMSNorm in front of a projection and the
residual Add behind one folded into them (exporters/ort_ops; the cuda lowering, exporters/onnx_lowering_cuda.py, calls
this module).

Per decoder layer a LLaMA-style block was RMSNorm (SkipSimplifiedLayerNormalization), q|k|v GEMM, attention, o GEMM,
then the same norm again, gate|up, down: two norm kernels and two GEMMs that each re-read the stream. With archc's ops
    archc.Linear(x, Wqkv, "", gamma)      the attention norm inside the q|k|v projection (x: the pre-norm stream)
    GroupQueryAttention
    archc.Linear(y, Wo, skip)             the residual Add inside the o projection: its output IS the residual sum
    archc.GatedMLP(sum, Wgu, gamma)       the MLP norm inside gate|up (SiLU and Mul were already inside)
    archc.Linear(h, Wd, sum)              the next residual sum
and no norm kernel is left in the layer. With --quant int4 (sym, b32) the same as LinearNBits / GatedMLPNBits on the
very initializers MatMulNBits would read.

The op contract (domain archc): Linear(x, w [N, K] torch layout, residual?, gamma?) attr epsilon: y = xn @ w^T
(+ residual), xn = x / sqrt(mean(x^2) + epsilon) * gamma where gamma is given, else x; LinearNBits(x, B, scales,
residual?, gamma?) attrs K, bits, block_size, epsilon; GatedMLP(x, w, gamma?) and GatedMLPNBits(x, B, scales,
gamma?) take gamma the same way. An absent optional input is "" (trailing ones are left off).

What is decided here, once, before lowering (plan_folds), from facts the cuda plan hands in:
- which projections are an archc Linear (`linear`): q|k|v (where the attention computes them as one packed GEMM), o,
  down; each refused one says why (a bias: the ops have no bias input; a dtype other than fp16; a quantization other
  than int4 sym b32 with accuracy_level 0, or a K not whole blocks: the kernels' limits);
- which RMSNorms are folded (`gamma`): every consumer takes the norm in its first projection (the q|k|v GEMM of
  GroupQueryAttention or MultiHeadAttention as an archc Linear, or a gated MLP as archc.GatedMLP(-NBits)); a norm with a bias, a LayerNorm, or one
  that anything else reads (the head, a residual: post-norm) is not;
- which residual nodes are folded (`residual_in` / `residual_out`): alpha 1, and a branch whose output projection is an
  archc Linear that feeds only this residual. Several such branches (a parallel block: attention and MLP into one
  residual) chain: the first adds the skip, the next adds the first's output, and the last one's output is the sum.
  A branch that cannot (a bias, QMoE's down inside the op, no projection) is added after the chain with an Add.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archc.components import ComponentKind, UnknownSetting
from archc.dtypes import DType
from archc.spec import NormKind
from exporters import onnx_lowering_portable as portable
from exporters.onnx_export import ORT_OPS_DOMAIN, Ctx, input_of

LOWERING = "cuda ONNX lowering (--kernels archc folds)"

# The projections an archc Linear may compute, by the local name of their weight prefix(es), and their words.
QKV, O, DOWN = "qkv", "o", "down"
LABEL = {QKV: "q|k|v", O: "o", DOWN: "down"}
OUT_PROJ = {ComponentKind.attention.value: O, ComponentKind.mlp.value: DOWN}  # a branch's output projection


@dataclass
class ArchcFolds:
    """What --kernels archc's ops absorb (plan_folds); empty for --kernels onnxruntime."""

    # (node, QKV | O | DOWN) -> None: an archc Linear(-NBits); else why it stays ONNX's MatMul(-NBits)
    linear: dict[tuple[str, str], str | None] = field(default_factory=dict)
    gamma: dict[str, str] = field(default_factory=dict)  # consumer -> the folded RMSNorm its first projection applies
    norm_why: dict[str, str] = field(default_factory=dict)  # norm -> why it is not folded
    residual_in: dict[str, str] = field(default_factory=dict)  # branch -> the node whose value its projection adds
    residual_out: dict[str, str] = field(default_factory=dict)  # folded residual -> its chain's last branch (the sum)
    residual_rest: dict[str, list[str]] = field(default_factory=dict)  # folded residual -> branches added after it
    residual_why: dict[str, str] = field(default_factory=dict)  # residual -> why (some of) its branches are not folded

    def folded_norms(self) -> set[str]:
        return set(self.gamma.values())


# ------------------------------------------------------------------------------------------------
# The plan


def linear_unfit(ctx: Ctx, params: dict, locals_: list[str], K: int) -> str | None:
    """Why an archc Linear(-NBits) cannot compute x @ W^T for the weights `locals_` (stacked) of a node with `params`,
    K input features (None: it can). fp16 only (the kernels are); no bias input; with --quant, what the int4 kernel
    reads (nbits_unfit)."""
    biased = [loc for loc in locals_ if f"{loc}.bias" in params]
    if biased:
        return f"{'|'.join(biased)} bias"
    if ctx.dtype is not DType.float16:
        return f"dtype {ctx.dtype.value}"
    if ctx.quant.active:
        return nbits_unfit(ctx, "LinearNBits", K, "K")
    return None


def nbits_unfit(ctx: Ctx, op: str, K: int, k_words: str) -> str | None:
    """Why archc's int4 ops (`op`: GatedMLPNBits, LinearNBits) cannot take a --quant projection of K input features
    (None: they can; `k_words` names K in the reason). Only what their CUDA kernel was written and checked for (benchmarks/ort_ops_nbits_check.py); the
    rest keeps MatMulNBits:
    - int8, asymmetric (zero points), block sizes other than 32: the int4 kernel reads one 32-code block per 16-byte
      load with the symmetric zero point 8;
    - accuracy_level: a MatMulNBits compute mode (e.g. int8 activations) the ops, which accumulate fp16 x in fp32,
      would not honour;
    - a K not a whole number of blocks: MatMulNBits pads the last block; the int4 kernel takes whole blocks."""
    from archc.quant import QuantKind, QuantScheme

    q = ctx.quant
    if q.kind is not QuantKind.int4 or q.scheme is not QuantScheme.symmetric or q.block_size != 32:
        return f"quantization {q.short()}; {op} takes int4 sym b32"
    if q.accuracy_level != 0:
        return f"accuracy_level {q.accuracy_level}"
    if K % q.block_size:
        return f"{k_words} {K} not whole blocks of {q.block_size}"
    return None


def plan_folds(ctx: Ctx, order: dict[str, int], qkv_why: dict[str, str | None], out_why: dict[str, str | None],
               gated_why: dict[str, str | None]) -> ArchcFolds:
    """The projections and norms --kernels archc takes (residuals: fold_residual, called by the cuda plan in graph
    order). Facts from the cuda plan: qkv_why[attention] (None: its q|k|v is one GEMM the norm may precede:
    GroupQueryAttention's packed one, MultiHeadAttention's before its Split), out_why[attention or mlp] (None: its output projection is a plain x @ W^T this lowering
    emits), gated_why[mlp] (None: its gate|up is archc.GatedMLP(-NBits))."""
    folds = ArchcFolds()
    g = ctx.graph
    for a in g.nodes(ComponentKind.attention):
        s, p = g.settings(a), g.node(a)["params"]
        folds.linear[(a, QKV)] = qkv_why[a] or linear_unfit(ctx, p, ["q", "k", "v"], p["q.weight"][1])
        folds.linear[(a, O)] = out_why[a] or linear_unfit(ctx, p, [O], s.n_heads * s.head_dim)
    for m in g.nodes(ComponentKind.mlp):
        p = g.node(m)["params"]
        folds.linear[(m, DOWN)] = out_why[m] or linear_unfit(ctx, p, [DOWN], p["down.weight"][1])
    for n in g.nodes(ComponentKind.norm):
        why = _norm_unfit(ctx, n, order, folds, gated_why)
        if why is not None:
            folds.norm_why[n] = why
            continue
        for c in g.g.successors(n):
            folds.gamma[c] = n
    return folds


def _role(ctx: Ctx, name: str) -> str:
    return ctx.graph.node(name)["role"]


def _norm_unfit(ctx: Ctx, n: str, order: dict[str, int], folds: ArchcFolds, gated_why: dict[str, str | None]) -> str | None:
    """Why RMSNorm `n` cannot be folded into the projections that read it (None: it can)."""
    g = ctx.graph
    s = g.settings(n)
    if s.norm is NormKind.layernorm:
        return "layernorm (the ops fold RMSNorm only)"
    if s.norm is not NormKind.rmsnorm:
        raise UnknownSetting(n, "norm", s.norm, LOWERING)
    if s.bias:
        return "norm bias"
    for c in sorted(g.g.successors(n), key=order.__getitem__):
        kind = g.node(c)["kind"]
        if g.inputs_at(c, "x") != [n]:
            return f"{_role(ctx, c)} reads it beside other inputs or on another port"
        if kind == ComponentKind.attention.value:
            why = folds.linear[(c, QKV)]
            if why is not None:
                return f"{_role(ctx, c)}: q|k|v not an archc Linear ({why})"
        elif kind == ComponentKind.mlp.value:
            if gated_why[c] is not None:
                return f"{_role(ctx, c)}: not archc.GatedMLP ({gated_why[c]})"
        else:
            return f"{_role(ctx, c)} reads it (a {kind}: no archc op takes the norm)"
    return None


def fold_residual(ctx: Ctx, r: str, order: dict[str, int], set_at: dict[str, int], folds: ArchcFolds) -> bool:
    """Fold residual `r` where it can (see the module's docstring); whether it did. `set_at`: the graph-order position
    at which each earlier node's value exists (a skip-fused residual's: its norm's), so a projection never reads a skip
    that is made after it. Records the reason for every branch left out."""
    g = ctx.graph
    alpha = g.settings(r).alpha
    if alpha != 1.0:
        folds.residual_why[r] = f"alpha {alpha} (the op adds the skip as it is)"
        return False
    chain, rest, why = [], [], []
    for b in sorted(g.inputs_at(r, "branch"), key=order.__getitem__):
        reason = _branch_unfit(ctx, b, r, folds)
        if reason is None:
            chain.append(b)
        else:
            rest.append(b)
            why.append(f"{_role(ctx, b)}: {reason}")
    skip = g.input_of(r, "skip")
    if chain and set_at[skip] > order[chain[0]]:
        why.append("the skip is made after the branch")
        chain, rest = [], sorted(g.inputs_at(r, "branch"), key=order.__getitem__)
    if why:
        folds.residual_why[r] = "; ".join(why)
    if not chain:
        return False
    prev = skip
    for b in chain:
        folds.residual_in[b], prev = prev, b
    folds.residual_out[r], folds.residual_rest[r] = chain[-1], rest
    return True


def _branch_unfit(ctx: Ctx, b: str, r: str, folds: ArchcFolds) -> str | None:
    g = ctx.graph
    kind = g.node(b)["kind"]
    if kind not in OUT_PROJ:
        return f"a {kind} (no output projection)"
    why = folds.linear[(b, OUT_PROJ[kind])]
    if why is not None:
        return f"{LABEL[OUT_PROJ[kind]]} not an archc Linear ({why})"
    if list(g.g.successors(b)) != [r]:
        return "its output is read beyond the residual"
    return None


# ------------------------------------------------------------------------------------------------
# Lowering


def is_linear(folds: ArchcFolds, name: str, proj: str) -> bool:
    """Whether projection `proj` of node `name` is an archc Linear (always False for --kernels onnxruntime: no entry)."""
    return (name, proj) in folds.linear and folds.linear[(name, proj)] is None


def stream_in(ctx: Ctx, folds: ArchcFolds, name: str) -> tuple[str, tuple[str, float] | None]:
    """The value node `name` reads at port x, and the (gamma, epsilon) its first projection applies: where a folded
    RMSNorm sits in between, its input (the pre-norm stream) and its gamma."""
    norm = folds.gamma.get(name)
    if norm is None:
        return input_of(ctx, name, "x"), None
    key = ("archc_gamma", norm)  # a norm read by two consumers (a parallel block) makes its gamma once
    if key not in ctx.memo:
        ctx.memo[key] = portable.norm_scale(ctx, norm, ctx.graph.node(norm))
    return input_of(ctx, norm, "x"), (ctx.memo[key], float(ctx.graph.settings(norm).eps))


def linear(ctx: Ctx, x: str, fulls: list[str], name: str, *, residual: str = "", norm: tuple[str, float] | None = None) -> str:
    """archc.Linear(x, W, residual?, gamma?) on archc parameters `fulls` ([out, in] each, stacked along out into the
    initializer `name`: torch's layout as it is); with --quant archc.LinearNBits on the MatMulNBits initializers of
    the same name (exporters/quantize.py), so the model's bytes are those of the MatMulNBits export."""
    gamma, attrs = ("", {}) if norm is None else (norm[0], {"epsilon": norm[1]})
    if ctx.quant.active:
        from exporters.quantize import initializer_parts, quantized_weight

        q = ctx.quant
        name = name if len(fulls) > 1 else ctx.graph.tied().get(fulls[0], fulls[0])  # matmul_nbits' name
        _, k = quantized_weight(ctx, fulls, name)
        parts = [part for part, _ in initializer_parts(name, q, ctx.dtype)]
        return ctx.op("LinearNBits", _trimmed([x, *parts, residual, gamma]), domain=ORT_OPS_DOMAIN, K=k, bits=q.bits,
                      block_size=q.block_size, **attrs)
    w = ctx.weight(fulls[0]) if len(fulls) == 1 else ctx.weight_concat(fulls, name)
    return ctx.op("Linear", _trimmed([x, w, residual, gamma]), domain=ORT_OPS_DOMAIN, **attrs)


def _trimmed(inputs: list[str]) -> list[str]:
    """Trailing absent optional inputs left off (ONNX allows either; fewer names, same op)."""
    while inputs and inputs[-1] == "":
        inputs = inputs[:-1]
    return inputs


def out_projection(ctx: Ctx, folds: ArchcFolds, name: str, h: str, proj: str, params: dict) -> str:
    """A branch's output projection (o, down): an archc Linear adding its residual input where the plan folded the
    residual, an archc Linear where it only fits, else the portable x @ W^T (+ b)."""
    if not is_linear(folds, name, proj):
        return portable.linear(ctx, h, f"{name}.{proj}", params)
    res = folds.residual_in.get(name)
    return linear(ctx, h, [f"{name}.{proj}.weight"], f"{name}.{proj}.weight", residual="" if res is None else ctx.env[res])


def words(ctx: Ctx, folds: ArchcFolds, name: str, proj: str) -> str:
    """The lowering record's words for one projection: `archc:Linear (o, + residual)`, `archc:LinearNBits int4 sym
    b32 (q|k|v, RMSNorm folded in)`, or `MatMul (down; not archc.Linear: down bias ...)` (onnx_export.nbits_words
    turns MatMul into MatMulNBits where it is one)."""
    why = folds.linear[(name, proj)]
    if why is not None:
        return f"MatMul ({LABEL[proj]}; not archc.Linear: {why})"
    notes = [LABEL[proj]]
    if proj == QKV and name in folds.gamma:
        notes.append("RMSNorm folded in")
    if proj != QKV and name in folds.residual_in:
        notes.append("+ residual")
    q = ctx.quant  # only int4 sym reaches an archc LinearNBits (nbits_unfit)
    op = f"LinearNBits {q.kind.value} sym b{q.block_size}" if q.active else "Linear"
    return f"archc:{op} ({', '.join(notes)})"


def norm_words(ctx: Ctx, folds: ArchcFolds, name: str) -> str:
    """A folded norm's lowering record: who applies it (roles, not layer names, so the summary groups layers)."""
    takers = sorted({_role(ctx, c) for c, n in folds.gamma.items() if n == name})
    return f"folded (gamma and epsilon go to {' and '.join(takers)}'s first archc op, which reads the pre-norm stream)"


def residual_words(ctx: Ctx, folds: ArchcFolds, r: str) -> str:
    chain, b = [], folds.residual_out[r]
    while b in folds.residual_in:  # back along the chain to the branch that adds the skip
        chain.append(f"{_role(ctx, b)} {LABEL[OUT_PROJ[ctx.graph.node(b)['kind']]]}")
        b = folds.residual_in[b]
    how = f"folded (added inside the archc Linear of {', then '.join(reversed(chain))}; no Add)"
    rest = folds.residual_rest[r]
    return how + (f" + Add ({folds.residual_why[r]})" if rest else "")
