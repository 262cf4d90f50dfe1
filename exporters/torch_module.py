"""PyTorch emitter: the component graph as one readable, fast nn.Module.

One small nn.Module per component kind (archc.graph.ComponentKind). `build_module` places each
node's module at the path given by the node's name (`embed`, `layers.0.attn`, `final_norm`,
`head`, ...), so `state_dict()` keys are exactly the graph's parameter names; `forward` walks
`graph.nodes()` in order and feeds every node the tensors on its in-edges, by port. Nothing here
reads the spec's axes: a parallel-residual layer runs in parallel because its graph says so. The
model holds no parallelism; q/k/v/o and gate/up/down are separate nn.Linear modules, the layout
tensor parallelism shards (archc.dist, torchtitan's plan).

Contract (README "I/O contract"): forward(input_ids [B,S], attention_mask [B,past+S] (1 real, 0 left
padding), position_ids [B,S] or [B,2,S] (glm2d), prefix_len [B], past_key_values [(k, v)] with
k, v [B, kv_heads, past, head_dim]) -> (logits float32 [B,S,V], present), keys cached after RoPE.
With `cache=StaticKVCache` (model.static_cache) the keys and values go into max-length buffers in
place at `cache_position` and attention_mask covers the whole buffer [B, max_len], so every decode
step has the same shapes: torch.compile traces it once (CUDA graphs replay it).

Speed (issue 11): compute runs in the weight dtype, the head's matmul included; only norm
statistics (F.rms_norm / F.layer_norm upcast inside), softmax (SDPA) and the loss (loss(), chunked,
exporters/torch_loss.py) go to float32. The mask, ALiBi bias and rotary cos/sin are built once per
forward; without padding or a cache the mask is not built at all and SDPA runs `is_causal` (flash
attention), GQA through `enable_gqa` where that kernel takes it. `torch.compile(fullgraph=True)`
traces every library spec without a graph break (tests/emit_torch). set_activation_checkpointing
recomputes each layer in backward.

A tied head owns no parameter: it reads `embed.weight` at call time, so `state_dict()` has no
`head.weight` for tied specs (weights given for a tied name are checked equal to the owner and dropped).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from archc import feeds
from archc.components import (
    AlibiSettings,
    AttentionSettings,
    LearnedPositionSettings,
    MaskSettings,
    MlpSettings,
    NormSettings,
    PositionIds,
    ResidualSettings,
    RotarySettings,
    ScaleSettings,
    SinusoidalPositionSettings,
    UnknownSetting,
)
from archc.graph import ComponentGraph, ComponentKind as K
from archc.spec import Activation, AttentionKernel, MaskKind, NormKind, NormScale, RopeStyle

EMITTER = "PyTorch emitter"


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))  # filled by build_module (built on the meta device)


def _linear(params: dict, local: str) -> nn.Linear:
    out_f, in_f = params[f"{local}.weight"]
    return nn.Linear(in_f, out_f, bias=f"{local}.bias" in params)


class StaticKVCache:
    """Max-length key/value buffers, one pair per attention node, written in place (static shapes)."""

    def __init__(self, keys: list, values: list):
        self.keys, self.values = keys, values
        self.max_len = keys[0].shape[2] if keys else 0


@dataclass
class _Context:
    """Per-call state shared by the mask and attention nodes.

    seq: new tokens this call; causal: no padding, past or cache, so the mask is implicit (is_causal);
    dtype: the compute dtype (the weights', or autocast's); memo: tensors built once per forward and
    shared by every layer (the mask combined with the ALiBi bias, cast to the compute dtype)."""

    seq: int
    past: list | None
    dtype: torch.dtype
    causal: bool = False
    cache: StaticKVCache | None = None
    cache_position: torch.Tensor | None = None
    present: list = field(default_factory=list)
    memo: dict = field(default_factory=dict)
    logits_start: int = 0  # the head computes positions logits_start: (forward's argument, the ONNX input's twin)


# ------------------------------------------------------------------------------------------------
# Embeddings and positions


class TokenEmbedding(nn.Module):
    def __init__(self, node: dict):
        super().__init__()
        self.weight = _param(*node["params"]["weight"])

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class Scale(nn.Module):
    def __init__(self, node: dict):
        super().__init__()
        s: ScaleSettings = node["settings"]
        self.factor = s.factor

    def forward(self, x):
        return x * self.factor


class LearnedPosition(nn.Module):
    def __init__(self, node: dict):
        super().__init__()
        s: LearnedPositionSettings = node["settings"]
        self.weight = _param(*node["params"]["weight"])
        self.offset = s.offset  # OPT looks position p up at row p + 2

    def forward(self, positions):
        return F.embedding(positions + self.offset, self.weight)


class SinusoidalPosition(nn.Module):
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""

    def __init__(self, node: dict, d_model: int):
        super().__init__()
        s: SinusoidalPositionSettings = node["settings"]
        self.base, self.d_model = s.base, d_model

    def forward(self, positions):
        i = torch.arange(0, self.d_model, 2, device=positions.device, dtype=torch.float32)
        angle = positions.float()[..., None] / self.base ** (i / self.d_model)
        return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)[..., : self.d_model]


class Glm2dPosition(nn.Module):
    """GLM (Du et al. 2022): position table at position_ids[:, 0] + block table at position_ids[:, 1]."""

    def __init__(self, node: dict):
        super().__init__()
        self.position = nn.Embedding(*node["params"]["position.weight"])
        self.block = nn.Embedding(*node["params"]["block.weight"])

    def forward(self, positions):
        return self.position(positions[:, 0]) + self.block(positions[:, 1])


class Add(nn.Module):
    def forward(self, x: list):
        out = x[0]
        for t in x[1:]:
            out = out + t.to(out.dtype)
        return out


class Norm(nn.Module):
    """LayerNorm (Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019) through torch's fused kernels,
    which compute the statistics in float32 whatever the input dtype; scale `weight` (y = n(x) w) or
    `one_plus_weight` (y = n(x) (1 + w), Gemma)."""

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: NormSettings = node["settings"]
        p = node["params"]
        if s.norm not in (NormKind.layernorm, NormKind.rmsnorm):
            raise UnknownSetting(name, "norm", s.norm, EMITTER)
        if s.scale not in (NormScale.weight, NormScale.one_plus_weight):
            raise UnknownSetting(name, "scale", s.scale, EMITTER)
        self.name, self.kind, self.eps, self.scale = name, s.norm, s.eps, s.scale
        self.weight = _param(*p["weight"])
        self.bias = _param(*p["bias"]) if "bias" in p else None

    def forward(self, x):
        shape = x.shape[-1:]
        if self.scale is NormScale.weight:
            w, post = self.weight, None
        elif self.scale is NormScale.one_plus_weight:  # (1 + w) in float32, applied after the normalisation
            w, post = None, 1.0 + self.weight.float()
        else:
            raise UnknownSetting(self.name, "scale", self.scale, EMITTER)
        if self.kind is NormKind.layernorm:
            h = F.layer_norm(x, shape, w, self.bias if post is None else None, eps=self.eps)
        elif self.kind is NormKind.rmsnorm:
            h = F.rms_norm(x, shape, w, eps=self.eps)
            if self.bias is not None and post is None:  # rms_norm takes no bias
                h = h + self.bias
        else:
            raise UnknownSetting(self.name, "norm", self.kind, EMITTER)
        if post is not None:
            h = h.float() * post
            if self.bias is not None:
                h = h + self.bias.float()
            h = h.to(x.dtype)
        return h


# ------------------------------------------------------------------------------------------------
# Attention side inputs: mask, rotary tables, ALiBi bias


def _positions(attention_mask):
    """pos(j) = cumsum(mask) - 1 over the whole past + current sequence (padding gets -1 or repeats)."""
    return attention_mask.long().cumsum(-1) - 1


def _query_positions(pos, ctx: _Context):
    """The positions of this call's tokens: the last `seq` columns, or the cache slots being written."""
    if ctx.cache_position is not None:
        return pos[:, ctx.cache_position]
    return pos[:, -ctx.seq:]


