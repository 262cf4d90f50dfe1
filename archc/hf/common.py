"""Shared pieces of the Hugging Face import: reading a config with its class defaults, activation and
RoPE translation, the `Family` record every family module fills in, and the tensor re-layouts.

A family module (archc/hf/<family>.py) owns everything about one `model_type`: the defaults of its
transformers configuration class (so a hub config.json that omits a field reads the same as
transformers reads it), `to_spec` (config -> spec data), and `tensors` (checkpoint name -> graph
parameter names plus the re-layout that gets there). Nothing dispatches on model names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from archc.errors import UserError

_MISSING = object()


class Cfg:
    """config.json with the transformers config class's defaults behind it; errors name the field."""

    def __init__(self, data: dict, defaults: dict, source: str = "config.json"):
        self.data, self.defaults, self.source = data, defaults, source
        self.model_type = data.get("model_type", "?")

    def __getitem__(self, key: str) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or (value is None and key in _NULL_MEANS_DEFAULT):
            value = self.defaults.get(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self[key]
        return default if value is None else value

    def fail(self, key: str, why: str, value: Any = _MISSING) -> UserError:
        if value is _MISSING:
            value = self[key]
        return UserError(f"{self.source}: model_type {self.model_type}: {key}={value!r} {why}")

    def require(self, key: str, allowed: tuple, why: str) -> None:
        """The spec language (or transformers itself) only covers `allowed` values of `key`."""
        if self[key] not in allowed:
            raise self.fail(key, why)

    def integer(self, key: str) -> int:
        value = self[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(key, "must be a positive integer")
        return value


# Fields whose explicit null in config.json means "use the class default" (transformers' __post_init__).
_NULL_MEANS_DEFAULT = {"num_key_value_heads", "head_dim", "ffn_hidden_size", "num_kv_heads", "word_embed_proj_dim"}


# ------------------------------------------------------------------------------------------------
# Activations: transformers' ACT2FN names -> the spec's Activation values

_PLAIN_ACT = {
    "gelu": "gelu",  # erf GELU
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_GATED_ACT = {"gelu": "geglu", "gelu_tanh": "geglu_tanh", "relu": "reglu", "silu": "swiglu"}


def activation(cfg: Cfg, key: str, gated: bool) -> str:
    plain = _PLAIN_ACT.get(cfg[key])
    if plain is None:
        raise cfg.fail(key, f"is not expressible; supported activations: {', '.join(sorted(_PLAIN_ACT))}")
    return _GATED_ACT[plain] if gated else plain


# ------------------------------------------------------------------------------------------------
# RoPE: rope_parameters (transformers >= 5) or the legacy top-level fields


def rope(cfg: Cfg, theta_key: str = "rope_theta", fraction_key: str | None = "partial_rotary_factor",
         default_fraction: float = 1.0) -> tuple[float, float]:
    """(theta, partial rotary fraction); only the unscaled ('default') RoPE is expressible."""
    # transformers' convert_rope_params_to_dict: a legacy rope_scaling wins over rope_parameters
    key = "rope_scaling" if cfg.data.get("rope_scaling") else "rope_parameters"  # the field the message names
    params = cfg.data.get(key) or {}
    if not isinstance(params, dict):
        raise cfg.fail(key, 'is not a mapping; write e.g. {"rope_type": "default", "rope_theta": 10000.0}, or remove it')
    if any(isinstance(v, dict) for v in params.values()):
        raise cfg.fail(key, "holds one RoPE per layer type, which archc cannot express: a spec has one RoPE for all layers")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise cfg.fail(key, f"asks for RoPE scaling '{kind}', which the spec language cannot express "
                            "(only unscaled RoPE: rope_type 'default')")
    theta = next((v for v in (params.get("rope_theta"), cfg.data.get("rope_theta"), cfg.data.get(theta_key)) if v is not None),
                 10000.0)
    fraction = default_fraction
    if fraction_key is not None:
        fraction = next((v for v in (params.get("partial_rotary_factor"), cfg.data.get("partial_rotary_factor"),
                                     cfg.data.get(fraction_key)) if v is not None), default_fraction)
    return float(theta), float(fraction)


def rotary_fraction(cfg: Cfg, head_dim: int, fraction: float) -> float:
    """transformers rotates int(head_dim * factor) dims; return a fraction the spec rounds back to exactly that."""
    dims = int(head_dim * fraction)
    if dims <= 0 or dims % 2:
        raise cfg.fail("partial_rotary_factor", f"gives {dims} rotary dims of head_dim {head_dim}; RoPE needs an even, "
                                               "non-zero width", value=fraction)
    return dims / head_dim


def dtype(cfg: Cfg) -> str:
    value = cfg.data.get("dtype") or cfg.data.get("torch_dtype") or "float32"
    return value if value in ("float32", "float16", "bfloat16") else "float32"


# ------------------------------------------------------------------------------------------------
# Checkpoint tensors <-> graph parameters: one table per family, read in both directions
#
# A Rule says which graph parameters one checkpoint tensor holds and through which re-layout. Every
# re-layout is a Layout with `split` (checkpoint tensor -> graph tensors, import-hf) and its exact
# inverse `join` (graph tensors -> checkpoint tensor, export-hf), so the two directions cannot drift
# apart: export-hf writes what import-hf reads back bit for bit.


class Layout:
    """A re-layout between one checkpoint tensor and `n` graph tensors (split) and back (join)."""

    def split(self, t) -> tuple:
        raise NotImplementedError

    def join(self, parts: tuple):
        raise NotImplementedError


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor holds `targets` (graph parameter names) through `layout`."""

    targets: tuple[str, ...]
    layout: Layout | None = None  # None: the tensor as is

    def apply(self, tensor) -> tuple:
        """checkpoint tensor -> one tensor per target (import)."""
        return (tensor,) if self.layout is None else tuple(self.layout.split(tensor))

    def join(self, parts: tuple):
        """one tensor per target -> the checkpoint tensor (export)."""
        if len(parts) != len(self.targets):
            raise ValueError(f"{len(parts)} tensors for {len(self.targets)} targets")
        return parts[0] if self.layout is None else self.layout.join(tuple(parts))


@dataclass(frozen=True)
class Family:
    model_type: str
    defaults: dict
    to_spec: Callable[[Cfg], dict]
    tensors: Callable[[Cfg, Any], dict[str, Rule]]  # (cfg, resolved Spec) -> {checkpoint name: Rule}
    aliases: tuple[tuple[str, str], ...] = ()  # (legacy prefix, current prefix) of older checkpoints
    ignore: tuple[str, ...] = ()  # regexes of non-parameter buffers older checkpoints carry
    tied_head: str = "lm_head.weight"  # dropped when the head is tied (transformers re-ties it on load)
    # export-hf: resolved Spec -> config.json fields (best effort; archc.hf.export checks by re-import that
    # the config holds every axis) and the transformers class the config names in "architectures"
    to_config: Callable[[Any], dict] | None = None
    architecture: str = ""
    rope_style: str | None = None  # the RoPE pairing the family's attention uses (half | interleaved)


def layers(n: int, prefix: str, table: dict[str, Rule | str]) -> dict[str, Rule]:
    """Expand a per-layer table {hf suffix: graph local (str) or Rule with local targets} over n layers."""
    out: dict[str, Rule] = {}
    for i in range(n):
        for hf, rule in table.items():
            if isinstance(rule, str):
                rule = Rule((rule,))
            out[f"{prefix.format(i=i)}{hf}"] = Rule(tuple(f"layers.{i}.{t}" for t in rule.targets), rule.layout)
    return out


class _Transpose(Layout):
    """GPT-2's Conv1D stores [in, out]; torch Linear (and the graph) use [out, in]. Its own inverse."""

    def split(self, t):
        return (t.t().contiguous(),) if t.dim() == 2 else (t,)

    def join(self, parts):
        (t,) = parts
        return t.t().contiguous() if t.dim() == 2 else t


transpose = _Transpose()


@dataclass(frozen=True)
class _Rows(Layout):
    sizes: tuple[int, ...]

    def split(self, t):
        if t.shape[0] != sum(self.sizes):
            raise UserError(f"fused tensor has {t.shape[0]} rows, expected {' + '.join(map(str, self.sizes))}")
        return tuple(p.contiguous() for p in t.split(list(self.sizes), dim=0))

    def join(self, parts):
        import torch

        return torch.cat(parts, dim=0).contiguous()


def rows(*sizes: int) -> Layout:
    """Concatenated blocks along dim 0 (q | k | v): GPT-2 c_attn, GPT-BigCode MQA, MPT Wqkv, Falcon MQA."""
    return _Rows(tuple(sizes))


@dataclass(frozen=True)
class _PerHead(Layout):
    n_heads: int
    head_dim: int

    def split(self, t):
        v = t.reshape(self.n_heads, 3, self.head_dim, *t.shape[1:])
        return tuple(v[:, j].reshape(self.n_heads * self.head_dim, *t.shape[1:]).contiguous() for j in range(3))

    def join(self, parts):
        import torch

        rest = parts[0].shape[1:]
        heads = [p.reshape(self.n_heads, self.head_dim, *rest) for p in parts]
        return torch.stack(heads, dim=1).reshape(3 * self.n_heads * self.head_dim, *rest).contiguous()


def per_head(n_heads: int, head_dim: int) -> Layout:
    """Per-head interleaved q, k, v: rows ordered [head][q|k|v][head_dim] (GPT-NeoX, BLOOM, Falcon MHA, BigCode MHA)."""
    return _PerHead(n_heads, head_dim)


@dataclass(frozen=True)
class _Grouped(Layout):
    kv_heads: int
    group: int
    head_dim: int

    def split(self, t):
        kv, g, hd, rest = self.kv_heads, self.group, self.head_dim, t.shape[1:]
        v = t.reshape(kv, g + 2, hd, *rest)
        return (v[:, :g].reshape(kv * g * hd, *rest).contiguous(), v[:, g].reshape(kv * hd, *rest).contiguous(),
                v[:, g + 1].reshape(kv * hd, *rest).contiguous())

    def join(self, parts):
        import torch

        kv, g, hd = self.kv_heads, self.group, self.head_dim
        q, k, v = parts
        rest = q.shape[1:]
        blocks = (q.reshape(kv, g, hd, *rest), k.reshape(kv, 1, hd, *rest), v.reshape(kv, 1, hd, *rest))
        return torch.cat(blocks, dim=1).reshape(kv * (g + 2) * hd, *rest).contiguous()


def grouped(kv_heads: int, group: int, head_dim: int) -> Layout:
    """Falcon's new decoder architecture: rows [kv group][group query heads, 1 key, 1 value][head_dim]."""
    return _Grouped(kv_heads, group, head_dim)


@dataclass(frozen=True)
class _Then(Layout):
    first: Layout  # one tensor -> one tensor
    last: Layout  # one tensor -> several

    def split(self, t):
        (mid,) = self.first.split(t)
        return self.last.split(mid)

    def join(self, parts):
        return self.first.join((self.last.join(parts),))


def then(first: Layout, last: Layout) -> Layout:
    """Compose re-layouts: `first` maps one tensor to one, `last` may split."""
    return _Then(first, last)


@dataclass(frozen=True)
class _RotaryRows(Layout):
    """The rows of q or k ([heads * head_dim, ...]) re-paired between RoPE styles, per head.

    Rotating pairs (2i, 2i + 1) of a head (interleaved) equals rotating pairs (i, i + r/2) (half) of
    the same head with its first r rows reordered evens-then-odds, and scores q.k do not change when
    q and k get the same reorder. So a spec's interleaved RoPE is held by a half-style model (and the
    reverse) by this permutation of the q and k projections (the convert_llama_weights_to_hf permute).
    `to_half`: the checkpoint is half-style and the graph interleaved; else the reverse."""

    heads: int
    head_dim: int
    rotary_dim: int
    to_half: bool

    def _order(self, to_half: bool) -> list[int]:
        r = self.rotary_dim
        evens_odds = [*range(0, r, 2), *range(1, r, 2)]  # half position j <- interleaved position evens_odds[j]
        inner = evens_odds if to_half else sorted(range(r), key=evens_odds.__getitem__)  # the inverse permutation
        return [*inner, *range(r, self.head_dim)]

    def _apply(self, t, to_half: bool):
        import torch

        v = t.reshape(self.heads, self.head_dim, *t.shape[1:])
        order = torch.tensor(self._order(to_half), device=t.device)
        return v.index_select(1, order).reshape(t.shape).contiguous()

    def split(self, t):  # checkpoint -> graph
        return (self._apply(t, not self.to_half),)

    def join(self, parts):  # graph -> checkpoint
        return self._apply(parts[0], self.to_half)


@dataclass(frozen=True)
class _Each(Layout):
    """A split followed by a one-to-one re-layout of some of its parts (None: the part as is)."""

    inner: Layout | None
    parts: tuple[Layout | None, ...]

    def split(self, t):
        got = (t,) if self.inner is None else self.inner.split(t)
        return tuple(p if f is None else f.split(p)[0] for p, f in zip(got, self.parts, strict=True))

    def join(self, parts):
        back = tuple(p if f is None else f.join((p,)) for p, f in zip(parts, self.parts, strict=True))
        return back[0] if self.inner is None else self.inner.join(back)


def rotary_rows(spec, native: str, layout: Layout | None = None, n_parts: int = 1, which: str = "q") -> Layout | None:
    """The layout of a q (which='q'), k ('k') or fused q|k|v ('qkv', split by `layout`) checkpoint tensor
    for a spec whose RoPE style may differ from the family's `native` one; `layout` alone when they agree."""
    p = spec.position
    if getattr(p, "kind", None) is None or p.kind.value != "rope" or p.style.value == native:
        return layout
    a = spec.attention
    to_half = native == "half"
    q = _RotaryRows(a.n_heads, a.head_dim, p.rotary_dim, to_half)
    k = _RotaryRows(a.kv_heads, a.head_dim, p.rotary_dim, to_half)
    if which == "qkv":
        return _Each(layout, (q, k, None))
    return _Each(layout, ({"q": q, "k": k}[which],))


# ------------------------------------------------------------------------------------------------
# Spec -> config fields (export-hf). Each family's to_config writes what its config class can hold;
# archc.hf.export re-imports the config and compares specs, so an axis a family cannot hold is caught
# there, once, for every family, instead of by a refusal list per family that could miss one.

_HF_ACT = {  # the spec's activation -> a transformers ACT2FN name (for gated ones: of the gate) that imports back
    "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu",
    "swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh", "reglu": "relu",
}


def hf_activation(spec) -> str:
    return _HF_ACT[spec.mlp.activation.value]


def tied(spec) -> bool:
    return spec.embedding.output.value == "tied"


def rope_theta(spec) -> float:
    """The spec's RoPE base; a spec without RoPE gets the default (the re-import then names position.kind)."""
    return float(spec.position.theta) if spec.position.kind.value == "rope" else 10000.0


def rotary_factor(spec) -> float:
    """rotary_dim / head_dim, which transformers turns back into int(head_dim * factor) = rotary_dim."""
    if spec.position.kind.value != "rope":
        return 1.0
    return spec.position.rotary_dim / spec.attention.head_dim


def rope_config(spec, partial: bool = False) -> dict:
    """RoPE fields: transformers >= 5 reads rope_parameters, older releases the top-level fields."""
    params = {"rope_type": "default", "rope_theta": rope_theta(spec)}
    out = {"rope_theta": rope_theta(spec)}
    if partial:
        params["partial_rotary_factor"] = out["partial_rotary_factor"] = rotary_factor(spec)
    return {"rope_parameters": params, **out}
