"""`archc train`: bit-exact resume on the CPU, Ctrl-C saves a loadable checkpoint, every bad input is one
line with exit status 2, and a folder that is not a run is never replaced without --force."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

TINY = ["n_layers=2", "d_model=32", "attention.n_heads=4", "attention.sharing=gqa", "attention.kv_heads=2", "mlp.d_ff=64",
        "vocab_size=97", "max_seq_len=32", "training.schedule.warmup_steps=2"]


def tiny_args(tmp: Path, data: Path, out: str, *extra: str) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return ["train", "llama", *sets, "--data", str(data), "--out", str(tmp / out), "--batch", "4", "--seq-len", "16",
            "--device", "cpu", "--eval-every", "3", "--eval-batches", "1", *extra]


@pytest.fixture
def token_file(tmp_path) -> Path:
    ids = (np.arange(4000) * 7 + np.arange(4000) // 13) % 97  # a learnable, deterministic stream
    path = tmp_path / "tokens.bin"
    ids.astype("<u2").tofile(path)
    return path


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def same_bits(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a)


def test_resume_is_bit_exact(tmp_path, token_file, capsys):
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "straight", "--steps", "6"), capsys)
    assert rc == 0, err
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "halves", "--steps", "3"), capsys)
    assert rc == 0, err
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "halves", "--steps", "6", "--resume"), capsys)
    assert rc == 0, err
    assert same_bits(final_weights(tmp_path / "straight"), final_weights(tmp_path / "halves"))
    # negative control: one step fewer differs, so equal bytes above are not an accident of the setup
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "short", "--steps", "5"), capsys)
    assert rc == 0, err
    assert not same_bits(final_weights(tmp_path / "short"), final_weights(tmp_path / "straight"))
    log = [json.loads(x) for x in (tmp_path / "halves" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "halves" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert log[-1]["val_loss"] < log[0].get("loss", 99)  # it learns


def test_text_data_carries_its_tokenizer(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 300)
    args = tiny_args(tmp_path, text, "run", "--steps", "1", "--set", "vocab_size=256")
    rc, _, err = run_cli(args, capsys)
    assert rc == 0, err
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    ids = tok.encode("héllo").ids
    assert ids == list("héllo".encode()) and tok.decode(ids) == "héllo"  # bytes, decoded back


def _one_line_exit_2(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_bad_inputs_are_one_line_exit_2(tmp_path, token_file, capsys):
    rc, _, err = run_cli(tiny_args(tmp_path, tmp_path / "nope.bin", "a", "--steps", "1"), capsys)
    _one_line_exit_2(rc, err, "nope.bin", "no such file")
    big = tmp_path / "big.bin"
    np.array([1, 2, 97, 3] * 100, dtype="<u2").tofile(big)
    rc, _, err = run_cli(tiny_args(tmp_path, big, "b", "--steps", "1"), capsys)
    _one_line_exit_2(rc, err, "97", "vocab_size")
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "c", "--steps", "1") + ["--seq-len", "33"], capsys)
    _one_line_exit_2(rc, err, "--seq-len 33", "max_seq_len 32")
    if os.geteuid() != 0:
        locked = tmp_path / "locked.bin"
        np.zeros(100, dtype="<u2").tofile(locked)
        locked.chmod(0)
        rc, _, err = run_cli(tiny_args(tmp_path, locked, "d", "--steps", "1"), capsys)
        _one_line_exit_2(rc, err, "locked.bin", "not readable")
    # a user's folder is never replaced without --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "mine", "--steps", "1"), capsys)
    _one_line_exit_2(rc, err, "--force")
    assert (mine / "notes.txt").read_text() == "keep me"
    # corrupt checkpoint on --resume
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "e", "--steps", "3"), capsys)
    assert rc == 0, err
    ckpt = tmp_path / "e" / "checkpoints" / "step-00000003"
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "e", "--steps", "4", "--resume"), capsys)
    _one_line_exit_2(rc, err, "model.safetensors")
    rc, _, err = run_cli(tiny_args(tmp_path, token_file, "e", "--steps", "4"), capsys)  # a run, no --resume
    _one_line_exit_2(rc, err, "--resume")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_loadable_checkpoint(tmp_path, token_file, signum):
    args = tiny_args(tmp_path, token_file, "run", "--steps", "100000", "--eval-every", "0")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "archc.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err, err
    from safetensors.torch import load_file

    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    weights = load_file(str(tmp_path / "run" / "checkpoints" / latest / "model.safetensors"))
    assert "layers.0.attn.q.weight" in weights
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert latest == f"step-{steps[-1]:08d}"


@pytest.mark.parametrize("batch, code", [(10**12, 2), (225, 2), (224, 0)])
def test_batch_past_the_training_windows_is_refused_before_the_run_folder(tmp_path, token_file, capsys, batch, code):
    """4000 tokens, 10% validation: 3600 training ids hold (3600 - 1) // 16 = 224 windows of --seq-len 16, counted by
    hand. A bigger --batch is one line naming it, exit 2, and no --out (10**12 built a list of that many rows until
    the machine ran out of memory, leaving --out behind); 224 itself trains (the negative control)."""
    args = tiny_args(tmp_path, token_file, "run", "--steps", "1", "--val-fraction", "0.1")
    args[args.index("--batch") + 1] = str(batch)
    rc, _, err = run_cli(args, capsys)
    if code == 2:
        _one_line_exit_2(rc, err, f"--batch {batch}", "224 windows")
        assert not (tmp_path / "run").exists()
    else:
        assert rc == 0, err
