"""`archc draw` and `archc diff --draw`: well-formed SVGs holding every component of the layer.

The components expected in a drawing are the compiled graph's nodes (layer 0 and everything outside
the stack); the SVG is parsed independently (node <title>s are Graphviz's node ids).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archc.draw import HIGHLIGHT, LEGEND, dot_id, model_diagram, to_dot, to_mermaid
from archc.graph import compile
from archc.loader import library_specs, load_spec
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz; scripts/test.sh does it)")
LIBRARY = [p.stem for p in library_specs()]


def run(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(args, capsys)


def svg_nodes(path: Path) -> dict[str, dict]:
    """{node id: {'text': all text lines, 'fill': fill colours}} from a Graphviz SVG."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "node":
            continue
        title = g.find(f"{SVG}title").text
        texts = [t.text or "" for t in g.iter(f"{SVG}text")]
        fills = {el.get("fill") for el in g if el.get("fill")}
        out[title] = {"text": texts, "fill": fills}
    return out


def expected_components(graph) -> list[str]:
    return [n for n in graph.nodes() if graph.node(n)["layer"] in (None, 0)]


@needs_dot
@pytest.mark.parametrize("name", LIBRARY)
def test_svg_holds_every_component_of_the_layer(capsys, tmp_path, name):
    out = tmp_path / f"{name}.svg"
    rc, _, err = run(capsys, "draw", name, "-o", str(out))
    assert rc == 0, err
    nodes = svg_nodes(out)
    graph = compile(load_spec(ROOT / "specs" / f"{name}.yaml"))
    for n in expected_components(graph):
        assert dot_id(n) in nodes, f"{n} missing from the drawing"
    # only one layer is opened up; the stack says how many
    assert not any(t.startswith("layers_1_") for t in nodes)
    text = out.read_text()
    assert f"layer × {graph.n_layers}" in text
    # the labels say the sharing and the position scheme
    attn = nodes[dot_id("layers.0.attn")]["text"]
    a = graph.spec.attention
    sharing = {"mha": "multi-head", "mqa": "multi-query", "gqa": "grouped-query"}[a.sharing.value]
    assert any(sharing in t for t in attn)
    pos = {"rope": "RoPE on q/k", "alibi": "ALiBi bias"}.get(graph.spec.position.kind.value, "no position signal")
    assert any(pos in t for t in attn)


def test_every_layer_edge_is_drawn():
    """Residual paths exactly as the graph has them: every edge inside layer 0 and into it."""
    for name in ("llama", "palm", "glm", "bloom", "gpt2"):
        for extra in ([], ["norm.placement=post"] if name != "palm" else ["norm.placement=sandwich"]):
            graph = compile(load_spec(ROOT / "specs" / f"{name}.yaml", ["n_layers=3"] + extra))
            dia = model_diagram(graph)
            drawn = {(e.src, e.dst) for e in dia.edges}
            for u, v in graph.g.edges:
                lu, lv = graph.node(u)["layer"], graph.node(v)["layer"]
                if lv == 0 and lu in (None, 0):
                    assert (dot_id(u), dot_id(v)) in drawn, (name, extra, u, v)
            skips = [e for e in dia.edges if e.skip]
            residuals = [n for n in graph.layer_nodes(0) if graph.node(n)["kind"] == "residual"]
            assert len(skips) == len(residuals)
    # negative control: a graph with one edge fewer draws one edge fewer
    graph = compile(load_spec(ROOT / "specs" / "llama.yaml", ["n_layers=2"]))
    before = len(model_diagram(graph).edges)
    graph.g.remove_edge("rotary", "layers.0.attn")
    assert len(model_diagram(graph).edges) == before - 1


@pytest.mark.parametrize("fmt,suffix", [("dot", ".dot"), ("mermaid", ".mmd")])
def test_text_formats_are_deterministic_and_complete(capsys, tmp_path, fmt, suffix):
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    for p in (a, b):
        rc, _, err = run(capsys, "draw", "bloom", "-o", str(p), "--format", fmt)
        assert rc == 0, err
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    graph = compile(load_spec(ROOT / "specs" / "bloom.yaml"))
    for n in expected_components(graph):
        assert dot_id(n) in text
    assert text.startswith("digraph" if fmt == "dot" else "flowchart TB")


