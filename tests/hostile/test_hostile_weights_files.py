"""A FIFO, a device or a symlink loop given where archc hands a path to safetensors (generate-tp --weights,
export-hf --weights, compile --weights, a training checkpoint's model.safetensors): one line naming the
option and what to give, exit 2. A FIFO hung: safetensors' open() blocks in Rust until a writer comes, and
not even SIGTERM ended it (the Python handler never ran). Each case runs in a child killed at a timeout,
since a hang here cannot be interrupted from inside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from hostile_util import ROOT, T, child, refused
from test_hostile_generate_tp import WORLD1


def _special(tmp_path, kind):
    p = tmp_path / "w.safetensors"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", p)
    else:
        os.symlink(p.name, p)  # a link to itself
    return p


WORDS = {"fifo": "is a FIFO (named pipe), not a regular file", "dev-zero": "is a character device, not a regular file",
         "loop": "symbolic link loop"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", sorted(WORDS))
@pytest.mark.parametrize("command", ["generate-tp", "export-hf", "compile"])
def test_weights_that_are_not_files(command, kind, tmp_path):
    w = _special(tmp_path, kind)
    env = None
    if command == "generate-tp":
        argv = ["generate-tp", "llama", "--prompt-ids", "1,2", *T, "--weights", w]
        env = {**WORLD1, "MASTER_PORT": str(_port())}
    elif command == "export-hf":
        argv = ["export-hf", "llama", *T, "--weights", w, "-o", tmp_path / "out"]
    else:
        argv = ["compile", "llama", *T, "--weights", w, "-o", tmp_path / "out"]
    try:
        result = child(argv, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} --weights {kind}: hung")
    refused(result, f"--weights {w}: {WORDS[kind]}")
    assert not (tmp_path / "out").exists()


def test_training_checkpoint_that_is_a_fifo(tmp_path):
    from archc.train.checkpoint import MODEL_FILE

    os.mkfifo(tmp_path / MODEL_FILE)
    code = ("import sys\nfrom pathlib import Path\nfrom archc.errors import UserError\nfrom archc.train.checkpoint import load_model_weights\n"
            "try:\n    load_model_weights(Path(sys.argv[1]))\nexcept UserError as e:\n    print(e)\n")
    try:
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired:
        pytest.fail("load_model_weights on a FIFO hung")
    assert p.stdout.strip() == f"{tmp_path / MODEL_FILE}: is a FIFO (named pipe), not a regular file; give a safetensors checkpoint", p.stderr
