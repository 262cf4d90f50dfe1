"""`archc generate-tp` with bad arguments or a bad torchrun environment: one line naming the argument and
the fix, exit status 2, and before torch is imported wherever no torch is needed to answer (as `archc
train --parallel`, tests/train/test_train_device_cli.py). Each case stops at its check: no process group is
ever made. Cases run in one fresh interpreter per group (the import state of a shell command)."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from conftest import cli_in_fresh_python
from hostile_util import T

WORLD1 = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29517"}
NO_TORCHRUN = dict.fromkeys(WORLD1)  # None removes the variable

# (extra argv, environment over WORLD1, words the one line must hold)
LIGHT = [
    (["--device", "cuda:0"], {}, "--device cuda:0 with generate-tp: each process takes the GPU of its LOCAL_RANK; pass --device cuda"),
    (["--device", "gpu"], {}, "--device 'gpu': not a device; use auto, cpu, cuda or cuda:N"),
    (["--dtype", "fp8"], {}, "--dtype 'fp8': choose float32, bfloat16 or float16"),
    ([], NO_TORCHRUN, "generate-tp: launch with torchrun, e.g. torchrun --nproc-per-node 2 -m archc.cli generate-tp"),
    ([], {"WORLD_SIZE": "x"}, "environment WORLD_SIZE='x': not a process count or rank"),
    ([], {"RANK": "1"}, "environment RANK=1, WORLD_SIZE=1: not a torchrun world"),
    ([], {"MASTER_ADDR": None, "MASTER_PORT": None}, "environment MASTER_ADDR and MASTER_PORT not set"),
    ([], {"WORLD_SIZE": "3"}, "attention.n_heads=4 is not divisible by --tp 3"),
    (["--max-new-tokens", str(10**12)], {}, "--max-new-tokens 1000000000000 exceeds the spec's max_seq_len 64"),
    (["--max-new-tokens", "0"], {}, "--max-new-tokens must be at least 1"),
    (["--max-new-tokens", "-5"], {}, "--max-new-tokens must be at least 1"),
    (["--prompt-ids", ""], {}, "--prompt-ids: every prompt needs at least one token id"),
    (["--prompt-ids", "1,100"], {}, "--prompt-ids: id 100 is outside the vocabulary [0, 100)"),
    (["--prompt-ids", "-1"], {}, "--prompt-ids: id -1 is outside the vocabulary"),
    (["--prompt-ids", "1,x"], {}, "--prompt-ids '1,x': give comma-separated integer token ids"),
]


def _argv(extra: list) -> list:
    ids = [] if "--prompt-ids" in extra else ["--prompt-ids", "1,2"]
    return ["generate-tp", "llama", *ids, *T, *extra]


def _lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip() and "warn" not in x.lower()]


@pytest.mark.parametrize("extra,env,words", LIGHT, ids=[f"{' '.join(c[0])} {c[1]}" for c in LIGHT])
def test_refused_in_one_line_before_torch(extra, env, words):
    r = cli_in_fresh_python(_argv(extra), env={**WORLD1, **env})
    lines = _lines(r.stderr)
    assert r.codes == [2] and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, (r.codes, r.stderr[-2000:])
    assert r.heavy == [], f"imported {r.heavy} before refusing {extra} {env}"


def _not_a_safetensors(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\xff" * 64)
    return p


def _wrong_shape(tmp_path):
    import torch
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"embed.weight": torch.zeros(3, 3)}, str(p))
    return p


# Only torch can say whether CUDA is there; a weights file is read with torch. Still one line, before
# any process group (this machine has no CUDA: --device cuda is the refusal a GPU-less user meets).
@pytest.mark.parametrize("extra,words", [
    (lambda tmp: ["--device", "cuda"], "--device cuda: no CUDA device here; use --device cpu"),
    (lambda tmp: ["--weights", tmp / "absent.safetensors"], "absent.safetensors: no such file; give a safetensors file"),
    (lambda tmp: ["--weights", tmp], "is a directory, not a regular file; give a safetensors file"),
    (lambda tmp: ["--weights", _not_a_safetensors(tmp)], "w.safetensors: not a readable safetensors file"),
    (lambda tmp: ["--weights", _wrong_shape(tmp)], "missing"),
], ids=["no-cuda", "weights-absent", "weights-dir", "weights-garbage", "weights-foreign"])
def test_refused_in_one_line_after_torch(tmp_path, extra, words):
    r = cli_in_fresh_python(_argv(extra(tmp_path)), env=WORLD1)
    lines = _lines(r.stderr)
    assert r.codes == [2] and len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, (r.codes, r.stderr[-2000:])


# ---- Ctrl-C / SIGTERM mid-run ------------------------------------------------------------------
# generate-tp writes no output file; what it makes is its scratch folder (archc-gen-* in TMPDIR, where a
# run folder's distributed checkpoint is consolidated). It runs on the CPU (gloo) in a world of one, the
# process torchrun would start. Under torchrun itself, torch's launcher forwards the signal, prints its own
# SignalException traceback and leaves its torchelastic_* folder in TMPDIR: torch's, not archc's.

@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_stopped_mid_run_leaves_no_scratch(sig, code, tmp_path):
    from hostile_util import child

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    big = ["--set", "n_layers=8", "--set", "d_model=512", "--set", "attention.n_heads=8", "--set", "vocab_size=32000",
           "--set", "max_seq_len=64"]
    proc = child(["generate-tp", "llama", "--prompt-ids", "1,2", "--max-new-tokens", "60", *big], start=True,
                 env={**WORLD1, "MASTER_PORT": str(port), "TMPDIR": str(tmp)})
    t0 = time.monotonic()
    while not any(p.name.startswith("archc-gen-") for p in tmp.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120, "generate-tp never made its scratch folder"
        time.sleep(0.02)
    time.sleep(0.5)  # into the process group's start and the generation
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err and out == "", (proc.returncode, err[-2000:])
    assert list(tmp.iterdir()) == []
