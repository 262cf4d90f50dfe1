"""`archc diff`: spec axes, structure in words, cost, formats, exit status.

Oracles: the expected differing axes are computed here by flattening the two resolved specs'
plain data (not with archc.diff); the expected structural changes come from the architectures'
known features as written in ../shared/ARCHITECTURES.md (FEATURES below), not from our graph code.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from archc.loader import load_spec
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
BASE = ["llama", "palm", "glm", "bloom", "gpt2"]
SCHEMA = json.loads((ROOT / "docs" / "diff-schema.json").read_text())

# Known features of the five base architectures (ARCHITECTURES.md), one column per structural change
# the diff must name.
FEATURES = {
    #          parallel  kv=1   alibi  rope   tied   emb_norm glm2d  prefix rmsnorm learned
    "llama": dict(parallel=0, mqa=0, alibi=0, rope=1, tied=0, emb_norm=0, glm2d=0, prefix=0, rms=1, learned=0),
    "palm": dict(parallel=1, mqa=1, alibi=0, rope=1, tied=1, emb_norm=0, glm2d=0, prefix=0, rms=0, learned=0),
    "glm": dict(parallel=0, mqa=0, alibi=0, rope=0, tied=1, emb_norm=0, glm2d=1, prefix=1, rms=0, learned=0),
    "bloom": dict(parallel=0, mqa=0, alibi=1, rope=0, tied=1, emb_norm=1, glm2d=0, prefix=0, rms=0, learned=0),
    "gpt2": dict(parallel=0, mqa=0, alibi=0, rope=0, tied=1, emb_norm=0, glm2d=0, prefix=0, rms=0, learned=1),
}


def run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(args, capsys)


def diff_json(capsys, *args: str) -> tuple[int, dict]:
    rc, out, err = run(capsys, "diff", *args, "--format", "json")
    assert rc in (0, 1), err
    return rc, json.loads(out)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def expected_axes(a: str, b: str, sets_b: list[str] | None = None) -> set[str]:
    fa = _flat(load_spec(SPECS / f"{a}.yaml").model_dump(mode="json"))
    fb = _flat(load_spec(SPECS / f"{b}.yaml", sets_b or []).model_dump(mode="json"))
    labels = {"name", "description", "reference"}
    keys = (set(fa) | set(fb)) - labels
    return {k for k in keys if k not in fa or k not in fb or fa[k] != fb[k]}


# --------------------------------------------------------------------------------------------
# Minimal JSON-schema checker (the subset docs/diff-schema.json uses), so no dependency is added.


def check_schema(value, schema: dict, root: dict, path: str = "$") -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return check_schema(value, root["$defs"][name], root, path)
    errors = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
        ok = False
        for t in types:
            if t == "integer":
                ok |= isinstance(value, int) and not isinstance(value, bool)
            elif t == "number":
                ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok |= isinstance(value, pytypes[t])
        if not ok:
            return [f"{path}: {value!r} is not {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key}")
        props = schema.get("properties", {})
        for key, v in value.items():
            if key in props:
                errors += check_schema(v, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key {key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += check_schema(v, schema["items"], root, f"{path}[{i}]")
    return errors


# --------------------------------------------------------------------------------------------
# Spec section


@pytest.mark.parametrize("a,b", list(itertools.combinations(BASE, 2)))
def test_pairs_report_exactly_the_differing_axes(capsys, a, b):
    rc, data = diff_json(capsys, a, b)
    assert rc == 1 and data["identical"] is False
    reported = {r["axis"] for r in data["spec"]["changed"]}
    assert reported == expected_axes(a, b)
    assert data["spec"]["unchanged_count"] + len(reported) == len(expected_axes(a, b) | set(
        k for k in _flat(load_spec(SPECS / f"{a}.yaml").model_dump(mode="json")) if k not in ("name", "description", "reference")))
    for r in data["spec"]["changed"]:
        assert r["group"] in SCHEMA["$defs"]["spec_row"]["properties"]["group"]["enum"]
        assert r["axis"].split(".")[0] == r["group"] or r["group"] in ("sizes", "embedding")
    assert check_schema(data, SCHEMA, SCHEMA) == []


def _texts(data: dict) -> str:
    return "\n".join(c["text"] for c in data["structure"])


@pytest.mark.parametrize("a,b", list(itertools.permutations(BASE, 2)))
def test_pairs_name_the_component_changes(capsys, a, b):
    _, data = diff_json(capsys, a, b)
    text = _texts(data)
    fa, fb = FEATURES[a], FEATURES[b]

    def differs(key: str) -> bool:
        return fa[key] != fb[key]

    # parallel residual
    assert ("residual layout parallel" in text) == bool(fb["parallel"] and not fa["parallel"])
    assert ("(parallel residual)" in text) == bool(fb["parallel"] and not fa["parallel"])
    if fb["parallel"] and not fa["parallel"]:
        assert "MLP reads the shared norm's output" in text
    if fa["parallel"] and not fb["parallel"]:
        assert "instead of parallel" in text and "instead of the shared norm's output" in text
    # multi-query attention
    assert ("K/V projections: 1 head (multi-query)" in text) == bool(fb["mqa"] and not fa["mqa"])
    assert ("instead of 1 head" in text) == bool(fa["mqa"] and not fb["mqa"])
    # ALiBi replaces rotary
    assert ("ALiBi bias feeds attention" in text) == bool(fb["alibi"] and not fa["alibi"])
    assert ("no rotary on q/k" in text) == bool(fa["rope"] and not fb["rope"])
    assert ("no ALiBi bias" in text) == bool(fa["alibi"] and not fb["alibi"])
    # tied head
    assert ("head tied to the token embedding instead of its own weight matrix" in text) == bool(fb["tied"] and not fa["tied"])
    assert ("instead of being tied to the token embedding" in text) == bool(fa["tied"] and not fb["tied"])
    # embedding norm (BLOOM)
    assert ("embedding LayerNorm after the token embedding" in text) == differs("emb_norm")
    # GLM's 2D positions and prefix mask
    assert ("2D position tables (position + block) added to the embedding (1025 rows each)" in text) == differs("glm2d")
    assert ("learned absolute position table added to the embedding (1024 rows)" in text) == differs("learned")
    assert ("prefix mask (bidirectional over the prefix, causal after it)" in text) == differs("prefix")
    # RMSNorm vs LayerNorm
    assert ("RMSNorm" in text) == differs("rms")
    # no node ids in the words
    assert not re.search(r"layers\.\d+\.", text)


def test_post_vs_pre_norm(capsys):
    rc, data = diff_json(capsys, "glm", "glm", "--set-b", "norm.placement=post")
    assert rc == 1
    assert {r["axis"] for r in data["spec"]["changed"]} == expected_axes("glm", "glm", ["norm.placement=post"]) \
        == {"norm.placement", "norm.final"}
    text = _texts(data)
    assert "attention norm, MLP norm: norm after the residual add (post) instead of before the sublayer (pre)" in text
    assert "attention reads the layer input (residual stream) instead of the attention norm's output" in text
    assert "final norm: none" in text
    (c,) = [c for c in data["structure"] if c["aspect"] == "norm.position"]
    assert c["where"] == "in all 48 layers" and c["layers"] == [[0, 47]]
    # and back: B pre, A post
    _, back = diff_json(capsys, "glm", "glm", "--set-a", "norm.placement=post")
    assert "norm before the sublayer (pre) instead of after the residual add (post)" in _texts(back)


def test_more_axes_in_words(capsys):
    _, data = diff_json(capsys, "llama", "llama", "--set-b", "attention.sharing=gqa", "--set-b", "attention.kv_heads=8",
                        "--set-b", "norm.placement=sandwich", "--set-b", "embedding.multiplier=sqrt_d_model")
    text = _texts(data)
    assert "K/V projections: 8 heads (grouped-query) instead of 32 heads" in text
    assert "post-attention norm only in B (reads attention's output; feeds residual add after attention)" in text
    assert "token embedding: scaled by 64 instead of not scaled" in text
    _, deep = diff_json(capsys, "glm", "glm", "--set-b", "norm.placement=deepnorm", "--set-b", "init.scheme=deepnorm")
    t = _texts(deep)
    assert "stream scaled by α = 3.13" in t  # (2 * 48) ** 0.25
    assert "Xavier-normal gain" in t


def test_repeated_layers_said_once_and_a_differing_layer_is_named():
    import copy

    from archc.diff import structure_diff
    from archc.graph import compile
    from conftest import tiny_spec

    ga = compile(tiny_spec("llama", ["n_layers=4"]))
    gb = compile(tiny_spec("llama", ["n_layers=4", "mlp.activation=gelu"]))
    changes = structure_diff(ga, gb)
    mlp = [c for c in changes if c.aspect == "mlp.activation"]
    assert len(mlp) == 1 and mlp[0].where == "in all 4 layers"
    # Negative control: make layer 2 of a copy of A differ from its siblings.
    gc = copy.deepcopy(ga)
    gc.g.nodes["layers.2.mlp"]["settings"] = dataclasses.replace(gc.g.nodes["layers.2.mlp"]["settings"], d_ff=999)
    changes = structure_diff(ga, gc)
    assert [(c.where, c.text) for c in changes] == [("in layer 2", "MLP: 999 hidden units instead of 160")]
    assert structure_diff(ga, copy.deepcopy(ga)) == []


@pytest.mark.parametrize("name", BASE)
def test_self_diff_is_identical(capsys, name):
    rc, out, _ = run(capsys, "diff", name, str(SPECS / f"{name}.yaml"))
    assert rc == 0 and "identical" in out
    rc, data = diff_json(capsys, name, name)
    assert rc == 0 and data["identical"] and data["spec"]["changed"] == [] and data["structure"] == []
    assert all(r["diff"] == 0 for r in data["cost"]["rows"])


def test_set_applies_to_both_sides_and_model_directory(capsys, tmp_path):
    rc, _, _ = run(capsys, "diff", "llama", "llama", "--set", "n_layers=2")
    assert rc == 0
    rc, data = diff_json(capsys, "llama", "llama", "--set", "n_layers=2", "--set-a", "n_layers=3")
    assert rc == 1 and [r["axis"] for r in data["spec"]["changed"]] == ["n_layers"]
    assert data["a"]["source"] == "llama --set n_layers=2 --set-a n_layers=3"
    assert any(c["text"] == "stack: 2 layers instead of 3" for c in data["structure"])
    # a compiled model directory is read through its spec.yaml
    model = tmp_path / "model"
    model.mkdir()
    (model / "spec.yaml").write_text(yaml.safe_dump(load_spec(SPECS / "palm.yaml").to_yaml_dict(), sort_keys=False))
    rc, _, _ = run(capsys, "diff", "palm", str(model))
    assert rc == 0


def test_cost_section(capsys):
    _, data = diff_json(capsys, "llama", "palm", "--seq-len", "1024")
    rows = {r["metric"]: r for r in data["cost"]["rows"]}
    assert data["cost"]["seq_len"] == 1024
    # LLaMA-7B has 6,738,415,616 parameters (released checkpoint); PaLM 8B ~8.63B (paper).
    assert rows["params"]["a"] == 6_738_415_616
    assert abs(rows["params"]["b"] - 8.63e9) < 0.01e9
    assert rows["params"]["diff"] == rows["params"]["b"] - rows["params"]["a"]
    assert rows["params"]["ratio"] == pytest.approx(rows["params"]["b"] / rows["params"]["a"])
    assert sum(r["a"] for m, r in rows.items() if m.startswith("params.")) == rows["params"]["a"]
    # KV cache per token: 2 * layers * kv_heads * head_dim * 2 bytes (fp16 / bf16)
    assert rows["kv_cache_bytes_per_token"]["a"] == 2 * 32 * 32 * 128 * 2
    assert rows["kv_cache_bytes_per_token"]["b"] == 2 * 32 * 1 * 256 * 2
    assert rows["params.head"]["b"] == 0  # tied


def test_json_schema_rejects_broken_output(capsys):
    _, data = diff_json(capsys, "llama", "bloom", "--all")
    assert check_schema(data, SCHEMA, SCHEMA) == []
    assert len(data["spec"]["unchanged"]) == data["spec"]["unchanged_count"]
    broken = json.loads(json.dumps(data))
    del broken["structure"][0]["where"]
    broken["cost"]["rows"][0]["a"] = "6.7 B"
    broken["spec"]["changed"][0]["group"] = "nonsense"
    errors = check_schema(broken, SCHEMA, SCHEMA)
    assert len(errors) == 3, errors
    import jsonschema  # a test dependency (pyproject [test]): a second opinion beside check_schema
    jsonschema.validate(data, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


class _Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: str | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""
        for k, v in attrs:
            if k in ("src", "href") or (v and "://" in v):
                self.external.append(f"{tag} {k}={v}")
        if tag in ("script", "link", "img", "iframe"):
            self.external.append(tag)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None


def test_html_is_self_contained_well_formed_and_has_the_terminal_rows(capsys, tmp_path):
    from rich.console import Console

    from archc import render
    from archc.diff import diff

    out = tmp_path / "d.html"
    rc, _, _ = run(capsys, "diff", "llama", "bloom", "-o", str(out))
    assert rc == 1
    text = out.read_text()
    ET.fromstring(text.split("\n", 1)[1])  # well-formed XML after the doctype
    p = _Rows()
    p.feed(text)
    assert p.external == [] and "http" not in text.replace("https://json-schema", "")
    d = diff(load_spec(SPECS / "llama.yaml"), load_spec(SPECS / "bloom.yaml"), source_a="llama", source_b="bloom")
    rep = render.diff_report(d)
    assert [t[1:] for t in p.tables] == [t.rows for t in rep.tables if t.rows]
    assert [t[0] for t in p.tables] == [t.columns for t in rep.tables if t.rows]
    # the terminal shows the same cells
    buf = io.StringIO()
    render.print_terminal(rep, Console(file=buf, width=400, no_color=True))
    term = buf.getvalue()
    for table in rep.tables:
        for row in table.rows:
            line = next((ln for ln in term.splitlines() if all(c in ln for c in row)), None)
            assert line is not None, row
    # markdown carries the same rows
    md = render.to_markdown(rep)
    for table in rep.tables:
        for row in table.rows:
            assert "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" in md


def test_bad_input_exits_2_with_one_line(capsys, tmp_path):
    rc, out, err = run(capsys, "diff", "llama", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "no such file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "diff", "llama", "palm", "--set-b", "attention.kv_heads=3")
    assert rc == 2 and "kv_heads" in err
    rc, _, err = run(capsys, "diff", "llama", "palm", "--format", "csv")
    assert rc == 2 and "csv" in err


def test_output_file_is_written_whole(capsys, tmp_path):
    out = tmp_path / "sub" / "d.json"
    rc, stdout, _ = run(capsys, "diff", "llama", "palm", "-o", str(out))
    assert rc == 1 and stdout == ""
    assert json.loads(out.read_text())["schema"] == "archc-diff/2"
    assert [p.name for p in out.parent.iterdir()] == ["d.json"]  # no temp files left


def test_diff_and_compare_do_not_import_torch():
    code = (
        "import sys\n"
        "from archc.cli import main\n"
        "for args in (['diff', 'llama', 'palm', '--format', 'json'], ['compare', 'llama', 'bloom']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'onnx', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("name", [p.stem for p in sorted(SPECS.glob("*.yaml"))])
def test_every_library_spec_diffs_in_words(capsys, name):
    """Every spec in specs/ against LLaMA and PaLM: each structural line says two different things."""
    rc, _ = diff_json(capsys, name, name)
    assert rc == 0
    for other in ("llama", "palm"):
        rc, data = diff_json(capsys, other, name)
        assert rc == (0 if name == other else 1)
        assert {r["axis"] for r in data["spec"]["changed"]} == expected_axes(other, name)
        for c in data["structure"]:
            assert c["a"] != c["b"], c
            assert any(w in c["text"] for w in (" instead of ", "only in", "; no ")), c
            head, _, tail = c["text"].partition(" instead of ")
            assert not tail or not head.endswith(tail), c  # never "X instead of X"
