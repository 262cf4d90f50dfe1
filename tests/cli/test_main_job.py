"""The README's main-job command (`archc demo`) runs end to end and checks itself."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _archc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archc.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_readme_starts_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "archc demo" in block and "bash scripts/test.sh" in block
    assert "pytest" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_demo_compiles_runs_and_agrees(tmp_path):
    r = _archc("demo", "--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4",
               "--set", "mlp.d_ff=96", "-o", str(tmp_path / "m"), "--device", "cpu", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert "all" in r.stdout and "library specs valid" in r.stdout
    assert "agree token for token" in r.stdout
    assert (tmp_path / "m" / "model.onnx").exists()


def test_demo_bad_spec_is_one_line_exit_2():
    r = _archc("demo", "no-such-spec")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
