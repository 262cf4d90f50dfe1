"""PyTorch emitter: the component graph as one readable nn.Module.

One small nn.Module per component kind (archc.graph.ComponentKind). `build_module` places each
node's module at the path given by the node's name (`embed`, `layers.0.attn`, `final_norm`,
`head`, ...), so `state_dict()` keys are exactly the graph's parameter names; `forward` walks
`graph.nodes()` in order and feeds every node the tensors on its in-edges, by port. Nothing here
reads the spec's axes: a parallel-residual layer runs in parallel because its graph says so.

Contract (notes/contract.md): forward(input_ids [B,S], attention_mask [B,past+S] (1 real, 0 left
padding), position_ids [B,S] or [B,2,S] (glm2d), prefix_len [B], past_key_values [(k, v)] with
k, v [B, kv_heads, past, head_dim]) -> (logits float32 [B,S,V], present), keys cached after RoPE.

Precision: norms, RoPE tables and the logits are computed in float32 whatever the weight dtype.
A tied head owns no parameter: it reads `embed.weight` at call time, so `state_dict()` has no
`head.weight` for tied specs (weights given for a tied name are checked equal to the owner and dropped).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass
class _Context:
    """Per-call state shared by the mask and attention nodes."""

    seq: int
    past: list | None
    present: list = field(default_factory=list)


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


def _layer_norm(h, eps: float):
    return F.layer_norm(h, h.shape[-1:], eps=eps)


def _rms_norm(h, eps: float):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def norm_fn(name: str, kind: NormKind):
    """The normalisation of a norm kind, before its scale and bias."""
    if kind is NormKind.layernorm:
        return _layer_norm
    if kind is NormKind.rmsnorm:
        return _rms_norm
    raise UnknownSetting(name, "norm", kind, EMITTER)


def _weight(w):
    return w


def _one_plus(w):
    return 1.0 + w


def scale_fn(name: str, scale: NormScale):
    """The factor a norm's weight makes: w, or 1 + w (Gemma)."""
    if scale is NormScale.weight:
        return _weight
    if scale is NormScale.one_plus_weight:
        return _one_plus
    raise UnknownSetting(name, "scale", scale, EMITTER)


class Norm(nn.Module):
    """LayerNorm (Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019), computed in float32;
    scale `weight` (y = n(x) w) or `one_plus_weight` (y = n(x) (1 + w), Gemma)."""

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: NormSettings = node["settings"]
        p = node["params"]
        self.norm, self.scale, self.eps = norm_fn(name, s.norm), scale_fn(name, s.scale), s.eps
        self.weight = _param(*p["weight"])
        self.bias = _param(*p["bias"]) if "bias" in p else None

    def forward(self, x):
        h = self.norm(x.float(), self.eps) * self.scale(self.weight.float())
        if self.bias is not None:
            h = h + self.bias.float()
        return h.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Attention side inputs: mask, rotary tables, ALiBi bias


def _positions(attention_mask):
    """pos(j) = cumsum(mask) - 1 over the whole past + current sequence (padding gets -1 or repeats)."""
    return attention_mask.long().cumsum(-1) - 1


class Mask(nn.Module):
    """Additive mask [B,1,S,T]: 0 where key j is visible to query i, a large finite negative elsewhere.

    Visible iff mask[j] and (pos(j) <= pos(i) (causal) or pos(j) < prefix_len (prefix, GLM)) and
    pos(i) - pos(j) < sliding_window when set. Never -inf, so all-padding query rows stay finite.
    """

    uses_context = True

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: MaskSettings = node["settings"]
        if s.mask is MaskKind.causal:
            self.bidirectional_prefix = False
        elif s.mask is MaskKind.prefix:  # GLM: keys inside the prefix are visible to every query
            self.bidirectional_prefix = True
        else:
            raise UnknownSetting(name, "mask", s.mask, EMITTER)
        self.window = s.sliding_window

    def forward(self, attention_mask, prefix_len=None, *, ctx: _Context, dtype=torch.float32):
        pos = _positions(attention_mask)
        kpos, qpos = pos[:, None, :], pos[:, -ctx.seq :, None]
        real = attention_mask[:, None, :].bool()
        visible = kpos <= qpos
        if self.bidirectional_prefix and prefix_len is not None:
            visible = visible | (kpos < prefix_len.view(-1, 1, 1))
        if self.window is not None:
            visible = visible & (qpos - kpos < self.window)
        visible = visible & real
        return torch.zeros(visible.shape, dtype=dtype, device=pos.device).masked_fill(~visible, torch.finfo(dtype).min)[:, None]


