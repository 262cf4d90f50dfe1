"""The component graph: one node per component instance, one edge per tensor between them.

`compile(spec)` is the one build function. Which components a layer has, and how they connect, is
decided here and only here; the emitters (exporters/) walk this graph and never read the spec's
axes themselves, so a parallel-residual layer and a sequential one are different graphs, and a
new emitter gets every axis for free.

Node attributes
  kind      ComponentKind value
  layer     layer index, or None outside the stack
  role      what the node does in its layer ("attn_norm", "attn", "attn_residual", ...)
  settings  JSON-able dict of the component's numbers (eps, n_heads, activation, ...)
  params    {local name: shape}; the parameter's full name is f"{node}.{local}"
  tied      {local name: full name of the parameter it shares} (the tied head)
  cache     for attention: the KV-cache slot (= layer index)
Edge attributes
  port      the destination's input slot (x, skip, branch, mask, rotary, bias, ids, positions, ...)
  shape     symbolic tensor shape: "batch", "seq", "total" (= past + seq) and integers
Graph inputs and outputs are nodes of kind `input` / `output` named after the model's I/O names.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import networkx as nx

from archc.spec import (
    Activation,
    AlibiPosition,
    EmbeddingNorm,
    Glm2dPosition,
    InitScheme,
    LearnedPosition,
    MaskKind,
    NormPlacement,
    OutputHead,
    ParallelNorms,
    ResidualLayout,
    RopePosition,
    SinusoidalPosition,
    Spec,
)

GRAPH_FORMAT = 1


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


class GraphError(ValueError):
    """The graph broke one of its invariants; the message names the node or edge."""


class ComponentGraph:
    """A networkx.DiGraph plus the resolved spec it was compiled from."""

    def __init__(self, g: nx.DiGraph, spec: Spec):
        self.g = g
        self.spec = spec

    # ---- reading -------------------------------------------------------------------------------
    def nodes(self, kind: ComponentKind | None = None) -> list[str]:
        """Node names in a deterministic topological order (layer by layer, as built)."""
        order = self.g.graph["order"]
        return [n for n in order if kind is None or self.g.nodes[n]["kind"] == kind.value]

    def node(self, name: str) -> dict:
        return self.g.nodes[name]

    def inputs(self, name: str) -> list[tuple[str, str]]:
        """[(source node, port)] in the order the edges were added (deterministic)."""
        return sorted(((u, d["port"]) for u, _, d in self.g.in_edges(name, data=True)), key=lambda t: self.g.edges[t[0], name]["seq"])

    def input_of(self, name: str, port: str) -> str | None:
        for src, p in self.inputs(name):
            if p == port:
                return src
        return None

    def inputs_at(self, name: str, port: str) -> list[str]:
        return [src for src, p in self.inputs(name) if p == port]

    def params(self) -> Iterator[tuple[str, tuple[int, ...], str]]:
        """(full name, shape, owning node) for every owned (not tied) parameter, in build order."""
        for n in self.nodes():
            for local, shape in self.g.nodes[n]["params"].items():
                yield f"{n}.{local}", tuple(shape), n

    def tied(self) -> dict[str, str]:
        """{full name of the tied parameter: full name of its owner}."""
        out = {}
        for n in self.nodes():
            for local, owner in self.g.nodes[n].get("tied", {}).items():
                out[f"{n}.{local}"] = owner
        return out

    def graph_inputs(self) -> list[str]:
        return self.nodes(ComponentKind.input)

    def layer_nodes(self, layer: int) -> list[str]:
        return [n for n in self.nodes() if self.g.nodes[n]["layer"] == layer]

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    # ---- persistence ---------------------------------------------------------------------------
    def to_json(self) -> str:
        data = nx.node_link_data(self.g, edges="edges")
        data["graph"] = dict(data["graph"], spec=self.spec.to_yaml_dict(), format=GRAPH_FORMAT)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ComponentGraph":
        data = json.loads(text)
        if data.get("graph", {}).get("format") != GRAPH_FORMAT:
            raise GraphError(f"graph JSON format {data.get('graph', {}).get('format')!r} is not {GRAPH_FORMAT}")
        spec = Spec.model_validate(data["graph"].pop("spec"))
        g = nx.node_link_graph(data, directed=True, edges="edges")
        for _, _, d in g.edges(data=True):
            d["shape"] = list(d["shape"])
        out = cls(g, spec)
        out.check()
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    # ---- invariants ----------------------------------------------------------------------------
    def check(self) -> "ComponentGraph":
        g = self.g
        if not nx.is_directed_acyclic_graph(g):
            raise GraphError(f"graph has a cycle: {nx.find_cycle(g)}")
        if sorted(g.graph["order"]) != sorted(g.nodes):
            raise GraphError("graph order does not list every node once")
        pos = {n: i for i, n in enumerate(g.graph["order"])}
        owners: dict[str, str] = {}
        for n, d in g.nodes(data=True):
            for local in d["params"]:
                full = f"{n}.{local}"
                if full in owners:
                    raise GraphError(f"parameter {full} owned twice")
                owners[full] = n
        for n, d in g.nodes(data=True):
            for local, owner in d.get("tied", {}).items():
                if f"{n}.{local}" in owners:
                    raise GraphError(f"{n}.{local} is both owned and tied to {owner}")
                if owner not in owners:
                    raise GraphError(f"{n}.{local} is tied to {owner}, which no node owns")
                oshape = g.nodes[owners[owner]]["params"][owner.split(owners[owner] + ".", 1)[1]]
                if list(oshape) != list(d["tied_shapes"][local]):
                    raise GraphError(f"{n}.{local} {d['tied_shapes'][local]} cannot tie to {owner} {oshape}")
        for u, v, d in g.edges(data=True):
            if pos[u] >= pos[v]:
                raise GraphError(f"edge {u} -> {v} runs against the build order")
            produced = output_shape(self, u)
            if list(produced) != list(d["shape"]):
                raise GraphError(f"edge {u} -> {v} ({d['port']}): carries {d['shape']} but {u} produces {produced}")
            expected = expected_input(self, v, d["port"])
            if expected is not None and not _shape_match(expected, d["shape"]):
                raise GraphError(f"edge {u} -> {v}: port {d['port']} expects {expected}, gets {d['shape']}")
        return self


def _shape_match(expected: list, actual: list) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def output_shape(cg: ComponentGraph, name: str) -> list:
    d = cg.g.nodes[name]
    s, k = d["settings"], ComponentKind(d["kind"])
    D = cg.spec.d_model
    if k is ComponentKind.input:
        return list(s["shape"])
    if k in (ComponentKind.token_embedding, ComponentKind.learned_position, ComponentKind.sinusoidal_position,
             ComponentKind.glm2d_position, ComponentKind.add, ComponentKind.scale, ComponentKind.norm,
             ComponentKind.attention, ComponentKind.mlp, ComponentKind.residual):
        return ["batch", "seq", D]
    if k is ComponentKind.rotary:
        return ["batch", "seq", s["rotary_dim"] // 2, 2]  # cos and sin
    if k is ComponentKind.alibi:
        return ["batch", s["n_heads"], 1, "total"]
    if k is ComponentKind.mask:
        return ["batch", 1, "seq", "total"]
    if k is ComponentKind.head:
        return ["batch", "seq", s["vocab_size"]]
    if k is ComponentKind.output:
        return list(s["shape"])
    raise GraphError(f"{name}: unknown kind {k}")


def expected_input(cg: ComponentGraph, name: str, port: str) -> list | None:
    k = ComponentKind(cg.g.nodes[name]["kind"])
    D = cg.spec.d_model
    if port in ("x", "skip", "branch") and k is not ComponentKind.output:
        return [None, None, D]
    return None


# ------------------------------------------------------------------------------------------------
# The build function


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.g = nx.DiGraph(order=[])
        self.edge_seq = 0

    def add(self, name: str, kind: ComponentKind, *, layer: int | None = None, role: str | None = None,
            settings: dict | None = None, params: dict | None = None, **extra: Any) -> str:
        if name in self.g:
            raise GraphError(f"node {name} built twice")
        self.g.add_node(name, kind=kind.value, layer=layer, role=role or name, settings=settings or {},
                        params={k: list(v) for k, v in (params or {}).items()}, **extra)
        self.g.graph["order"].append(name)
        return name

    def edge(self, src: str, dst: str, port: str) -> None:
        tmp = ComponentGraph(self.g, self.spec)
        self.g.add_edge(src, dst, port=port, shape=output_shape(tmp, src), seq=self.edge_seq)
        self.edge_seq += 1


def _norm(b: _Builder, name: str, x: str, layer: int | None, role: str, kind: str | None = None) -> str:
    n = b.spec.norm
    kind = kind or n.kind.value
    bias = n.bias if kind == n.kind.value else kind == "layernorm"
    params = {"weight": [b.spec.d_model]}
    if bias:
        params["bias"] = [b.spec.d_model]
    b.add(name, ComponentKind.norm, layer=layer, role=role, params=params,
          settings={"norm": kind, "eps": n.eps, "bias": bias, "scale": n.scale.value})
    b.edge(x, name, "x")
    return name


def compile(spec: Spec) -> ComponentGraph:  # noqa: A001 - the public verb is archc.compile
    """Build the component graph of a validated spec."""
    s, a, n, p, e = spec, spec.attention, spec.norm, spec.position, spec.embedding
    b = _Builder(spec)
    D = s.d_model

    # ---- inputs ------------------------------------------------------------------------------
    b.add("input_ids", ComponentKind.input, settings={"dtype": "int64", "shape": ["batch", "seq"]})
    b.add("attention_mask", ComponentKind.input, settings={"dtype": "int64", "shape": ["batch", "total"]})
    needs_positions = isinstance(p, (LearnedPosition, SinusoidalPosition, RopePosition, Glm2dPosition))
    if needs_positions:
        pos_shape = ["batch", 2, "seq"] if isinstance(p, Glm2dPosition) else ["batch", "seq"]
        b.add("position_ids", ComponentKind.input, settings={"dtype": "int64", "shape": pos_shape})
    if a.mask is MaskKind.prefix:
        b.add("prefix_len", ComponentKind.input, settings={"dtype": "int64", "shape": ["batch"]})

    # ---- embeddings --------------------------------------------------------------------------
    b.add("embed", ComponentKind.token_embedding, role="token_embedding", params={"weight": [s.vocab_size, D]},
          settings={"vocab_size": s.vocab_size})
    b.edge("input_ids", "embed", "ids")
    h = "embed"
    if s.embedding_multiplier != 1.0:
        b.add("embed_scale", ComponentKind.scale, role="embedding_multiplier", settings={"factor": s.embedding_multiplier})
        b.edge(h, "embed_scale", "x")
        h = "embed_scale"
    pos_node = None
    if isinstance(p, LearnedPosition):
        pos_node = b.add("pos_embed", ComponentKind.learned_position, params={"weight": [p.max_positions, D]},
                         settings={"offset": p.offset, "max_positions": p.max_positions})
    elif isinstance(p, SinusoidalPosition):
        pos_node = b.add("pos_embed", ComponentKind.sinusoidal_position, settings={"base": p.base})
    elif isinstance(p, Glm2dPosition):
        pos_node = b.add("pos_embed", ComponentKind.glm2d_position,
                         params={"position.weight": [p.max_positions, D], "block.weight": [p.max_positions, D]},
                         settings={"max_positions": p.max_positions})
    if pos_node:
        b.edge("position_ids", pos_node, "positions")
        b.add("embed_add", ComponentKind.add, role="position_add")
        b.edge(h, "embed_add", "x")
        b.edge(pos_node, "embed_add", "x")
        h = "embed_add"
    if e.norm is not EmbeddingNorm.none:
        h = _norm(b, "embed_norm", h, None, "embedding_norm", kind=e.norm.value)

    # ---- attention side inputs ---------------------------------------------------------------
    mask_settings = {"mask": a.mask.value, "sliding_window": a.sliding_window}
    b.add("mask", ComponentKind.mask, settings=mask_settings)
    b.edge("attention_mask", "mask", "attention_mask")
    if a.mask is MaskKind.prefix:
        b.edge("prefix_len", "mask", "prefix_len")
    rotary = alibi = None
    if isinstance(p, RopePosition):
        rotary = b.add("rotary", ComponentKind.rotary,
                       settings={"theta": p.theta, "rotary_dim": p.rotary_dim, "style": p.style.value, "head_dim": a.head_dim})
        b.edge("position_ids", "rotary", "positions")
    if isinstance(p, AlibiPosition):
        alibi = b.add("alibi", ComponentKind.alibi,
                      settings={"n_heads": a.n_heads, "max_bias": p.max_bias, "slopes": alibi_slopes(a.n_heads, p.max_bias)})
        b.edge("attention_mask", "alibi", "attention_mask")

    # ---- the stack ---------------------------------------------------------------------------
    attn_settings = {
        "n_heads": a.n_heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim, "softmax_scale": a.softmax_scale,
        "qkv_bias": a.qkv_bias, "out_bias": a.out_bias, "kernel": a.kernel.value,
    }
    attn_params = {"q.weight": [s.q_dim, D], "k.weight": [s.kv_dim, D], "v.weight": [s.kv_dim, D], "o.weight": [D, s.q_dim]}
    if a.qkv_bias:
        attn_params.update({"q.bias": [s.q_dim], "k.bias": [s.kv_dim], "v.bias": [s.kv_dim]})
    if a.out_bias:
        attn_params["o.bias"] = [D]
    F = s.mlp.d_ff
    mlp_params = {"up.weight": [F, D], "down.weight": [D, F]}
    if s.mlp.activation.gated:
        mlp_params["gate.weight"] = [F, D]
    if s.mlp.bias:
        mlp_params.update({"up.bias": [F], "down.bias": [D]})
        if s.mlp.activation.gated:
            mlp_params["gate.bias"] = [F]
    mlp_settings = {"activation": s.mlp.activation.value, "d_ff": F, "bias": s.mlp.bias}
    alpha = n.deepnorm_alpha if n.placement is NormPlacement.deepnorm else 1.0

    def attention(layer: int, x: str) -> str:
        name = b.add(f"layers.{layer}.attn", ComponentKind.attention, layer=layer, role="attn",
                     settings=attn_settings, params=attn_params, cache=layer)
        b.edge(x, name, "x")
        b.edge("mask", name, "mask")
        if rotary:
            b.edge(rotary, name, "rotary")
        if alibi:
            b.edge(alibi, name, "bias")
        return name

    def mlp(layer: int, x: str) -> str:
        name = b.add(f"layers.{layer}.mlp", ComponentKind.mlp, layer=layer, role="mlp", settings=mlp_settings, params=mlp_params)
        b.edge(x, name, "x")
        return name

    def residual(layer: int, role: str, skip: str, branches: list[str]) -> str:
        name = b.add(f"layers.{layer}.{role}", ComponentKind.residual, layer=layer, role=role, settings={"alpha": alpha})
        b.edge(skip, name, "skip")
        for br in branches:
            b.edge(br, name, "branch")
        return name

    def sublayer(layer: int, x: str, which: str) -> str:
        """One sequential sublayer (attention or MLP) with its norm placement; returns the new stream."""
        make = attention if which == "attn" else mlp
        pre = f"layers.{layer}.{which}_norm"
        if n.placement is NormPlacement.pre:
            y = make(layer, _norm(b, pre, x, layer, f"{which}_norm"))
            return residual(layer, f"{which}_residual", x, [y])
        if n.placement is NormPlacement.sandwich:
            y = make(layer, _norm(b, pre, x, layer, f"{which}_norm"))
            y = _norm(b, f"layers.{layer}.{which}_post_norm", y, layer, f"{which}_post_norm")
            return residual(layer, f"{which}_residual", x, [y])
        # post and deepnorm: norm after the residual add
        y = make(layer, x)
        r = residual(layer, f"{which}_residual", x, [y])
        return _norm(b, f"layers.{layer}.{which}_norm", r, layer, f"{which}_norm")

    for i in range(s.n_layers):
        if s.residual.layout is ResidualLayout.sequential:
            h = sublayer(i, h, "attn")
            h = sublayer(i, h, "mlp")
            continue
        # parallel: attention and MLP read normed copies of the same input, y = x + attn + mlp
        if s.residual.parallel_norms is ParallelNorms.shared:
            shared = _norm(b, f"layers.{i}.norm", h, i, "shared_norm")
            attn_in = mlp_in = shared
        else:
            attn_in = _norm(b, f"layers.{i}.attn_norm", h, i, "attn_norm")
            mlp_in = _norm(b, f"layers.{i}.mlp_norm", h, i, "mlp_norm")
        y_attn = attention(i, attn_in)
        y_mlp = mlp(i, mlp_in)
        if n.placement is NormPlacement.sandwich:
            y_attn = _norm(b, f"layers.{i}.attn_post_norm", y_attn, i, "attn_post_norm")
            y_mlp = _norm(b, f"layers.{i}.mlp_post_norm", y_mlp, i, "mlp_post_norm")
        h = residual(i, "residual", h, [y_attn, y_mlp])

    if n.final:
        h = _norm(b, "final_norm", h, None, "final_norm")

    # ---- head --------------------------------------------------------------------------------
    V = e.head_vocab_size
    head_params: dict = {}
    tied: dict = {}
    if e.output is OutputHead.tied:
        tied = {"weight": "embed.weight"}
    else:
        head_params["weight"] = [V, D]
    if e.head_bias:
        head_params["bias"] = [V]
    b.add("head", ComponentKind.head, role="head", params=head_params, settings={"vocab_size": V, "tied": bool(tied)},
          tied=tied, tied_shapes={k: [V, D] for k in tied})
    b.edge(h, "head", "x")
    b.add("logits", ComponentKind.output, settings={"dtype": "float32", "shape": ["batch", "seq", V]})
    b.edge("head", "logits", "x")

    # Init gains ride on the parameters' nodes so that every backend initialises identically.
    _annotate_init(b.g, spec)
    return ComponentGraph(b.g, spec).check()


def alibi_slopes(n_heads: int, max_bias: float = 8.0) -> list[float]:
    """Press et al. 2021: geometric slopes 2^(-max_bias*i/n); for n not a power of two, the
    closest power of two's slopes then every other slope of the next power (as in BLOOM)."""
    def pow2(n: int) -> list[float]:
        start = 2 ** (-max_bias / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return pow2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]


