"""`archc import-hf` checks a checkpoint with a progress bar (archc.progress.TensorProgress, progress=None):
drawn on stderr only when stderr is a terminal, never on stdout, so stdout stays the one `wrote ...`
line whatever is a terminal and a pipe or log gets nothing extra. Real pseudo-terminals; the drawn bar
in the first case is the negative control that makes 'nothing drawn' in the others mean something."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_tiny_hf_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return save_tiny_hf_llama(tmp_path_factory.mktemp("hfprog") / "tiny", layers=2)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:  # the other end closed (Linux pty: EIO)
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _import(hf_dir: Path, out: Path, tty: str) -> tuple[str, str]:
    """Run import-hf with `tty` ('stderr', 'stdout' or 'none') on a pseudo-terminal, the other stream(s) piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm"}
    cmd = [sys.executable, "-m", "archc.cli", "import-hf", str(hf_dir), "-o", str(out)]
    if tty == "none":
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout, p.stderr
    master, slave = pty.openpty()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, tty: slave}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, **streams)
    os.close(slave)
    on_tty = _read_all(master).decode(errors="replace")
    piped = (proc.stdout if tty == "stderr" else proc.stderr).read().decode()
    assert proc.wait(timeout=300) == 0, (on_tty, piped)
    os.close(master)
    return (piped, on_tty) if tty == "stderr" else (on_tty, piped)


def test_bar_on_a_terminal_stderr_only(hf_dir, tmp_path):
    out, err = _import(hf_dir, tmp_path / "a.yaml", "stderr")
    assert "checking checkpoint" in err and "tensors" in err and "ETA" in err, err
    assert out.splitlines() == [out.strip()] and out.startswith("wrote ") and "checkpoint matches" in out, out


def test_no_terminal_nothing_extra(hf_dir, tmp_path):
    out, err = _import(hf_dir, tmp_path / "b.yaml", "none")
    assert err == "" and out.splitlines() == [out.strip()] and out.startswith("wrote "), (out, err)


def test_terminal_stdout_gets_no_bar(hf_dir, tmp_path):
    """stdout a terminal, stderr a pipe (`archc import-hf ... 2>log`): the bar follows stderr, so it is not drawn."""
    out, err = _import(hf_dir, tmp_path / "c.yaml", "stdout")
    assert err == "", err
    assert "checking checkpoint" not in out and "ETA" not in out and out.strip().startswith("wrote "), out
    assert (tmp_path / "a.yaml").exists() is False  # each case wrote only its own file
    assert (tmp_path / "c.yaml").read_text().startswith("# Imported by `archc import-hf`")
