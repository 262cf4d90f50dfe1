"""`--kernels archc --quant int4` (exporters/onnx_lowering_cuda.py _lower_archc_op): a tiny int4 LLaMA whose MLPs'
gate|up run as archc.GatedMLPNBits on the stacked gate|up's MatMulNBits bytes, run on the CPU (the library's CPU
kernel), against

(a) the same spec's --quant int4 export without --kernels archc (MatMulNBits + Split + SiLU + Mul): the op reads the
    very same initializers (names and bytes, so the model's size is unchanged), and the logits agree to fp16 noise over
    a left-padded prefill (batch 2, M = 10 rows) and cached decode steps (M = 2; batch 1: M = 1), and greedy generation
    gives the same tokens for GREEDY_STEPS steps;
(b) archc's PyTorch module on the weights quantized by archc and dequantized by the numpy dequantizer written from
    MatMulNBits's specification (tests/emit_onnx/test_quant_matmulnbits.py): an oracle independent of the exporter;
(c) negative control: the same export with the op's gate and up code rows (and scales) swapped fails (b)'s bound;
(d) quantizations the op does not take keep the MatMulNBits path with the reason in the lowering, no library copied.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

import archc
from archc.model_dir import META_ORT_OPS, ORT_OPS_FILE
from archc.quant import QuantKind, QuantScheme, QuantSettings
from conftest import tiny_spec
from exporters.onnx_export import export
from exporters.torch_module import build_module
from ort_ops_build import cpu_library, errors_and_control
from tests.emit_onnx.test_qmoe_mlp import dequantized_state, loud_mlp_weights

INT4 = QuantSettings(QuantKind.int4)
# max |logits - ref| / max |ref| over real positions, fp16 activations on both sides; test_qmoe_mlp's bounds for the
# same comparison (QMoE vs one_gemm, measured 1.1e-3; vs the module on dequantized weights 1.05e-3 / 1.3e-3).
SAME_TOL = 4e-3
ORACLE_TOL = 4e-3
CONTROL_MIN = 0.1
GREEDY_STEPS = 8
PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]


def initializers(d: Path) -> dict[str, bytes]:
    m = onnx.load(str(d / "model.onnx"))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}


def test_int4_op_matches_the_matmulnbits_export_and_the_module(tmp_path):
    from archc.runner import Session

    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    w = tmp_path / "w.safetensors"
    state = loud_mlp_weights(graph, w)
    res = export(graph, tmp_path / "op", target="cuda", dtype="fp16", weights=w, quant=INT4, kernels="archc",
                 ort_ops_lib=cpu_library())
    std = export(graph, tmp_path / "std", target="cuda", dtype="fp16", weights=w, quant=INT4)
    m = onnx.load(str(tmp_path / "op" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("GatedMLPNBits") == spec.n_layers and "Split" not in ops and "Sigmoid" not in ops and "QuickGelu" not in ops
    assert {(o.domain, o.version) for o in m.opset_import} >= {("archc", 1)}
    assert {p.key: p.value for p in m.metadata_props}[META_ORT_OPS] == ORT_OPS_FILE
    how = res.lowering["layers.0.mlp"]
    assert how.startswith("archc:GatedMLPNBits int4 sym b32") and "archc:LinearNBits int4 sym b32 (down, + residual)" in how, how
    assert std.lowering["layers.0.mlp"].startswith("cuda:MatMulNBits int4 sym b32 (gate|up in one GEMM) + Split")
    op = next(n for n in m.graph.node if n.op_type == "GatedMLPNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in op.attribute}
    assert attrs == {"K": spec.d_model, "bits": 4, "block_size": 32, "epsilon": pytest.approx(spec.norm.eps)}  # norm folded in
    assert list(op.input[1:]) == ["layers.0.mlp.gate_up.weight.q4", "layers.0.mlp.gate_up.weight.scales", "layers.0.mlp_norm.weight"]
    # the same quantized initializers, byte for byte (LinearNBits reads q|k|v, o and down's MatMulNBits bytes too): only
    # the Split's sizes constant is gone
    ours, theirs = initializers(tmp_path / "op"), initializers(tmp_path / "std")
    assert {k: v for k, v in theirs.items() if k not in ours} .keys() <= {k for k in theirs if "split" in k.lower()}
    assert all(ours[k] == theirs[k] for k in ours), [k for k in ours if ours[k] != theirs.get(k)]
    size = lambda d: (d / "model.onnx.data").stat().st_size  # noqa: E731
    assert size(tmp_path / "op") == size(tmp_path / "std")

    module = build_module(graph, weights=dequantized_state(graph, state))
    errs, control = errors_and_control(tmp_path, "GatedMLPNBits", spec, graph, module)  # pads (0, 2), (0,)
    print(f"(op vs MatMulNBits export, op vs module, MatMulNBits export vs module) per pads: {errs}; control {control:.2e}")
    assert all(same <= SAME_TOL and oracle <= ORACLE_TOL for same, oracle, _ in errs.values()), errs
    assert control >= CONTROL_MIN, control

    tokens = {k: Session(tmp_path / k, device="cpu").generate(PROMPTS, GREEDY_STEPS).ids for k in ("op", "std")}
    assert tokens["op"] == tokens["std"] and all(len(t) == GREEDY_STEPS for t in tokens["op"]), tokens


@pytest.mark.parametrize("q,why", [
    (QuantSettings(QuantKind.int4, scheme=QuantScheme.asymmetric), "quantization int4 asym b32; GatedMLPNBits takes int4 sym b32"),
    (QuantSettings(QuantKind.int8), "quantization int8"),
    (QuantSettings(QuantKind.int4, block_size=64), "quantization int4 sym b64"),
    (QuantSettings(QuantKind.int4, accuracy_level=4), "accuracy_level 4"),
])
def test_quantizations_the_op_cannot_take_keep_matmulnbits(tmp_path, q, why):
    res = export(archc.compile(tiny_spec("llama")), tmp_path / "m", target="cuda", dtype="fp16", quant=q, kernels="archc",
                 ort_ops_lib=cpu_library())
    how = res.lowering["layers.0.mlp"]
    assert f"(not archc.GatedMLP: {why}" in how and "MatMulNBits" in how, how
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    assert not any(n.domain == "archc" for n in m.graph.node) and not (tmp_path / "m" / ORT_OPS_FILE).exists()
    assert META_ORT_OPS not in {p.key for p in m.metadata_props}