def _annotate_init(g: nx.DiGraph, spec: Spec) -> None:
    """Record, per parameter, the distribution it is drawn from: {'dist': normal|xavier|ones|zeros, 'std'|'gain'}.

    Rules: norm weights 1 (0 for the (1 + w) form), biases 0, the position tables and embeddings
    N(0, std); linear weights N(0, std), except scaled_residual (GPT-2): attention output and MLP
    down projections use std / sqrt(2 * n_layers); deepnorm (DeepNet): Xavier-normal, with gain
    beta on v, o, and all MLP projections and gain 1 on q, k.
    """
    init, L = spec.init, spec.n_layers
    for name, d in g.nodes(data=True):
        rules = {}
        for local, shape in d["params"].items():
            if local.endswith("bias"):
                rules[local] = {"dist": "zeros"}
            elif d["kind"] == ComponentKind.norm.value:
                rules[local] = {"dist": "zeros" if d["settings"]["scale"] == "one_plus_weight" else "ones"}
            elif d["kind"] in (ComponentKind.attention.value, ComponentKind.mlp.value) and init.scheme is InitScheme.deepnorm:
                gain = 1.0 if local.split(".")[0] in ("q", "k") else spec.norm.deepnorm_beta or 1.0
                rules[local] = {"dist": "xavier", "gain": gain}
            elif init.scheme is InitScheme.scaled_residual and local in ("o.weight", "down.weight"):
                rules[local] = {"dist": "normal", "std": init.std / math.sqrt(2 * L)}
            else:
                rules[local] = {"dist": "normal", "std": init.std}
        d["init"] = rules
