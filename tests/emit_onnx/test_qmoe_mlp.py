"""The cuda target's --quant int4 gated MLP as one com.microsoft QMoE node with a single expert
(exporters/onnx_lowering_cuda.py, GateUp.qmoe), proven on the CPU with onnxruntime:

(a) its logits equal, to fp16 noise, those of the one_gemm export of the same seeded model (MatMulNBits on
    the same quantized rows: only where the rows sit and the kernels differ), prefill and cached decode steps;
(b) they match archc's PyTorch module loaded with the weights quantized by archc and dequantized by the
    numpy dequantizer written from MatMulNBits's specification (tests/emit_onnx/test_quant_matmulnbits.py),
    so the interleaving and the op's SwiGLU are checked against the formula, not against the exporter;
(c) negative controls: the same export with fc1's gate and up rows swapped, or stacked instead of
    interleaved, fails (b)'s bound by far;
(d) the QMoE fc1 bytes are the gate and up codes interleaved row by row (per-row quantization), and the
    MLPs QMoE cannot express keep the MatMulNBits path.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import archc
from conftest import tiny_spec
from exporters import onnx_lowering_cuda
from exporters.onnx_export import export
from exporters.torch_module import build_module
from ort_steps import real_positions, rel_err, run_ort, run_torch, session
from tests.emit_onnx.test_quant_matmulnbits import spec_dequantize

from archc.dtypes import DType
from archc.quant import QUANTIZED_KINDS, QuantKind, QuantScheme, QuantSettings

INT4 = QuantSettings(QuantKind.int4)
# max |logits - ref| / max |ref| over real positions of a left-padded prefill (B 2, M = 10 rows) + 3 cached decode
# steps (M = 2), tiny llama, fp16, MLP weights x MLP_GAIN. Measured (onnxruntime 1.31.1, CPU): qmoe vs one_gemm
# 1.1e-3; qmoe vs the module on dequantized weights 1.05e-3 (one_gemm 1.3e-3: fp16 activations); controls: gate/up
# swapped 1.07, stacked instead of interleaved 1.42, the module on the unquantized weights 0.38.
SAME_ROWS_TOL = 4e-3
ORACLE_TOL = 4e-3
CONTROL_MIN = 0.1
MLP_GAIN = 3.0


def steps(sess, spec, pads=(0, 2)):
    return run_ort(sess, spec, steps=3, pads=pads, prompt=5)


def max_err(ours, ref) -> float:
    return max(rel_err(o[real_positions(f)].astype(np.float32), r[real_positions(f)].astype(np.float32))
               for (f, o), (_, r) in zip(ours, ref, strict=True))


def loud_mlp_weights(graph, path) -> dict[str, torch.Tensor]:
    """The seeded weights with the MLPs' gate, up and down times MLP_GAIN, written to `path` (safetensors):
    at the init's own scale the MLP moves the logits little, and a gate/up swap (silu(u) * g for
    silu(g) * u) stayed within 2x of the pass bound; louder MLPs make the controls decisive."""
    from safetensors.torch import save_file

    from archc.weights import init_state

    state = init_state(graph)
    for k in state:
        if ".mlp." in k and k.endswith(".weight"):
            state[k] = state[k] * MLP_GAIN
    save_file(state, str(path))
    return state


def dequantized_state(graph, state, q: QuantSettings = INT4) -> dict[str, torch.Tensor]:
    """`state` with the weights a --quant `q` export quantizes (archc.quant's rule) quantized by archc and
    dequantized by the spec's numpy dequantizer: what the quantized model computes with, in fp32."""
    from exporters.quantize import quantize

    state = dict(state)
    for name in graph.nodes():
        d = graph.node(name)
        for local, shape in d["params"].items():
            if d["kind"] in QUANTIZED_KINDS and len(shape) == 2 and local.endswith("weight"):
                full = f"{name}.{local}"
                b, s, zp = quantize(state[full].numpy(), q, DType.float16)
                state[full] = torch.from_numpy(spec_dequantize(b, s, zp, shape[0], shape[1], q.bits, q.block_size))
    return state


def export_mode(graph, out, monkeypatch, mode: str, quant: QuantSettings = INT4, weights=None):
    monkeypatch.setattr(onnx_lowering_cuda, "GATE_UP_QUANT", onnx_lowering_cuda.GateUp(mode))
    return export(graph, out, target="cuda", dtype="fp16", quant=quant, weights=weights)


def with_fc1_rows(src, dst, order):
    """A copy of export `src` with every QMoE fc1 (B and scales) rows reordered by `order(rows)`."""
    model = onnx.load(str(src / "model.onnx"))
    fc1 = {n.input[2] for n in model.graph.node if n.op_type == "QMoE"} | {n.input[3] for n in model.graph.node if n.op_type == "QMoE"}
    assert len(fc1) == 4  # 2 layers x (B, scales)
    for t in model.graph.initializer:
        if t.name in fc1:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(a[:, order(a.shape[1])]), t.name))
    dst.mkdir()
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return dst


