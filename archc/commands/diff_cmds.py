"""`archc diff`, `archc compare`, `archc draw`: light commands (no torch, no onnxruntime)."""

from __future__ import annotations

import io
import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import ForceOption, SetOption, load
from archc.errors import UserError
from archc.files import FORCE_HINT, check_output_file


class ReportFormat(str, Enum):
    terminal = "terminal"
    markdown = "markdown"
    json = "json"
    html = "html"
    csv = "csv"


class DiffFormat(str, Enum):
    terminal = "terminal"
    markdown = "markdown"
    json = "json"
    html = "html"


SUFFIX_FORMAT = {".md": "markdown", ".markdown": "markdown", ".json": "json", ".html": "html", ".htm": "html",
                 ".csv": "csv", ".txt": "terminal"}

SideSet = lambda flag, side: Annotated[  # noqa: E731
    Optional[list[str]],
    typer.Option(flag, metavar="FIELD=VALUE", help=f"Override a field of {side} only (repeatable); --set applies to both."),
]
FormatOpt = Annotated[Optional[ReportFormat], typer.Option("--format", "-f", help="terminal (default), markdown, json, html, csv.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file (format from its suffix unless --format).")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", min=1, help="Context length for FLOPs per token.")]


def _source(arg: str, sets: list[str], flag: str = "--set", own: list[str] | None = None) -> str:
    """The argument as given, with its overrides: 'glm --set-b norm.placement=post'."""
    return " ".join([arg] + [f"--set {s}" for s in sets] + [f"{flag} {s}" for s in own or []])


def _pick_format(fmt: Optional[Enum], output: Optional[Path], allowed: tuple[str, ...]) -> str:
    if fmt is not None:
        name = fmt.value
    elif output is not None:
        name = SUFFIX_FORMAT.get(output.suffix.lower(), "terminal")
    else:
        name = "terminal"
    if name not in allowed:
        raise UserError(f"--format {name}: this command writes {', '.join(allowed)}")
    return name


def _check_output(output: Optional[Path], force: bool, option: str = "-o") -> None:
    """An -o file is checked before the report is made (files.check_output_file): an existing one only with --force."""
    if output is not None:
        check_output_file(output, f"{option} {output}", force=force, make_folder=True)


def _emit(text_for: dict, fmt: str, output: Optional[Path], force: bool) -> None:
    """Print to stdout, or write the file atomically (replacing one only with --force, checked up front
    by _check_output; overwrite=force also refuses a file that appeared since). `text_for[fmt]()` makes the text."""
    from archc.atomic import write_atomic

    def write(data: bytes) -> None:
        write_atomic(output, data, make_folder=True, overwrite=force, label=f"-o {output}", exists_hint=FORCE_HINT)

    if fmt == "terminal":
        from rich.console import Console

        if output is None:
            text_for["terminal"](Console(highlight=False))
            return
        buf = io.StringIO()
        text_for["terminal"](Console(file=buf, width=160, no_color=True, highlight=False))
        write(buf.getvalue().encode())
        return
    text = text_for[fmt]()
    if output is None:
        typer.echo(text, nl=False)
    else:
        write(text.encode())


@app.command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="Spec file, library name (llama) or compiled model directory.")],
    b: Annotated[str, typer.Argument(help="The spec to compare A with; the diff says B relative to A.")],
    sets: SetOption = None,
    set_a: SideSet("--set-a", "A") = None,
    set_b: SideSet("--set-b", "B") = None,
    fmt: Annotated[Optional[DiffFormat], typer.Option("--format", "-f", help="terminal (default), markdown, json, html.")] = None,
    output: OutputOpt = None,
    show_all: Annotated[bool, typer.Option("--all", help="List unchanged spec axes too.")] = False,
    seq_len: SeqLenOpt = 2048,
    draw: Annotated[Optional[Path], typer.Option("--draw", help="Also draw both layers side by side, changes highlighted (.svg/.png/.dot/.mmd).")] = None,
    force: ForceOption = False,
) -> None:
    """What differs between two architectures: spec axes, component-graph structure, cost.

    Exit status: 0 identical, 1 different, 2 error.
    """
    from archc import diff as D
    from archc import render as R

    sets_a = list(sets or []) + list(set_a or [])
    sets_b = list(sets or []) + list(set_b or [])
    spec_a, spec_b = load(a, sets_a), load(b, sets_b)
    # every output is checked before any work (after loading, so an input named as output says so)
    name = _pick_format(fmt, output, ("terminal", "markdown", "json", "html"))
    _check_output(output, force)
    draw_fmt = None
    if draw is not None:  # a bad --draw leaves no -o file
        from archc import draw as W

        draw_fmt = W.format_for(draw, None)
        if output is not None and os.path.realpath(draw) == os.path.realpath(output):
            raise UserError(f"--draw {draw}: is also the -o file; give two paths")
        _check_output(draw, force, "--draw")
        W.check_fallback(draw, draw_fmt, force, f"--draw {draw}")
    from archc.quant import QuantSettings, model_dir_quant

    # a compiled model directory's weights as stored (--quant); a spec's in its dtype
    quant = tuple(model_dir_quant(x) or QuantSettings() for x in (a, b))
    d = D.diff(spec_a, spec_b, source_a=_source(a, list(sets or []), "--set-a", set_a),
               source_b=_source(b, list(sets or []), "--set-b", set_b), seq_len=seq_len, quant=quant)
    rep = R.diff_report(d, show_all=show_all)
    _emit({
        "terminal": lambda console: R.print_terminal(rep, console),
        "markdown": lambda: R.to_markdown(rep),
        "html": lambda: R.to_html(rep),
        "json": lambda: json.dumps(D.to_json_data(d, include_unchanged=show_all), indent=2, ensure_ascii=False) + "\n",
    }, name, output, force)
    if draw is not None:
        dia = W.layers_diagram(d.a.graph, d.b.graph, D.changed_roles(d.structure), (d.a.name, d.b.name))
        W.write_diagram(dia, draw, draw_fmt, force=force, label=f"--draw {draw}")
    raise typer.Exit(0 if d.identical else 1)


