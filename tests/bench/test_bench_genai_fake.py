"""`archc bench`'s genai plumbing against a stand-in onnxruntime_genai (no genai needed, CPU, seconds):
what the harness does with a worker's failure, which builder options a bench command gives genai's
builder, and when a build in --work-dir is reused. The stand-in builder writes a genai_config.json and
records its command line (builder_args.json); the stand-in generator fails the way genai's CUDA run of
issue 14 did (a GroupQueryAttention node's non-zero status). What genai itself computes is tested
against the real package in test_bench_genai.py."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from archc.bench.genai import GENAI_PYTHON_ENV
from archc.cli import main

TINY = ["n_layers=2", "d_model=64", "attention.n_heads=4", "attention.kv_heads=2", "attention.sharing=gqa", "mlp.d_ff=160",
        "vocab_size=97", "max_seq_len=64", "dtype=float32"]
GQA_FAILURE = ("Non-zero status code returned while running GroupQueryAttention node. Name:'/model/layers.0/attn/GroupQueryAttention' "
               "Status Message: stand-in")


def _sets(extra=()):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


FAKE_INIT = f'''
__version__ = "0.0-stand-in"


class Config:
    def __init__(self, d): self.d = d
    def clear_providers(self): pass
    def append_provider(self, name): pass
    def set_provider_option(self, *a): pass


class Model:
    def __init__(self, config): self.config = config


class GeneratorParams:
    def __init__(self, model): pass
    def set_search_options(self, **kw): pass


class Generator:
    def __init__(self, model, params):
        raise RuntimeError({GQA_FAILURE!r})
'''

FAKE_BUILDER = '''
import argparse, json, os, sys
p = argparse.ArgumentParser()
for a in ("-i", "-o", "-c", "-p", "-e"):
    p.add_argument(a)
p.add_argument("--extra_options", nargs="+", default=[])
a = p.parse_args()
os.makedirs(a.o, exist_ok=True)
with open(os.path.join(a.o, "genai_config.json"), "w") as f:
    json.dump({"model": {"eos_token_id": 2}}, f)
with open(os.path.join(a.o, "builder_args.json"), "w") as f:
    json.dump({"input": a.i, "argv": sys.argv[1:]}, f)
'''


@pytest.fixture
def fake_genai(tmp_path, monkeypatch):
    """ARCHC_GENAI_PYTHON: this python with the stand-in onnxruntime_genai first on its path."""
    pkg = tmp_path / "fake-genai" / "onnxruntime_genai"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_INIT)
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "builder.py").write_text(FAKE_BUILDER)
    py = tmp_path / "fake-genai" / "python"
    py.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        PYTHONPATH={pkg.parent}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"
        """))
    py.chmod(0o755)
    monkeypatch.setenv(GENAI_PYTHON_ENV, str(py))
    return py


def _bench(tmp_path, args, capsys, work="work"):
    out = tmp_path / "b.json"
    try:
        code = main(["bench", *args, "--device", "cpu", "--dtype", "fp32", "--new-tokens", "3", "--repeats", "1",
                     "--work-dir", str(tmp_path / work), "--json", str(out)])
    except SystemExit as e:
        code = e.code
    o, e = capsys.readouterr()
    return code, o + e, (json.loads(out.read_text()) if code == 0 else None)


def _builds(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("genai-*/builder_args.json"))]


def test_worker_failure_is_reported_once(fake_genai, tmp_path, capsys):
    """The worker's `RuntimeError: ...` reaches the JSON and the table as it is, on the failing shape and
    on the next one (it read `RuntimeError: RuntimeError: RuntimeError: Non-zero status code ...`)."""
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "genai", "--prompt-len", "4,6"], capsys)
    assert code == 0, text
    errors = [run["backends"][0]["error"] for run in data["runs"]]
    assert errors == [f"RuntimeError: {GQA_FAILURE}"] * 2
    table_notes = [line for line in text.splitlines() if "Non-zero status" in line and "│" in line]
    assert table_notes and all("RuntimeError: Non-zero status" in line and "RuntimeError: RuntimeError" not in line
                               for line in table_notes)


# ---- --quant options: compile's, passed to both sides --------------------------------------------------------


def _ort_quant(export: Path):
    """The quantization an ort export holds, read two ways: archc's metadata and the MatMulNBits nodes themselves."""
    import onnx

    from archc.quant import model_dir_quant

    model = onnx.load(str(export / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = {(a.name, a.i) for n in nbits for a in n.attribute if a.name in ("block_size", "accuracy_level", "bits")}
    zero_points = {len(n.input) > 3 and bool(n.input[3]) for n in nbits}
    head_quantized = any("head" in n.name for n in nbits)
    return model_dir_quant(export), attrs, zero_points, head_quantized


@pytest.mark.parametrize("head", [False, True])
def test_quant_options_reach_both_sides(fake_genai, tmp_path, capsys, head):
    """--quant-block-size/-scheme/-accuracy-level/--quant-head: the ort export is quantized with them (its
    nodes say so) and genai's builder is given the same (bench passed the kind only: block 32, symmetric)."""
    from archc.quant import QuantKind, QuantScheme, QuantSettings

    args = ["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "4", "--quant", "int4", "--quant-block-size", "64",
            "--quant-scheme", "asymmetric", "--quant-accuracy-level", "1"] + (["--quant-head"] if head else [])
    code, text, data = _bench(tmp_path, args, capsys)
    assert code == 0, text
    [export] = (tmp_path / "work").glob("llama-7b-portable-fp32-int4-*")
    stored, attrs, zero_points, head_quantized = _ort_quant(export)
    assert stored == QuantSettings(QuantKind.int4, 64, QuantScheme.asymmetric, 1, head)
    assert attrs == {("block_size", 64), ("accuracy_level", 1), ("bits", 4)} and zero_points == {True}
    assert head_quantized == head
    [build] = _builds(tmp_path / "work")
    extra = build["argv"][build["argv"].index("--extra_options") + 1:]
    assert build["argv"][build["argv"].index("-p") + 1] == "int4"
    assert extra == ["block_size=64", "is_symmetric=false", "accuracy_level=1"] + ([] if head else ["nodes_to_exclude=/lm_head/MatMul"])


@pytest.mark.parametrize("args, says", [
    (["--quant", "int4", "--quant-method", "search"], "--quant-method search with --backends genai"),
    (["--quant", "int8", "--quant-block-size", "512"], "--quant-block-size 512 with --backends genai"),
    (["--quant", "int4", "--quant-scheme", "skewed"], "--quant-scheme skewed: choose one of"),
    (["--quant", "int4", "--quant-block-size", "48"], "--quant-block-size 48: MatMulNBits needs a power of two"),
    (["--quant-method", "search"], "--quant-method search: applies to a quantized export"),
])
def test_quant_settings_genai_cannot_build_are_one_line(fake_genai, tmp_path, capsys, args, says):
    code, text, _ = _bench(tmp_path, ["llama", *_sets(), "--backends", "ort,genai", "--prompt-len", "4", *args], capsys)
    assert code == 2 and says in text and len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # refused before anything was built


def test_search_method_still_runs_without_genai(tmp_path, capsys):
    """Negative control of the refusal above: archc's own export takes --quant-method search."""
    code, text, data = _bench(tmp_path, ["llama", *_sets(), "--backends", "ort", "--prompt-len", "4", "--quant", "int4",
                                         "--quant-method", "search"], capsys)
    assert code == 0, text
    [export] = (tmp_path / "work").glob("llama-7b-portable-fp32-int4-*")
    assert _ort_quant(export)[0].method.value == "search"

