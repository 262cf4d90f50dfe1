"""The component vocabulary of the graph: one kind per component, one frozen settings type per kind.

A node's `settings` is an instance of SETTINGS[kind]: the spec's enums (NormKind, MaskKind, ...),
not their string values, plus the numbers the component computes with. Graph-wide values that
every emitter needs (d_model, the longest sequence, the init seed, the layout of position_ids) are
in `ModelSettings` (`ComponentGraph.model`), so no emitter reads the spec.

Settings check their field types when made: an enum setting holding anything but a member of its
enum is refused here. Emitters still branch on every member and raise `UnknownSetting` for a value
without a branch (a member added to a spec enum but to no emitter).

The JSON form of a settings object (`settings_to_json`) is a dict of the field names with enums as
their values and tuples as lists; `settings_from_json` reads it back and names the node, setting
and value it refuses.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Union

from archc.spec import (
    Activation,
    AttentionKernel,
    MaskKind,
    NormKind,
    NormScale,
    PositionKind,
    RopeStyle,
    Spec,
)


class ComponentKind(str, Enum):
    input = "input"
    output = "output"
    token_embedding = "token_embedding"
    learned_position = "learned_position"
    sinusoidal_position = "sinusoidal_position"
    glm2d_position = "glm2d_position"
    rotary = "rotary"  # cos/sin tables from position ids, consumed by attention
    alibi = "alibi"  # additive per-head distance bias, consumed by attention
    mask = "mask"  # causal / prefix / sliding-window mask with padding, consumed by attention
    add = "add"  # sum of inputs (token + position embeddings)
    scale = "scale"  # multiply by a constant (embedding multiplier)
    norm = "norm"
    attention = "attention"
    mlp = "mlp"
    residual = "residual"  # alpha * skip + sum(branches)
    head = "head"


class PositionIds(str, Enum):
    """The layout of the position_ids input."""

    none = "none"  # no position_ids input (ALiBi, NoPE)
    flat = "flat"  # [batch, seq]: one position per token
    glm2d = "glm2d"  # [batch, 2, seq]: GLM's position id and block position id per token


class GraphError(ValueError):
    """The graph broke one of its invariants; the message names the node or edge."""


class UnknownSetting(GraphError):
    """An emitter met a setting value it has no branch for."""

    def __init__(self, node: str, setting: str, value: Any, emitter: str):
        if isinstance(value, Enum):  # a member added to its enum but to no branch of this emitter
            said = f"{value.value!r} ({type(value).__name__}.{value.name} has no branch here yet)"
        else:
            said = repr(value)
        super().__init__(f"{node}: the {emitter} has no branch for {setting}={said}")
        self.node, self.setting, self.value, self.emitter = node, setting, value, emitter


# ------------------------------------------------------------------------------------------------
# Settings types


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_type_ok(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:  # YAML and JSON give 10000 for 10000.0
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass(frozen=True)
class Settings:
    """Base of every node's settings: frozen, and field types checked when made."""

    kind: ClassVar[ComponentKind]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), _hints(type(self))[f.name]
            if not _type_ok(value, hint):
                raise GraphError(f"{self.kind.value} setting {f.name}={value!r} is not a {_hint_name(hint)}")


def _hint_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in args)
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


Dim = Union[str, int]  # a symbolic dimension ("batch", "seq", "total") or a size


@dataclass(frozen=True)
class InputSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.input
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class OutputSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.output
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class TokenEmbeddingSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.token_embedding
    vocab_size: int


@dataclass(frozen=True)
class LearnedPositionSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.learned_position
    offset: int  # added to every position id before the look-up (OPT: 2)
    max_positions: int


@dataclass(frozen=True)
class SinusoidalPositionSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.sinusoidal_position
    base: float


@dataclass(frozen=True)
class Glm2dPositionSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.glm2d_position
    max_positions: int


@dataclass(frozen=True)
class RotarySettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.rotary
    theta: float
    rotary_dim: int
    style: RopeStyle
    head_dim: int


@dataclass(frozen=True)
class AlibiSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.alibi
    n_heads: int
    max_bias: float
    slopes: tuple[float, ...]


@dataclass(frozen=True)
class MaskSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.mask
    mask: MaskKind
    sliding_window: int | None