class Mask(nn.Module):
    """Additive mask [B,1,S,T]: 0 where key j is visible to query i, a large finite negative elsewhere.

    Visible iff mask[j] and (pos(j) <= pos(i) (causal) or pos(j) < prefix_len (prefix, GLM)) and
    pos(i) - pos(j) < sliding_window when set. Never -inf, so all-padding query rows stay finite.
    Without padding, past or cache (ctx.causal, training) a plain causal mask is returned as None:
    attention then asks SDPA for is_causal, which flash attention serves without any mask tensor.
    """

    uses_context = True

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: MaskSettings = node["settings"]
        if s.mask not in (MaskKind.causal, MaskKind.prefix):
            raise UnknownSetting(name, "mask", s.mask, EMITTER)
        self.name, self.kind, self.window = name, s.mask, s.sliding_window

    def forward(self, attention_mask, prefix_len=None, *, ctx: _Context):
        if self.kind is MaskKind.causal:
            prefix = None
        elif self.kind is MaskKind.prefix:
            prefix = prefix_len
        else:
            raise UnknownSetting(self.name, "mask", self.kind, EMITTER)
        if ctx.causal and prefix is None and self.window is None:
            return None
        pos = _positions(attention_mask)
        kpos, qpos = pos[:, None, :], _query_positions(pos, ctx)[:, :, None]
        visible = kpos <= qpos
        if prefix is not None:
            visible = visible | (kpos < prefix.view(-1, 1, 1))
        if self.window is not None:
            visible = visible & (qpos - kpos < self.window)
        visible = visible & attention_mask[:, None, :].bool()
        mask = torch.zeros(visible.shape, dtype=ctx.dtype, device=pos.device)
        return mask.masked_fill(~visible, torch.finfo(ctx.dtype).min)[:, None]


