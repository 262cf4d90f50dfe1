"""Usage errors in an install without the `click` package (typer >= 0.26 vendors click and no longer
installs it; the test extras pull click in, so the ordinary suite cannot see this).

Each command runs in a subprocess whose import system refuses `click`: one line on stderr, exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that makes `import click` fail, as in a venv where click is not installed.
NO_CLICK = """
import sys
class _NoClick:
    def find_spec(self, name, path=None, target=None):
        if name == "click" or name.startswith("click."):
            raise ImportError("No module named 'click' (blocked by the test)")
sys.meta_path.insert(0, _NoClick())
for m in [m for m in sys.modules if m == "click" or m.startswith("click.")]:
    del sys.modules[m]
"""


def _archc_without_click(args: list[str]) -> subprocess.CompletedProcess:
    code = NO_CLICK + "sys.argv[0] = 'archc'\nfrom archc.cli import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, timeout=120)


def test_the_blocker_blocks_click():
    """Negative control: in the blocked interpreter `import click` really fails."""
    r = subprocess.run([sys.executable, "-c", NO_CLICK + "import click\n"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "blocked by the test" in r.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["validate"], "Missing argument"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["diff", "llama", "palm", "--format", "xml"], "'xml'"),
        (["show", "llama", "--seq-len", "0"], "--seq-len"),
    ],
)
def test_usage_error_is_one_line_exit_2_without_click(args, says):
    r = _archc_without_click(args)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert says in lines[0] and "--help" in lines[0]
    assert r.stdout == ""