@needs_dot
def test_diff_draw_highlights_only_the_changed_components(capsys, tmp_path):
    out = tmp_path / "d.svg"
    rc, _, _ = run(capsys, "diff", "llama", "llama", "--set-b", "mlp.activation=gelu", "--draw", str(out))
    assert rc == 1
    nodes = svg_nodes(out)
    for side in "AB":
        assert HIGHLIGHT in nodes[f"{side}_layers_0_mlp"]["fill"]
        for other in ("attn", "attn_norm", "mlp_norm", "attn_residual", "mlp_residual"):
            assert HIGHLIGHT not in nodes[f"{side}_layers_0_{other}"]["fill"], other
    # parallel vs sequential: both sides drawn with all their components
    rc, _, _ = run(capsys, "diff", "llama", "palm", "--draw", str(out), "--force")  # replaces the first drawing
    assert rc == 1
    nodes = svg_nodes(out)
    for name, tag in (("llama", "A"), ("palm", "B")):
        graph = compile(load_spec(ROOT / "specs" / f"{name}.yaml"))
        for n in graph.layer_nodes(0):
            assert f"{tag}_{dot_id(n)}" in nodes
    assert HIGHLIGHT in nodes["B_layers_0_norm"]["fill"]


@needs_dot
def test_png(capsys, tmp_path):
    out = tmp_path / "p.png"
    rc, _, _ = run(capsys, "draw", "palm", "-o", str(out))
    assert rc == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_dot
@pytest.mark.parametrize("name", ["llama", "palm"])
def test_committed_readme_images_are_current(name):
    """docs/img/{llama,palm}.svg are what `archc draw` makes of today's graph (components and labels)."""
    nodes = svg_nodes(ROOT / "docs" / "img" / f"{name}.svg")
    graph = compile(load_spec(ROOT / "specs" / f"{name}.yaml"))
    dia = model_diagram(graph)
    assert set(nodes) == {n.id for n in dia.nodes}
    for n in dia.nodes:
        assert [t for t in nodes[n.id]["text"]] == n.label.split("\n"), (
            f"{n.id}: regenerate with archc draw specs/{name}.yaml -o docs/img/{name}.svg")


def test_without_dot_the_dot_text_is_written_and_exit_is_2(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = tmp_path / "x.svg"
    env = dict(os.environ, PATH=str(bindir))
    code = f"import sys; from archc.cli import main; sys.exit(main(['draw', 'llama', '-o', {str(out)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "apt-get install graphviz" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    dot_text = (tmp_path / "x.dot").read_text()
    assert dot_text == to_dot(model_diagram(compile(load_spec(ROOT / "specs" / "llama.yaml"))))
    # diff --draw: the diff is printed, the DOT text written, and the missing picture makes it exit 2
    pic = tmp_path / "d.png"
    code = f"import sys; from archc.cli import main; sys.exit(main(['diff', 'llama', 'palm', '--draw', {str(pic)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "apt-get install graphviz" in proc.stderr
    assert "K/V projections" in proc.stdout and (tmp_path / "d.dot").read_text().startswith("digraph")
    assert not pic.exists()


def test_bad_arguments(capsys, tmp_path):
    rc, _, err = run(capsys, "draw", "llama", "-o", str(tmp_path / "x.pdf"))
    assert rc == 2 and ".svg" in err
    rc, _, err = run(capsys, "draw", "llama", "-o", str(tmp_path / "x.svg"), "--format", "jpeg")
    assert rc == 2 and "jpeg" in err
    assert list(tmp_path.iterdir()) == []


def test_mermaid_marks_changes():
    from archc.diff import changed_roles, diff
    from archc.draw import layers_diagram

    d = diff(load_spec(ROOT / "specs" / "gpt2.yaml"), load_spec(ROOT / "specs" / "bloom.yaml"))
    text = to_mermaid(layers_diagram(d.a.graph, d.b.graph, changed_roles(d.structure)))
    assert "class " in text and "B_alibi" in text and "A_layers_0_attn" in text


@needs_dot
def test_committed_diff_image_is_current():
    from archc.diff import changed_roles, diff
    from archc.draw import layers_diagram

    d = diff(load_spec(ROOT / "specs" / "llama.yaml"), load_spec(ROOT / "specs" / "palm.yaml"))
    dia = layers_diagram(d.a.graph, d.b.graph, changed_roles(d.structure), (d.a.name, d.b.name))
    nodes = svg_nodes(ROOT / "docs" / "img" / "llama-vs-palm.svg")
    # every component, plus the legend a highlighting diagram carries (the image before the legend fails here)
    assert set(nodes) == {n.id for n in dia.nodes} | {"legend"}
    assert nodes["legend"]["text"] == [LEGEND] and HIGHLIGHT in nodes["legend"]["fill"]
    for n in dia.nodes:
        assert nodes[n.id]["text"] == n.label.split("\n")
        assert (HIGHLIGHT in nodes[n.id]["fill"]) == n.highlight, n.id
    assert not nodes["A_mask"]["fill"] & {HIGHLIGHT}
