"""Portable lowering: every component kind in standard ONNX operators (opset 23), any execution provider.

One function per ComponentKind: `lower_<kind>(ctx, name, node) -> value`. A value is an ONNX tensor
name, except for the rotary node (a `RotaryTables` that makes per-token cos/sin on demand, and cos/sin
caches for fused attention). Inputs arrive by port (exporters.onnx_export.input_of / inputs_of).

Numerics follow the PyTorch emitter: the mask is 0 / finfo(dtype).min, built from
pos = cumsum(attention_mask) - 1; RoPE and sinusoidal tables are computed in float32; norms run
with float32 statistics (stash_type=1); the logits are cast to float32 at the end.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from archc.components import ComponentKind, UnknownSetting
from archc.dtypes import DType
from archc.model_dir import LOGITS_START
from archc.spec import Activation, AttentionKernel, MaskKind, NormKind, NormScale, RopeStyle
from exporters.onnx_export import BATCH, LOGITS_SEQ, PAST, SEQ, TOTAL, Ctx, Logits, NextToken, WeightLayout, input_of, inputs_of

LOWERING = "portable ONNX lowering"

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
DIMS = {"batch": BATCH, "seq": SEQ, "total": TOTAL}


def _dims(shape: list) -> list:
    return [DIMS.get(d, d) for d in shape]


def neg_large(ctx: Ctx) -> float:
    """finfo(dtype).min of the model dtype: large, finite (padded query rows stay finite)."""
    return {DType.float32: float(np.finfo(np.float32).min), DType.float16: float(np.finfo(np.float16).min),
            DType.bfloat16: -3.3895313892515355e38}[ctx.dtype]


# ------------------------------------------------------------------------------------------------
# Inputs and outputs


def lower_input(ctx: Ctx, name: str, node: dict) -> str:
    return ctx.graph_input(name, I64, _dims(list(node["settings"].shape)))


def lower_output(ctx: Ctx, name: str, node: dict) -> str:
    x = input_of(ctx, name, "x")
    y = ctx.op("Cast", [x], to=F32)
    shape = _dims(list(node["settings"].shape))
    from_head = ctx.graph.node(ctx.graph.input_of(name, "x"))["kind"] == ComponentKind.head.value
    if from_head and ctx.logits is Logits.last:
        shape[1] = 1  # the head computed the last position only (lower_head)
    elif from_head and ctx.logits is Logits.all:
        shape[1] = LOGITS_SEQ  # positions logits_start: of the sequence (all of them unless it is fed)
    elif from_head:
        raise UnknownSetting(name, "logits", ctx.logits, LOWERING)
    if from_head and ctx.next_token is NextToken.argmax:
        # the greedy pick on the device: ArgMax keeps the first maximum, as numpy's argmax does; it reads
        # the last of whatever positions the head computed (all, logits_start: of them, or the last)
        last = y if shape[1] == 1 else last_position(ctx, y)
        ctx.graph_output("next_token", ctx.op("ArgMax", [last], axis=-1, keepdims=0), I64, [shape[0], 1])
    return ctx.graph_output(name, y, F32, shape)


# ------------------------------------------------------------------------------------------------
# Embeddings


def lower_token_embedding(ctx: Ctx, name: str, node: dict) -> str:
    return ctx.op("Gather", [ctx.weight(f"{name}.weight"), input_of(ctx, name, "ids")], axis=0)


def lower_scale(ctx: Ctx, name: str, node: dict) -> str:
    return ctx.op("Mul", [input_of(ctx, name, "x"), ctx.fconst(node["settings"].factor, "factor")])


def lower_learned_position(ctx: Ctx, name: str, node: dict) -> str:
    pos = input_of(ctx, name, "positions")
    if node["settings"].offset:
        pos = ctx.op("Add", [pos, ctx.const(np.int64(node["settings"].offset), "offset")])
    return ctx.op("Gather", [ctx.weight(f"{name}.weight"), pos], axis=0)


def lower_sinusoidal_position(ctx: Ctx, name: str, node: dict) -> str:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(...), interleaved."""
    d = ctx.graph.model.d_model
    i = np.arange(0, d, 2, dtype=np.float32)
    denom = np.power(np.float32(node["settings"].base), i / np.float32(d)).astype(np.float32)
    pos = ctx.op("Cast", [input_of(ctx, name, "positions")], to=F32)
    angle = ctx.op("Div", [ctx.op("Unsqueeze", [pos, ctx.const(np.array([-1], np.int64), "axes")]), ctx.const(denom, "denom")])
    axes = ctx.const(np.array([-1], np.int64), "axes")
    pair = ctx.op("Concat", [ctx.op("Unsqueeze", [ctx.op("Sin", [angle]), axes]),
                             ctx.op("Unsqueeze", [ctx.op("Cos", [angle]), axes])], axis=-1)  # [B,S,d/2,2]
    flat = ctx.op("Reshape", [pair, ctx.const(np.array([0, 0, -1], np.int64), "shape")])
    if d % 2:
        flat = ctx.op("Slice", [flat, ctx.const(np.array([0], np.int64)), ctx.const(np.array([d], np.int64)),
                                ctx.const(np.array([-1], np.int64))])
    return ctx.op("Cast", [flat], to=ctx.elem)