def swapped(n: int) -> np.ndarray:  # up where gate belongs and gate where up belongs
    return np.arange(n).reshape(-1, 2)[:, ::-1].reshape(-1)


def stacked(n: int) -> np.ndarray:  # rows gate 0..F-1 then up 0..F-1 (one_gemm's order) where QMoE reads them interleaved
    return np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])


def test_qmoe_matches_one_gemm_and_the_dequantized_module(tmp_path, monkeypatch):
    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    L, F, H = spec.n_layers, spec.mlp.d_ff, spec.d_model
    assert H % 32 == 0 and F % 32 == 0  # whole blocks: the QMoE path applies
    state = loud_mlp_weights(graph, tmp_path / "w.safetensors")
    res = export_mode(graph, tmp_path / "qmoe", monkeypatch, "qmoe", weights=tmp_path / "w.safetensors")
    export_mode(graph, tmp_path / "one_gemm", monkeypatch, "one_gemm", weights=tmp_path / "w.safetensors")
    m = onnx.load(str(tmp_path / "qmoe" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QMoE") == L and "Split" not in ops and ops.count("ConstantOfShape") == 1  # one router for all layers
    assert ops.count("MatMulNBits") == 2 * L  # attention's q|k|v and o; the MLP has none left
    assert res.lowering["layers.0.mlp"].startswith("cuda:QMoE int4 sym b32")
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    qmoe = next(n for n in m.graph.node if n.op_type == "QMoE")
    assert [shapes[i] for i in qmoe.input[2:4]] == [(1, 2 * F, H // 2), (1, 2 * F, H // 32)]
    assert [shapes[i] for i in qmoe.input[5:7]] == [(1, H, F // 2), (1, H, F // 32)]
    assert qmoe.input[4] == qmoe.input[7] == ""  # bias-free
    a = {k: v.i if v.type == onnx.AttributeProto.INT else v.s.decode() if v.type == onnx.AttributeProto.STRING else v.f
         for k, v in ((x.name, x) for x in qmoe.attribute)}
    assert a == {"k": 1, "activation_type": "swiglu", "swiglu_fusion": 1, "activation_alpha": 1.0, "activation_beta": 0.0,
                 "expert_weight_bits": 4, "block_size": 32, "weights_prepacked": 0}

    ours, theirs = steps(session(tmp_path / "qmoe"), spec), steps(session(tmp_path / "one_gemm"), spec)
    same = max_err(ours, theirs)
    oracle = run_torch(build_module(graph, weights=dequantized_state(graph, state)), graph, steps=3, pads=(0, 2), prompt=5)
    err, err_one_gemm = max_err(ours, oracle), max_err(theirs, oracle)
    one_row = max_err(steps(session(tmp_path / "qmoe"), spec, pads=(0,)),  # batch 1: decode steps of M = 1 row
                      run_torch(build_module(graph, weights=dequantized_state(graph, state)), graph, steps=3, pads=(0,), prompt=5))
    dense = max_err(ours, run_torch(build_module(graph, weights=state), graph, steps=3, pads=(0, 2), prompt=5))
    controls = {name: max_err(steps(session(with_fc1_rows(tmp_path / "qmoe", tmp_path / name, order)), spec), oracle)
                for name, order in (("swapped", swapped), ("stacked", stacked))}
    print(f"qmoe vs one_gemm {same:.2e}; vs dequantized module {err:.2e} (batch 1 {one_row:.2e}; one_gemm {err_one_gemm:.2e}; qmoe vs the "
          f"unquantized module {dense:.2e}); controls {controls}")
    assert same <= SAME_ROWS_TOL, same
    assert err <= ORACLE_TOL and one_row <= ORACLE_TOL, (err, one_row)
    assert all(c >= CONTROL_MIN for c in controls.values()), controls
    assert dense >= CONTROL_MIN, dense  # the oracle's dequantization matters: the bound is tighter than int4's error


def test_fc1_is_gate_and_up_interleaved_row_by_row(tmp_path, monkeypatch):
    """Exactly the bytes of gate's and up's own MatMulNBits quantization, rows interleaved (not stacked), and
    fc2 the down projection's bytes: blocks run along K, so quantizing rows apart or together is the same."""
    from archc.weights import init_state
    from exporters.quantize import quantize

    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    export_mode(graph, tmp_path / "m", monkeypatch, "qmoe")
    model = onnx.load(str(tmp_path / "m" / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qmoe = next(n for n in model.graph.node if n.op_type == "QMoE")
    assert qmoe.name and qmoe.input[2].startswith("layers.0.mlp.")
    state = init_state(graph)
    (gb, gs, _), (ub, us, _), (db, ds, _) = (quantize(state[f"layers.0.mlp.{t}.weight"].numpy(), INT4, DType.float16)
                                             for t in ("gate", "up", "down"))
    F = gb.shape[0]
    fc1, fc1s, fc2, fc2s = (init[qmoe.input[i]][0] for i in (2, 3, 5, 6))
    np.testing.assert_array_equal(fc1[0::2], gb.reshape(F, -1))
    np.testing.assert_array_equal(fc1[1::2], ub.reshape(F, -1))
    np.testing.assert_array_equal(fc1s[0::2], gs)
    np.testing.assert_array_equal(fc1s[1::2], us)
    np.testing.assert_array_equal(fc2, db.reshape(db.shape[0], -1))
    np.testing.assert_array_equal(fc2s, ds)
    assert not np.array_equal(fc1[:F], gb.reshape(F, -1))  # negative control: not one_gemm's stacked order


@pytest.mark.parametrize("sets,quant,why", [
    (["mlp.bias=true"], INT4, "biases"),
    (["mlp.activation=geglu"], INT4, "activation"),
    ([], QuantSettings(QuantKind.int8), "int8"),
    ([], QuantSettings(QuantKind.int4, scheme=QuantScheme.asymmetric), "zero points"),
    ([], QuantSettings(QuantKind.int4, block_size=16), "block 16: not run on the GPU kernel"),
    ([], QuantSettings(QuantKind.int4, accuracy_level=4), "accuracy_level"),
    (["mlp.d_ff=144"], INT4, "d_ff not whole blocks of 32"),
])
def test_what_qmoe_cannot_express_keeps_matmulnbits(tmp_path, monkeypatch, sets, quant, why):
    graph = archc.compile(tiny_spec("llama", sets))
    res = export_mode(graph, tmp_path / "m", monkeypatch, "qmoe", quant)
    assert res.lowering["layers.0.mlp"].startswith("cuda:MatMulNBits"), (why, res.lowering["layers.0.mlp"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False).graph.node]
    assert "QMoE" not in ops and "ConstantOfShape" not in ops, why


def test_fp32_keeps_matmulnbits(tmp_path, monkeypatch):
    """fp32: the GPU kernel was measured in fp16 only."""
    graph = archc.compile(tiny_spec("llama"))
    monkeypatch.setattr(onnx_lowering_cuda, "GATE_UP_QUANT", onnx_lowering_cuda.GateUp.qmoe)
    res = export(graph, tmp_path / "m", target="cuda", dtype="fp32", quant=INT4)
    assert res.lowering["layers.0.mlp"].startswith("cuda:MatMulNBits"), res.lowering["layers.0.mlp"]


def test_qmoe_is_for_quantized_weights_only(tmp_path, monkeypatch):
    """GATE_UP (dense) = qmoe has no branch: the fp16 MoE op was slower than the dense MatMuls (GateUp.qmoe)."""
    from archc.components import UnknownSetting

    monkeypatch.setattr(onnx_lowering_cuda, "GATE_UP", onnx_lowering_cuda.GateUp.qmoe)
    with pytest.raises(UnknownSetting, match="gate_up"):
        export(archc.compile(tiny_spec("llama")), tmp_path / "m", target="cuda", dtype="fp16")


def test_closed_form_size_is_the_written_size(tmp_path, monkeypatch):
    """What `show`/`diff` print (archc.quant.weight_bytes) is what the QMoE export writes: the same bytes per
    weight as MatMulNBits's, with an expert axis of 1 in the shapes only."""
    from onnx import TensorProto

    from archc.cost import light_graph
    from archc.quant import weight_bytes

    spec = tiny_spec("llama")
    export_mode(archc.compile(spec), tmp_path / "m", monkeypatch, "qmoe")
    model = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    assert "QMoE" in [n.op_type for n in model.graph.node]
    written = sum(int({e.key: e.value for e in t.external_data}["length"]) for t in model.graph.initializer
                  if t.data_location == TensorProto.EXTERNAL)
    assert weight_bytes(archc.compile(spec), DType.float16, INT4) == written
    assert weight_bytes(light_graph(spec), DType.float16, INT4) == written


@pytest.mark.parametrize("mode", ["qmoe", "one_gemm"])
def test_compile_says_which_ops_hold_the_quantized_weights(tmp_path, monkeypatch, capsys, mode):
    """`archc compile --quant`'s `quantized:` line names the ops the written model.onnx holds (the oracle: its node
    op types), with the number of MLPs as QMoE nodes. It said `MatMulNBits` always, also when every MLP was one QMoE
    node. Negative control (one_gemm): no QMoE in the graph, none in the line."""
    from conftest import SPECS, run_cli, tiny_sets

    monkeypatch.setattr(onnx_lowering_cuda, "GATE_UP_QUANT", onnx_lowering_cuda.GateUp(mode))
    out = tmp_path / "m"
    sets = [a for s in tiny_sets(SPECS / "llama.yaml") + ["mlp.d_ff=128"] for a in ("--set", s)]
    rc, stdout, err = run_cli(["compile", "llama", *sets, "-o", str(out), "--target", "cuda", "--dtype", "fp16",
                               "--quant", "int4"], capsys)
    assert rc == 0, err
    line = next(ln for ln in stdout.splitlines() if ln.startswith("quantized: "))
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    for op in ("MatMulNBits", "QMoE"):
        assert (op in line) == (op in ops), (op, line)
    if mode == "qmoe":
        assert ops.count("QMoE") == 2 and "QMoE in 2 components" in line, line
    else:
        assert "QMoE" not in ops