class Alibi(nn.Module):
    """Press et al. 2021: bias slope_h * pos(j) on every score; equal to -slope_h * (i - j) up to a
    per-row constant, which softmax ignores. Shape [B, H, 1, T]. We also subtract the last query's
    position (another per-row constant) so the bias is <= 0 and near 0 for recent keys: added to
    fp16/bf16 scores, a bias of slope * 4000 would swamp them."""

    uses_context = True

    def __init__(self, node: dict):
        super().__init__()
        s: AlibiSettings = node["settings"]
        self.slopes = list(s.slopes)  # plain floats: build_module makes modules on the meta device

    def forward(self, attention_mask, *, ctx: _Context | None = None):
        slopes = torch.tensor(self.slopes, dtype=torch.float32, device=attention_mask.device)
        pos = _positions(attention_mask).float()
        last = pos[:, -1:] if ctx is None else _query_positions(pos, ctx)[:, -1:]
        return slopes[None, :, None, None] * (pos - last)[:, None, None, :]


class Rotary(nn.Module):
    """RoPE (Su et al. 2021) tables: angle p * theta^(-2i/rotary_dim), made in float32 once per forward
    and cast to the compute dtype (as the published models do); output (cos, sin), each [B,1,S,rotary_dim/2]."""

    uses_context = True

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: RotarySettings = node["settings"]
        if s.style not in (RopeStyle.half, RopeStyle.interleaved):
            raise UnknownSetting(name, "style", s.style, EMITTER)
        self.theta, self.dim, self.style = s.theta, s.rotary_dim, s.style

    def forward(self, positions, *, ctx: _Context):
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.dim, 2, device=positions.device).float() / self.dim)
        angle = positions.float()[:, None, :, None] * inv_freq
        return angle.cos().to(ctx.dtype), angle.sin().to(ctx.dtype)


