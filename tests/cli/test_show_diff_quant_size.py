"""`archc show --quant` and `archc diff` state the quantized weight bytes, from parameter shapes in closed form
(checked against a formula written here from llama-7b's published shapes), and read a compiled folder's
quantization from its metadata without importing onnx, onnxruntime or torch."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import cli_in_fresh_python, run_cli

V, D, F, L = 32000, 4096, 11008, 32  # llama-7b


def llama7b_bytes(itemsize: int, per_weight: float, per_block_scale: int, block: int) -> int:
    """embedding + head + norms dense; q, k, v, o, gate, up, down at `per_weight` bytes + one scale per block."""
    dense = 2 * V * D * itemsize + (2 * L + 1) * D * itemsize
    projections = L * (4 * D * D + 3 * D * F)
    return dense + int(projections * per_weight) + projections // block * per_block_scale


def test_show_states_the_int4_size(capsys):
    rc, out, err = run_cli(["show", "llama", "--quant", "int4"], capsys)
    assert rc == 0, err
    assert f"{llama7b_bytes(2, 0.5, 2, 32):,}" in out  # fp16 scales, 2 weights per byte
    assert f"{llama7b_bytes(2, 2, 0, 32):,}" in out  # the dense float16 row
    rc, out, err = run_cli(["show", "llama", "--quant", "int8", "--quant-block-size", "128"], capsys)
    assert f"{llama7b_bytes(2, 1, 2, 128):,}" in out
    assert f"{llama7b_bytes(2, 0.5, 2, 32):,}" not in out  # negative control: the settings change the figure


def test_diff_reads_a_compiled_folders_quantization(tmp_path, capsys):
    sets = ["--set", "n_layers=1", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
            "--set", "vocab_size=64"]
    rc, _, err = run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "q"), "--quant", "int4", "--dtype", "fp16"], capsys)
    assert rc == 0, err
    r = cli_in_fresh_python(["diff", tmp_path / "q", "llama", "-f", "json", "-o", tmp_path / "d.json"],
                            ["show", tmp_path / "q"], cwd=tmp_path)
    assert r.heavy == [], r.stderr[-2000:]
    import json

    data = json.loads((tmp_path / "d.json").read_text())
    row = next(x for x in data["cost"]["rows"] if x["metric"] == "weight_bytes")
    # the folder: 64x64 q,k,v,o + 2x 128x64 (gate, up) + 64x128 (down): int4 = K/2 bytes + K/32 fp16 scales per row
    proj = 4 * 64 * 64 + 3 * 64 * 128
    want = 2 * 64 * 64 * 2 + 3 * 64 * 2 + proj // 2 + proj // 32 * 2
    assert row["a"] == want, row
    written = (Path(tmp_path / "q") / "model.onnx.data").stat().st_size
    assert want <= written < want + 64 * 20  # the file adds 64-byte alignment padding only
    assert "int4 sym b32" in row["label"] and "(this folder)" in r.stdout


def test_show_states_the_size_with_the_head_quantized_too(capsys):
    """--quant-head: the head's V x D matrix at int4 too (onnxruntime-genai's int4 export quantizes lm_head,
    so this is the row comparable to it); the embedding stays dense for its Gather."""
    rc, out, err = run_cli(["show", "llama", "--quant", "int4", "--quant-head"], capsys)
    assert rc == 0, err
    head_dense, head_int4 = V * D * 2, V * D // 2 + V * D // 32 * 2
    want = llama7b_bytes(2, 0.5, 2, 32) - head_dense + head_int4
    assert f"{want:,}" in out and "int4 sym b32 +head" in out, out
    assert f"{llama7b_bytes(2, 0.5, 2, 32):,}" not in out  # negative control: without the head the figure differs


def test_show_and_diff_read_a_searched_head_quantized_folder(tmp_path, capsys):
    """A folder compiled with --quant-head --quant-method search: show labels it with both and states its size, diff
    against the round-to-nearest head-dense folder states both sizes (the head's bytes apart: the method does not
    change the size)."""
    import json

    sets = ["--set", "n_layers=1", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
            "--set", "vocab_size=64"]
    for name, extra in (("a", []), ("b", ["--quant-head", "--quant-method", "search"])):
        rc, _, err = run_cli(["compile", "llama", *sets, "-o", str(tmp_path / name), "--quant", "int4", "--dtype", "fp16",
                              "--target", "cuda", *extra], capsys)
        assert rc == 0, err
    rc, out, err = run_cli(["show", str(tmp_path / "b")], capsys)
    assert rc == 0, err
    assert "int4 sym b32 +head search (this folder)" in out, out
    rc, _, err = run_cli(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "-f", "json", "-o", str(tmp_path / "d.json")], capsys)
    assert rc == 0, err
    row = next(x for x in json.loads((tmp_path / "d.json").read_text())["cost"]["rows"] if x["metric"] == "weight_bytes")
    head_dense, head_int4 = 64 * 64 * 2, 64 * 64 // 2 + 64 * 64 // 32 * 2
    assert row["a"] - row["b"] == head_dense - head_int4, row
    for name in ("a", "b"):  # what diff states is what the folder holds, alignment padding aside
        written = (tmp_path / name / "model.onnx.data").stat().st_size
        assert row[name] <= written < row[name] + 64 * 20, (name, row, written)
    assert "int4 sym b32 / " in row["label"] and "int4 sym b32 +head search" in row["label"], row