@app.command("compare")
def compare_cmd(
    specs: Annotated[list[str], typer.Argument(help="Spec files, library names or compiled model directories; one column each.")],
    sets: SetOption = None,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    seq_len: SeqLenOpt = 2048,
    force: ForceOption = False,
) -> None:
    """The architecture comparison table: one column per spec, one row per axis, plus cost rows."""
    from archc import compare as C
    from archc import render as R
    from archc.cost import light_graph

    loaded = [load(s, list(sets or [])) for s in specs]
    name = _pick_format(fmt, output, ("terminal", "markdown", "json", "html", "csv"))
    _check_output(output, force)
    c = C.comparison(loaded, [light_graph(s) for s in loaded], [_source(s, list(sets or [])) for s in specs], seq_len)
    rep = R.compare_report(c)
    _emit({
        "terminal": lambda console: R.print_terminal(rep, console),
        "markdown": lambda: R.to_markdown(rep, title=False),
        "html": lambda: R.to_html(rep),
        "csv": lambda: R.to_csv(rep),
        "json": lambda: json.dumps(C.to_json_data(c), indent=2, ensure_ascii=False) + "\n",
    }, name, output, force)


@app.command("draw")
def draw_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file, library name or compiled model directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The diagram file (.svg, .png, .dot, .mmd).")],
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="svg | png | dot | mermaid (default: from the suffix).")] = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Block diagram of the architecture: the stack, and one layer opened up.

    svg/png need Graphviz's `dot`; without it the DOT text is written to FILE.dot, the message says how to install Graphviz, and the exit status is 2 (the requested file was not made).
    """
    from archc import draw as W
    from archc.cost import light_graph

    kind = W.format_for(output, fmt)
    s = load(spec, list(sets or []))
    _check_output(output, force)
    W.check_fallback(output, kind, force, f"-o {output}")
    graph = light_graph(s)  # layer 0 opened up and "x N": a few layers suffice
    W.write_diagram(W.model_diagram(graph), output, kind, force=force, label=f"-o {output}")
    typer.echo(f"wrote {output}", err=True)
