"""Block diagrams from the component graph: Graphviz DOT (rendered to SVG/PNG by `dot`) and Mermaid.

`model_diagram` draws the stack (inputs, embedding, positions, the layer once with "× N", final
norm, head) with layer 0 opened up: every node of that layer and every edge into, inside and out
of it exactly as the graph has them; the edges between layers are said by the cluster's "× N".
`layers_diagram` draws the layer of two graphs side by side, highlighting the components a diff
names. Labels are read off node kind, settings and edges only, never off the spec's axes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from archc.atomic import write_atomic
from archc import words
from archc.diff import norm_position, norm_words, role_name
from archc.errors import UserError, one_line
from archc.files import FORCE_HINT, check_output_file
from archc.graph import ComponentGraph, ComponentKind

HIGHLIGHT = "#ffcf70"
FILL = {"norm": "#e8f0fe", "attention": "#fde2e4", "mlp": "#e2f0cb", "token_embedding": "#eeeeee", "head": "#eeeeee",
        "learned_position": "#fff1c1", "glm2d_position": "#fff1c1", "sinusoidal_position": "#fff1c1",
        "rotary": "#fff1c1", "alibi": "#fff1c1", "mask": "#f3e8ff"}
INSTALL_HINT = ("Graphviz's `dot` program is not installed; install it with `apt-get install graphviz` (Debian/Ubuntu), "
                "`brew install graphviz` (macOS) or `conda install graphviz`")


@dataclass
class DNode:
    id: str
    label: str
    kind: str
    cluster: str | None = None
    highlight: bool = False


@dataclass
class DEdge:
    src: str
    dst: str
    label: str = ""
    side: bool = False  # mask/rotary/bias inputs: drawn dotted
    skip: bool = False  # residual skip path: drawn dashed


@dataclass
class Diagram:
    title: str
    nodes: list[DNode] = field(default_factory=list)
    edges: list[DEdge] = field(default_factory=list)
    clusters: dict[str, str] = field(default_factory=dict)  # cluster id -> label, in drawing order


def mask_words(s) -> str:
    """The mask in the same words on the mask node and on every attention node that reads it."""
    return f"{s.mask.value} mask" + (f", window {s.sliding_window}" if s.sliding_window else "")


# What a highlighted node means; drawn as a legend whenever a diagram highlights anything.
LEGEND = "highlighted: a component that differs between the two specs"


def dot_id(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# --------------------------------------------------------------------------------------------
# Labels, from the graph


def label(cg: ComponentGraph, name: str) -> str:
    d = cg.node(name)
    k, s, role = d["kind"], d["settings"], d["role"]
    if k == ComponentKind.input.value or k == ComponentKind.output.value:
        return f"{name}\n[{', '.join(str(x) for x in s.shape)}]"
    if k == ComponentKind.token_embedding.value:
        V, D = d["params"]["weight"]
        return f"token embedding\n{V} × {D}"
    if k == ComponentKind.scale.value:
        return f"× {s.factor:.4g}"
    if k == ComponentKind.learned_position.value:
        return f"learned positions\n{s.max_positions} × d" + (f", offset {s.offset}" if s.offset else "")
    if k == ComponentKind.sinusoidal_position.value:
        return "sinusoidal positions"
    if k == ComponentKind.glm2d_position.value:
        return f"2D positions\nposition + block tables\n{s.max_positions} × d each"
    if k in (ComponentKind.add.value, ComponentKind.residual.value):
        alpha = getattr(s, "alpha", 1.0)
        return "+" if alpha == 1.0 else f"{alpha:.3g}·x +"
    if k == ComponentKind.norm.value:
        where = ""
        if d["layer"] is not None:
            where = f" ({norm_position(cg, name)})"
        return f"{role_name(role)}{where}\n{norm_words(s)}"
    if k == ComponentKind.attention.value:
        pos = "RoPE on q/k" if cg.input_of(name, "rotary") else "ALiBi bias" if cg.input_of(name, "bias") else "no position signal"
        mask = mask_words(cg.settings(cg.input_of(name, "mask")))
        return (f"attention, {words.sharing(s.n_heads, s.kv_heads)}\n{s.n_heads} q heads, "
                f"{s.kv_heads} K/V head{'s' if s.kv_heads != 1 else ''}, head {s.head_dim}\n{pos}, {mask}")
    if k == ComponentKind.mlp.value:
        D = d["params"]["down.weight"][0]
        return f"MLP, {words.ACTIVATION[s.activation]}\n{D} → {s.d_ff} → {D}"
    if k == ComponentKind.mask.value:
        return mask_words(s)
    if k == ComponentKind.rotary.value:
        return f"rotary tables\nθ {s.theta:g}, {s.rotary_dim}/{s.head_dim} dims, {s.style.value}"
    if k == ComponentKind.alibi.value:
        return f"ALiBi slopes\n{s.n_heads} heads, max bias {s.max_bias:g}"
    if k == ComponentKind.head.value:
        return "head\n(tied to token embedding)" if s.tied else f"head\nd → {s.vocab_size}"
    return role_name(role)


def _edge(cg: ComponentGraph, src: str, dst: str, port: str, src_id: str, dst_id: str, extra: str = "") -> DEdge:
    side = port in ("mask", "rotary", "bias", "attention_mask", "prefix_len", "positions")
    text = port if port not in ("x", "branch", "ids") else ""
    if extra:
        text = f"{text} {extra}".strip()
    return DEdge(src_id, dst_id, text, side=side and cg.node(src)["kind"] != "input", skip=port == "skip")


# --------------------------------------------------------------------------------------------
# Diagrams


def model_diagram(cg: ComponentGraph, *, highlight: set[str] | None = None) -> Diagram:
    """The stack with layer 0 opened up. `highlight`: roles to mark (for diffs)."""
    highlight = highlight or set()
    N = cg.n_layers
    dia = Diagram(cg.spec.name)
    dia.clusters["layer"] = f"layer × {N}" + (" (layer 0 shown; the others are the same)" if N > 1 else "")
    first = {cg.node(n)["role"]: n for n in cg.layer_nodes(0)}

    def shown(n: str) -> str | None:
        d = cg.node(n)
        if d["layer"] is None:
            return n
        return first.get(d["role"])

    for n in cg.nodes():
        d = cg.node(n)
        if d["layer"] not in (None, 0):
            continue
        dia.nodes.append(DNode(dot_id(n), label(cg, n), d["kind"], "layer" if d["layer"] == 0 else None,
                               d["role"] in highlight))
    seen = set()
    for u, v, data in sorted(cg.g.edges(data=True), key=lambda e: e[2]["seq"]):
        du, dv = cg.node(u), cg.node(v)
        if dv["layer"] not in (None, 0):
            continue  # into the layers not drawn (and between layers): said by "× N"
        su, sv = shown(u), shown(v)
        if su is None or sv is None:
            continue
        extra = f"(after {N} layers)" if du["layer"] is not None and dv["layer"] is None and N > 1 else ""
        key = (su, sv, data["port"])
        if key in seen:
            continue
        seen.add(key)
        dia.edges.append(_edge(cg, u, v, data["port"], dot_id(su), dot_id(sv), extra))
    # A tied head reads the embedding's weight, not its output: drawn as a dotted "shares weight" link.
    for n in cg.nodes(ComponentKind.head):
        for owner in cg.node(n).get("tied", {}).values():
            dia.edges.append(DEdge(dot_id(owner.rsplit(".", 1)[0]), dot_id(n), "shares weight", side=True))
    return dia


def layers_diagram(ga: ComponentGraph, gb: ComponentGraph, highlight: set[str], names: tuple[str, str] = ("A", "B")) -> Diagram:
    """Layer 0 of both graphs side by side, with their side inputs; `highlight` roles marked."""
    dia = Diagram(f"{ga.spec.name} vs {gb.spec.name}")
    for tag, cg, shown_name in (("A", ga, names[0]), ("B", gb, names[1])):
        cid = f"side{tag}"
        dia.clusters[cid] = f"{tag}: {shown_name}, layer × {cg.n_layers}"
        nodes = cg.layer_nodes(0)
        inside = set(nodes)
        ids = {n: f"{tag}_{dot_id(n)}" for n in nodes}
        dia.nodes.append(DNode(f"{tag}_in", "layer input", "input", cid))
        dia.nodes.append(DNode(f"{tag}_out", "layer output", "output", cid))
        for n in nodes:
            d = cg.node(n)
            dia.nodes.append(DNode(ids[n], label(cg, n), d["kind"], cid, d["role"] in highlight))
        added_side = set()
        for u, v, data in sorted(cg.g.edges(data=True), key=lambda e: e[2]["seq"]):
            if v in inside and u not in inside:
                du = cg.node(u)
                if du["kind"] in (ComponentKind.mask.value, ComponentKind.rotary.value, ComponentKind.alibi.value):
                    sid = f"{tag}_{dot_id(u)}"
                    if u not in added_side:
                        added_side.add(u)
                        dia.nodes.append(DNode(sid, label(cg, u), du["kind"], cid, du["role"] in highlight))
                    dia.edges.append(_edge(cg, u, v, data["port"], sid, ids[v]))
                else:
                    dia.edges.append(_edge(cg, u, v, data["port"], f"{tag}_in", ids[v]))
            elif u in inside and v in inside:
                dia.edges.append(_edge(cg, u, v, data["port"], ids[u], ids[v]))
            elif u in inside and v not in inside:
                key = (u, "out")
                if key not in added_side:
                    added_side.add(key)
                    dia.edges.append(DEdge(ids[u], f"{tag}_out"))
    return dia


# --------------------------------------------------------------------------------------------
# Formats


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(dia: Diagram) -> str:
    out = [f"digraph {_q(dia.title)} {{", "  graph [rankdir=TB, fontname=Helvetica, nodesep=0.35, ranksep=0.35, "
           f"label={_q(dia.title)}, labelloc=t, fontsize=16];",
           "  node [fontname=Helvetica, fontsize=11, shape=box, style=\"rounded,filled\", fillcolor=white];",
           "  edge [fontname=Helvetica, fontsize=9, color=\"#555555\"];"]

    def node_line(n: DNode, indent: str) -> str:
        attrs = [f"label={_q(n.label)}"]
        if n.kind in ("add", "residual"):
            attrs.append("shape=circle, width=0.3, fixedsize=false")
        elif n.kind in ("input", "output"):
            attrs.append("shape=ellipse")
        fill = HIGHLIGHT if n.highlight else FILL.get(n.kind, "white")
        attrs.append(f"fillcolor={_q(fill)}")
        if n.highlight:
            attrs.append('penwidth=2.5, color="#d9480f"')
        return f"{indent}{n.id} [{', '.join(attrs)}];"

    for n in dia.nodes:
        if n.cluster is None:
            out.append(node_line(n, "  "))
    for cid, text in dia.clusters.items():
        out.append(f"  subgraph cluster_{cid} {{")
        out.append(f"    label={_q(text)}; style=\"rounded,dashed\"; color=\"#888888\"; fontsize=12;")
        out += [node_line(n, "    ") for n in dia.nodes if n.cluster == cid]
        out.append("  }")
    if any(n.highlight for n in dia.nodes):
        out.append(f"  legend [label={_q(LEGEND)}, shape=note, fillcolor={_q(HIGHLIGHT)}, penwidth=2.5, color=\"#d9480f\"];")
    for e in dia.edges:
        attrs = []
        if e.label:
            attrs.append(f"label={_q(e.label)}")
        if e.skip:
            attrs.append('style=dashed, color="#1c7ed6"')
        elif e.side:
            attrs.append('style=dotted, color="#999999"')
        out.append(f"  {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"


def _mq(s: str) -> str:
    return '"' + s.replace('"', "#quot;").replace("\n", "<br/>") + '"'


def to_mermaid(dia: Diagram) -> str:
    out = ["flowchart TB"]

    def node_line(n: DNode, indent: str) -> str:
        if n.kind in ("add", "residual"):
            return f"{indent}{n.id}(({_mq(n.label)}))"
        if n.kind in ("input", "output"):
            return f"{indent}{n.id}([{_mq(n.label)}])"
        return f"{indent}{n.id}[{_mq(n.label)}]"

    for n in dia.nodes:
        if n.cluster is None:
            out.append(node_line(n, "  "))
    for cid, text in dia.clusters.items():
        out.append(f"  subgraph {cid}[{_mq(text)}]")
        out += [node_line(n, "    ") for n in dia.nodes if n.cluster == cid]
        out.append("  end")
    for e in dia.edges:
        arrow = "-.->" if (e.side or e.skip) else "-->"
        out.append(f"  {e.src} {arrow}" + (f"|{_mq(e.label)}|" if e.label else "") + f" {e.dst}")
    hl = [n.id for n in dia.nodes if n.highlight]
    if hl:
        out.append(f"  legend[{_mq(LEGEND)}]")
        out.append(f"  classDef changed fill:{HIGHLIGHT},stroke:#d9480f,stroke-width:3px")
        out.append(f"  class {','.join(hl + ['legend'])} changed")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Writing


FORMATS = ("svg", "png", "dot", "mermaid")


def format_for(path: Path, explicit: str | None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise UserError(f"--format {explicit!r}: choose one of {', '.join(FORMATS)}")
        return explicit
    ext = path.suffix.lower().lstrip(".")
    by_ext = {"svg": "svg", "png": "png", "dot": "dot", "gv": "dot", "mmd": "mermaid", "mermaid": "mermaid"}
    if ext not in by_ext:
        told = f"the suffix '.{ext}'" if ext else "a name without a suffix"  # 'adir' was "the suffix '.'"
        raise UserError(one_line(f"{path}: cannot tell the format from {told}; use .svg, .png, .dot or .mmd, or give --format"))
    return by_ext[ext]


class GraphvizMissing(UserError):
    """`dot` is not on PATH; the DOT text was written next to the requested file."""


def check_fallback(path: Path, fmt: str, force: bool, label: str) -> None:
    """svg/png without Graphviz write PATH.dot instead: that file, too, is checked up front
    (files.check_output_file), so the fallback never replaces a file of the user's without --force."""
    if fmt in ("svg", "png") and shutil.which("dot") is None:
        fallback = path.with_suffix(".dot")
        if fallback != path:
            check_output_file(fallback, f"{label} (Graphviz is missing, so the DOT text goes to {fallback})",
                              force=force, make_folder=True)


def write_diagram(dia: Diagram, path: Path, fmt: str, *, force: bool = False, label: str | None = None) -> Path:
    """Write `dia` as `fmt` to `path` atomically; an existing file only with `force` (commands check
    it up front with files.check_output_file and check_fallback). Without Graphviz, svg/png write
    PATH.dot and raise GraphvizMissing."""
    def write(target: Path, data: bytes) -> None:
        write_atomic(target, data, make_folder=True, overwrite=force, label=label if target == path else None,
                     exists_hint=FORCE_HINT)

    if fmt == "dot":
        write(path, to_dot(dia).encode())
        return path
    if fmt == "mermaid":
        write(path, to_mermaid(dia).encode())
        return path
    dot = shutil.which("dot")
    text = to_dot(dia)
    if dot is None:
        fallback = path.with_suffix(".dot")
        write(fallback, text.encode())
        raise GraphvizMissing(f"{INSTALL_HINT}. Wrote the DOT text to {fallback}; render it later with "
                              f"`dot -T{fmt} {fallback} -o {path}`")
    proc = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"dot failed on the diagram for {path}: {proc.stderr.decode(errors='replace').strip()[:300]}")
    write(path, proc.stdout)
    return path