class Alibi(nn.Module):
    """Press et al. 2021: bias slope_h * pos(j) on every score; equal to -slope_h * (i - j) up to a
    per-row constant, which softmax ignores. Shape [B, H, 1, T]. We also subtract the row's last
    position (another per-row constant) so the bias is <= 0 and near 0 for recent keys: added to
    fp16/bf16 scores, a bias of slope * 4000 would swamp them."""

    def __init__(self, node: dict):
        super().__init__()
        s: AlibiSettings = node["settings"]
        self.slopes = list(s.slopes)

    def forward(self, attention_mask):
        slopes = torch.tensor(self.slopes, dtype=torch.float32, device=attention_mask.device)
        pos = _positions(attention_mask).float()
        return slopes[None, :, None, None] * (pos - pos[:, -1:])[:, None, None, :]


class Rotary(nn.Module):
    """RoPE (Su et al. 2021) tables: angle p * theta^(-2i/rotary_dim); output [B,S,rotary_dim/2,2] = (cos, sin)."""

    def __init__(self, name: str, node: dict):
        super().__init__()
        s: RotarySettings = node["settings"]
        self.theta, self.dim = s.theta, s.rotary_dim

    def forward(self, positions):
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.dim, 2, device=positions.device).float() / self.dim)
        angle = positions.float()[..., None] * inv_freq
        return torch.stack((angle.cos(), angle.sin()), dim=-1)