def lower_glm2d_position(ctx: Ctx, name: str, node: dict) -> str:
    """GLM (Du et al. 2022): position table at row 0 of position_ids plus block table at row 1."""
    pos = input_of(ctx, name, "positions")  # [B,2,S]
    rows = ctx.op("Split", [pos, ctx.const(np.array([1, 1], np.int64), "split")], 2, axis=1)
    sq = ctx.const(np.array([1], np.int64), "axes")
    p0, p1 = (ctx.op("Squeeze", [r, sq]) for r in rows)
    a = ctx.op("Gather", [ctx.weight(f"{name}.position.weight"), p0], axis=0)
    b = ctx.op("Gather", [ctx.weight(f"{name}.block.weight"), p1], axis=0)
    return ctx.op("Add", [a, b])


def lower_add(ctx: Ctx, name: str, node: dict) -> str:
    xs = inputs_of(ctx, name, "x")
    return xs[0] if len(xs) == 1 else ctx.op("Sum", xs)


# ------------------------------------------------------------------------------------------------
# Norm, MLP, residual, head


def norm_scale(ctx: Ctx, name: str, node: dict) -> str:
    w = ctx.weight(f"{name}.weight")
    scale = node["settings"].scale
    if scale is NormScale.weight:
        return w
    if scale is NormScale.one_plus_weight:  # Gemma: y = n(x) (1 + w); folded by onnxruntime
        return ctx.op("Add", [w, ctx.fconst(1.0, "one")])
    raise UnknownSetting(name, "scale", scale, LOWERING)


def lower_norm(ctx: Ctx, name: str, node: dict) -> str:
    s = node["settings"]
    x = input_of(ctx, name, "x")
    if s.norm is NormKind.layernorm:
        ins = [x, norm_scale(ctx, name, node)] + ([ctx.weight(f"{name}.bias")] if s.bias else [])
        return ctx.op("LayerNormalization", ins, axis=-1, epsilon=float(s.eps), stash_type=1)
    if s.norm is NormKind.rmsnorm:
        y = ctx.op("RMSNormalization", [x, norm_scale(ctx, name, node)], axis=-1, epsilon=float(s.eps), stash_type=1)
        if s.bias:
            y = ctx.op("Add", [y, ctx.weight(f"{name}.bias")])
        return y
    raise UnknownSetting(name, "norm", s.norm, LOWERING)


def linear(ctx: Ctx, x: str, prefix: str, params: dict) -> str:
    """x @ W^T (+ b), in the export's weight layout (portable: W stored transposed, `<name>.weight.T`)."""
    y = ctx.matmul_wt(x, [f"{prefix}.weight"])
    if f"{prefix.rsplit('.', 1)[-1]}.bias" in params:
        y = ctx.op("Add", [y, ctx.weight(f"{prefix}.bias")])
    return y


def activation(ctx: Ctx, name: str, act: Activation, x: str) -> str:
    """The elementwise function of an activation; a gated one's (Shazeer 2020) is its gate's."""
    if act in (Activation.gelu, Activation.geglu):
        return ctx.op("Gelu", [x], approximate="none")
    if act in (Activation.gelu_tanh, Activation.geglu_tanh):
        return ctx.op("Gelu", [x], approximate="tanh")
    if act in (Activation.relu, Activation.reglu):
        return ctx.op("Relu", [x])
    if act in (Activation.silu, Activation.swiglu):
        return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])])
    raise UnknownSetting(name, "activation", act, LOWERING)


def lower_mlp(ctx: Ctx, name: str, node: dict) -> str:
    """down(act(up(x))), or gated (Shazeer 2020): down(act(gate(x)) * up(x))."""
    return linear(ctx, mlp_hidden(ctx, name, node), f"{name}.down", node["params"])


