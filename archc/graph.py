"""The component graph: one node per component instance, one edge per tensor between them.

`compile(spec)` is the one build function. Which components a layer has, and how they connect, is
decided here and only here; the emitters (exporters/) walk this graph and never read the spec's
axes themselves, so a parallel-residual layer and a sequential one are different graphs, and a
new emitter gets every axis for free.

Node attributes
  kind      ComponentKind value
  layer     layer index, or None outside the stack
  role      what the node does in its layer ("attn_norm", "attn", "attn_residual", ...)
  settings  the kind's frozen settings (archc.components: enums and numbers, e.g. NormSettings(norm=
            NormKind.rmsnorm, eps=1e-6, ...)); JSON: a dict with the enums' values
Graph attribute (not stored: derived from the spec the JSON carries)
  model     ModelSettings: name, d_model, max_seq_len, init seed, position-ids layout
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import networkx as nx

from archc.components import (  # noqa: F401 - ComponentKind, GraphError and the settings types are this module's public names too
    SETTINGS,
    AddSettings,
    AlibiSettings,
    AttentionSettings,
    ComponentKind,
    Glm2dPositionSettings,
    GraphError,
    HeadSettings,
    InputSettings,
    LearnedPositionSettings,
    MaskSettings,
    MlpSettings,
    ModelSettings,
    NormSettings,
    OutputSettings,
    PositionIds,
    ResidualSettings,
    RotarySettings,
    ScaleSettings,
    Settings,
    SinusoidalPositionSettings,
    TokenEmbeddingSettings,
    UnknownSetting,
    position_ids_layout,
    position_ids_shape,
    settings_from_json,
    settings_to_json,
)
from archc.spec import (
    AlibiPosition,
    EmbeddingNorm,
    Glm2dPosition,
    InitScheme,
    LearnedPosition,
    MaskKind,
    NoPosition,
    NormKind,
    NormPlacement,
    NormScale,
    OutputHead,
    ParallelNorms,
    ResidualLayout,
    RopePosition,
    SinusoidalPosition,
    Spec,
)

GRAPH_FORMAT = 1


class ComponentGraph:
    """A networkx.DiGraph plus the resolved spec it was compiled from, and the graph-wide settings
    (`model`, archc.components.ModelSettings) that emitters read instead of the spec."""

    def __init__(self, g: nx.DiGraph, spec: Spec):
        self.g = g
        self.spec = spec
        self.model = ModelSettings.of(spec)

    # ---- reading -------------------------------------------------------------------------------
    def nodes(self, kind: ComponentKind | None = None) -> list[str]:
        """Node names in a deterministic topological order (layer by layer, as built)."""
        order = self.g.graph["order"]
        return [n for n in order if kind is None or self.g.nodes[n]["kind"] == kind.value]

    def node(self, name: str) -> dict:
        return self.g.nodes[name]

    def settings(self, name: str) -> Settings:
        """The node's typed settings (archc.components.SETTINGS[kind])."""
        return self.g.nodes[name]["settings"]

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

    @property
    def built_layers(self) -> int:
        """Layers present as nodes: n_layers, or fewer in a light graph (compile(spec, layers=k))."""
        return self.g.graph.get("built_layers", self.spec.n_layers)

    # ---- persistence ---------------------------------------------------------------------------
    def to_json(self) -> str:
        data = nx.node_link_data(self.g, edges="edges")
        data["nodes"] = [dict(d, settings=settings_to_json(d["settings"])) for d in data["nodes"]]
        data["graph"] = dict(data["graph"], spec=self.spec.to_yaml_dict(), format=GRAPH_FORMAT)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ComponentGraph":
        data = json.loads(text)
        if data.get("graph", {}).get("format") != GRAPH_FORMAT:
            raise GraphError(f"graph JSON format {data.get('graph', {}).get('format')!r} is not {GRAPH_FORMAT}")
        spec = Spec.model_validate(data["graph"].pop("spec"))
        for d in data["nodes"]:
            try:
                kind = ComponentKind(d["kind"])
            except ValueError:
                raise GraphError(f"{d.get('id')}: unknown kind {d['kind']!r}") from None
            d["settings"] = settings_from_json(d["id"], kind, d["settings"])
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
        for n, d in g.nodes(data=True):
            want = SETTINGS[ComponentKind(d["kind"])]
            if type(d["settings"]) is not want:
                raise GraphError(f"{n}: a {d['kind']} node needs {want.__name__}, not {type(d['settings']).__name__}")
        pos_shape = position_ids_shape(self.model.position_ids)
        has_pos = "position_ids" in g.nodes and g.nodes["position_ids"]["kind"] == ComponentKind.input.value
        if (pos_shape is None) == has_pos or (has_pos and list(g.nodes["position_ids"]["settings"].shape) != pos_shape):
            raise GraphError(f"position_ids input does not match the position-ids layout {self.model.position_ids.value}")
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
    s = cg.settings(name)
    D = cg.model.d_model
    if isinstance(s, (InputSettings, OutputSettings)):
        return list(s.shape)
    if isinstance(s, (TokenEmbeddingSettings, LearnedPositionSettings, SinusoidalPositionSettings, Glm2dPositionSettings,
                      AddSettings, ScaleSettings, NormSettings, AttentionSettings, MlpSettings, ResidualSettings)):
        return ["batch", "seq", D]
    if isinstance(s, RotarySettings):
        return ["batch", "seq", s.rotary_dim // 2, 2]  # cos and sin
    if isinstance(s, AlibiSettings):
        return ["batch", s.n_heads, 1, "total"]
    if isinstance(s, MaskSettings):
        return ["batch", 1, "seq", "total"]
    if isinstance(s, HeadSettings):
        return ["batch", "seq", s.vocab_size]
    raise GraphError(f"{name}: unknown kind {cg.node(name)['kind']}")


def expected_input(cg: ComponentGraph, name: str, port: str) -> list | None:
    k = ComponentKind(cg.g.nodes[name]["kind"])
    D = cg.model.d_model
    if port in ("x", "skip", "branch") and k is not ComponentKind.output:
        return [None, None, D]
    return None


# ------------------------------------------------------------------------------------------------
# The build function: compile() runs one builder per part of the model, in graph order


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.g = nx.DiGraph(order=[])
        self.view = ComponentGraph(self.g, spec)  # the graph so far, for output_shape
        self.edge_seq = 0

    def add(self, name: str, settings: Settings, *, layer: int | None = None, role: str | None = None,
            params: dict | None = None, **extra: Any) -> str:
        if name in self.g:
            raise GraphError(f"node {name} built twice")
        self.g.add_node(name, kind=settings.kind.value, layer=layer, role=role or name, settings=settings,
                        params={k: list(v) for k, v in (params or {}).items()}, **extra)
        self.g.graph["order"].append(name)
        return name

    def edge(self, src: str, dst: str, port: str) -> None:
        self.g.add_edge(src, dst, port=port, shape=output_shape(self.view, src), seq=self.edge_seq)
        self.edge_seq += 1


@dataclass(frozen=True)
class _SideInputs:
    """The nodes every attention node reads besides its stream input."""

    mask: str
    rotary: str | None
    alibi: str | None


def _norm(b: _Builder, name: str, x: str, layer: int | None, role: str, kind: NormKind | None = None) -> str:
    """A norm node of the spec's norm kind, or of `kind` (the embedding norm), on stream `x`."""
    n = b.spec.norm
    kind = kind or n.kind
    bias = n.bias if kind is n.kind else kind is NormKind.layernorm
    params = {"weight": [b.spec.d_model]}
    if bias:
        params["bias"] = [b.spec.d_model]
    b.add(name, NormSettings(norm=kind, eps=n.eps, bias=bias, scale=n.scale), layer=layer, role=role, params=params)
    b.edge(x, name, "x")
    return name


def _build_inputs(b: _Builder) -> None:
    """input_ids, attention_mask, and the position_ids / prefix_len inputs the spec reads."""
    b.add("input_ids", InputSettings(dtype="int64", shape=("batch", "seq")))
    b.add("attention_mask", InputSettings(dtype="int64", shape=("batch", "total")))
    pos_shape = position_ids_shape(position_ids_layout(b.spec.position.kind))
    if pos_shape is not None:
        b.add("position_ids", InputSettings(dtype="int64", shape=tuple(pos_shape)))
    if b.spec.attention.mask is MaskKind.prefix:
        b.add("prefix_len", InputSettings(dtype="int64", shape=("batch",)))


def _build_embedding(b: _Builder) -> str:
    """Token embedding, its multiplier, the absolute position table added to it, the embedding norm;
    returns the stream's node."""
    s, p, e, D = b.spec, b.spec.position, b.spec.embedding, b.spec.d_model
    b.add("embed", TokenEmbeddingSettings(vocab_size=s.vocab_size), role="token_embedding", params={"weight": [s.vocab_size, D]})
    b.edge("input_ids", "embed", "ids")
    h = "embed"
    if s.embedding_multiplier != 1.0:
        b.add("embed_scale", ScaleSettings(factor=s.embedding_multiplier), role="embedding_multiplier")
        b.edge(h, "embed_scale", "x")
        h = "embed_scale"
    pos_node = None
    if isinstance(p, LearnedPosition):
        pos_node = b.add("pos_embed", LearnedPositionSettings(offset=p.offset, max_positions=p.max_positions),
                         params={"weight": [p.max_positions, D]})
    elif isinstance(p, SinusoidalPosition):
        pos_node = b.add("pos_embed", SinusoidalPositionSettings(base=p.base))
    elif isinstance(p, Glm2dPosition):
        pos_node = b.add("pos_embed", Glm2dPositionSettings(max_positions=p.max_positions),
                         params={"position.weight": [p.max_positions, D], "block.weight": [p.max_positions, D]})
    elif not isinstance(p, (RopePosition, AlibiPosition, NoPosition)):  # those act inside attention, or not at all
        raise UnknownSetting("pos_embed", "position.kind", p.kind, "graph builder")
    if pos_node:
        b.edge("position_ids", pos_node, "positions")
        b.add("embed_add", AddSettings(), role="position_add")
        b.edge(h, "embed_add", "x")
        b.edge(pos_node, "embed_add", "x")
        h = "embed_add"
    if e.norm is EmbeddingNorm.layernorm:
        h = _norm(b, "embed_norm", h, None, "embedding_norm", kind=NormKind.layernorm)
    elif e.norm is EmbeddingNorm.rmsnorm:
        h = _norm(b, "embed_norm", h, None, "embedding_norm", kind=NormKind.rmsnorm)
    elif e.norm is not EmbeddingNorm.none:
        raise UnknownSetting("embed_norm", "embedding.norm", e.norm, "graph builder")
    return h


def _build_side_inputs(b: _Builder) -> _SideInputs:
    """The mask, and the RoPE tables or ALiBi bias, shared by every attention node."""
    a, p = b.spec.attention, b.spec.position
    b.add("mask", MaskSettings(mask=a.mask, sliding_window=a.sliding_window))
    b.edge("attention_mask", "mask", "attention_mask")
    if a.mask is MaskKind.prefix:
        b.edge("prefix_len", "mask", "prefix_len")
    rotary = alibi = None
    if isinstance(p, RopePosition):
        rotary = b.add("rotary", RotarySettings(theta=p.theta, rotary_dim=p.rotary_dim, style=p.style, head_dim=a.head_dim))
        b.edge("position_ids", "rotary", "positions")
    if isinstance(p, AlibiPosition):
        alibi = b.add("alibi", AlibiSettings(n_heads=a.n_heads, max_bias=p.max_bias, slopes=tuple(alibi_slopes(a.n_heads, p.max_bias))))
        b.edge("attention_mask", "alibi", "attention_mask")
    return _SideInputs("mask", rotary, alibi)


class _LayerBuilder:
    """One transformer layer per call: its norms placed as norm.placement says, its residual layout."""

    def __init__(self, b: _Builder, side: _SideInputs):
        s, a = b.spec, b.spec.attention
        D, F = s.d_model, s.mlp.d_ff
        self.b, self.side, self.norm = b, side, s.norm
        self.attn_settings = AttentionSettings(n_heads=a.n_heads, kv_heads=a.kv_heads, head_dim=a.head_dim, softmax_scale=a.softmax_scale,
                                               qkv_bias=a.qkv_bias, out_bias=a.out_bias, kernel=a.kernel)
        self.attn_params = {"q.weight": [s.q_dim, D], "k.weight": [s.kv_dim, D], "v.weight": [s.kv_dim, D], "o.weight": [D, s.q_dim]}
        if a.qkv_bias:
            self.attn_params.update({"q.bias": [s.q_dim], "k.bias": [s.kv_dim], "v.bias": [s.kv_dim]})
        if a.out_bias:
            self.attn_params["o.bias"] = [D]
        self.mlp_params = {"up.weight": [F, D], "down.weight": [D, F]}
        if s.mlp.activation.gated:
            self.mlp_params["gate.weight"] = [F, D]
        if s.mlp.bias:
            self.mlp_params.update({"up.bias": [F], "down.bias": [D]})
            if s.mlp.activation.gated:
                self.mlp_params["gate.bias"] = [F]
        self.mlp_settings = MlpSettings(activation=s.mlp.activation, d_ff=F, bias=s.mlp.bias)
        self.alpha = self.norm.deepnorm_alpha if self.norm.placement is NormPlacement.deepnorm else 1.0
        self.layout, self.parallel_norms = s.residual.layout, s.residual.parallel_norms

    def attention(self, layer: int, x: str) -> str:
        b = self.b
        name = b.add(f"layers.{layer}.attn", self.attn_settings, layer=layer, role="attn", params=self.attn_params, cache=layer)
        b.edge(x, name, "x")
        b.edge(self.side.mask, name, "mask")
        if self.side.rotary:
            b.edge(self.side.rotary, name, "rotary")
        if self.side.alibi:
            b.edge(self.side.alibi, name, "bias")
        return name

    def mlp(self, layer: int, x: str) -> str:
        name = self.b.add(f"layers.{layer}.mlp", self.mlp_settings, layer=layer, role="mlp", params=self.mlp_params)
        self.b.edge(x, name, "x")
        return name

    def residual(self, layer: int, role: str, skip: str, branches: list[str]) -> str:
        name = self.b.add(f"layers.{layer}.{role}", ResidualSettings(alpha=self.alpha), layer=layer, role=role)
        self.b.edge(skip, name, "skip")
        for br in branches:
            self.b.edge(br, name, "branch")
        return name

    def sublayer(self, layer: int, x: str, which: str) -> str:
        """One sequential sublayer (attention or MLP) with its norm placement; returns the new stream."""
        b, placement = self.b, self.norm.placement
        make = self.attention if which == "attn" else self.mlp
        pre = f"layers.{layer}.{which}_norm"
        if placement is NormPlacement.pre:
            y = make(layer, _norm(b, pre, x, layer, f"{which}_norm"))
            return self.residual(layer, f"{which}_residual", x, [y])
        if placement is NormPlacement.sandwich:
            y = make(layer, _norm(b, pre, x, layer, f"{which}_norm"))
            y = _norm(b, f"layers.{layer}.{which}_post_norm", y, layer, f"{which}_post_norm")
            return self.residual(layer, f"{which}_residual", x, [y])
        if placement in (NormPlacement.post, NormPlacement.deepnorm):  # norm after the residual add
            y = make(layer, x)
            r = self.residual(layer, f"{which}_residual", x, [y])
            return _norm(b, f"layers.{layer}.{which}_norm", r, layer, f"{which}_norm")
        raise UnknownSetting(f"layers.{layer}", "norm.placement", placement, "graph builder")

    def layer(self, i: int, h: str) -> str:
        """Layer i on stream h; returns the new stream."""
        if self.layout is ResidualLayout.sequential:
            return self.sublayer(i, self.sublayer(i, h, "attn"), "mlp")
        if self.layout is not ResidualLayout.parallel:
            raise UnknownSetting(f"layers.{i}", "residual.layout", self.layout, "graph builder")
        # parallel: attention and MLP read normed copies of the same input, y = x + attn + mlp
        b = self.b
        if self.parallel_norms is ParallelNorms.shared:
            attn_in = mlp_in = _norm(b, f"layers.{i}.norm", h, i, "shared_norm")
        elif self.parallel_norms is ParallelNorms.separate:
            attn_in = _norm(b, f"layers.{i}.attn_norm", h, i, "attn_norm")
            mlp_in = _norm(b, f"layers.{i}.mlp_norm", h, i, "mlp_norm")
        else:
            raise UnknownSetting(f"layers.{i}", "residual.parallel_norms", self.parallel_norms, "graph builder")
        y_attn = self.attention(i, attn_in)
        y_mlp = self.mlp(i, mlp_in)
        if self.norm.placement is NormPlacement.sandwich:
            y_attn = _norm(b, f"layers.{i}.attn_post_norm", y_attn, i, "attn_post_norm")
            y_mlp = _norm(b, f"layers.{i}.mlp_post_norm", y_mlp, i, "mlp_post_norm")
        return self.residual(i, "residual", h, [y_attn, y_mlp])


def _build_head(b: _Builder, h: str) -> None:
    """The final norm (if any), the output head (tied or its own matrix) and the logits output."""
    s, e, D = b.spec, b.spec.embedding, b.spec.d_model
    if s.norm.final:
        h = _norm(b, "final_norm", h, None, "final_norm")
    V = e.head_vocab_size
    head_params: dict = {}
    tied: dict = {}
    if e.output is OutputHead.tied:
        tied = {"weight": "embed.weight"}
    elif e.output is OutputHead.untied:
        head_params["weight"] = [V, D]
    else:
        raise UnknownSetting("head", "embedding.output", e.output, "graph builder")
    if e.head_bias:
        head_params["bias"] = [V]
    b.add("head", HeadSettings(vocab_size=V, tied=bool(tied)), role="head", params=head_params,
          tied=tied, tied_shapes={k: [V, D] for k in tied})
    b.edge(h, "head", "x")
    b.add("logits", OutputSettings(dtype="float32", shape=("batch", "seq", V)))
    b.edge("head", "logits", "x")


def compile(spec: Spec, *, layers: int | None = None) -> ComponentGraph:  # noqa: A001 - the public verb is archc.compile
    """Build the component graph of a validated spec.

    `layers` (light commands: show, diff, compare, draw): build at most this many of the spec's
    identical layers; `built_layers` says how many, `n_layers` stays the spec's, and readers that
    count per layer (archc.cost, archc.diff) scale the last built layer to the rest. A spec of a
    million layers is then judged from a few, in constant time and memory."""
    b = _Builder(spec)
    _build_inputs(b)
    h = _build_embedding(b)
    builder = _LayerBuilder(b, _build_side_inputs(b))
    built = spec.n_layers if layers is None else max(1, min(layers, spec.n_layers))
    if built < spec.n_layers:  # recorded only on a light graph (a full graph's JSON stays as it was)
        b.g.graph["built_layers"] = built
    for i in range(built):
        h = builder.layer(i, h)
    _build_head(b, h)
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
                rules[local] = {"dist": _norm_weight_init(name, d["settings"])}
            elif d["kind"] in (ComponentKind.attention.value, ComponentKind.mlp.value) and init.scheme is InitScheme.deepnorm:
                gain = 1.0 if local.split(".")[0] in ("q", "k") else spec.norm.deepnorm_beta or 1.0
                rules[local] = {"dist": "xavier", "gain": gain}
            elif init.scheme is InitScheme.scaled_residual and local in ("o.weight", "down.weight"):
                rules[local] = {"dist": "normal", "std": init.std / math.sqrt(2 * L)}
            else:
                rules[local] = {"dist": "normal", "std": init.std}
        d["init"] = rules


def _norm_weight_init(name: str, s: NormSettings) -> str:
    """A norm's scale starts as the identity: w = 1, or w = 0 in the (1 + w) form."""
    if s.scale is NormScale.weight:
        return "ones"
    if s.scale is NormScale.one_plus_weight:
        return "zeros"
    raise UnknownSetting(name, "scale", s.scale, "init")
