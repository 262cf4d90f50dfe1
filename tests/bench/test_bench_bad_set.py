"""A benchmark script's --set that the spec refuses is archc's one line (naming the --set and the fix), prefixed with
the script's name, exit 2, before any work: benchmarks.standard.load_family turns the UserError into that line.
It was a SpecError traceback (seen with export_cpu's --set attention.n_heads=4 against the family's kv_heads=4/gqa).
The line must be the spec's message, not argparse's (a script without --set would also exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ARGV = {
    "export_cpu": lambda t: ["--json", str(t / "e.json")],
    "profile_ort": lambda t: ["--out", str(t / "d"), "--work-dir", str(t / "w"), "--device", "cpu"],
    "host_step": lambda t: ["--out", str(t / "h.json"), "--work-dir", str(t / "w"), "--device", "cpu"],
}


@pytest.mark.parametrize("module", sorted(ARGV))
def test_refused_set_is_one_line(module, tmp_path):
    p = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *ARGV[module](tmp_path), "--set", "attention.n_heads=3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{module}.py: --set "), lines
    assert "is not divisible by attention.n_heads=3" in lines[0], lines[0]
    assert not list(tmp_path.rglob("*.json"))  # no output written
