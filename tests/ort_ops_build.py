"""archc's onnxruntime op library for the tests: the CPU build (g++), made once per test session, and what the
tests in tests/ort_ops share around it (one op's model and session; an export's session, its error against a
reference, a copy with the op's gate and up halves swapped, and the comparison of the op's export with the standard
export and the module; a run of a benchmarks/ check script).

Skipped, with the reason, only where it cannot be built here: no g++, or no way to fetch onnxruntime's headers
(no network and no ARCHC_ORT_INCLUDE). CI has both."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def _build() -> tuple[Path | None, str | None]:
    from archc.errors import UserError
    from exporters.ort_ops.build import Kind, build

    try:
        return build(Kind.cpu), None
    except UserError as e:
        return None, str(e)


def cpu_library() -> Path:
    lib, why = _build()
    if lib is None:
        pytest.skip(f"archc's onnxruntime op library cannot be built here: {why}")
    return lib


ROOT = Path(__file__).resolve().parents[1]


def op_model(node, inputs: list, name: str) -> bytes:
    """One archc op `node` alone: the given graph inputs, output y fp16 (shape left to the op), opset 23 + archc 1."""
    from onnx import TensorProto, helper

    g = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    m = helper.make_model(g, opset_imports=[helper.make_operatorsetid("", 23), helper.make_operatorsetid("archc", 1)], ir_version=11)
    return m.SerializeToString()


def cpu_session(model: bytes):
    """A CPU session of `model` with the library registered."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.register_custom_ops_library(str(cpu_library()))
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def export_session(d: Path):
    """A CPU session of the export in folder `d`, registering its copied library where it has one."""
    import onnxruntime as ort

    from archc.model_dir import ORT_OPS_FILE

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if (d / ORT_OPS_FILE).exists():
        so.register_custom_ops_library(str(d / ORT_OPS_FILE))
    return ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])


def max_err(ours, ref) -> float:
    """The largest relative logits error over real positions of two runs (ort_steps.run_ort / run_torch)."""
    import numpy as np

    from ort_steps import real_positions, rel_err

    return max(rel_err(o[real_positions(f)].astype(np.float32), r[real_positions(f)].astype(np.float32))
               for (f, o), (_, r) in zip(ours, ref, strict=True))


GATED_WEIGHTS = {"GatedMLP": 1, "GatedMLPNBits": 2}  # how many inputs after x are the [2F, ...] weight (w; B, scales)


def with_gate_up_swapped(src: Path, dst: Path, op_type: str) -> Path:
    """A copy of export `src` whose `op_type` nodes' weights (the inputs after x up to the optional gamma: [2F, ...]
    gate rows, then up rows) hold up's rows where gate's belong and gate's where up's belong."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from archc.model_dir import ORT_OPS_FILE

    model = onnx.load(str(src / "model.onnx"))
    ws = {i for n in model.graph.node if n.op_type == op_type for i in n.input[1:1 + GATED_WEIGHTS[op_type]]}
    for t in model.graph.initializer:
        if t.name in ws:
            a = numpy_helper.to_array(t)
            F = a.shape[0] // 2
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(np.concatenate([a[F:], a[:F]])), t.name))
    dst.mkdir()
    onnx.save(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    shutil.copyfile(src / ORT_OPS_FILE, dst / ORT_OPS_FILE)
    return dst


def errors_and_control(d: Path, op_type: str, spec, graph, module) -> tuple[dict, float]:
    """The export tests' comparison. d holds exports op/ (with op_type) and std/ (the same spec without it); per pads,
    batch 2 (prefill M = 10 rows, decode M = 2) and batch 1 (decode M = 1): (op vs std, op vs module, std vs module) as
    max_err over 3 cached steps; and the control, d/swapped (op/ with op_type's gate and up halves swapped) vs the
    module at batch 2. The bounds stay in the tests."""
    from ort_steps import run_ort, run_torch

    errs = {}
    for pads in ((0, 2), (0,)):
        ours = run_ort(export_session(d / "op"), spec, steps=3, pads=pads, prompt=5)
        std = run_ort(export_session(d / "std"), spec, steps=3, pads=pads, prompt=5)
        oracle = run_torch(module, graph, steps=3, pads=pads, prompt=5)
        errs[pads] = (max_err(ours, std), max_err(ours, oracle), max_err(std, oracle))
    bad = run_ort(export_session(with_gate_up_swapped(d / "op", d / "swapped", op_type)), spec, steps=3, pads=(0, 2), prompt=5)
    control = max_err(bad, run_torch(module, graph, steps=3, pads=(0, 2), prompt=5))
    return errs, control

def run_check_script(module: str, *argv: str) -> subprocess.CompletedProcess:
    """python3 -m benchmarks.<module> argv, from the checkout's root."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
