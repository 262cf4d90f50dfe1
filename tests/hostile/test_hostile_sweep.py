"""Hostile arguments found by the command sweep that no other test covers: numbers far out of range that
hung, and a file where a directory option wants a directory. Each is one line naming the argument and the
fix, exit status 2, quickly."""

from __future__ import annotations

import pytest

from hostile_util import T, deadline, in_process, refused


@pytest.mark.parametrize("gpus", [10**12, 2**24 + 1])
def test_plan_gpus_past_any_cluster(gpus, capsys):
    # the fsdp+tp divisor search ran to --gpus: 10**12 steps, a hang
    with deadline(20):
        refused(in_process(["plan", "llama", "--gpus", str(gpus)], capsys), f"--gpus {gpus}: give between 1 and 16,777,216 GPUs")


def test_plan_fsdp_tp_lists_every_proper_divisor_of_gpus(capsys):
    # oracle: the divisors of 36 in [2, 36) written out; the sqrt search must neither drop nor repeat one (6 = 6 x 6)
    import json

    rc, out, _ = in_process(["plan", "llama", *T, "--gpus", "36", "--parallel", "fsdp+tp", "--json"], capsys)
    got = json.loads(out)
    tps = sorted([r["tp"] for r in got["strategies"]] + [int(x.split(" x tp ")[1].split(":")[0]) for x in got["not_possible"]])
    assert rc == 0 and tps == [2, 3, 4, 6, 9, 12, 18], tps


@pytest.mark.parametrize("under", ["", "sub"])
def test_bench_work_dir_is_a_file(under, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    work = f / under if under else f
    with deadline(60):
        refused(in_process(["bench", "llama", *T, "--device", "cpu", "--dtype", "fp32", "--backends", "ort", "--new-tokens", "2",
                            "--prompt-len", "4", "--repeats", "1", "--work-dir", work], capsys),
                f"--work-dir {work}: {f} exists and is not a directory; give a directory")
    assert f.read_text() == "mine\n"
