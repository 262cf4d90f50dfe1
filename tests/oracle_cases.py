"""One numerical oracle per axis value (issue 10): a tiny spec holding the value, the graph node whose
output is checked, the numpy reference of that output (tests/numpy_refs.py, from the formula), and
wrong variants that the emitter's output must NOT match (negative controls).

The cases enumerate the spec enums themselves (NormKind, NormScale, Activation, PositionKind,
RopeStyle, MaskKind, ResidualLayout, ParallelNorms, NormPlacement): a value added to an enum without
a case here fails `test_every_axis_value_has_an_oracle`. The references read the axis value from the
case, never from archc's graph settings; numbers that are not under test (eps, heads, theta) come
from the spec the case wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import numpy_refs as R
from archc import spec as S
from archc.graph import ComponentGraph, compile as compile_graph
from archc.loader import library_spec, load_data, spec_from_dict
from conftest import tiny_sets

Ref = Callable[[dict, dict, dict, ComponentGraph], np.ndarray]  # (node values, weights, feeds, graph) -> expected


@dataclass
class Oracle:
    id: str
    base: str  # library spec, shrunk by tests/conftest.tiny_sets
    sets: list[str]
    node: str  # the node whose output is checked
    ref: Ref
    wrong: dict[str, Ref]  # negative controls: name -> a reference that must not match
    position: dict | None = None  # replaces the spec's position section
    probes: list[str] = field(default_factory=list)  # further nodes the references read

    def graph(self) -> ComponentGraph:
        return _graph(self.base, tuple(self.sets), tuple(sorted(self.position.items())) if self.position else None)


_GRAPHS: dict = {}


def _graph(base: str, sets: tuple, position: tuple | None) -> ComponentGraph:
    key = (base, sets, position)
    if key not in _GRAPHS:
        path = library_spec(base)
        data, _ = load_data(path)
        tiny = tiny_sets(path)
        if position is not None:
            data = dict(data, position=dict(position))
            tiny = [s for s in tiny if not s.startswith("position.")]
        _GRAPHS[key] = compile_graph(spec_from_dict(data, tiny + list(sets), source=base))
    return _GRAPHS[key]


def x_of(g: ComponentGraph, v: dict, node: str, port: str = "x") -> np.ndarray:
    return v[g.input_of(node, port)].astype(np.float64)


def w64(w: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v.astype(np.float64) for k, v in w.items() if k.startswith(prefix + ".")}


# ---- norms ------------------------------------------------------------------------------------

NORM_FN = {S.NormKind.layernorm: R.layernorm, S.NormKind.rmsnorm: R.rmsnorm}
OTHER_NORM = {S.NormKind.layernorm: S.NormKind.rmsnorm, S.NormKind.rmsnorm: S.NormKind.layernorm}
OTHER_SCALE = {S.NormScale.weight: S.NormScale.one_plus_weight, S.NormScale.one_plus_weight: S.NormScale.weight}
EPS = 1e-5


def _norm_ref(kind: S.NormKind, bias: bool, scale: S.NormScale, node: str = "final_norm") -> Ref:
    def ref(v, w, f, g):
        p = w64(w, node)
        b = (p["bias"] if "bias" in p else np.full_like(p["weight"], 0.5)) if bias else None  # 0.5: a wrong variant's bias
        return NORM_FN[kind](x_of(g, v, node), p["weight"], b, EPS, one_plus=scale is S.NormScale.one_plus_weight)
    return ref


def norm_oracles() -> list[Oracle]:
    out = []
    for kind in S.NormKind:
        for bias in (False, True):
            for scale in S.NormScale:
                out.append(Oracle(
                    f"norm-{kind.value}-{'bias' if bias else 'nobias'}-{scale.value}", "llama",
                    [f"norm.kind={kind.value}", f"norm.bias={str(bias).lower()}", f"norm.scale={scale.value}", f"norm.eps={EPS}"],
                    "final_norm", _norm_ref(kind, bias, scale),
                    {"other kind": _norm_ref(OTHER_NORM[kind], bias, scale), "other scale": _norm_ref(kind, bias, OTHER_SCALE[scale]),
                     "bias flipped": _norm_ref(kind, not bias, scale)}))
    return out


# ---- activations (the MLP) ---------------------------------------------------------------------

WRONG_ACT = {"gelu": "gelu_tanh", "gelu_tanh": "gelu", "relu": "silu", "silu": "relu", "swiglu": "geglu",
             "geglu": "geglu_tanh", "geglu_tanh": "geglu", "reglu": "swiglu"}


def _mlp_ref(act: str, node: str = "layers.0.mlp") -> Ref:
    def ref(v, w, f, g):
        p = w64(w, node)
        return R.mlp(x_of(g, v, node), act, p["up.weight"], p["down.weight"], p.get("gate.weight"), p.get("up.bias"),
                     p.get("down.bias"), p.get("gate.bias"))
    return ref


def activation_oracles() -> list[Oracle]:
    # x 3: pre-activations of a few units, where GELU and its tanh approximation differ measurably
    return [Oracle(f"activation-{a.value}", "llama", [f"mlp.activation={a.value}", "mlp.bias=true"], "layers.0.mlp",
                   _mlp_ref(a.value), {WRONG_ACT[a.value]: _mlp_ref(WRONG_ACT[a.value])}) for a in S.Activation]


# ---- attention: positions inside it, and masks -------------------------------------------------


def _attn_ref(*, mask: str = "causal", window: int | None = None, rope: str | None = None, alibi: bool = False,
              node: str = "layers.0.attn") -> Ref:
    def ref(v, w, f, g):
        a, p = g.spec.attention, g.spec.position
        kw = {}
        if rope is not None:
            pos = f["position_ids"] if "position_ids" in f else np.clip(R.positions(f["attention_mask"]), 0, None)
            rotary_dim = p.rotary_dim if isinstance(p, S.RopePosition) else a.head_dim
            kw = dict(rope_pos=pos, rotary_dim=rotary_dim, theta=10000.0, style=rope)
        if alibi:
            kw["alibi_slopes"] = R.alibi_slopes_pow2(a.n_heads, 8.0)
        return R.attention(x_of(g, v, node), f["attention_mask"], w64(w, node), n_heads=a.n_heads, kv_heads=a.kv_heads,
                           head_dim=a.head_dim, scale=a.head_dim**-0.5, mask=mask, prefix_len=f.get("prefix_len"),
                           window=window, **kw)
    return ref


def _mask_ref(mask: str, window: int | None = None) -> Ref:
    """The mask node's output as a visibility pattern (1 visible, 0 masked), [B, 1, S, T];
    mask "bidirectional" (a wrong variant): every real key visible."""
    def ref(v, w, f, g):
        S_, am = f["input_ids"].shape[1], f["attention_mask"]
        if mask == "bidirectional":
            return np.broadcast_to(am[:, None, None, :].astype(bool), (am.shape[0], 1, S_, am.shape[1])).astype(np.float64)
        return R.visible(am, S_, mask, f.get("prefix_len"), window)[:, None].astype(np.float64)
    return ref


def position_oracles() -> list[Oracle]:
    out = []
    for kind in S.PositionKind:
        if kind is S.PositionKind.learned:
            def learned(offset):
                return lambda v, w, f, g: w["pos_embed.weight"].astype(np.float64)[f["position_ids"] + offset]
            out.append(Oracle("position-learned-offset2", "gpt2", ["position.offset=2", "position.max_positions=66"], "pos_embed",
                              learned(2), {"offset ignored": learned(0)}))
        elif kind is S.PositionKind.sinusoidal:
            def sinus(swap):
                def ref(v, w, f, g):
                    pe = R.sinusoidal(f["position_ids"].astype(np.float64), g.spec.d_model, 10000.0)
                    return pe.reshape(*pe.shape[:-1], -1, 2)[..., ::-1].reshape(pe.shape) if swap else pe
                return ref
            out.append(Oracle("position-sinusoidal", "llama", [], "pos_embed", sinus(False), {"sin/cos swapped": sinus(True)},
                              position={"kind": "sinusoidal", "base": 10000.0}))
        elif kind is S.PositionKind.glm2d:
            def glm(block_row):
                return lambda v, w, f, g: (w["pos_embed.position.weight"].astype(np.float64)[f["position_ids"][:, 0]]
                                           + w["pos_embed.block.weight"].astype(np.float64)[f["position_ids"][:, block_row]])
            out.append(Oracle("position-glm2d", "glm", [], "pos_embed", glm(1), {"block table at the position ids": glm(0)}))
        elif kind is S.PositionKind.rope:
            for style in S.RopeStyle:
                other = S.RopeStyle.interleaved if style is S.RopeStyle.half else S.RopeStyle.half
                out.append(Oracle(f"position-rope-{style.value}", "llama", [f"position.style={style.value}", "position.theta=10000"],
                                  "layers.0.attn", _attn_ref(rope=style.value), {f"{other.value} style": _attn_ref(rope=other.value),
                                                                                 "no rotation": _attn_ref()}))
            out.append(Oracle("position-rope-partial", "gpt-neox", ["position.theta=10000"], "layers.0.attn",
                              _attn_ref(rope="half"), {"no rotation": _attn_ref(), "interleaved": _attn_ref(rope="interleaved")}))
        elif kind is S.PositionKind.alibi:
            out.append(Oracle("position-alibi", "bloom", [], "layers.0.attn", _attn_ref(alibi=True), {"no bias": _attn_ref()}))
        elif kind is S.PositionKind.none:
            out.append(Oracle("position-none", "llama", [], "layers.0.attn", _attn_ref(), {"rotated": _attn_ref(rope="half")},
                              position={"kind": "none"}))
        else:
            raise AssertionError(f"no oracle for position kind {kind.value}")
    return out


WINDOW = 3


def mask_oracles() -> list[Oracle]:
    out = []
    for kind in S.MaskKind:
        if kind is S.MaskKind.causal:
            out += [Oracle("mask-causal", "llama", [], "mask", _mask_ref("causal"), {"bidirectional": _mask_ref("bidirectional")}),
                    Oracle("mask-causal-attention", "llama", [], "layers.0.attn", _attn_ref(rope="half"),
                           {"sliding window": _attn_ref(rope="half", window=2)}),
                    Oracle("mask-sliding-window", "mistral", [f"attention.sliding_window={WINDOW}"], "mask",
                           _mask_ref("causal", WINDOW), {"no window": _mask_ref("causal")}),
                    Oracle("mask-sliding-window-attention", "mistral", [f"attention.sliding_window={WINDOW}"], "layers.0.attn",
                           _attn_ref(rope="half", window=WINDOW), {"no window": _attn_ref(rope="half")})]
        elif kind is S.MaskKind.prefix:
            out += [Oracle("mask-prefix", "llama", ["attention.mask=prefix"], "mask", _mask_ref("prefix"), {"causal": _mask_ref("causal")}),
                    Oracle("mask-prefix-attention", "llama", ["attention.mask=prefix"], "layers.0.attn", _attn_ref(mask="prefix", rope="half"),
                           {"causal": _attn_ref(rope="half")})]
        else:
            raise AssertionError(f"no oracle for mask kind {kind.value}")
    return out


# ---- residual layouts and norm placements: one whole layer --------------------------------------


def _layer_ref(layout: str, placement: str = "pre", norms: str = "shared", alpha: float = 1.0) -> Ref:
    """Layer 0 of a llama-shaped spec (RMSNorm, SwiGLU, RoPE half), composed from the formulas:
    pre x + f(n(x)); post n(x + f(x)); sandwich x + n2(f(n1(x))); DeepNorm n(alpha x + f(x));
    parallel x + attn(n(x)) + mlp(n'(x)) (GPT-J, PaLM; n = n' when shared)."""
    def ref(v, w, f, g):
        eps = g.spec.norm.eps

        def N(name, h):
            return R.rmsnorm(h, w[f"layers.0.{name}.weight"].astype(np.float64), None, eps)

        attn_ref = _attn_ref(rope="half")

        def A(h):
            return attn_ref({g.input_of("layers.0.attn", "x"): h}, w, f, g)

        def M(h):
            p = w64(w, "layers.0.mlp")
            return R.mlp(h, "swiglu", p["up.weight"], p["down.weight"], p["gate.weight"])

        x = v[_layer_input(g)].astype(np.float64)
        if layout == "parallel":
            if norms == "shared":
                return x + A(N("norm", x)) + M(N("norm", x))
            return x + A(N("attn_norm", x)) + M(N("mlp_norm", x))
        if layout == "sequential-shared":  # a wrong variant: the shared norm used twice, in sequence
            h = x + A(N("norm", x))
            return h + M(N("norm", h))
        if placement == "pre":
            h = x + A(N("attn_norm", x))
            return h + M(N("mlp_norm", h))
        if placement == "post":
            h = N("attn_norm", x + A(x))
            return N("mlp_norm", h + M(h))
        if placement == "sandwich":
            h = x + N("attn_post_norm", A(N("attn_norm", x)))
            return h + N("mlp_post_norm", M(N("mlp_norm", h)))
        if placement == "deepnorm":
            h = N("attn_norm", alpha * x + A(x))
            return N("mlp_norm", alpha * h + M(h))
        raise AssertionError(placement)
    return ref


def _layer_input(g: ComponentGraph) -> str:
    first_residual = next(n for n in g.layer_nodes(0) if g.node(n)["kind"] == "residual")
    return g.input_of(first_residual, "skip")


def layer_output(g: ComponentGraph) -> str:
    return g.layer_nodes(0)[-1]


def residual_oracles() -> list[Oracle]:
    out = []
    L = 2  # tiny_sets' n_layers
    for layout in S.ResidualLayout:
        if layout is S.ResidualLayout.sequential:
            for placement in S.NormPlacement:
                p = placement.value
                sets = [f"norm.placement={p}"]
                if placement is S.NormPlacement.deepnorm:
                    alpha = (2 * L) ** 0.25  # DeepNet, decoder-only: (2N)^(1/4)
                    wrong = {"alpha 1": _layer_ref("sequential", "deepnorm", alpha=1.0)}
                    ref = _layer_ref("sequential", "deepnorm", alpha=alpha)
                else:
                    ref = _layer_ref("sequential", p)
                    wrong = {"pre" if p != "pre" else "post": _layer_ref("sequential", "pre" if p != "pre" else "post")}
                out.append(Oracle(f"layer-sequential-{p}", "llama", sets, "LAYER", ref, wrong))
        elif layout is S.ResidualLayout.parallel:
            for norms in S.ParallelNorms:
                sets = ["residual.layout=parallel", f"residual.parallel_norms={norms.value}"]
                wrong = {"sequential": _layer_ref("sequential-shared") if norms is S.ParallelNorms.shared else _layer_ref("sequential", "pre")}
                out.append(Oracle(f"layer-parallel-{norms.value}", "llama", sets, "LAYER", _layer_ref("parallel", norms=norms.value), wrong))
        else:
            raise AssertionError(f"no oracle for residual layout {layout.value}")
    return out


ORACLES = {o.id: o for o in norm_oracles() + activation_oracles() + position_oracles() + mask_oracles() + residual_oracles()}


def probe_names(o: Oracle, g: ComponentGraph) -> tuple[str, list[str]]:
    """(the checked node, every node whose value the check reads)."""
    node = layer_output(g) if o.node == "LAYER" else o.node
    names = [node] + [src for src, _ in g.inputs(node)] + list(o.probes)
    if o.node == "LAYER":
        names.append(_layer_input(g))
    return node, list(dict.fromkeys(names))


def compare(o: Oracle, values: dict, weights: dict, feeds: dict, g: ComponentGraph) -> tuple[float, dict[str, float]]:
    """(relative error against the reference, {wrong variant: its relative error}) over the real tokens."""
    node, _ = probe_names(o, g)
    got = values[node].astype(np.float64)
    if o.node == "mask":  # additive mask -> visibility pattern
        got = (got > np.finfo(np.float32).min / 2).astype(np.float64)
    real = feeds["attention_mask"][:, -feeds["input_ids"].shape[1]:].astype(bool)

    def err(ref: Ref) -> float:
        a, b = got, ref(values, weights, feeds, g)
        if o.node == "mask":
            a, b = a[:, 0][real], b[:, 0][real]  # [n_real, T]
        else:
            a, b = a[real], b[real]
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))

    return err(o.ref), {name: err(r) for name, r in o.wrong.items()}
