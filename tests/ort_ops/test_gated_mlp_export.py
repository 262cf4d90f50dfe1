"""`--kernels archc` (exporters/onnx_lowering_cuda.py GateUp.archc_op): a tiny fp16 LLaMA exported with archc.GatedMLP,
run on the CPU (the library's CPU kernel), against

(a) the same spec's standard cuda export (two MatMuls, SiLU, Mul): logits equal to fp16 noise, prefill and cached
    decode steps, batch 2 (M = 10 rows) and batch 1 (M = 1 decode rows);
(b) archc's PyTorch module on the same weights (an oracle independent of the exporter);
(c) negative control: the same export with the op's gate and up halves swapped fails (b)'s bound by far;
(d) the folder is self-contained (the library copied in, metadata archc.ort_ops, opset archc 1), `archc run`'s
    session registers it, and a missing or broken library is one line naming the file;
(e) MLPs the op cannot take keep the ONNX path with the reason in the lowering; where no archc op is left (fp32, bf16)
    no library is copied, while fp16 ones keep their q|k|v, o and down as archc.Linear (tests/ort_ops/
    test_folded_layers_export.py tests those folds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import archc
from archc.errors import UserError
from archc.model_dir import META_ORT_OPS, ORT_OPS_FILE
from conftest import tiny_spec
from exporters.onnx_export import export
from exporters.torch_module import build_module
from ort_ops_build import cpu_library, errors_and_control
from tests.emit_onnx.test_qmoe_mlp import loud_mlp_weights

ROOT = Path(__file__).resolve().parents[2]
# max |logits - ref| / max |ref| over real positions; fp16 activations on both sides. Measured (onnxruntime 1.31.1,
# CPU): op vs standard export 8.4e-4 (batch 2) / 6.8e-4 (batch 1); op vs module 1.0e-3 / 2.1e-3 (the standard export
# vs the module: 1.2e-3 / 2.0e-3); control (gate/up swapped) 1.06.
SAME_TOL = 2e-3
ORACLE_TOL = 4e-3
CONTROL_MIN = 0.1


def test_op_matches_the_standard_export_and_the_module(tmp_path):
    spec = tiny_spec("llama")
    graph = archc.compile(spec)
    state = loud_mlp_weights(graph, tmp_path / "w.safetensors")  # MLPs loud enough for the control to be decisive
    w = tmp_path / "w.safetensors"
    res = export(graph, tmp_path / "op", target="cuda", dtype="fp16", weights=w, kernels="archc", ort_ops_lib=cpu_library())
    export(graph, tmp_path / "std", target="cuda", dtype="fp16", weights=w)
    m = onnx.load(str(tmp_path / "op" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("GatedMLP") == spec.n_layers and "Sigmoid" not in ops and "QuickGelu" not in ops
    assert {(o.domain, o.version) for o in m.opset_import} >= {("archc", 1)}
    assert {p.key: p.value for p in m.metadata_props}[META_ORT_OPS] == ORT_OPS_FILE
    assert (tmp_path / "op" / ORT_OPS_FILE).read_bytes() == cpu_library().read_bytes()
    assert res.lowering["layers.0.mlp"].startswith("archc:GatedMLP")
    shapes = {t.name: tuple(t.dims) for t in m.graph.initializer}
    op = next(n for n in m.graph.node if n.op_type == "GatedMLP")
    assert shapes[op.input[1]] == (2 * spec.mlp.d_ff, spec.d_model)  # [2F, K]: torch's [out, in], gate rows then up rows

    module = build_module(graph, weights=state)
    errs, control = errors_and_control(tmp_path, "GatedMLP", spec, graph, module)  # pads (0, 2), (0,)
    print(f"(op vs standard, op vs module, standard vs module) per pads: {errs}; control {control:.2e}")
    assert all(same <= SAME_TOL and oracle <= ORACLE_TOL for same, oracle, _ in errs.values()), errs
    assert control >= CONTROL_MIN, control


@pytest.mark.parametrize("sets,dtype,quant,why", [
    (["mlp.activation=geglu"], "fp16", None, "activation geglu"),
    (["mlp.bias=true"], "fp16", None, "gate/up biases"),
    ([], "fp32", None, "dtype float32"),
    ([], "bf16", None, "dtype bfloat16"),
    ([], "fp32", "int4", "dtype float32"),
    (["mlp.activation=gelu"], "fp16", None, "no gate"),
])
def test_what_the_op_cannot_take_keeps_the_onnx_path(tmp_path, sets, dtype, quant, why):
    from archc.quant import QuantKind, QuantSettings

    graph = archc.compile(tiny_spec("llama", sets))
    qs = QuantSettings(QuantKind(quant)) if quant else None
    res = export(graph, tmp_path / "m", target="cuda", dtype=dtype, quant=qs, kernels="archc", ort_ops_lib=cpu_library())
    assert f"(not archc.GatedMLP: {why}" in res.lowering["layers.0.mlp"], res.lowering["layers.0.mlp"]
    m = onnx.load(str(tmp_path / "m" / "model.onnx"), load_external_data=False)
    assert not any(n.op_type.startswith("GatedMLP") for n in m.graph.node)
    if dtype != "fp16":  # archc's ops are fp16 only: nothing of the library is left, so it is not copied
        assert not any(n.domain == "archc" for n in m.graph.node) and "archc" not in {o.domain for o in m.opset_import}
        assert META_ORT_OPS not in {p.key for p in m.metadata_props} and not (tmp_path / "m" / ORT_OPS_FILE).exists()
    else:  # the projections stay archc.Linear where they fit (the MLP's down: with mlp.bias it has a bias, so not)
        assert any(n.op_type == "Linear" for n in m.graph.node) and (tmp_path / "m" / ORT_OPS_FILE).exists()


def test_default_export_has_no_archc_op(tmp_path):
    """--kernels onnxruntime (the default): the lowering as before, no library, no metadata (export bytes are pinned
    by tests/emit_onnx/test_export_bytes.py)."""
    res = export(archc.compile(tiny_spec("llama")), tmp_path / "m", target="cuda", dtype="fp16")
    assert res.lowering["layers.0.mlp"] == "cuda:MatMul (gate and up, one GEMM each)"
    assert not (tmp_path / "m" / ORT_OPS_FILE).exists()


def test_runner_registers_the_library_and_names_a_missing_or_broken_one(tmp_path):
    from archc.runner.providers import open_session

    d = tmp_path / "m"
    export(archc.compile(tiny_spec("llama")), d, target="cuda", dtype="fp16", kernels="archc", ort_ops_lib=cpu_library())
    sess, used, _ = open_session(d, device="cpu")
    assert used == "cpu" and any(n.name == "input_ids" for n in sess.get_inputs())
    del sess
    lib = d / ORT_OPS_FILE
    saved = lib.read_bytes()
    lib.write_bytes(b"not a library")
    with pytest.raises(UserError, match=rf"{lib}: onnxruntime cannot load it .*--kernels archc"):
        open_session(d, device="cpu")
    lib.unlink()
    with pytest.raises(UserError, match=rf"{lib}: missing .*archc\.ort_ops.*--kernels archc"):
        open_session(d, device="cpu")
    lib.write_bytes(saved)  # negative control: the same folder opens again with the library back
    open_session(d, device="cpu")


def test_node_placement_registers_the_library(tmp_path):
    """archc.runner.node_placement's profiling session registers the model's op library too (found from the metadata
    its Session read): the op runs, and the profile names it."""
    from archc.runner import node_placement

    d = tmp_path / "m"
    export(archc.compile(tiny_spec("llama")), d, target="cuda", dtype="fp16", kernels="archc", ort_ops_lib=cpu_library())
    placed = node_placement(d, device="cpu")
    assert ("GatedMLP", "CPUExecutionProvider") in placed.values()


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archc.cli", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


TINY = [a for s in ("n_layers=1", "d_model=64", "attention.n_heads=4", "mlp.d_ff=96", "vocab_size=50") for a in ("--set", s)]


@pytest.mark.parametrize("argv,env,words", [
    (["--kernels", "triton", "--target", "cuda"], {}, "--kernels triton: choose one of onnxruntime, archc"),
    (["--kernels", "archc"], {}, "--kernels archc: needs --target cuda"),
    (["--kernels", "archc", "--target", "cuda", "--dtype", "fp16"], {"ARCHC_NVCC": "/no/nvcc", "ARCHC_ORT_OPS_LIB": ""},
     "--kernels archc needs nvcc"),
    (["--kernels", "archc", "--target", "cuda", "--dtype", "fp16"], {"ARCHC_ORT_OPS_LIB": "/no/lib.so"},
     "ARCHC_ORT_OPS_LIB=/no/lib.so: no such file"),
])
def test_bad_kernels_input_is_one_line(tmp_path, argv, env, words):
    p = _cli("compile", "llama", "-o", str(tmp_path / "m"), *TINY, *argv, env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert words in p.stderr, p.stderr
    assert not (tmp_path / "m").exists()


def test_a_cpu_only_library_is_refused_for_a_cuda_model(tmp_path):
    p = _cli("compile", "llama", "-o", str(tmp_path / "m"), *TINY, "--kernels", "archc", "--target", "cuda", "--dtype", "fp16",
             env={"ARCHC_ORT_OPS_LIB": str(cpu_library())})
    assert p.returncode == 2 and "holds cpu kernels, not cuda" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
