"""`archc compare`: the source material's table regenerated from specs/, and the README's copy of it.

Oracles: the cells are checked against the rows of ../shared/ARCHITECTURES.md (EXPECTED below,
written from that table), and the parameter counts against published numbers.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archc.loader import library_specs
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
BASE_ARGS = [f"specs/{n}.yaml" for n in ("llama", "palm", "glm", "bloom", "gpt2")]


def run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(args, capsys)


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- BEGIN {marker}[^>]*-->\n(.*?)<!-- END {marker} -->", text, re.S)
    assert m, f"README has no {marker} block"
    return m.group(1)


def test_readme_table_is_what_compare_prints_today(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = run(capsys, "compare", *BASE_ARGS, "--format", "markdown")
    assert rc == 0, err
    assert readme_block("compare-table") == out, (
        "README table is stale; regenerate with: archc compare specs/{llama,palm,glm,bloom,gpt2}.yaml --format markdown")


def test_readme_diff_example_is_what_diff_prints_today(capsys):
    rc, out, _ = run(capsys, "diff", "glm", "glm", "--set-b", "norm.placement=post", "--format", "markdown")
    assert rc == 1
    assert readme_block("diff-example") == out


# Cells expected from ARCHITECTURES.md (substrings; the command may say more).
EXPECTED = {
    "norm kind": ["RMSNorm", "LayerNorm, no bias", "LayerNorm", "LayerNorm", "LayerNorm"],
    "norm placement": ["pre-norm", "pre-norm", "pre-norm", "pre-norm", "pre-norm"],
    "MLP activation": ["SwiGLU", "SwiGLU", "GELU", "GELU (tanh), h → 4h → h", "GELU"],
    "position scheme": ["RoPE", "RoPE", "2D (position + block id)", "ALiBi", "learned absolute"],
    "attention sharing": ["multi-head", "multi-query (16 heads, 1 K/V)", "multi-head", "multi-head", "multi-head"],
    "attention mask": ["causal", "causal", "prefix", "causal", "causal"],
    "residual layout": ["sequential", "parallel, one shared norm", "sequential", "sequential", "sequential"],
    "embeddings": ["untied", "tied", "tied", "tied, LayerNorm after the embedding", "tied"],
    "vocabulary": ["32,000 SentencePiece", "256,000", "50,304", "250,880 byte-level BPE", "50,257 byte-level BPE"],
    "biases": ["none", "none", "q/k/v, attention out, MLP", "q/k/v, attention out, MLP", "q/k/v, attention out, MLP"],
    "training recipe": ["AdamW", "Adafactor", "Adam", "Adam", "Adam"],
    "attention kernel": ["memory-efficient", "default", "default", "default", "default"],
}


def test_cells_match_the_source_table(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, _ = run(capsys, "compare", *BASE_ARGS, "--format", "json")
    data = json.loads(out)
    rows = {r["axis"]: r["values"] for r in data["rows"]}
    for axis, cells in EXPECTED.items():
        for want, got in zip(cells, rows[axis]):
            assert want in got, (axis, want, got)
    # exact-equality negative controls: the cells that must NOT say something
    assert rows["norm kind"][2] == "LayerNorm" and "no bias" not in rows["norm kind"][0]
    assert rows["biases"][0] == "none" and rows["embeddings"][0] == "untied"
    # published parameter counts (released checkpoints; PaLM paper Table 1: 8.63B)
    params = {a["name"]: a["params"] for a in data["architectures"]}
    assert params["llama-7b"] == 6_738_415_616
    assert params["gpt2-124m"] == 124_439_808
    assert params["bloom-7b1"] == 7_069_016_064
    assert abs(params["palm-8b"] - 8.63e9) < 0.01e9
    assert [a["name"] for a in data["architectures"]] == ["llama-7b", "palm-8b", "glm-10b", "bloom-7b1", "gpt2-124m"]
    assert data["architectures"][1]["kv_cache_bytes_per_token"] == 2 * 32 * 1 * 256 * 2  # MQA, bf16


def test_formats_hold_the_same_rows(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, js, _ = run(capsys, "compare", *BASE_ARGS, "--format", "json")
    rows = [[r["axis"]] + r["values"] for r in json.loads(js)["rows"]]
    _, text, _ = run(capsys, "compare", *BASE_ARGS, "--format", "csv")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["axis", "llama-7b", "palm-8b", "glm-10b", "bloom-7b1", "gpt2-124m"]
    assert parsed[1:] == rows
    _, md, _ = run(capsys, "compare", *BASE_ARGS, "--format", "markdown")
    assert [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines()[2:]] == rows
    _, page, _ = run(capsys, "compare", *BASE_ARGS, "--format", "html")
    root = ET.fromstring(page.split("\n", 1)[1])
    cells = [[td.text for td in tr] for tr in root.iter("tr")]
    assert cells[1:] == rows
    assert "<script" not in page and "http" not in page


def test_every_library_spec_compares_and_set_applies_to_all(capsys):
    names = [p.stem for p in library_specs()]
    rc, out, err = run(capsys, "compare", *names, "--format", "json", "--set", "n_layers=2")
    assert rc == 0, err
    data = json.loads(out)
    assert len(data["architectures"]) == len(names)
    assert all(v.startswith("2 layers") for v in next(r["values"] for r in data["rows"] if r["axis"] == "size"))


def test_compare_errors(capsys, tmp_path):
    rc, _, err = run(capsys, "compare", "llama", str(tmp_path / "nope.yaml"))
    assert rc == 2 and "no such file" in err
    rc, _, err = run(capsys, "compare")
    assert rc == 2


def test_output_file(capsys, tmp_path):
    out = tmp_path / "t.csv"
    rc, stdout, _ = run(capsys, "compare", "llama", "palm", "-o", str(out))
    assert rc == 0 and stdout == "" and out.read_text().startswith("axis,llama-7b,palm-8b\n")


@pytest.mark.parametrize("path", library_specs(), ids=lambda p: p.stem)
def test_table_agrees_with_the_compiled_graph(path):
    """The table reads spec axes; the graph must show the same thing (a cross-check of both)."""
    from archc.compare import comparison
    from archc.diff import layer_facts, model_facts
    from archc.graph import compile
    from archc.loader import load_spec

    spec = load_spec(path)
    graph = compile(spec)
    cells = dict((axis, values[0]) for axis, values in comparison([spec], [graph], [path.stem]).rows)
    layer, model = layer_facts(graph, 0), model_facts(graph)
    assert cells["residual layout"].startswith(layer["layout"].value)
    positions = {f.value for k, f in layer.items() if k.endswith("_norm.position")}
    placement = cells["norm placement"]
    assert positions == {"pre"} if placement.startswith("pre") else \
        positions == {"post"} if placement.startswith(("post", "DeepNorm")) else positions == {"pre", "sandwich"}
    assert (model["final_norm"].value is not None) == (placement.startswith(("pre", "sandwich")) != ("final norm" in placement))
    pos = layer["attn.position"].value
    assert pos == {"RoPE": "rotary", "ALiBi": "alibi"}.get(cells["position scheme"].split(" ")[0], "none")
    assert (model["embed.position"].value is not None) == cells["position scheme"].startswith(("learned", "2D", "sinusoidal"))
    kv = layer["attn.kv_heads"].value
    assert cells["attention sharing"].startswith("multi-query") == (kv == 1)
    assert cells["embeddings"].startswith("tied") == model["head.tied"].value
    assert ("after the embedding" in cells["embeddings"]) == (model["embed.norm"].value is not None)
    assert (cells["biases"] == "none") == (not any(name.endswith(".bias") for name, _, _ in graph.params()))
