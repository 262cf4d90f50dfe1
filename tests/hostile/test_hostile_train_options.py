"""`archc train` run options out of range: one line naming the option, exit 2, before the run folder exists.
Negative --eval-every/--save-every were taken (step % -1 == 0: an evaluation and a checkpoint at every step;
-5 acted as 5), and --eval-batches 0 evaluated on nothing."""

from __future__ import annotations

import numpy as np
import pytest

from hostile_util import T, in_process, refused


@pytest.mark.parametrize("option, value, words", [
    ("--eval-every", "-1", "--eval-every -1: give 0"),
    ("--save-every", "-5", "--save-every -5: give 0"),
    ("--eval-batches", "0", "--eval-batches 0: must be at least 1"),
    ("--eval-batches", "-2", "--eval-batches -2: must be at least 1"),
])
def test_run_options_out_of_range(option, value, words, tmp_path, capsys):
    np.random.default_rng(0).integers(0, 100, 4000).astype("<u2").tofile(tmp_path / "tok.bin")
    refused(in_process(["train", "llama", *T, "--data", tmp_path / "tok.bin", "--out", tmp_path / "run", "--steps", "2",
                        "--seq-len", "16", "--batch", "2", "--device", "cpu", option, value], capsys), words)
    assert not (tmp_path / "run").exists()


def test_learning_rate_that_overflows_the_step(tmp_path, capsys):
    """lr=1e308 is finite (the spec takes it) but Adam's float32 step size overflows: was torch's 'value cannot
    be converted to type float without overflow' traceback, exit 1; now the non-finite-loss advice."""
    np.random.default_rng(0).integers(0, 100, 4000).astype("<u2").tofile(tmp_path / "tok.bin")
    refused(in_process(["train", "llama", *T, "--set", "training.optimizer.lr=1e308", "--data", tmp_path / "tok.bin",
                        "--out", tmp_path / "run", "--steps", "3", "--seq-len", "16", "--batch", "2", "--device", "cpu"], capsys),
            "the optimizer step overflowed at step 2", "lower the learning rate")
