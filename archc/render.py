"""Renderers for `diff` and `compare`: one Report model, drawn as terminal (rich), Markdown, HTML or CSV.

Every format is drawn from the same rows of strings, so the terminal table, the Markdown table and
the HTML table hold the same cells. The JSON formats are built from the data (archc.diff.to_json_data,
archc.compare.to_json_data), not from these strings.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from typing import Any

from archc.compare import Comparison
from archc.words import human, human_bytes
from archc.diff import Diff, SpecRow


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Report:
    title: str
    lines: list[str] = field(default_factory=list)  # said before the tables
    tables: list[Table] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Building reports


def fmt_value(v: Any, present: bool = True) -> str:
    if not present:
        return "—"
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _spec_cells(r: SpecRow) -> tuple[str, str]:
    a, b = fmt_value(r.a, r.in_a), fmt_value(r.b, r.in_b)
    if a == b and (r.a != r.b or r.in_a != r.in_b):  # rounding hid the difference: show full precision
        a, b = (repr(r.a) if r.in_a else "—"), (repr(r.b) if r.in_b else "—")
    return a, b


def _signed(n: int, fmt) -> str:
    return ("+" if n > 0 else "−" if n < 0 else "±") + fmt(abs(n))


def diff_report(d: Diff, *, show_all: bool = False) -> Report:
    rep = Report(f"archc diff: {d.a.name} → {d.b.name}")
    rep.lines.append(f"A: {d.a.name} ({d.a.source})")
    rep.lines.append(f"B: {d.b.name} ({d.b.source})")
    n_axes = len(d.spec.changed) + len(d.spec.unchanged)
    if d.identical:
        labels = "; only the labels (name, description, reference) differ" if \
            [d.a.spec.name, d.a.spec.description, d.a.spec.reference] != [d.b.spec.name, d.b.spec.description, d.b.spec.reference] else ""
        rep.lines.append(f"identical: the same architecture ({n_axes} axes compared, component graphs equal{labels})")
        if not show_all:
            return rep
    else:
        rep.lines.append(f"different: {len(d.spec.changed)} of {n_axes} spec axes, {_count(len(d.structure), 'structural change')}")

    rows = d.spec.changed + (d.spec.unchanged if show_all else [])
    if show_all:
        order = {r.axis: i for i, r in enumerate(d.spec.changed + d.spec.unchanged)}
        from archc.diff import SECTION_GROUPS

        rank = {g: i for i, g in enumerate(SECTION_GROUPS)}
        rows = sorted(rows, key=lambda r: (rank.get(r.group, 99), order[r.axis]))
    changed = {r.axis for r in d.spec.changed}
    spec_rows = []
    for r in rows:
        a, b = _spec_cells(r)
        cells = [r.group, r.axis, a, b]
        if show_all:
            cells.append("≠" if r.axis in changed else "=")
        spec_rows.append(cells)
    note = "" if show_all else f"{len(d.spec.unchanged)} unchanged axes not listed (--all lists them)"
    rep.tables.append(Table("Spec", ["section", "axis", "A", "B"] + (["?"] if show_all else []), spec_rows, note))

    rep.tables.append(Table("Structure", ["where", "component", "change (B instead of A)"],
                            [[c.where, c.component, c.text] for c in d.structure],
                            "" if d.structure else "the component graphs are the same"))

    def cell(metric: str, n: int) -> str:
        if metric in ("kv_cache_bytes_per_token", "weight_bytes"):
            return human_bytes(n)
        if metric == "flops_per_token":
            return human(n, "FLOP")
        return human(n)

    cost_rows = []
    for r in d.cost:
        fmt = lambda n, m=r.metric: cell(m, n)  # noqa: E731
        ratio = "—" if r.ratio is None else f"×{r.ratio:.3g}"
        cost_rows.append([r.label.strip() if not r.label.startswith("  ") else "· " + r.label.strip(),
                          fmt(r.a), fmt(r.b), _signed(r.diff, fmt), ratio])
    kv_note = f"KV cache at each spec's dtype ({d.a.spec.dtype.value} / {d.b.spec.dtype.value})"
    rep.tables.append(Table("Cost", ["metric", "A", "B", "change", "ratio"], cost_rows, kv_note))
    return rep


def compare_report(c: Comparison) -> Report:
    rep = Report("archc compare")
    rows = [[axis] + cells for axis, cells in c.rows]
    rep.tables.append(Table("", ["axis"] + c.names, rows))
    return rep


# --------------------------------------------------------------------------------------------
# Formats


def to_markdown(rep: Report, *, title: bool = True) -> str:
    out: list[str] = []
    # Bold lines rather than headings, so that the output can sit inside any document's section.
    if title:
        out += [f"**{rep.title}**", ""]
    if rep.lines:
        out += [f"- {line}" for line in rep.lines] + [""]
    for t in rep.tables:
        if t.title:
            out += [f"**{t.title}**", ""]
        if t.rows:
            out.append("| " + " | ".join(_md(c) for c in t.columns) + " |")
            out.append("|" + "---|" * len(t.columns))
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in t.rows]
            out.append("")
        if t.note:
            out += [f"_{t.note}_", ""]
    return "\n".join(out).rstrip() + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}caption{text-align:left;font-weight:bold;padding:4px 0}p.note{color:#666;font-style:italic}"""


def to_html(rep: Report) -> str:
    """One self-contained, well-formed (XHTML-parsable) file: inline CSS, no scripts, no external links."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8"/>', f"<title>{e(rep.title)}</title>",
           f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{e(rep.title)}</h1>"]
    if rep.lines:
        out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in rep.lines) + "</ul>")
    for t in rep.tables:
        if t.title:
            out.append(f"<h2>{e(t.title)}</h2>")
        if t.rows:
            out.append(f'<table data-section="{e(t.title or "table")}">')
            out.append("<thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr></thead>")
            out.append("<tbody>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows]
            out.append("</tbody></table>")
        if t.note:
            out.append(f'<p class="note">{e(t.note)}</p>')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for t in rep.tables:
        w.writerow(t.columns)
        w.writerows(t.rows)
    return buf.getvalue()


def print_terminal(rep: Report, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = console or Console(highlight=False)
    console.print(f"[bold]{escape(rep.title)}[/]")
    for line in rep.lines:
        style = "green" if line.startswith("identical") else "yellow" if line.startswith("different") else ""
        console.print(f"[{style}]{escape(line)}[/]" if style else escape(line))
    for t in rep.tables:
        if t.rows:
            rt = RichTable(title=escape(t.title) or None, title_justify="left", show_lines=False)
            for c in t.columns:
                rt.add_column(escape(c), overflow="fold")  # compare's columns are spec names
            for row in t.rows:
                rt.add_row(*[escape(c) for c in row])
            console.print(rt)
        elif t.title:
            console.print(f"[bold]{escape(t.title)}[/]")
        if t.note:
            console.print(f"[dim]{escape(t.note)}[/]")


def _count(n: int, noun: str) -> str:
    """'1 structural change', '3 structural changes'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
