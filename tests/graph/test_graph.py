"""The component graph: invariants, JSON round trip, structure that shows the axes, costs."""

from __future__ import annotations

import copy

import networkx as nx
import pytest
import torch

import archc
from archc.cost import cost
from archc.graph import ComponentGraph, ComponentKind as K, GraphError
from archc.loader import library_specs, load_spec
from archc.spec import MaskKind
from exporters.torch_module import build_module
from conftest import LIBRARY, SPECS, tiny_spec


def _full(name: str) -> ComponentGraph:
    return archc.compile(load_spec(SPECS / f"{name}.yaml"))


# ---- invariants --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIBRARY)
def test_library_graph_invariants(name):
    graph = _full(name)  # full size: the graph holds shapes, no tensors
    g = graph.g
    assert nx.is_directed_acyclic_graph(g)
    assert sorted(graph.nodes()) == sorted(g.nodes)
    owners = [full for full, _, _ in graph.params()]
    assert len(owners) == len(set(owners)), "every parameter owned once"
    for full, shape, node in graph.params():
        assert full.startswith(node + ".") and all(isinstance(n, int) and n > 0 for n in shape)
    tied = graph.tied()
    assert bool(tied) == (graph.spec.embedding.output.value == "tied")
    assert all(owner in owners for owner in tied.values()) and not set(tied) & set(owners)
    assert graph.settings("head").tied == bool(tied)
    for u, v, d in g.edges(data=True):  # every tensor edge carries a shape and a port
        assert d["port"] and d["shape"]
    assert len(graph.nodes(K.attention)) == graph.spec.n_layers
    assert sorted(graph.node(n)["cache"] for n in graph.nodes(K.attention)) == list(range(graph.spec.n_layers))
    assert graph.graph_inputs()[:2] == ["input_ids", "attention_mask"]
    assert graph.nodes(K.output) == ["logits"]


def _corrupt(graph: ComponentGraph, how) -> ComponentGraph:
    g = copy.deepcopy(graph.g)
    how(g)
    return ComponentGraph(g, graph.spec)


@pytest.mark.parametrize(
    "how, message",
    [
        (lambda g: g.add_edge("layers.1.attn", "layers.0.attn", port="x", shape=["batch", "seq", 64], seq=999), "cycle"),
        (lambda g: g.edges["layers.0.attn", "layers.0.attn_residual"].update(shape=["batch", "seq", 65]), "carries"),
        (lambda g: g.nodes["head"]["params"].update({"weight": [97, 64]}), "both owned and tied"),
        (lambda g: g.nodes["head"].update(tied={"weight": "nowhere.weight"}), "no node owns"),
        (lambda g: g.nodes["head"].update(tied_shapes={"weight": [50, 64]}), "cannot tie"),
        (lambda g: g.graph.update(order=g.graph["order"][:-1]), "order"),
    ],
)
def test_corrupted_graph_is_rejected(how, message):
    graph = archc.compile(tiny_spec("llama", ["embedding.output=tied"]))
    graph.check()
    bad = _corrupt(graph, how)
    with pytest.raises(GraphError, match=message):
        bad.check()


def test_duplicate_parameter_owner_is_rejected():
    graph = archc.compile(tiny_spec("llama"))
    g = copy.deepcopy(graph.g)
    # a node "layers.0" owning "attn.q.weight" claims the name layers.0.attn.q.weight a second time
    g.add_node("layers.0", kind="norm", layer=0, role="x", settings=graph.settings("layers.0.attn_norm"), params={"attn.q.weight": [64, 64]}, init={})
    g.graph["order"].append("layers.0")
    with pytest.raises(GraphError, match="owned twice"):
        ComponentGraph(g, graph.spec).check()


def test_edge_against_build_order_is_rejected():
    graph = archc.compile(tiny_spec("llama"))
    g = copy.deepcopy(graph.g)
    order = g.graph["order"]
    i, j = order.index("layers.0.attn"), order.index("layers.0.attn_norm")
    order[i], order[j] = order[j], order[i]
    with pytest.raises(GraphError, match="against the build order"):
        ComponentGraph(g, graph.spec).check()


# ---- JSON round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIBRARY)
def test_json_round_trip_is_identical(name, tmp_path):
    graph = archc.compile(tiny_spec(name))
    path = tmp_path / "graph.json"
    graph.save(path)
    loaded = ComponentGraph.from_json(path.read_text())
    assert loaded.to_json() == graph.to_json()
    assert dict(loaded.g.nodes(data=True)) == dict(graph.g.nodes(data=True))
    assert _edges(loaded) == _edges(graph) and loaded.nodes() == graph.nodes()
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    prefix = torch.tensor([3, 2]) if "prefix_len" in graph.graph_inputs() else None
    a, _ = build_module(graph)(ids, prefix_len=prefix)
    b, _ = build_module(loaded)(ids, prefix_len=prefix)
    assert torch.equal(a, b)


def test_json_with_wrong_format_is_rejected():
    text = archc.compile(tiny_spec("llama")).to_json().replace('"format": 1', '"format": 99')
    with pytest.raises(GraphError, match="format"):
        ComponentGraph.from_json(text)