def mlp_hidden(ctx: Ctx, name: str, node: dict) -> str:
    """What the down projection reads: act(up(x)), or act(gate(x)) * up(x)."""
    x, p = input_of(ctx, name, "x"), node["params"]
    act = node["settings"].activation
    up = linear(ctx, x, f"{name}.up", p)
    return ctx.op("Mul", [activation(ctx, name, act, linear(ctx, x, f"{name}.gate", p)), up]) if "gate.weight" in p else activation(ctx, name, act, up)


def lower_residual(ctx: Ctx, name: str, node: dict) -> str:
    skip, branches = input_of(ctx, name, "skip"), inputs_of(ctx, name, "branch")
    alpha = node["settings"].alpha
    if alpha != 1.0:  # DeepNorm (Wang et al. 2022)
        skip = ctx.op("Mul", [skip, ctx.fconst(alpha, "alpha")])
    out = skip
    for b in branches:
        out = ctx.op("Add", [out, b])
    return out


def positions_from(ctx: Ctx, x: str, start: str) -> str:
    """x[:, start:, :] for a 1-D int64 [1] `start` (Python-style: -1 is the last position). Left padding
    puts every row's last real token in the last column; the stream is in the contract's token order
    here (the cuda target rotates GroupQueryAttention's packed layout, real tokens first, back before
    anything downstream reads the stream), so one Slice serves all rows."""
    return ctx.op("Slice", [x, start, ctx.const(np.array([np.iinfo(np.int64).max], np.int64), "end"),
                            ctx.const(np.array([1], np.int64), "axes")])


def last_position(ctx: Ctx, x: str) -> str:
    """x[:, -1:, :] (positions_from the constant -1)."""
    return positions_from(ctx, x, ctx.const(np.array([-1], np.int64), "last"))


def lower_head(ctx: Ctx, name: str, node: dict, x: str | None = None) -> str:
    """logits = h W^T (+ b). `x`: the head's input if a target transformed it (default: its in-edge).
    With --logits last the MatMul runs on the last position only (Hugging Face's logits_to_keep=1);
    with `all`, on positions logits_start: (the model's input, default 0 = every position; generation
    feeds -1). The input goes straight into the Slice's starts, with no arithmetic on it: onnxruntime's
    CUDA Slice reads starts on the host, and an int64 op in between could land on the device and
    make a host copy, which CUDA-graph capture refuses."""
    x = x or input_of(ctx, name, "x")
    if ctx.logits is Logits.last:
        x = last_position(ctx, x)
    elif ctx.logits is Logits.all:
        x = positions_from(ctx, x, ctx.overridable(LOGITS_START, np.array([0], np.int64)))
    else:
        raise UnknownSetting(name, "logits", ctx.logits, LOWERING)
    tied = node.get("tied", {}).get("weight")
    if ctx.quant.active and ctx.quant.head:  # --quant-head: MatMulNBits on a quantized copy (tied: of the shared matrix)
        y = ctx.matmul_wt(x, [tied or f"{name}.weight"])
    elif tied and ctx.weight_layout is WeightLayout.out_in:  # logits = h E^T straight from the shared matrix
        y = ctx.op("FusedMatMul", [x, ctx.weight(tied)], domain="com.microsoft", transB=1)
    elif tied:  # logits = h E^T: the transpose of the shared matrix is folded at session start (a second copy)
        y = ctx.op("MatMul", [x, ctx.op("Transpose", [ctx.weight(tied)], perm=[1, 0])])
    else:
        y = ctx.matmul_wt(x, [f"{name}.weight"], quantizable=False)
    if "bias" in node["params"]:
        y = ctx.op("Add", [y, ctx.weight(f"{name}.bias")])
    return y


# ------------------------------------------------------------------------------------------------
# Attention side inputs


def key_positions(ctx: Ctx, mask: str) -> str:
    """pos(j) = cumsum(attention_mask) - 1 over past + current, int64 [B,T]; memoised."""
    key = ("pos", mask)
    if key not in ctx.memo:
        cs = ctx.op("CumSum", [mask, ctx.const(np.int64(1), "axis")])
        ctx.memo[key] = ctx.op("Sub", [cs, ctx.const(np.int64(1), "one")])
    return ctx.memo[key]


