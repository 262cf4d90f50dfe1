"""`archc train --parallel ... --device ...`: every combination that cannot work is one line naming the
argument and the fix, exit status 2, and (except where only torch can answer: is CUDA there) before torch
is imported. Run through the CLI in a fresh interpreter, with torchrun's environment faked where the case
needs one (no process group is ever made: each case stops at its check)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import cli_in_fresh_python

TINY = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "attention.kv_heads=2",
        "--set", "mlp.d_ff=160", "--set", "vocab_size=97", "--set", "max_seq_len=64"]


def _world(n: int, rank: int = 0) -> dict:
    return {"RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


# (argv beyond train's own, torchrun world or None, words the one line must hold)
LIGHT_CASES = [
    (["--device", "gpu"], None, "--device 'gpu': not a device; use auto, cpu, cuda or cuda:N"),
    (["--device", "meta"], None, "--device 'meta'"),
    (["--device", "cpu:1"], None, "--device 'cpu:1'"),
    (["--parallel", "tp", "--device", "cuda:1"], 2, "--device cuda:1 with --parallel: each process takes the GPU of its LOCAL_RANK; pass --device cuda"),
    (["--parallel", "fsdp", "--device", "cuda:0"], 1, "pass --device cuda"),
    (["--parallel", "tp", "--device", "cpu"], None, "--parallel tp: launch with torchrun"),
    (["--parallel", "single", "--device", "cpu"], 1, "--parallel single: that is one process; drop --parallel"),
    (["--parallel", "ddp"], 2, "--parallel 'ddp': choose fsdp, tp or fsdp+tp"),
    (["--parallel", "tp", "--compile", "--device", "cpu"], 2, "--compile is not supported with --parallel"),
    (["--parallel", "fsdp", "--tp", "2", "--device", "cpu"], 2, "--tp 2 with --parallel fsdp: use --parallel fsdp+tp"),
    (["--parallel", "tp", "--device", "cpu"], 3, "attention.n_heads=4 is not divisible by --tp 3"),
    (["--parallel", "fsdp", "--batch", "3", "--device", "cpu"], 2, "--batch 3 (the global batch) does not split over 2"),
    (["--device", "cpu"], 2, "without --parallel, so every process would train the same run"),
    (["--tp", "2", "--device", "cpu"], None, "--tp needs --parallel tp or fsdp+tp"),
]


def _run(tmp_path, extra: list, world: int | None):
    data = tmp_path / "tok.bin"
    if not data.exists():
        np.random.default_rng(0).integers(0, 97, 4000).astype("<u2").tofile(data)
    env = _world(world) if world else dict.fromkeys(_world(1))  # None: no torchrun variables at all
    argv = ["train", "llama", "--data", data, "--out", tmp_path / "run", "--steps", "1", "--batch", "4", "--seq-len", "16",
            *TINY, *extra]
    return cli_in_fresh_python(argv, env=env)


def _one_line(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip() and "warn" not in x.lower()]


@pytest.mark.parametrize("extra,world,words", LIGHT_CASES, ids=[" ".join(c[0]) + f" @{c[1]}" for c in LIGHT_CASES])
def test_bad_combination_is_one_line_exit_2_before_torch(tmp_path, extra, world, words):
    r = _run(tmp_path, extra, world)
    lines = _one_line(r.stderr)
    assert r.codes == [2] and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, (r.codes, r.stderr[-2000:])
    assert r.heavy == [], f"imported {r.heavy} before refusing {extra}"
    assert not (tmp_path / "run").exists()  # nothing written either


def test_cuda_where_torch_sees_none_is_one_line_exit_2(tmp_path):
    """Only torch knows whether CUDA is there, so torch is imported; but the refusal comes before any process
    group (the old code died in torch.cuda.set_device with a traceback)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for extra, world in ((["--parallel", "tp", "--device", "cuda"], 2), (["--device", "cuda"], None),
                         (["--device", "cuda:5"], None)):
        r = _run(tmp_path, extra, world)
        lines = _one_line(r.stderr)
        assert r.codes == [2] and len(lines) == 1 and "no CUDA device here; use --device cpu" in lines[0], (extra, r.stderr[-2000:])
        assert not (tmp_path / "run").exists()


def test_negative_control_a_good_combination_passes_every_check(tmp_path):
    """The same command with a combination that makes sense gets past the checks (to the missing torchrun
    rendezvous it would join, which is not what these tests are about): the checks do not refuse everything."""
    from archc.loader import load_spec
    from archc.parallel.launch import check_launch
    from archc.train.loop import TrainConfig
    from conftest import ROOT

    spec = load_spec(ROOT / "specs" / "llama.yaml", [a for a in TINY if a != "--set"])
    cfg = TrainConfig(spec=spec, data=tmp_path / "tok.bin", out=tmp_path / "run", batch=4, seq_len=16, device="cpu")
    launch = check_launch(cfg, "fsdp+tp", 2, env=_world(4, rank=3))
    assert (launch.dp, launch.tp, launch.process.rank, launch.process.local_world) == (2, 2, 3, 4)
    assert check_launch(cfg, "tp", None, env=_world(2)).tp == 2
    cfg.device = "cuda"
    assert check_launch(cfg, "fsdp", None, env=_world(2)).dp == 2