def apply_rotary(x, table, style: RopeStyle):
    """Rotate the first rotary_dim dims of x [B,H,S,hd]; the rest pass through (partial rotary, GPT-NeoX).
    half: pairs (i, i + d/2) (GPT-NeoX, HF LLaMA); interleaved: pairs (2i, 2i + 1) (GPT-J, RoFormer)."""
    cos, sin = table
    d = 2 * cos.shape[-1]
    rot, rest = (x, None) if d == x.shape[-1] else (x[..., :d], x[..., d:])
    if style is RopeStyle.half:
        x1, x2 = rot[..., : d // 2], rot[..., d // 2:]
        rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    elif style is RopeStyle.interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        raise UnknownSetting("rotary", "style", style, EMITTER)
    return rot if rest is None else torch.cat((rot, rest), dim=-1)


# ------------------------------------------------------------------------------------------------
# Blocks


def _sdpa_backends(kernel: AttentionKernel):
    """The spec's attention kernel as an sdpa_kernel context; math stays allowed as the fallback, so a
    kernel the device lacks (memory-efficient on CPU, flash with a float mask) never fails."""
    if kernel is AttentionKernel.default:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kernel is AttentionKernel.memory_efficient:
        wanted = SDPBackend.EFFICIENT_ATTENTION
    elif kernel is AttentionKernel.flash:
        wanted = SDPBackend.FLASH_ATTENTION
    elif kernel is AttentionKernel.math:
        wanted = SDPBackend.MATH
    else:
        raise UnknownSetting("attention", "kernel", kernel, EMITTER)
    return sdpa_kernel(list(dict.fromkeys([wanted, SDPBackend.MATH])))


class Attention(nn.Module):
    """Multi-head attention with MQA/GQA, RoPE on q and k, an additive mask (+ ALiBi bias), and a KV
    cache slot; runs scaled_dot_product_attention. GQA: SDPA's enable_gqa where flash attention can
    take the call (no mask tensor, CUDA, half precision, a kernel setting that allows flash); other
    calls fall back to the math kernel under enable_gqa, so they get kv heads expanded instead."""

    uses_context = True

    def __init__(self, name: str, node: dict, rotary_style: RopeStyle | None = None):
        super().__init__()
        s: AttentionSettings = node["settings"]
        p = node["params"]
        if s.kernel not in (AttentionKernel.default, AttentionKernel.memory_efficient, AttentionKernel.flash, AttentionKernel.math):
            raise UnknownSetting(name, "kernel", s.kernel, EMITTER)
        self.rotary_style = rotary_style  # read off the rotary node feeding this one
        self.n_heads, self.kv_heads, self.head_dim = s.n_heads, s.kv_heads, s.head_dim
        self.scale, self.kernel, self.slot = s.softmax_scale, s.kernel, node["cache"]
        self.q, self.k, self.v, self.o = (_linear(p, n) for n in ("q", "k", "v", "o"))
        self.register_buffer("qkv_weight", None, persistent=False)  # set by pack_projections (inference)
        self.register_buffer("qkv_bias", None, persistent=False)

    def pack(self) -> bool:
        """q, k and v as one [q + 2 kv, d] matrix (one M = 1 product per decode step instead of three);
        see GraphModel.pack_projections. False where the three do not all have a bias or all lack one."""
        return _pack(self, ("q", "k", "v"), "qkv")

    def _mask(self, mask, bias, ctx: _Context):
        """The additive mask + ALiBi bias in the compute dtype, made once per forward (memo) for all layers."""
        if mask is None and bias is None:
            return None
        if "attn_mask" not in ctx.memo:
            if mask is None:  # causal without a mask tensor, but ALiBi needs one: build it once here
                S = ctx.seq
                causal = torch.ones(S, S, dtype=torch.bool, device=bias.device).tril()
                mask = torch.zeros(S, S, dtype=torch.float32, device=bias.device).masked_fill(~causal, torch.finfo(torch.float32).min)
            combined = mask.float() if bias is None else mask.float() + bias
            ctx.memo["attn_mask"] = combined.to(ctx.dtype)
        return ctx.memo["attn_mask"]

    def _one_query(self, q, k, v, attn_mask):
        """Attention of one query per head (a decode step) as two matrix products per kv group: the
        query heads that share a kv head are stacked as rows, so k and v are read as they are, never
        expanded (SDPA would expand them: its GQA kernel, flash, takes no mask). The scores get the
        mask and go through softmax in float32, as SDPA's math kernel does. Returns [B, H, 1, hd]."""
        B, T = q.shape[0], k.shape[2]
        rep = self.n_heads // self.kv_heads
        qg = q.reshape(B, self.kv_heads, rep, self.head_dim)  # head h = g * rep + r reads kv head g
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * self.scale  # [B, kv, rep, T]
        scores = scores.view(B, self.n_heads, 1, T) + attn_mask.float()
        p = torch.softmax(scores, dim=-1).to(v.dtype).view(B, self.kv_heads, rep, T)
        return torch.matmul(p, v).view(B, self.n_heads, 1, self.head_dim)

    def forward(self, x, mask, rotary=None, bias=None, *, ctx: _Context):
        B, S, _ = x.shape
        if self.qkv_weight is not None:
            nq, nkv = self.n_heads * self.head_dim, self.kv_heads * self.head_dim
            q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).split((nq, nkv, nkv), dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, rotary, self.rotary_style), apply_rotary(k, rotary, self.rotary_style)
        if ctx.cache is not None:  # write this call's keys into the static buffers in place, attend over all of them
            k_buf, v_buf = ctx.cache.keys[self.slot], ctx.cache.values[self.slot]
            k_buf.index_copy_(2, ctx.cache_position, k.to(k_buf.dtype))
            v_buf.index_copy_(2, ctx.cache_position, v.to(v_buf.dtype))
            k, v = k_buf, v_buf
        else:
            past = ctx.past[self.slot] if ctx.past else None
            if past is not None:
                k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            ctx.present[self.slot] = (k, v)
        attn_mask = self._mask(mask, bias, ctx)
        gqa = self.kv_heads != self.n_heads
        if S == 1 and attn_mask is not None and self.kernel in (AttentionKernel.default, AttentionKernel.math):
            y = self._one_query(q, k, v, attn_mask)
            return self.o(y.reshape(B, 1, self.n_heads * self.head_dim))
        flash_ok = attn_mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and self.kernel in (AttentionKernel.default, AttentionKernel.flash)
        if gqa and not flash_ok:  # head h reads kv head h // (n_heads / kv_heads)
            rep = self.n_heads // self.kv_heads
            k = k[:, :, None].expand(-1, -1, rep, -1, -1).reshape(B, self.n_heads, k.shape[2], self.head_dim)
            v = v[:, :, None].expand(-1, -1, rep, -1, -1).reshape(B, self.n_heads, v.shape[2], self.head_dim)
        with _sdpa_backends(self.kernel):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and S > 1,
                                               scale=self.scale, enable_gqa=gqa and flash_ok)
        return self.o(y.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def activation_fn(name: str, act: Activation):
    """The elementwise function of an activation; a gated one's (Shazeer 2020) is its gate's."""
    if act in (Activation.gelu, Activation.geglu):
        return F.gelu
    if act in (Activation.gelu_tanh, Activation.geglu_tanh):
        return _gelu_tanh
    if act in (Activation.relu, Activation.reglu):
        return F.relu
    if act in (Activation.silu, Activation.swiglu):
        return F.silu
    raise UnknownSetting(name, "activation", act, EMITTER)


class Mlp(nn.Module):
    """down(act(up(x))), or gated (Shazeer 2020): down(act(gate(x)) * up(x))."""

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: MlpSettings = node["settings"]
        p = node["params"]
        self.act = activation_fn(name, s.activation)
        self.up, self.down = _linear(p, "up"), _linear(p, "down")
        self.gate = _linear(p, "gate") if "gate.weight" in p else None
        self.register_buffer("gate_up_weight", None, persistent=False)  # set by pack_projections (inference)
        self.register_buffer("gate_up_bias", None, persistent=False)

    def pack(self) -> bool:
        """gate and up as one [2 d_ff, d] matrix; see GraphModel.pack_projections."""
        return self.gate is not None and _pack(self, ("gate", "up"), "gate_up")

    def forward(self, x):
        act = self.act
        if self.gate_up_weight is not None:
            g, u = F.linear(x, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)
            h = act(g) * u
        elif self.gate is not None:
            h = act(self.gate(x)) * self.up(x)
        else:
            h = act(self.up(x))
        return self.down(h)


def _pack(module: nn.Module, names: tuple, packed: str) -> bool:
    """Concatenate the weights (and biases) of module's linears `names` into the buffers
    `{packed}_weight` / `{packed}_bias`, then make each linear's parameters views into them: one copy
    of the weights in memory, and state_dict / load_state_dict still see (and write) the same values."""
    linears = [getattr(module, n) for n in names]
    if len({lin.bias is None for lin in linears}) != 1:
        return False
    if getattr(module, f"{packed}_weight") is not None:
        return True  # already packed
    for part in ("weight", "bias"):
        if getattr(linears[0], part) is None:
            continue
        whole = torch.cat([getattr(lin, part).detach() for lin in linears])
        setattr(module, f"{packed}_{part}", whole)
        start = 0
        for lin in linears:
            n = getattr(lin, part).shape[0]
            getattr(lin, part).data = whole[start:start + n]
            start += n
    return True


class Residual(nn.Module):
    """alpha * skip + sum(branches); alpha is 1 except DeepNorm (Wang et al. 2022)."""

    def __init__(self, node: dict):
        super().__init__()
        s: ResidualSettings = node["settings"]
        self.alpha = s.alpha

    def forward(self, skip, branch: list):
        out = skip if self.alpha == 1.0 else self.alpha * skip
        for b in branch:
            out = out + b
        return out


class Head(nn.Module):
    """logits = x W^T (+ b), the matmul in the weight dtype, the result float32; a tied head borrows
    the embedding matrix (`tied_to`)."""

    def __init__(self, node: dict):
        super().__init__()
        p = node["params"]
        self.tied_to = node.get("tied", {}).get("weight")
        self.weight = None if self.tied_to else _param(*p["weight"])
        self.bias = _param(*p["bias"]) if "bias" in p else None

    def forward(self, x, weight=None):
        w = self.weight if weight is None else weight
        return F.linear(x, w, self.bias).float()


# ------------------------------------------------------------------------------------------------
# The model: modules at the nodes' paths, forward = walk the graph


_MULTI_PORTS = {"x": (K.add,), "branch": (K.residual,)}  # ports that take a list of inputs


def _last_reads(steps: list) -> dict[str, tuple[str, ...]]:
    """For each step (in run order), the values to drop once it has run: those it is the last step to read,
    and its own output when no step reads it. The graph's outputs (the logits) are kept: forward returns them."""
    last: dict[str, str] = {}
    for name, kind, ins, _ in steps:
        last[name] = name  # read by nobody yet: dropped right after it is made, unless a later step reads it
        for src, _ in ins:
            last[src] = name
    keep = {name for name, kind, _, _ in steps if kind is K.output}
    frees: dict[str, tuple[str, ...]] = {name: () for name, *_ in steps}
    for value, reader in last.items():
        if value not in keep:
            frees[reader] += (value,)
    return frees


@dataclass
class _Segment:
    """A run of consecutive steps: one layer (checkpointable) or the nodes outside the stack."""

    layer: int | None
    steps: list
    inputs: list  # values the segment reads from outside it
    outputs: list  # values it makes that later steps read
    frees: list  # per step: the values that step reads (or makes) for the last time, dropped right after it
    frees_inputs: tuple  # the inputs whose last reader is in this segment (dropped after a checkpointed run)


class GraphModel(nn.Module):
    def __init__(self, graph: ComponentGraph):
        super().__init__()
        self.graph = graph
        layer_ids = [graph.node(n)["layer"] for n in graph.nodes() if graph.node(n)["layer"] is not None]
        n_layers = max(layer_ids, default=-1) + 1
        self.n_cache = len(graph.nodes(K.attention))
        self._steps = []  # (name, kind, [(source, port)], module or None), in graph order
        for name in graph.nodes():
            node, kind = graph.node(name), K(graph.node(name)["kind"])
            module = None
            if kind not in (K.input, K.output):
                module = self._make(name, kind, node, graph)
                parts = name.split(".")
                if parts[0] == "layers":
                    if "layers" not in self._modules:  # registered here so state_dict follows graph order
                        self.layers = nn.ModuleList(nn.Module() for _ in range(n_layers))
                    setattr(self.layers[int(parts[1])], ".".join(parts[2:]), module)
                else:
                    setattr(self, name, module)
            self._steps.append((name, kind, graph.inputs(name), module))
        head_weight = f"{graph.nodes(K.head)[0]}.weight"
        self._head_weight_name = graph.tied().get(head_weight, head_weight)  # derived once; see head_weight
        self.input_names = graph.graph_inputs()
        self.position_ids = graph.model.position_ids
        self.glm2d = self.position_ids is PositionIds.glm2d
        self._segments = self._split_segments(graph)
        self.activation_checkpointing = False

    def _split_segments(self, graph: ComponentGraph) -> list[_Segment]:
        segs: list[_Segment] = []
        for step in self._steps:
            layer = graph.node(step[0])["layer"]
            if not segs or segs[-1].layer != layer:
                segs.append(_Segment(layer, [], [], [], [], ()))
            segs[-1].steps.append(step)
        for i, seg in enumerate(segs):
            own = {name for name, *_ in seg.steps}
            seg.inputs = list(dict.fromkeys(src for _, _, ins, _ in seg.steps for src, _ in ins if src not in own))
            later = {src for s in segs[i + 1:] for _, _, ins, _ in s.steps for src, _ in ins}
            seg.outputs = [name for name, *_ in seg.steps if name in later or name == "logits"]
        frees = _last_reads(self._steps)
        for seg in segs:
            seg.frees = [frees[name] for name, *_ in seg.steps]
            seg.frees_inputs = tuple(n for names in seg.frees for n in names if n in seg.inputs)
        return segs

    def set_activation_checkpointing(self, on: bool = True) -> None:
        """Recompute each layer's activations in backward (torch.utils.checkpoint, non-reentrant)."""
        self.activation_checkpointing = on

    @staticmethod
    def _make(name: str, kind: K, node: dict, graph: ComponentGraph) -> nn.Module:
        """The module of one node; every kind but the graph's inputs and outputs has one."""
        if kind is K.token_embedding:
            return TokenEmbedding(node)
        if kind is K.scale:
            return Scale(node)
        if kind is K.learned_position:
            return LearnedPosition(node)
        if kind is K.sinusoidal_position:
            return SinusoidalPosition(node, graph.model.d_model)
        if kind is K.glm2d_position:
            return Glm2dPosition(node)
        if kind is K.add:
            return Add()
        if kind is K.norm:
            return Norm(name, node)
        if kind is K.mask:
            return Mask(name, node)
        if kind is K.alibi:
            return Alibi(node)
        if kind is K.rotary:
            return Rotary(name, node)
        if kind is K.attention:
            rotary = graph.input_of(name, "rotary")
            return Attention(name, node, graph.settings(rotary).style if rotary else None)
        if kind is K.mlp:
            return Mlp(name, node)
        if kind is K.residual:
            return Residual(node)
        if kind is K.head:
            return Head(node)
        raise UnknownSetting(name, "kind", kind, EMITTER)

    def default_positions(self, attention_mask, seq: int, layout: PositionIds):
        """cumsum(mask) - 1 clamped at 0, last `seq` columns; glm2d adds a block row of zeros."""
        pos = _positions(attention_mask).clamp(min=0)[:, -seq:]
        if layout is PositionIds.flat:
            return pos
        if layout is PositionIds.glm2d:
            return torch.stack((pos, torch.zeros_like(pos)), dim=1)
        raise UnknownSetting("position_ids", "layout", layout, EMITTER)

    def _layout_positions(self, pos):
        if self.position_ids is PositionIds.flat:
            return pos
        if self.position_ids is PositionIds.glm2d:
            return torch.stack((pos, torch.zeros_like(pos)), dim=1)
        raise UnknownSetting("position_ids", "layout", self.position_ids, EMITTER)

    def static_cache(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None, device=None) -> StaticKVCache:
        """Zeroed key/value buffers [batch, kv_heads, max_len, head_dim] per attention node, allocated once;
        marked static for torch.compile, so CUDA graphs may hold their addresses."""
        ref = self.get_submodule("embed").weight
        dtype, device = dtype or ref.dtype, device or ref.device
        keys, values = [None] * self.n_cache, [None] * self.n_cache
        for _, kind, _, module in self._steps:
            if kind is K.attention:
                for store in (keys, values):
                    buf = torch.zeros(batch, module.kv_heads, max_len, module.head_dim, dtype=dtype, device=device)
                    torch._dynamo.mark_static_address(buf)
                    store[module.slot] = buf
        return StaticKVCache(keys, values)

    def pack_projections(self) -> int:
        """For inference: every attention's q|k|v and every gated MLP's gate|up become one matrix each,
        so a decode step runs 4 matrix-vector products per layer instead of 7 (at M = 1 each product
        costs a kernel's latency on top of its bytes). The parameters stay, as views into the packed
        buffers, so state_dict is unchanged; but forward reads the buffers, so no gradient reaches them:
        do not train a packed model, and pack after moving it (.to makes separate copies). Returns the
        number of nodes packed."""
        done = 0
        for _, kind, _, module in self._steps:
            if kind in (K.attention, K.mlp):
                done += bool(module.pack())
        return done

    def head_weight(self) -> nn.Parameter:
        """The head's weight matrix: its own, or the token embedding's when tied. Only the name is derived
        once (in __init__): the parameter object is looked up at each call, because to_empty and FSDP2
        replace parameter objects on the module after it is built."""
        return self.get_parameter(self._head_weight_name)

    def head_logits(self, hidden):
        """The head applied to hidden states (float32 logits), e.g. the last position of
        forward(..., return_hidden=True)."""
        return self.get_submodule("head")(hidden, weight=self.head_weight())

    def loss(self, input_ids, targets, chunk: int = 4096):
        """Mean next-token cross-entropy of `targets` [B,S] (-100 skips a position): the head's matmul
        runs chunk by chunk in the weight dtype, never holding float32 logits for the whole batch."""
        from exporters.torch_loss import linear_cross_entropy

        h = self(input_ids, return_hidden=True)
        return linear_cross_entropy(h.flatten(0, 1), self.head_weight(), self.get_submodule("head").bias, targets.flatten(), chunk)

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past_key_values=None,
                cache: StaticKVCache | None = None, cache_position=None, return_hidden: bool = False, logits_start: int = 0):
        """logits_start: the first position the head computes, Python-style, as the ONNX model's input of that
        name (archc.model_dir.LOGITS_START): 0 every position (logits [B, S, V]), -1 the last ([B, 1, V]),
        what generation reads (greedy_generate's prefill feeds it, as archc's runner does onnxruntime)."""
        B, S = input_ids.shape
        device = input_ids.device
        past_len = 0
        for kv in past_key_values or []:
            if kv is not None:
                past_len = kv[0].shape[2]
                break
        causal = attention_mask is None and not past_len and cache is None
        if cache is not None:
            if attention_mask is None or cache_position is None:
                raise ValueError("a static cache needs attention_mask [B, max_len] and cache_position [S]")
            if attention_mask.shape != (B, cache.max_len):
                raise ValueError(f"attention_mask is {tuple(attention_mask.shape)}; with a static cache it covers the buffers: ({B}, {cache.max_len})")
        elif attention_mask is None:
            attention_mask = torch.ones(B, past_len + S, dtype=torch.long, device=device)
        elif attention_mask.shape != (B, past_len + S):
            raise ValueError(f"attention_mask is {tuple(attention_mask.shape)}; it must cover past + new tokens: ({B}, {past_len + S})")
        if position_ids is None and "position_ids" in self.input_names:
            if causal:
                position_ids = self._layout_positions(torch.arange(S, device=device).expand(B, S))
            elif cache is not None:
                position_ids = self._layout_positions(_positions(attention_mask).clamp(min=0)[:, cache_position])
            else:
                position_ids = self.default_positions(attention_mask, S, self.position_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "prefix_len": prefix_len}
        weight_dtype = self.get_submodule("embed").weight.dtype
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight_dtype
        ctx = _Context(seq=S, past=past_key_values, dtype=dtype, causal=causal, cache=cache, cache_position=cache_position,
                       present=[None] * self.n_cache, logits_start=logits_start)
        values: dict = {}
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for seg in self._segments:
            if checkpointing and seg.layer is not None:
                from torch.utils.checkpoint import checkpoint

                outs = checkpoint(self._run_segment, seg, ctx, feeds, return_hidden, *[values[n] for n in seg.inputs],
                                  use_reentrant=False)
                values.update(zip(seg.outputs, outs))
                for name in seg.frees_inputs:
                    del values[name]
                continue
            done = self._run_steps(seg.steps, seg.frees, values, ctx, feeds, return_hidden)
            if done is not None:
                return done
        return values["logits"], ctx.present

    def _run_segment(self, seg: _Segment, ctx: _Context, feeds: dict, return_hidden: bool, *inputs):
        values = dict(zip(seg.inputs, inputs))
        self._run_steps(seg.steps, seg.frees, values, ctx, feeds, return_hidden)
        return tuple(values[n] for n in seg.outputs)

    def _run_steps(self, steps: list, frees: list, values: dict, ctx: _Context, feeds: dict, return_hidden: bool):
        """Run `steps` into `values`, dropping after each step the values it was the last to read (`frees`,
        parallel to `steps`), so inference holds the residual stream and the step in flight, not every
        node's output; returns the head's input instead when return_hidden reaches the head."""
        for (name, kind, ins, module), done in zip(steps, frees):
            if kind is K.input:
                values[name] = feeds[name]
            elif kind is K.output:
                values[name] = values[ins[0][0]]
            else:
                kw: dict = {}
                for src, port in ins:
                    if kind in _MULTI_PORTS.get(port, ()):
                        kw.setdefault(port, []).append(values[src])
                    else:
                        kw[port] = values[src]
                if kind is K.head and return_hidden:
                    return kw["x"]
                if kind is K.head:
                    kw["weight"] = self.head_weight()
                    if ctx.logits_start:
                        kw["x"] = kw["x"][:, ctx.logits_start:]  # a view: only these positions' logits are made
                values[name] = module(**kw, ctx=ctx) if getattr(module, "uses_context", False) else module(**kw)
                del kw
            for gone in done:
                del values[gone]
        return None


