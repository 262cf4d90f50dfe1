"""`archc train --parallel` under torchrun on the CPU (gloo): the same losses as the one-process
`archc train`, a resume at another world size and layout, `archc compile` of the distributed
checkpoint, and bad input in one line with exit status 2."""

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
TINY = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "attention.kv_heads=2",
        "--set", "mlp.d_ff=160", "--set", "vocab_size=97", "--set", "max_seq_len=64", "--set", "dtype=float32",
        "--set", "training.schedule.warmup_steps=0", "--set", "training.optimizer.lr=0.01"]
COMMON = ["--batch", "4", "--seq-len", "32", "--eval-every", "2", "--device", "cpu"] + TINY


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _archc(argv: list[str], cwd: Path, nproc: int | None = None, **env) -> subprocess.CompletedProcess:
    if nproc is None:
        cmd = [sys.executable, "-m", "archc.cli", *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(_port()),
               "-m", "archc.cli", *argv]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(**env), timeout=600)


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainpar")
    np.random.default_rng(0).integers(0, 97, 20000).astype("<u2").tofile(tmp / "tok.bin")
    single = _archc(["train", "llama", "--data", "tok.bin", "--out", "single", "--steps", "4", *COMMON], tmp)
    assert single.returncode == 0, single.stderr[-3000:]
    first = _archc(["train", "llama", "--data", "tok.bin", "--out", "par", "--steps", "2", "--parallel", "tp", *COMMON], tmp, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    # resumed by ONE process, sharded another way (FSDP over a world of 1)
    second = _archc(["train", "llama", "--data", "tok.bin", "--out", "par", "--steps", "4", "--resume", "--parallel", "fsdp", *COMMON],
                    tmp, nproc=1)
    assert second.returncode == 0, second.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_parallel_run_resumed_at_another_world_size_matches_one_process(runs):
    single, par = _losses(runs / "single"), _losses(runs / "par")
    assert sorted(par) == sorted(single) == [1, 2, 3, 4]
    assert max(abs(single[k] - par[k]) for k in single) < 1e-5, (single, par)
    worlds = [r.get("world") for r in map(json.loads, (runs / "par" / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert worlds == [2, 2, 1, 1]


@pytest.mark.slow
def test_compile_consolidates_the_distributed_checkpoint(runs):
    from safetensors.torch import load_file

    r = _archc(["compile", "par", "-o", "par-onnx"], runs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (runs / "par-onnx" / "model.onnx").exists()
    from archc.parallel.checkpoint import consolidate
    from archc.train.checkpoint import latest_checkpoint

    merged = consolidate(latest_checkpoint(runs / "par"))
    reference = load_file(str(latest_checkpoint(runs / "single") / "model.safetensors"))
    assert sorted(merged) == sorted(reference)
    assert max(float((merged[k] - reference[k]).abs().max()) for k in reference) < 1e-5
    # the ONNX model's greedy tokens are the consolidated PyTorch model's
    run = _archc(["run", "par-onnx", "--prompt-ids", "5,9,2,7", "--max-new-tokens", "6"], runs)
    assert run.returncode == 0, run.stderr[-2000:]
    import archc
    from archc.loader import load_spec
    from exporters.torch_module import build_module, greedy_generate

    graph = archc.compile(load_spec(runs / "par" / "spec.yaml"))
    tokens = greedy_generate(build_module(graph, weights=merged), graph, [[5, 9, 2, 7]], 6)[0]
    assert ",".join(map(str, tokens)) in run.stdout.replace(" ", ""), (tokens, run.stdout)


@pytest.mark.slow
def test_bad_parallel_input_is_one_line_exit_2(runs):
    one = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    three = dict(one, WORLD_SIZE="3")
    cases = [
        (["--out", "bad1", "--parallel", "tp"], three, "attention.n_heads=4 is not divisible by --tp 3"),
        (["--out", "bad2", "--parallel", "fsdp+tp", "--tp", "3"], one, "--parallel fsdp+tp needs --tp N dividing the world size 1"),
        (["--out", "bad3", "--parallel", "ddp"], one, "--parallel 'ddp'"),
        (["--out", "par", "--resume", "--parallel", "fsdp", "--set", "n_layers=3"], one, "the spec differs"),
        (["--out", "single", "--resume", "--parallel", "fsdp"], one, "one-process checkpoint"),
    ]
    for extra, env, words in cases:
        r = _archc(["train", "llama", "--data", "tok.bin", "--steps", "6", *COMMON, *extra], runs, **env)
        lines = [x for x in r.stderr.splitlines() if x.strip() and "Warning" not in x and "warn" not in x]
        assert r.returncode == 2 and words in r.stderr and len(lines) == 1 and "Traceback" not in r.stderr, (extra, r.stderr[-2000:])


@pytest.mark.slow
def test_generate_tp_cli_tokens_equal_one_process(runs):
    import archc
    from archc.loader import load_spec
    from archc.parallel.checkpoint import consolidate
    from archc.train.checkpoint import latest_checkpoint
    from exporters.torch_module import build_module, greedy_generate

    r = _archc(["generate-tp", "par", "--prompt-ids", "5,9,2,7", "--prompt-ids", "3,4", "--max-new-tokens", "6"], runs, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    graph = archc.compile(load_spec(runs / "par" / "spec.yaml"))
    expected = greedy_generate(build_module(graph, weights=consolidate(latest_checkpoint(runs / "par"))), graph, [[5, 9, 2, 7], [3, 4]], 6)
    assert r.stdout.split() == [",".join(map(str, row)) for row in expected]
