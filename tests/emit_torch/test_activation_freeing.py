"""The emitted module drops each node's output after its last reader: inference holds the residual
stream and the step in flight, not every layer's activations (the graph walk used to keep them all
until forward returned: about 9 GiB at LLaMA-1.1B prefill 8 x 2016, benchmarks/RESULTS.md).

Two independent checks: (1) the tensors layer 0's modules return are dead (weak references, no_grad)
by the time the last layer runs, and stay alive when the plan is emptied (negative control); (2) the
plan, walked against the graph's own edges, never drops a value a later node reads and leaves only the
graph's outputs at the end."""

from __future__ import annotations

import weakref

import pytest
import torch

import archc
from archc.graph import ComponentKind as K
from exporters.torch_module import GraphModel, build_module
from tests.conftest import LIBRARY, tiny_spec

LAYERS = 3  # layer 0's outputs are read by layer 1 at most, so by layer 2 nothing needs them


def _forward(model, graph):
    ids = torch.randint(0, graph.spec.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kw = {"prefix_len": torch.tensor([3, 0])} if "prefix_len" in graph.graph_inputs() else {}
    with torch.no_grad():
        return model(ids, mask, **kw)


def _layer0_alive_at_last_layer(model, graph) -> list[str]:
    """Names of layer 0's modules whose output is still referenced when the last layer's last module ends."""
    refs: dict[str, weakref.ref] = {}
    seen: list[list[str]] = []

    def keep(name):
        def hook(module, args, output):
            refs[name] = weakref.ref(output)
        return hook

    def check(module, args, output):
        seen.append([name for name, ref in refs.items() if ref() is not None])

    handles = [m.register_forward_hook(keep(n)) for n, m in model.layers[0].named_children()]
    last = list(model.layers[LAYERS - 1].children())[-1]
    handles.append(last.register_forward_hook(check))
    try:
        _forward(model, graph)
    finally:
        for h in handles:
            h.remove()
    assert len(refs) == len(list(model.layers[0].children())), "every layer-0 module ran and returned a tensor"
    assert len(seen) == 1, "the last layer's hook ran once"
    return seen[0]


@pytest.mark.parametrize("name", LIBRARY)
def test_early_activations_are_released_during_inference(name):
    graph = archc.compile(tiny_spec(name, [f"n_layers={LAYERS}"]))
    model = build_module(graph).eval()
    assert _layer0_alive_at_last_layer(model, graph) == []
    # negative control: with the plan emptied the walk keeps every output, and the check sees it
    for seg in model._segments:
        seg.frees = [()] * len(seg.steps)
        seg.frees_inputs = ()
    assert sorted(_layer0_alive_at_last_layer(model, graph)) == sorted(n for n, _ in model.layers[0].named_children())


@pytest.mark.parametrize("name", LIBRARY)
def test_plan_never_drops_a_value_a_later_node_reads(name):
    graph = archc.compile(tiny_spec(name, [f"n_layers={LAYERS}"]))
    with torch.device("meta"):
        model = GraphModel(graph)
    order = graph.nodes()
    plan = [(step[0], frees) for seg in model._segments for step, frees in zip(seg.steps, seg.frees)]
    assert [n for n, _ in plan] == order, "the plan follows the graph's order"
    readers = {n: [i for i, m in enumerate(order) for src, _ in graph.inputs(m) if src == n] for n in order}
    alive: set[str] = set()
    for i, (name, frees) in enumerate(plan):
        for src, _ in graph.inputs(name):
            assert src in alive, f"{name} reads {src}, already dropped"
        alive.add(name)
        for gone in frees:
            assert gone in alive, f"{name} drops {gone}, which is not held"
            assert all(r <= i for r in readers[gone]), f"{name} drops {gone}, read later by {order[max(readers[gone])]}"
            alive.remove(gone)
    outputs = {n for n in order if K(graph.node(n)["kind"]) is K.output}
    assert alive == outputs, "only the graph's outputs are left when forward returns"
    # a checkpointed layer runs on its own copy of the values: the walk drops, after it, the inputs it read last
    for i, seg in enumerate(model._segments):
        later = {src for s in model._segments[i + 1:] for _, _, ins, _ in s.steps for src, _ in ins}
        assert set(seg.frees_inputs) <= set(seg.inputs) and not set(seg.frees_inputs) & later
        assert set(seg.inputs) - set(seg.frees_inputs) <= later
