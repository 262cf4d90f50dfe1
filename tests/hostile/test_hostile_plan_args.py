"""`archc plan` arguments found by a hostile sweep that were read silently: --parallel asking for a kind that has no
strategy on --gpus (fsdp or tp on one GPU, fsdp+tp on a prime count) printed empty tables, exit 0; a --gpu-memory
under one byte planned against 0 B; an empty --dtype/--compute-dtype was read as the default. Each is now one
line naming the argument, exit 2 (or, beside a kind that does apply, a `not possible` line). Negative controls:
the same commands with good values, and no `not possible` noise when --parallel is not given."""

from __future__ import annotations

import pytest

from hostile_util import in_process, refused


def _plan(capsys, *argv):
    return in_process(["plan", "llama", *argv], capsys)


@pytest.mark.parametrize("argv, says", [
    (["--parallel", "fsdp", "--gpus", "1"], "--parallel fsdp: needs --gpus 2 or more (got 1)"),
    (["--parallel", "tp"], "--parallel tp: needs --gpus 2 or more (got 1)"),
    (["--parallel", "fsdp+tp", "--gpus", "7"], "--parallel fsdp+tp: needs --gpus that splits into fsdp x tp"),
    (["--parallel", "fsdp+tp", "--parallel", "tp", "--gpus", "1", "--json"], "--parallel fsdp+tp: "),
    (["--gpu-memory", "0.0000001B"], "--gpu-memory '0.0000001B': give a positive size"),
    (["--dtype", ""], "--dtype '': choose float32, bfloat16 or float16"),
    (["--compute-dtype", ""], "--compute-dtype '': choose float32, bfloat16 or float16"),
])
def test_refused_in_one_line(capsys, argv, says):
    refused(_plan(capsys, *argv), says)


def test_a_kind_that_does_not_apply_beside_one_that_does_is_named(capsys):
    rc, out, err = _plan(capsys, "--parallel", "single", "--parallel", "fsdp", "--gpus", "1")
    assert rc == 0, err
    assert "not possible fsdp: needs --gpus 2 or more (got 1)" in " ".join(out.split()), out


@pytest.mark.parametrize("argv", [[], ["--gpus", "7"], ["--gpu-memory", "1B"], ["--dtype", "bfloat16", "--compute-dtype", "float16"],
                                  ["--parallel", "fsdp", "--gpus", "2"]])
def test_good_arguments_still_plan(capsys, argv):
    rc, out, err = _plan(capsys, *argv)
    assert rc == 0, err
    assert "generation" in out
    assert "needs --gpus" not in out  # without --parallel, kinds that do not apply stay out as before