def lower_mask(ctx: Ctx, name: str, node: dict) -> str:
    """Additive mask [B,1,S,T] in the model dtype: 0 where visible, finfo.min elsewhere (contract)."""
    s = node["settings"]
    am = input_of(ctx, name, "attention_mask")
    pos = key_positions(ctx, am)
    T, S = ctx.dim(am, 1), ctx.dim("input_ids", 1)
    qpos = ctx.op("Slice", [pos, ctx.op("Sub", [T, S]), T, ctx.const(np.array([1], np.int64), "axes")])
    qi = ctx.op("Unsqueeze", [qpos, ctx.const(np.array([1, 3], np.int64), "axes")])  # [B,1,S,1]
    kj = ctx.op("Unsqueeze", [pos, ctx.const(np.array([1, 2], np.int64), "axes")])  # [B,1,1,T]
    visible = ctx.op("LessOrEqual", [kj, qi])
    if s.mask is MaskKind.causal:
        pass
    elif s.mask is MaskKind.prefix:  # GLM: keys inside the prefix are visible to every query
        plen = ctx.op("Unsqueeze", [input_of(ctx, name, "prefix_len"), ctx.const(np.array([1, 2, 3], np.int64), "axes")])
        visible = ctx.op("Or", [visible, ctx.op("Less", [kj, plen])])
    else:
        raise UnknownSetting(name, "mask", s.mask, LOWERING)
    if s.sliding_window is not None:
        near = ctx.op("Less", [ctx.op("Sub", [qi, kj]), ctx.const(np.int64(s.sliding_window), "window")])
        visible = ctx.op("And", [visible, near])
    real = ctx.op("Cast", [ctx.op("Unsqueeze", [am, ctx.const(np.array([1, 2], np.int64), "axes")])], to=BOOL)
    visible = ctx.op("And", [visible, real])
    return ctx.op("Where", [visible, ctx.fconst(0.0, "zero"), ctx.fconst(neg_large(ctx), "neg")])


class Deferred:
    """A node's value emitted on first use (a target whose fused ops do not read it emits nothing)."""

    def __init__(self, lower, name: str, node: dict):
        self.lower, self.name, self.node, self.value = lower, name, node, None

    def get(self, ctx: Ctx) -> str:
        if self.value is None:
            scope, ctx.scope = ctx.scope, self.name
            self.value = self.lower(ctx, self.name, self.node)
            ctx.scope = scope
        return self.value


def lower_alibi(ctx: Ctx, name: str, node: dict) -> str:
    """Press et al. 2021: slope_h * (pos(j) - pos(last)), [B,H,1,T]: a row-constant shift of
    -slope (i - j), kept <= 0 so fp16/bf16 scores are not swamped (as the PyTorch emitter)."""
    pos = ctx.op("Cast", [key_positions(ctx, input_of(ctx, name, "attention_mask"))], to=F32)
    last = ctx.op("Slice", [pos, ctx.const(np.array([-1], np.int64)), ctx.const(np.array([np.iinfo(np.int64).max], np.int64)),
                            ctx.const(np.array([1], np.int64), "axes")])
    pos = ctx.op("Sub", [pos, last])
    pos = ctx.op("Unsqueeze", [pos, ctx.const(np.array([1, 2], np.int64), "axes")])  # [B,1,1,T]
    slopes = ctx.const(np.asarray(node["settings"].slopes, np.float32).reshape(1, -1, 1, 1), "slopes")
    return ctx.op("Cast", [ctx.op("Mul", [slopes, pos])], to=ctx.elem)


class RotaryTables:
    """RoPE (Su et al. 2021) tables, made on demand: per-token cos/sin [B,S,d/2] from position_ids,
    or cos/sin caches [max_seq_len, d/2] for fused attention (position ids go in separately)."""

    def __init__(self, ctx: Ctx, name: str, node: dict):
        s = node["settings"]
        self.name, self.dim, self.style, self.head_dim = name, s.rotary_dim, s.style, s.head_dim
        self.interleaved = self._interleaved(name, s.style)
        self.positions = input_of(ctx, name, "positions")
        i = np.arange(0, self.dim, 2, dtype=np.float32)
        self.inv_freq = (1.0 / np.power(np.float32(s.theta), i / np.float32(self.dim))).astype(np.float32)
        self._per_token = self._cache = None

    @staticmethod
    def _interleaved(name: str, style: RopeStyle) -> int:
        """The `interleaved` attribute of ONNX's and com.microsoft's RotaryEmbedding."""
        if style is RopeStyle.half:
            return 0
        if style is RopeStyle.interleaved:
            return 1
        raise UnknownSetting(name, "style", style, LOWERING)

    def per_token(self, ctx: Ctx) -> tuple[str, str]:
        if self._per_token is None:
            scope, ctx.scope = ctx.scope, self.name
            pos = ctx.op("Unsqueeze", [ctx.op("Cast", [self.positions], to=F32), ctx.const(np.array([-1], np.int64), "axes")])
            angle = ctx.op("Mul", [pos, ctx.const(self.inv_freq, "inv_freq")])
            self._per_token = (ctx.op("Cast", [ctx.op("Cos", [angle])], to=ctx.elem), ctx.op("Cast", [ctx.op("Sin", [angle])], to=ctx.elem))
            ctx.scope = scope
        return self._per_token

    def cache(self, ctx: Ctx) -> tuple[str, str]:
        if self._cache is None:
            n = ctx.graph.model.max_seq_len
            angle = np.arange(n, dtype=np.float32)[:, None] * self.inv_freq[None, :]
            self._cache = (ctx.const(np.cos(angle), f"{self.name}/cos_cache", elem=ctx.elem),
                           ctx.const(np.sin(angle), f"{self.name}/sin_cache", elem=ctx.elem))
        return self._cache


