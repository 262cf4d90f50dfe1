"""Deeply nested YAML (a spec file, or one --set value) is one line naming it, exit 2. libyaml's composer recursed
in C without a depth check: 50000 nested '[' or '{b: ' (100-300 KB, under the 4 MB spec cap) ended the process
with a segmentation fault (exit 139, no message). Text with enough structure characters to nest that deep is now
composed by PyYAML's pure-Python parser, whose recursion stops at Python's limit. Run in a child process: a crash
must not take pytest down. Negative control: the Python composer reads every library spec exactly as libyaml does,
and a shallow spec long enough to take the Python path still loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from archc.loader import _C_SAFE_STRUCTURE, _construct, _Loader, _PyLoader, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def _archc(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archc.cli", *argv], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _one_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-500:])
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0][:300]
    return lines[0]


@pytest.mark.parametrize("text", [
    "[" * 60000 + "]" * 60000,
    "a: " + "{b: " * 60000 + "1" + "}" * 60000,
    "a: " + "[" * 60000 + "]" * 60000,
])
def test_a_deep_spec_file_is_one_line(tmp_path, text):
    (tmp_path / "deep.yaml").write_text(text)
    for command in ("validate", "show"):
        _one_line(_archc(command, "deep.yaml", cwd=tmp_path), "deep.yaml", "nested too deeply")


def test_a_deep_set_value_is_one_line(tmp_path):
    _one_line(_archc("validate", str(ROOT / "specs" / "llama.yaml"), "--set", "n_layers=" + "[" * 60000 + "]" * 60000,
                     cwd=tmp_path), "--set n_layers=", "nested too deeply")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_python_composer_reads_library_specs_as_libyaml_does(path):
    text = path.read_text()
    fast, slow = yaml.compose(text, Loader=_Loader), yaml.compose(text, Loader=_PyLoader)
    read = lambda node: _construct(node, path.name, (), {}, _Loader(""))  # noqa: E731
    assert read(fast) == read(slow)


def test_a_long_shallow_spec_takes_the_python_path_and_loads(tmp_path):
    base = (ROOT / "specs" / "llama.yaml").read_text()
    padding = "".join(f"# {'-' * 10} : padding line {i}\n" for i in range(_C_SAFE_STRUCTURE // 10))  # structure characters, no depth
    assert sum(padding.count(c) for c in "[{-:?") >= _C_SAFE_STRUCTURE
    (tmp_path / "long.yaml").write_text(base + padding)
    assert load_spec(tmp_path / "long.yaml") == load_spec(ROOT / "specs" / "llama.yaml")