@dataclass(frozen=True)
class AddSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.add


@dataclass(frozen=True)
class ScaleSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.scale
    factor: float


@dataclass(frozen=True)
class NormSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.norm
    norm: NormKind
    eps: float
    bias: bool
    scale: NormScale


@dataclass(frozen=True)
class AttentionSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.attention
    n_heads: int
    kv_heads: int
    head_dim: int
    softmax_scale: float
    qkv_bias: bool
    out_bias: bool
    kernel: AttentionKernel


@dataclass(frozen=True)
class MlpSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.mlp
    activation: Activation
    d_ff: int
    bias: bool


@dataclass(frozen=True)
class ResidualSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.residual
    alpha: float  # 1 except DeepNorm


@dataclass(frozen=True)
class HeadSettings(Settings):
    kind: ClassVar[ComponentKind] = ComponentKind.head
    vocab_size: int
    tied: bool


SETTINGS: dict[ComponentKind, type[Settings]] = {
    cls.kind: cls
    for cls in (InputSettings, OutputSettings, TokenEmbeddingSettings, LearnedPositionSettings, SinusoidalPositionSettings,
                Glm2dPositionSettings, RotarySettings, AlibiSettings, MaskSettings, AddSettings, ScaleSettings,
                NormSettings, AttentionSettings, MlpSettings, ResidualSettings, HeadSettings)
}
assert set(SETTINGS) == set(ComponentKind), "every ComponentKind needs a settings type"


def settings_to_json(s: Settings) -> dict:
    """Field name -> JSON value (enum -> its value, tuple -> list)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Enum):
            return v.value
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(s, f.name)) for f in dataclasses.fields(s)}


def settings_from_json(node: str, kind: ComponentKind, data: dict) -> Settings:
    """The settings of `node` from their JSON form; GraphError names the node, setting and value refused."""
    cls = SETTINGS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        raise GraphError(f"{node}: {kind.value} settings " + "; ".join(
            ([f"unknown {', '.join(unknown)}"] if unknown else []) + ([f"missing {', '.join(missing)}"] if missing else [])))
    values = {}
    for name in names:
        value, hint = data[name], _hints(cls)[name]
        enum = _enum_of(hint)
        if enum is not None and value is not None:
            try:
                value = enum(value)
            except ValueError:
                raise GraphError(f"{node}: setting {name}={value!r} is not a {enum.__name__} "
                                 f"(valid: {', '.join(m.value for m in enum)})") from None
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except GraphError as e:
        raise GraphError(f"{node}: {e}") from None


def _enum_of(hint: Any) -> type[Enum] | None:
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and issubclass(h, Enum):
            return h
    return None


# ------------------------------------------------------------------------------------------------
# Graph-wide settings


@dataclass(frozen=True)
class ModelSettings:
    """What every emitter may need beyond the nodes: the model's name, width, longest sequence (RoPE
    cache rows), init seed, and the layout of its position_ids input."""

    name: str
    d_model: int
    max_seq_len: int
    seed: int
    position_ids: PositionIds

    @classmethod
    def of(cls, spec: Spec) -> "ModelSettings":
        return cls(spec.name, spec.d_model, spec.max_seq_len, spec.init.seed, position_ids_layout(spec.position.kind))


def position_ids_layout(kind: PositionKind) -> PositionIds:
    """Which position_ids input a position scheme reads."""
    if kind in (PositionKind.learned, PositionKind.sinusoidal, PositionKind.rope):
        return PositionIds.flat
    if kind is PositionKind.glm2d:
        return PositionIds.glm2d
    if kind in (PositionKind.alibi, PositionKind.none):  # ALiBi reads the attention mask's cumsum
        return PositionIds.none
    raise UnknownSetting("position_ids", "position.kind", kind, "graph builder")


def position_ids_shape(layout: PositionIds) -> list | None:
    """The position_ids input's symbolic shape for `layout` (None: no such input)."""
    if layout is PositionIds.none:
        return None
    if layout is PositionIds.flat:
        return ["batch", "seq"]
    if layout is PositionIds.glm2d:
        return ["batch", 2, "seq"]
    raise UnknownSetting("position_ids", "layout", layout, "graph")
