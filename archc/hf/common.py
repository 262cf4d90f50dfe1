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
    params = cfg.data.get("rope_scaling") or cfg.data.get("rope_parameters") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise cfg.fail("rope_parameters", "(per-layer-type RoPE) is not expressible; one RoPE for all layers is")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        key = "rope_scaling" if cfg.data.get("rope_scaling") else "rope_parameters"
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
# Checkpoint tensors -> graph parameters


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor becomes `targets` (graph parameter names) through `split`."""

    targets: tuple[str, ...]
    split: Callable | None = None  # tensor -> tuple of tensors, one per target; None: as is

    def apply(self, tensor):
        return (tensor,) if self.split is None else tuple(self.split(tensor))


@dataclass(frozen=True)
class Family:
    model_type: str
    defaults: dict
    to_spec: Callable[[Cfg], dict]
    tensors: Callable[[Cfg, Any], dict[str, Rule]]  # (cfg, resolved Spec) -> {checkpoint name: Rule}
    aliases: tuple[tuple[str, str], ...] = ()  # (legacy prefix, current prefix) of older checkpoints
    ignore: tuple[str, ...] = ()  # regexes of non-parameter buffers older checkpoints carry
    tied_head: str = "lm_head.weight"  # dropped when the head is tied (transformers re-ties it on load)
    notes: str = ""  # what the family maps to, in one line


def layers(n: int, prefix: str, table: dict[str, Rule | str]) -> dict[str, Rule]:
    """Expand a per-layer table {hf suffix: graph local (str) or Rule with local targets} over n layers."""
    out: dict[str, Rule] = {}
    for i in range(n):
        for hf, rule in table.items():
            if isinstance(rule, str):
                rule = Rule((rule,))
            out[f"{prefix.format(i=i)}{hf}"] = Rule(tuple(f"layers.{i}.{t}" for t in rule.targets), rule.split)
    return out


def transpose(t):
    """GPT-2's Conv1D stores [in, out]; torch Linear (and the graph) use [out, in]."""
    return (t.t().contiguous(),) if t.dim() == 2 else (t,)


def rows(*sizes: int):
    """Concatenated blocks along dim 0 (q | k | v): GPT-2 c_attn, GPT-BigCode MQA, MPT Wqkv, Falcon MQA."""
    def split(t):
        if t.shape[0] != sum(sizes):
            raise UserError(f"fused tensor has {t.shape[0]} rows, expected {' + '.join(map(str, sizes))}")
        return tuple(p.contiguous() for p in t.split(list(sizes), dim=0))
    return split


def per_head(n_heads: int, head_dim: int):
    """Per-head interleaved q, k, v: rows ordered [head][q|k|v][head_dim] (GPT-NeoX, BLOOM, Falcon MHA, BigCode MHA)."""
    def split(t):
        v = t.reshape(n_heads, 3, head_dim, *t.shape[1:])
        return tuple(v[:, j].reshape(n_heads * head_dim, *t.shape[1:]).contiguous() for j in range(3))
    return split


def grouped(kv_heads: int, group: int, head_dim: int):
    """Falcon's new decoder architecture: rows [kv group][group query heads, 1 key, 1 value][head_dim]."""
    def split(t):
        v = t.reshape(kv_heads, group + 2, head_dim, *t.shape[1:])
        rest = t.shape[1:]
        q = v[:, :group].reshape(kv_heads * group * head_dim, *rest)
        return q.contiguous(), v[:, group].reshape(kv_heads * head_dim, *rest).contiguous(), \
            v[:, group + 1].reshape(kv_heads * head_dim, *rest).contiguous()
    return split


def then(*fns):
    """Compose re-layouts: the first maps one tensor to one, the last may split."""
    def split(t):
        out = (t,)
        for fn in fns:
            assert len(out) == 1
            out = tuple(fn(out[0]))
        return out
    return split
