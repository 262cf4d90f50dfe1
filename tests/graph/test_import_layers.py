"""The package layers (README "Layout"): the core (spec, loader, graph, cost, diff, compare, draw,
render) imports neither the emitters (exporters/) nor onnxruntime nor the benchmark code; only the
command modules, the runners (archc/runner/ for onnxruntime; archc/train/ and archc/parallel/,
which train and generate with the PyTorch module) and archc.bench reach the emitters; nothing edits
sys.path.

Two checks, because each misses what the other sees: a fresh interpreter that imports the core and
lists what came with it (catches an import pulled in transitively through a module outside the
list), and a scan of every import statement, also those inside functions, which run only when the
function is called (a lazy `from exporters...` in graph.py would pass the first check)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("spec", "loader", "graph", "cost", "diff", "compare", "draw", "render")
# Top-level packages (and archc subpackages) the core must not import, at import time or lazily.
FORBIDDEN_FOR_CORE = ("exporters", "onnxruntime", "onnx", "torch", "transformers", "benchmarks", "archc.bench", "archc.runner")


def _imported_names(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import statement in `source`, nested ones included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _hits(source: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted({f"{line}: {name}" for line, name in _imported_names(source)
                   if any(name == p or name.startswith(p + ".") for p in prefixes)})


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py"))


def _loads_after_import(modules: list[str]) -> list[str]:
    code = ("import json, sys\n"
            f"for m in {modules!r}: __import__(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    return json.loads(p.stdout)


def _forbidden(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == p or m.startswith(p + ".") for p in FORBIDDEN_FOR_CORE)]


def test_importing_the_core_loads_no_emitter_runtime_or_benchmark():
    loaded = _loads_after_import([f"archc.{m}" for m in CORE] + ["archc", "archc.cli", "archc.bench"])
    assert [f"archc.{m}" for m in CORE if f"archc.{m}" not in loaded] == []  # the check imported what it names
    assert _forbidden(loaded) == ["archc.bench"]  # only the package asked for; it pulls in nothing heavy


def test_the_import_check_sees_an_emitter_negative_control():
    assert {"exporters.onnx_export", "onnx"} <= set(_forbidden(_loads_after_import(["archc.graph", "exporters.onnx_export"])))


def test_core_modules_import_no_emitter_even_lazily():
    bad = {p.name: h for p in (ROOT / "archc").glob("*.py") if p.stem in CORE
           for h in [_hits(p.read_text(), FORBIDDEN_FOR_CORE)] if h}
    assert bad == {}


def test_only_commands_runners_and_bench_import_exporters():
    allowed = lambda p: p.parts[-2] in ("commands", "bench", "train", "parallel", "runner")  # noqa: E731
    bad = {str(p.relative_to(ROOT)): h for p in _modules("archc") if not allowed(p)
           for h in [_hits(p.read_text(), ("exporters",))] if h}
    assert bad == {}
    # the bench command imports the harness inside its function: `archc --help` does not load it
    tree = ast.parse((ROOT / "archc" / "commands" / "bench_cmds.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not _hits(ast.unparse(ast.Module(body=top, type_ignores=[])), ("archc.bench", "exporters"))


def test_the_scan_sees_an_import_inside_a_function_negative_control():
    src = "import os\n\ndef f():\n    from exporters.onnx_export import export\n    import onnxruntime as ort\n"
    assert _hits(src, FORBIDDEN_FOR_CORE) == ["4: exporters.onnx_export", "4: exporters.onnx_export.export", "5: onnxruntime"]


def _edits_sys_path(source: str) -> list[int]:
    """Lines that call a method of sys.path or assign to it / one of its items."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for t in getattr(node, "targets", [getattr(node, "target", None)]):
                target = t.value if isinstance(t, ast.Subscript) else t
        if (isinstance(target, ast.Attribute) and target.attr == "path"
                and isinstance(target.value, ast.Name) and target.value.id == "sys"):
            lines.append(node.lineno)
    return sorted(lines)


def test_nothing_edits_sys_path():
    files = [p for folder in ("archc", "exporters", "benchmarks", "tests", "scripts") for p in _modules(folder)]
    bad = {str(p.relative_to(ROOT)): ln for p in files for ln in [_edits_sys_path(p.read_text())] if ln}
    assert bad == {}
    # negative control: each form the scan must see
    assert _edits_sys_path("import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path[:0] = ['z']\nsys.path += ['w']\n") == [2, 3, 4, 5]
