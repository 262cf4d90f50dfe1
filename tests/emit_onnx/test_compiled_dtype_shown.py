"""`archc show DIR` on a compiled model reports the compiled dtype (what the tensors and the ONNX
metadata hold), not the source spec's."""

from __future__ import annotations

import pytest

from archc.loader import load_spec
from tests.conftest import run_cli

T = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
     "--set", "vocab_size=100", "--set", "max_seq_len=64"]
SPEC_NAME = {1: "float32", 10: "float16", 16: "bfloat16"}  # onnx.TensorProto element types


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_show_reports_the_compiled_dtype(tmp_path, capsys, dtype):
    import onnx

    assert load_spec("llama").dtype.value == "float16"  # the source spec's, for contrast with fp32
    out = tmp_path / "m"
    rc, _, err = run_cli(["compile", "llama", *T, "--dtype", dtype, "-o", str(out)], capsys)
    assert rc == 0, err
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["archc.dtype"] == dtype
    weight = next(t for t in model.graph.initializer if t.name.endswith("weight") and len(t.dims) == 2)
    truth = SPEC_NAME[weight.data_type]
    rc, text, _ = run_cli(["show", str(out)], capsys)
    assert rc == 0
    row = next(line for line in text.splitlines() if line.startswith("dtype"))
    assert truth in row.split()
    assert load_spec(str(out)).dtype.value == truth