def build_module(graph: ComponentGraph, *, weights: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, device=None) -> GraphModel:
    """The graph as an nn.Module, loaded with `weights` (default: archc.weights.init_state, the seeded
    init) and cast to `dtype` (default float32, the precision the init is drawn in)."""
    with torch.device("meta"):
        model = GraphModel(graph).to(dtype or torch.float32)
    model.to_empty(device=device or "cpu")  # one uninitialised copy, filled below
    expected = set(model.state_dict())
    with torch.no_grad():
        if weights is None:  # drawn one parameter at a time, so memory stays near one copy of the model
            from archc.weights import iter_init

            filled = set()
            for name, value in iter_init(graph):
                model.get_parameter(name).copy_(value)
                filled.add(name)
            assert filled == expected, f"init left {sorted(expected - filled)[:5]} unfilled"
            return model.eval()
        weights = dict(weights)
        for tied, owner in graph.tied().items():
            if tied in weights:
                given = weights.pop(tied)
                if owner in weights and not torch.equal(given.to(weights[owner].dtype), weights[owner]):
                    raise ValueError(f"{tied} is tied to {owner} but the weights give it different values")
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(f"weights do not match the graph: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict(weights, strict=True)
    return model.eval()


def greedy_generate(model: GraphModel, graph: ComponentGraph, prompts: list[list[int]], n_new: int) -> list[list[int]]:
    """Greedy decoding with the module's KV cache, fed as archc's runner feeds onnxruntime: prompts
    left-padded into one batch, positions cumsum(mask) - 1; a prefix-mask model's prompt is its
    bidirectional prefix; GLM 2D positions: prompt tokens (position, 0), the k-th generated token
    (last prompt position, k). Returns the generated ids, one list per prompt."""
    names = graph.graph_inputs()
    layout = graph.model.position_ids
    ids, mask, lens = (torch.from_numpy(a) for a in feeds.left_pad(prompts))
    B = len(prompts)
    out, past, cur = [], None, ids
    for k in range(n_new):
        pos = feeds.positions(mask.numpy(), cur.shape[1], layout, lens.numpy(), k)
        with torch.no_grad():  # logits_start=-1: the head on the last position only, as archc's runner feeds onnxruntime
            logits, past = model(cur, mask, None if pos is None else torch.from_numpy(pos),
                                 lens if "prefix_len" in names else None, past, logits_start=-1)
        tok = logits[:, -1].argmax(-1)
        out.append(tok)
        cur = tok[:, None]
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
    return torch.stack(out, 1).tolist()


def static_greedy(model: GraphModel, prompt_ids, attention_mask, n_new: int, *, step=None, prefill=None):
    """Greedy decoding through a static KV cache: prompts [B,P] left-padded (attention_mask), buffers of
    P + n_new positions allocated once, every decode step the same shapes (`step`, e.g. the model under
    torch.compile with CUDA graphs, runs each of them; `prefill` the prompt). Feeds as greedy_generate:
    a prefix-mask model's prompt is its bidirectional prefix; GLM 2D positions: prompt tokens
    (position, 0), the k-th generated token (last prompt position, k). Returns ids [B, n_new]."""
    B, P = prompt_ids.shape
    device = prompt_ids.device
    cache = model.static_cache(B, P + n_new)
    full = torch.zeros(B, P + n_new, dtype=torch.long, device=device)
    full[:, :P] = attention_mask
    lens = attention_mask.sum(1)
    kw = {"prefix_len": lens} if "prefix_len" in model.input_names else {}
    prefill = model if prefill is None else prefill
    step = model if step is None else step
    logits, _ = prefill(prompt_ids, full, cache=cache, cache_position=torch.arange(P, device=device), **kw)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    out = [tok]
    slots = torch.arange(P, P + n_new, device=device)  # made once: a host-to-device copy per step would sync
    for k in range(1, n_new):
        full[:, P + k - 1] = 1
        if model.glm2d:
            kw["position_ids"] = torch.stack(((lens - 1)[:, None], torch.full((B, 1), k, device=device)), 1)
        logits, _ = step(tok, full, cache=cache, cache_position=slots[k - 1:k], **kw)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        out.append(tok)
    return torch.cat(out, 1)
