"""Helpers for the hostile-input tests: run archc in-process or in a bounded child process, and
assert the one outcome bad input may have: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T = ["--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4", "--set", "mlp.d_ff=128",
     "--set", "vocab_size=100", "--set", "max_seq_len=64"]
MEMORY_BOUND = 3 * 2**30  # address space a child may use (RLIMIT_AS); torch + onnxruntime map about 1.5 GiB

# The child: the CLI under an address-space limit, so a command that allocates past the bound dies
# with MemoryError instead of swapping the machine.
_CHILD = """
import resource, sys
bound = int(sys.argv[1])
if bound:
    resource.setrlimit(resource.RLIMIT_AS, (bound, bound))
from archc.cli import main
sys.exit(main(sys.argv[2:]))
"""


def child(argv: list[str], *, cwd: Path | None = None, timeout: float = 90, memory: int = MEMORY_BOUND,
          start: bool = False, env: dict | None = None):
    """`archc ARGV` in a subprocess under RLIMIT_AS = `memory`, `env` added to the environment. start=True
    returns the Popen."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    cmd = [sys.executable, "-c", _CHILD, str(memory), *map(str, argv)]
    if start:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    from archc.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc or 0, out, err


def refused(result, *needles: str) -> str:
    """Assert exit status 2 and exactly one message line (stderr `error: ...`, or `invalid ...` from
    validate on stdout), no traceback; return the line."""
    code, out, err = result
    assert "Traceback" not in err + out, err
    assert code == 2, (code, out, err)
    lines = [ln for ln in (err + out).splitlines() if ln.strip()]
    msg = [ln for ln in lines if ln.startswith(("error:", "invalid "))]
    assert len(msg) == 1 and len([ln for ln in err.splitlines() if ln.strip()]) <= 1, (out, err)
    for n in needles:
        assert n in msg[0], msg[0]
    return msg[0]


class Hung(BaseException):
    """Raised by `deadline` (a BaseException, so no `except Exception` in archc swallows it)."""


class deadline:
    """`with deadline(s):` fails the test if the body runs longer than `s` seconds (SIGALRM)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def fire(signum, frame):  # noqa: ARG001
            raise Hung(f"still running after {self.seconds} s")

        self.previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        import signal

        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False


def generation_config_dir(tmp_path: Path, gen: dict) -> Path:
    """tmp_path/src holding a generation_config.json with `gen` (made on first use, rewritten after)."""
    import json

    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    (d / "generation_config.json").write_text(json.dumps(gen))
    return d


def tiny_hf_dir(tmp_path: Path, header: bytes | None = None, **config) -> Path:
    """A Hugging Face folder `hf` read by headers only (import-hf): a tiny llama config.json (keys overridden by
    `config`) and, given `header` (a safetensors JSON header's bytes), a model.safetensors of that header and no data."""
    import json
    import struct

    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
           "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64, **config}
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    if header is not None:
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return d