def _rotate_half(rot, cos, sin):
    """Pairs (i, i + d/2) (GPT-NeoX, HF LLaMA)."""
    d = rot.shape[-1]
    x1, x2 = rot[..., : d // 2], rot[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _rotate_interleaved(rot, cos, sin):
    """Pairs (2i, 2i + 1) (GPT-J, RoFormer)."""
    x1, x2 = rot[..., 0::2], rot[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def rotate_fn(name: str, style: RopeStyle):
    """How a RoPE style pairs the rotated dims."""
    if style is RopeStyle.half:
        return _rotate_half
    if style is RopeStyle.interleaved:
        return _rotate_interleaved
    raise UnknownSetting(name, "style", style, EMITTER)


def apply_rotary(x, table, rotate):
    """Rotate the first rotary_dim dims of x [B,H,S,hd] with `rotate` (rotate_fn); the rest pass
    through (partial rotary, GPT-NeoX)."""
    cos, sin = (t[:, None].to(x.dtype) for t in table.unbind(-1))  # [B,1,S,d/2]
    d = 2 * cos.shape[-1]
    return torch.cat((rotate(x[..., :d], cos, sin), x[..., d:]), dim=-1)


# ------------------------------------------------------------------------------------------------
# Blocks


def _sdpa_backends(name: str, kernel: AttentionKernel):
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
        raise UnknownSetting(name, "kernel", kernel, EMITTER)
    return sdpa_kernel(list(dict.fromkeys([wanted, SDPBackend.MATH])))


class Attention(nn.Module):
    """Multi-head attention with MQA/GQA (kv heads repeated to the query heads), RoPE on q and k,
    an additive mask (+ ALiBi bias), and a KV cache slot; runs scaled_dot_product_attention."""

    uses_context = True

    def __init__(self, name: str, node: dict, rotate=None):
        super().__init__()
        s: AttentionSettings = node["settings"]
        p = node["params"]
        _sdpa_backends(name, s.kernel)  # refuses a kernel without a branch when the model is built
        self.rotate = rotate  # rotate_fn of the rotary node feeding this one
        self.n_heads, self.kv_heads, self.head_dim = s.n_heads, s.kv_heads, s.head_dim
        self.name, self.scale, self.kernel, self.slot = name, s.softmax_scale, s.kernel, node["cache"]
        self.q, self.k, self.v, self.o = (_linear(p, n) for n in ("q", "k", "v", "o"))

    def forward(self, x, mask, rotary=None, bias=None, *, ctx: _Context):
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, rotary, self.rotate), apply_rotary(k, rotary, self.rotate)
        past = ctx.past[self.slot] if ctx.past else None
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        ctx.present[self.slot] = (k, v)
        if self.kv_heads != self.n_heads:  # head h reads kv head h // (n_heads / kv_heads)
            k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
        attn_mask = mask if bias is None else mask + bias
        with _sdpa_backends(self.name, self.kernel):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), scale=self.scale)
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

    def forward(self, x):
        act = self.act
        h = act(self.gate(x)) * self.up(x) if self.gate is not None else act(self.up(x))
        return self.down(h)


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
    """logits = x W^T (+ b) in float32; a tied head borrows the embedding matrix (`tied_to`)."""

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
        self.input_names = graph.graph_inputs()

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
            return Attention(name, node, rotate_fn(rotary, graph.settings(rotary).style) if rotary else None)
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

    def loss(self, input_ids, targets, chunk: int = 4096):
        """Mean next-token cross-entropy of `targets` [B,S] (-100 skips a position): the head's matmul
        runs chunk by chunk in the weight dtype, never holding float32 logits for the whole batch."""
        from exporters.torch_loss import linear_cross_entropy

        h, head = self(input_ids, return_hidden=True)
        weight = self.get_parameter(head.tied_to) if head.tied_to else head.weight
        return linear_cross_entropy(h.flatten(0, 1), weight, head.bias, targets.flatten())

    def forward(self, input_ids, attention_mask=None, position_ids=None, prefix_len=None, past_key_values=None,
                return_hidden: bool = False):
        B, S = input_ids.shape
        past_len = next((kv[0].shape[2] for kv in past_key_values or [] if kv is not None), 0)
        if attention_mask is None:
            attention_mask = torch.ones(B, past_len + S, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != (B, past_len + S):
            raise ValueError(f"attention_mask is {tuple(attention_mask.shape)}; it must cover past + new tokens: ({B}, {past_len + S})")
        if position_ids is None and "position_ids" in self.input_names:
            position_ids = self.default_positions(attention_mask, S, self.graph.model.position_ids)
        if prefix_len is None and "prefix_len" in self.input_names:
            prefix_len = torch.zeros(B, dtype=torch.long, device=input_ids.device)  # no prefix: plain causal
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "prefix_len": prefix_len}
        ctx = _Context(seq=S, past=past_key_values, present=[None] * self.n_cache)
        dtype = self.get_submodule("embed").weight.dtype
        values: dict = {}
        for name, kind, ins, module in self._steps:
            if kind is K.input:
                values[name] = feeds[name]
                continue
            if kind is K.output:
                values[name] = values[ins[0][0]]
                continue
            kw: dict = {}
            for src, port in ins:
                if kind in _MULTI_PORTS.get(port, ()):
                    kw.setdefault(port, []).append(values[src])
                else:
                    kw[port] = values[src]
            if kind is K.mask:
                kw["dtype"] = dtype
            if kind is K.head and return_hidden:
                return kw["x"], module
            if kind is K.head and module.tied_to:
                kw["weight"] = self.get_parameter(module.tied_to)
            values[name] = module(**kw, ctx=ctx) if getattr(module, "uses_context", False) else module(**kw)
        return values["logits"], ctx.present


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
    glm2d = graph.model.position_ids is PositionIds.glm2d
    B, L = len(prompts), max(map(len, prompts))
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(p)
        mask[b, L - len(p):] = 1
    lens = torch.tensor([len(p) for p in prompts])
    out, past, cur = [], None, ids
    for k in range(n_new):
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, -cur.shape[1]:]
        if glm2d:
            pos = torch.stack((pos, torch.zeros_like(pos)), 1) if k == 0 else torch.stack(
                ((lens - 1)[:, None], torch.full((B, 1), k)), 1)
        with torch.no_grad():
            logits, past = model(cur, mask, pos if "position_ids" in names else None,
                                 lens if "prefix_len" in names else None, past)
        tok = logits[:, -1].argmax(-1)
        out.append(tok)
        cur = tok[:, None]
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
    return torch.stack(out, 1).tolist()