def lower_rotary(ctx: Ctx, name: str, node: dict) -> RotaryTables:
    return RotaryTables(ctx, name, node)


def attention_bias(ctx: Ctx, name: str) -> str:
    """mask (+ ALiBi), shared by every layer."""
    mask, bias = input_of(ctx, name, "mask"), input_of(ctx, name, "bias")
    if isinstance(mask, Deferred):
        mask = mask.get(ctx)
    if bias is None:
        return mask
    key = ("bias", mask, bias)
    if key not in ctx.memo:
        ctx.memo[key] = ctx.op("Add", [mask, bias])
    return ctx.memo[key]


def cache_io(ctx: Ctx, node: dict, past_dim: str = PAST) -> tuple[str, str]:
    s, i = node["settings"], node["cache"]
    dims = [BATCH, s.kv_heads, past_dim, s.head_dim]
    return (ctx.graph_input(f"past_key_values.{i}.key", ctx.elem, dims),
            ctx.graph_input(f"past_key_values.{i}.value", ctx.elem, dims))


def cache_out(ctx: Ctx, node: dict, k: str, v: str, dim: str = TOTAL) -> None:
    s, i = node["settings"], node["cache"]
    dims = [BATCH, s.kv_heads, dim, s.head_dim]
    ctx.graph_output(f"present.{i}.key", k, ctx.elem, dims)
    ctx.graph_output(f"present.{i}.value", v, ctx.elem, dims)


def qkv(ctx: Ctx, name: str, node: dict) -> tuple[str, str, str]:
    x, p = input_of(ctx, name, "x"), node["params"]
    return tuple(linear(ctx, x, f"{name}.{w}", p) for w in ("q", "k", "v"))


def check_kernel(name: str, kernel: AttentionKernel) -> None:
    """The spec's attention kernel is a hint to PyTorch's scaled_dot_product_attention; onnxruntime
    picks its own kernel for every value, so each known value lowers the same and any other is refused."""
    if kernel not in (AttentionKernel.default, AttentionKernel.memory_efficient, AttentionKernel.flash, AttentionKernel.math):
        raise UnknownSetting(name, "kernel", kernel, LOWERING)


def lower_attention(ctx: Ctx, name: str, node: dict) -> str:
    """ONNX Attention (opset 23) on [B,S,H*hd] inputs with the past cache, GQA via kv_num_heads;
    RoPE through RotaryEmbedding (opset 23) before it, so cached keys are post-rotary (contract)."""
    s, p = node["settings"], node["params"]
    check_kernel(name, s.kernel)
    q, k, v = qkv(ctx, name, node)
    rot = input_of(ctx, name, "rotary")
    if rot is not None:
        cos, sin = rot.per_token(ctx)
        kw = dict(interleaved=rot.interleaved, rotary_embedding_dim=rot.dim)
        q = ctx.op("RotaryEmbedding", [q, cos, sin], num_heads=s.n_heads, **kw)
        k = ctx.op("RotaryEmbedding", [k, cos, sin], num_heads=s.kv_heads, **kw)
    past_k, past_v = cache_io(ctx, node)
    y, pk, pv = ctx.op("Attention", [q, k, v, attention_bias(ctx, name), past_k, past_v], 3,
                       q_num_heads=s.n_heads, kv_num_heads=s.kv_heads, scale=float(s.softmax_scale))
    cache_out(ctx, node, pk, pv)
    return linear(ctx, y, f"{name}.o", p)


K = ComponentKind
LOWERINGS = {
    K.input: lower_input,
    K.output: lower_output,
    K.token_embedding: lower_token_embedding,
    K.learned_position: lower_learned_position,
    K.sinusoidal_position: lower_sinusoidal_position,
    K.glm2d_position: lower_glm2d_position,
    K.rotary: lower_rotary,
    K.alibi: lower_alibi,
    K.mask: lower_mask,
    K.add: lower_add,
    K.scale: lower_scale,
    K.norm: lower_norm,
    K.attention: lower_attention,
    K.mlp: lower_mlp,
    K.residual: lower_residual,
    K.head: lower_head,
}

