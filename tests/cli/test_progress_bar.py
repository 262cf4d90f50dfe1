"""Long work shows a progress bar (tensors, bytes, ETA) when stderr is a terminal, and nothing extra
when it is not."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
T = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
     "--set", "vocab_size=100", "--set", "max_seq_len=64"]


def test_no_terminal_no_progress(tmp_path, capsys):
    rc, out, err = run_cli(["compile", "llama", *T, "-o", str(tmp_path / "m")], capsys)
    assert rc == 0
    assert err == ""  # stderr is not a terminal: nothing extra
    assert "tensors" not in out.split("lowering:")[0].replace("weight tensors", "")


def test_progress_bar_draws_tensors_bytes_and_eta():
    from rich.console import Console

    from archc.progress import TensorProgress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with TensorProgress("writing weights", 3, 3 * 2**20, enabled=True, console=console) as bar:
        for _ in range(3):
            bar.advance(2**20)
        console.print(bar._bar.get_renderable())  # the last frame (the live bar is transient)
    text = buf.getvalue()
    assert "writing weights: 3/3 tensors" in text and "MiB" in text and "ETA" in text
    buf2 = io.StringIO()
    with TensorProgress("x", 1, 1, enabled=False, console=Console(file=buf2, force_terminal=True)) as bar:
        bar.advance(1)
    assert buf2.getvalue() == ""  # disabled: nothing drawn


def test_compile_on_a_terminal_shows_the_bar(tmp_path):
    """A real pseudo-terminal on stderr: the bar is drawn there; stdout (a pipe) keeps only its lines."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "archc.cli", "compile", "llama", *T, "-o", str(tmp_path / "m")],
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert "writing weights" in err and "tensors" in err and "ETA" in err
    assert "writing weights" not in out and out.startswith("compiled ")