# ---- structure shows the axes ------------------------------------------------------------------


def _edges(graph: ComponentGraph) -> set[tuple[str, str, str]]:
    return {(u, v, d["port"]) for u, v, d in graph.g.edges(data=True)}


def test_parallel_and_sequential_layers_are_different_graphs():
    seq = archc.compile(tiny_spec("llama"))
    par = archc.compile(tiny_spec("llama", ["residual.layout=parallel"]))
    assert _edges(seq) != _edges(par)
    # sequential: the MLP reads its own norm of the stream *after* the attention residual
    assert seq.input_of("layers.0.mlp", "x") == "layers.0.mlp_norm"
    assert seq.input_of("layers.0.mlp_norm", "x") == "layers.0.attn_residual"
    # parallel, shared norm (PaLM, GPT-J): one norm feeds both, and one residual adds both branches
    assert par.input_of("layers.0.mlp", "x") == par.input_of("layers.0.attn", "x") == "layers.0.norm"
    assert par.inputs_at("layers.0.residual", "branch") == ["layers.0.attn", "layers.0.mlp"]
    assert par.input_of("layers.0.residual", "skip") == par.input_of("layers.0.norm", "x")
    sep = archc.compile(tiny_spec("llama", ["residual.layout=parallel", "residual.parallel_norms=separate"]))
    assert sep.input_of("layers.0.mlp", "x") == "layers.0.mlp_norm" and sep.input_of("layers.0.attn", "x") == "layers.0.attn_norm"
    assert sep.input_of("layers.0.mlp_norm", "x") == sep.input_of("layers.0.attn_norm", "x")


def test_alibi_and_prefix_mask_are_nodes_feeding_attention():
    bloom = archc.compile(tiny_spec("bloom"))
    assert bloom.node("alibi")["kind"] == K.alibi.value
    assert all(bloom.input_of(n, "bias") == "alibi" and bloom.input_of(n, "mask") == "mask" for n in bloom.nodes(K.attention))
    assert "position_ids" not in bloom.graph_inputs() and not bloom.nodes(K.rotary)
    glm = archc.compile(tiny_spec("glm"))
    assert glm.settings("mask").mask is MaskKind.prefix
    assert glm.input_of("mask", "prefix_len") == "prefix_len"
    assert all(glm.input_of(n, "mask") == "mask" for n in glm.nodes(K.attention))
    assert glm.node("pos_embed")["kind"] == K.glm2d_position.value
    llama = archc.compile(tiny_spec("llama"))
    assert "prefix_len" not in llama.graph_inputs() and llama.input_of("mask", "prefix_len") is None
    assert all(llama.input_of(n, "rotary") == "rotary" for n in llama.nodes(K.attention))


def test_pre_and_post_placement_order():
    pre = archc.compile(tiny_spec("llama", ["norm.placement=pre"]))
    post = archc.compile(tiny_spec("llama", ["norm.placement=post"]))
    order = pre.nodes()
    assert order.index("layers.0.attn_norm") < order.index("layers.0.attn") < order.index("layers.0.attn_residual")
    assert pre.input_of("layers.0.attn", "x") == "layers.0.attn_norm"
    assert pre.input_of("layers.0.attn_norm", "x") == "embed"
    order = post.nodes()
    assert order.index("layers.0.attn") < order.index("layers.0.attn_residual") < order.index("layers.0.attn_norm")
    assert post.input_of("layers.0.attn", "x") == "embed"
    assert post.input_of("layers.0.attn_norm", "x") == "layers.0.attn_residual"
    assert "final_norm" in pre.nodes() and "final_norm" not in post.nodes()
    deep = archc.compile(tiny_spec("llama", ["norm.placement=deepnorm"]))
    assert deep.settings("layers.0.attn_residual").alpha == pytest.approx((2 * 2) ** 0.25)
    sandwich = archc.compile(tiny_spec("llama", ["norm.placement=sandwich"]))
    assert sandwich.input_of("layers.0.attn_post_norm", "x") == "layers.0.attn"
    assert sandwich.input_of("layers.0.attn_residual", "branch") == "layers.0.attn_post_norm"


# ---- costs from the graph ----------------------------------------------------------------------

PUBLISHED = {"llama": 6_738_415_616, "gpt2": 124_439_808}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cost_matches_published_parameter_count(name):
    assert (SPECS / f"{name}.yaml").exists(), f"specs/{name}.yaml is part of the library"
    assert cost(_full(name)).params == PUBLISHED[name]


def test_cost_counts_a_tied_head_once():
    untied = cost(archc.compile(tiny_spec("llama")))
    tied = cost(archc.compile(tiny_spec("llama", ["embedding.output=tied"])))
    assert untied.params - tied.params == 97 * 64
    assert untied.matmul_params == tied.matmul_params  # the head still multiplies per token


def test_every_library_spec_compiles_at_full_size():
    assert {p.stem for p in library_specs()} == set(LIBRARY) and len(LIBRARY) >= 5
    for name in LIBRARY:
        _full(name).check()
