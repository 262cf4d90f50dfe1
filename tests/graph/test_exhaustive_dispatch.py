"""Every axis value is handled explicitly or refused, in every emitter (issue 10).

- The fallthrough experiment: a tiny llama graph whose norm, mask and rotary style hold values no
  emitter knows must raise an error naming the node, the setting and the value in the PyTorch
  emitter, the portable lowering and the cuda lowering (before: RMSNorm everywhere, no error).
- Every enum-typed setting of every kind, set to an unknown value, is refused by every emitter.
- Completeness: every ComponentKind has a module / lowering (the cuda lowering: its own, or the
  portable one with a declared reason), and every value of every axis enum compiles into a graph
  that every emitter lowers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import typing
from enum import Enum

import pytest
import torch

from archc import spec as S
from archc.components import SETTINGS, ComponentKind, GraphError, PositionIds, UnknownSetting
from archc.graph import ComponentGraph, compile as compile_graph
from archc.loader import library_spec, load_data, spec_from_dict
from exporters import onnx_lowering_cuda as cuda
from exporters import onnx_lowering_portable as portable
from exporters.onnx_export import build_graph
from exporters.torch_module import build_module
from tests.conftest import tiny_sets

K = ComponentKind


def tiny(base: str = "llama", sets: list[str] | None = None, position: dict | None = None) -> ComponentGraph:
    """A tiny graph of a library spec (compiled once per argument set; callers must not modify it)."""
    return _tiny(base, tuple(sets or ()), tuple(sorted((position or {}).items())) if position is not None else None)


@functools.cache
def _tiny(base: str, sets: tuple[str, ...], position: tuple | None) -> ComponentGraph:
    position = dict(position) if position is not None else None
    path = library_spec(base)
    data, _ = load_data(path)
    if position is not None:
        data = dict(data, position=position)
        sets = [s for s in tiny_sets(path) if not s.startswith("position.")] + list(sets or [])
    else:
        sets = tiny_sets(path) + list(sets or [])
    return compile_graph(spec_from_dict(data, sets, source=base))


def with_values(graph: ComponentGraph, changes: dict[K, dict[str, object]]) -> ComponentGraph:
    """A copy of `graph` whose nodes of each kind hold the given raw values, set past the settings'
    type check (as a spec enum member that no emitter has a branch for would reach the emitters)."""
    g = copy.deepcopy(graph.g)
    for n, d in g.nodes(data=True):
        for field, value in changes.get(K(d["kind"]), {}).items():
            s = copy.copy(d["settings"])
            object.__setattr__(s, field, value)
            d["settings"] = s
    return ComponentGraph(g, graph.spec)


def run_torch(graph: ComponentGraph) -> None:
    model = build_module(graph)
    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        model(ids)


EMITTERS = {
    "torch": run_torch,
    "portable": lambda g: build_graph(g, "portable", "fp32"),
    "cuda fp16": lambda g: build_graph(g, "cuda", "fp16"),
    "cuda fp32": lambda g: build_graph(g, "cuda", "fp32"),
}


# ---- the fallthrough experiment ----------------------------------------------------------------


EXPERIMENT = {K.norm: {"norm": "no_such_norm"}, K.mask: {"mask": "no_such_mask"}, K.rotary: {"style": "no_such_style"}}


@pytest.mark.parametrize("emitter", sorted(EMITTERS))
def test_fallthrough_experiment_raises_in_every_emitter(emitter):
    bad = with_values(tiny("llama"), EXPERIMENT)
    with pytest.raises(UnknownSetting) as err:
        EMITTERS[emitter](bad)
    e = err.value
    assert (e.setting, e.value) in {("norm", "no_such_norm"), ("mask", "no_such_mask"), ("style", "no_such_style")}
    assert e.node in bad.g.nodes and e.node in str(e) and e.setting in str(e) and repr(e.value) in str(e)


@pytest.mark.parametrize("emitter", sorted(EMITTERS))
@pytest.mark.parametrize("kind", sorted(EXPERIMENT))
def test_each_experiment_value_alone_raises(emitter, kind):
    (setting, value), = EXPERIMENT[kind].items()
    bad = with_values(tiny("llama"), {kind: {setting: value}})
    with pytest.raises(UnknownSetting, match=f"{setting}='{value}'") as err:
        EMITTERS[emitter](bad)
    assert bad.node(err.value.node)["kind"] == kind.value


def test_experiment_values_are_refused_by_the_settings_types_and_the_json_reader():
    graph = tiny("llama")
    with pytest.raises(GraphError, match="norm='no_such_norm' is not a NormKind"):
        dataclasses.replace(graph.settings("final_norm"), norm="no_such_norm")
    data = json.loads(graph.to_json())
    next(d for d in data["nodes"] if d["id"] == "mask")["settings"]["mask"] = "no_such_mask"
    with pytest.raises(GraphError, match="mask: setting mask='no_such_mask' is not a MaskKind"):
        ComponentGraph.from_json(json.dumps(data))


# ---- every enum-typed setting, unknown value ---------------------------------------------------


def _enum_fields() -> list[tuple[K, str]]:
    out = []
    for kind, cls in SETTINGS.items():
        hints = typing.get_type_hints(cls)
        out += [(kind, f.name) for f in dataclasses.fields(cls) if isinstance(hints[f.name], type) and issubclass(hints[f.name], Enum)]
    return out


ENUM_FIELDS = _enum_fields()


def test_enum_fields_are_the_axes():
    assert sorted(ENUM_FIELDS) == sorted([(K.norm, "norm"), (K.norm, "scale"), (K.mask, "mask"), (K.rotary, "style"),
                                          (K.attention, "kernel"), (K.mlp, "activation")])


@pytest.mark.parametrize("emitter", sorted(EMITTERS))
@pytest.mark.parametrize("kind,field", ENUM_FIELDS, ids=[f"{k.value}.{f}" for k, f in ENUM_FIELDS])
def test_unknown_value_of_every_enum_setting_is_refused(emitter, kind, field):
    bad = with_values(tiny("llama"), {kind: {field: "no_such_value"}})
    with pytest.raises(UnknownSetting, match=f"{field}='no_such_value'") as err:
        EMITTERS[emitter](bad)
    assert bad.node(err.value.node)["kind"] == kind.value


def test_unknown_position_ids_layout_is_refused_by_the_torch_emitter():
    graph = copy.copy(tiny("llama"))
    object.__setattr__(graph, "model", dataclasses.replace(graph.model, position_ids="no_such_layout"))
    model = build_module(graph)
    with pytest.raises(UnknownSetting, match="layout='no_such_layout'"):
        model(torch.tensor([[1, 2]]))


# ---- completeness ------------------------------------------------------------------------------


def test_every_kind_has_a_lowering_in_each_onnx_target():
    assert set(portable.LOWERINGS) == set(K)
    assert not set(cuda.LOWERINGS) & set(cuda.PORTABLE_KINDS)
    assert set(cuda.LOWERINGS) | set(cuda.PORTABLE_KINDS) == set(K)
    assert all(len(reason) > 10 for reason in cuda.PORTABLE_KINDS.values())


def _case(enum: type[Enum], value: Enum) -> tuple[str, list[str], dict | None]:
    """(library spec, --set overrides, replaced position section) of a tiny graph holding `value`."""
    v = value.value
    if enum is S.NormKind:
        return "llama", [f"norm.kind={v}"], None
    if enum is S.NormScale:
        return "llama", [f"norm.scale={v}"], None
    if enum is S.NormPlacement:
        return "llama", [f"norm.placement={v}"], None
    if enum is S.MaskKind:
        return "llama", [f"attention.mask={v}"], None
    if enum is S.RopeStyle:
        return "llama", [f"position.style={v}"], None
    if enum is S.Activation:
        return "llama", [f"mlp.activation={v}"], None
    if enum is S.AttentionKernel:
        return "llama", [f"attention.kernel={v}"], None
    if enum is S.EmbeddingNorm:
        return "llama", [f"embedding.norm={v}"], None
    if enum is S.OutputHead:
        return "llama", [f"embedding.output={v}"], None
    if enum is S.ResidualLayout:
        return "llama", [f"residual.layout={v}"], None
    if enum is S.ParallelNorms:
        return "llama", ["residual.layout=parallel", f"residual.parallel_norms={v}"], None
    if enum is S.PositionKind:
        return ("glm", [], None) if value is S.PositionKind.glm2d else ("llama", [], {"kind": v})
    if enum is PositionIds:
        return {"none": ("bloom", [], None), "flat": ("llama", [], None), "glm2d": ("glm", [], None)}[v]
    raise AssertionError(f"no case for {enum.__name__}")


AXES = [S.NormKind, S.NormScale, S.NormPlacement, S.MaskKind, S.RopeStyle, S.Activation, S.AttentionKernel,
        S.EmbeddingNorm, S.OutputHead, S.ResidualLayout, S.ParallelNorms, S.PositionKind, PositionIds]
VALUES = [(enum, v) for enum in AXES for v in enum]


@pytest.mark.parametrize("enum,value", VALUES, ids=[f"{e.__name__}.{v.value}" for e, v in VALUES])
def test_every_axis_value_is_handled_by_every_emitter(enum, value):
    base, sets, position = _case(enum, value)
    graph = tiny(base, sets, position)
    for run in EMITTERS.values():
        run(graph)
    ctx = build_graph(graph, "cuda", "fp16")
    for name in graph.nodes():
        kind = K(graph.node(name)["kind"])
        if kind in cuda.PORTABLE_KINDS and name not in ("input_ids", "position_ids"):
            assert ctx.lowering[name] == "portable", (name, ctx.lowering[name])


def test_every_kind_appears_in_some_case():
    seen = set()
    for enum, value in VALUES:
        base, sets, position = _case(enum, value)
        graph = tiny(base, sets, position)
        seen |= {K(graph.node(n)["kind"]) for n in graph.nodes()}
    seen |= {K(tiny("gpt2").node(n)["kind"]) for n in tiny("gpt2").nodes()}  # learned positions
    seen |= {K(tiny("gemma").node(n)["kind"]) for n in tiny("gemma").nodes()}  # embedding scale
    assert seen == set(K)
