"""The cuda target's two weight layouts for projections (exporters.onnx_export.WeightLayout): in_out
(MatMul on transposed initializers) and out_in (com.microsoft FusedMatMul transB=1 on archc's [out, in]
weights, the tied head straight from the embedding). Which one the target uses is chosen by
measurement (onnx_lowering_cuda.WEIGHT_LAYOUT); both must compute the PyTorch emitter's numbers for
every library spec (left-padded prefill + cached decode), the one not in use included, so switching
is safe. A missing transB on a square projection (o, d_model x d_model) would still run, with wrong
numbers: the parity comparison is what catches it (negative control below)."""

from __future__ import annotations

import collections

import onnx
import pytest

import archc
from conftest import LIBRARY, tiny_spec
from exporters import onnx_lowering_cuda
from exporters.onnx_export import WeightLayout, export
from exporters.torch_module import build_module
from ort_steps import real_positions, rel_err, run_ort, run_torch, session

TOL = 1e-4


def _max_err(d, graph, steps=2) -> float:
    spec = graph.spec
    ours = run_ort(session(d), spec, steps=steps)
    ref = run_torch(build_module(graph), graph, steps=steps)
    return max(rel_err(o[real_positions(f)], r[real_positions(f)]) for (f, o), (_, r) in zip(ours, ref))


@pytest.mark.parametrize("layout", list(WeightLayout))
@pytest.mark.parametrize("name", LIBRARY)
def test_both_layouts_match_pytorch(name, layout, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_lowering_cuda, "WEIGHT_LAYOUT", layout)
    graph = archc.compile(tiny_spec(name))
    export(graph, tmp_path / "m", target="cuda", fused_fp32=True)
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    transposed = [t.name for t in m.graph.initializer if t.name.endswith(".T")]
    if layout is WeightLayout.out_in:
        assert ops["FusedMatMul"] > 0 and not transposed and ops["Transpose"] == 0
    else:
        assert ops["FusedMatMul"] == 0
    assert _max_err(tmp_path / "m", graph) <= TOL


def test_negative_control_transb_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_lowering_cuda, "WEIGHT_LAYOUT", WeightLayout.out_in)
    graph = archc.compile(tiny_spec("llama"))
    export(graph, tmp_path / "m", target="cuda", fused_fp32=True)
    m = onnx.load(str(tmp_path / "m" / "model.onnx"))
    (o_proj,) = [n for n in m.graph.node if n.op_type == "FusedMatMul" and n.input[1] == "layers.0.attn.o.weight"]
    next(a for a in o_proj.attribute if a.name == "transB").i = 0  # square: still runs, wrong numbers
    onnx.save(m, str(tmp_path / "m" / "model.onnx"), save_as_external_data=True, location="model.onnx.data2")
    assert _max_err(tmp_path / "m", graph) > 1e-2
