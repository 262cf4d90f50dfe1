"""`archc train --parallel` runs the one-process loop's body (archc.train.loop.run_steps), so what the
one-process loop checks and prints, the parallel one does too: the option checks (a bad
--val-fraction was not checked under --parallel), the progress on stderr (it went to stdout), the log
records. One process with torchrun's environment (a world of 1, gloo) keeps this quick."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "attention.n_heads=4", "--set", "attention.kv_heads=2",
        "--set", "mlp.d_ff=64", "--set", "vocab_size=97", "--set", "max_seq_len=32", "--set", "dtype=float32"]
COMMON = ["--batch", "2", "--seq-len", "16", "--eval-every", "1", "--eval-batches", "1", "--device", "cpu", *TINY]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp: Path, *extra: str, parallel: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if parallel:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
        extra = (*extra, "--parallel", "fsdp")
    return subprocess.run([sys.executable, "-m", "archc.cli", "train", "llama", "--data", "tok.bin", *COMMON, *extra],
                          cwd=tmp, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sharedloop")
    np.random.default_rng(0).integers(0, 97, 3000).astype("<u2").tofile(tmp / "tok.bin")
    return tmp


@pytest.mark.slow
def test_parallel_checks_the_options_the_loop_checks(data):
    for parallel in (False, True):
        r = _train(data, "--out", f"badval-{parallel}", "--steps", "1", "--val-fraction", "1.5", parallel=parallel)
        lines = [x for x in r.stderr.splitlines() if x.strip() and "arn" not in x]
        assert r.returncode == 2 and "--val-fraction 1.5" in r.stderr and len(lines) == 1, (parallel, r.stderr[-2000:])
        assert not (data / f"badval-{parallel}").exists()


@pytest.mark.slow
def test_parallel_progress_and_log_are_the_loops(data):
    one = _train(data, "--out", "one", "--steps", "2", parallel=False)
    par = _train(data, "--out", "par", "--steps", "2", parallel=True)
    assert one.returncode == 0 and par.returncode == 0, (one.stderr[-2000:], par.stderr[-2000:])
    for r in (one, par):  # the progress lines go to stderr: stdout stays free for what a command outputs
        assert "step 2/2  loss" in r.stderr and "step 2/2" not in r.stdout, (r.stdout, r.stderr[-2000:])

    def records(run: str) -> list[dict]:
        return [json.loads(x) for x in (data / run / "log.jsonl").read_text().splitlines()]

    a, b = records("one"), records("par")
    assert [sorted(set(r) - {"world"}) for r in b] == [sorted(r) for r in a]
    assert all(r["world"] == 1 for r in b if "loss" in r)
    losses = [(r["step"], r.get("loss", r.get("val_loss"))) for r in a], [(r["step"], r.get("loss", r.get("val_loss"))) for r in b]
    assert max(abs(x[1] - y[1]) for x, y in zip(*losses)) < 1e-5, losses
    assert (data / "par" / "loss.png").is_file()
