"""Shared test helpers: tiny variants of the library specs, made with --set overrides (never copies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from archc.loader import library_specs, load_data, load_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def tiny_sets(path: Path, d_model: int = 64, n_heads: int = 4, layers: int = 2, vocab: int = 97) -> list[str]:
    """--set overrides that shrink a library spec to a test size while keeping every axis."""
    data, _ = load_data(path)
    att = data.get("attention", {})
    sets = [f"n_layers={layers}", f"d_model={d_model}", f"attention.n_heads={n_heads}", f"mlp.d_ff={2 * d_model + 32}",
            f"vocab_size={vocab}", "max_seq_len=64", "dtype=float32"]
    kv = att.get("kv_heads")
    if kv is not None and kv not in (1,):
        sets.append(f"attention.kv_heads={n_heads // 2 if kv != att.get('n_heads') else n_heads}")
    if "head_dim" in att:
        sets.append(f"attention.head_dim={d_model // n_heads}")
    emb = data.get("embedding", {})
    if "head_vocab_size" in emb:
        sets.append(f"embedding.head_vocab_size={vocab}")
    pos = data.get("position", {})
    if "max_positions" in pos:
        sets.append(f"position.max_positions={64 + pos.get('offset', 0)}")
    if att.get("sliding_window"):
        sets.append("attention.sliding_window=16")  # shorter than the tiny max_seq_len, so the window masks
    if "rotary_dim" in pos:
        sets.append(f"position.rotary_dim={max(2, int(round(d_model // n_heads * pos.get('rotary_fraction', 1.0))) // 2 * 2)}")
    return sets


def tiny_spec(name: str, extra: list[str] | None = None):
    path = SPECS / f"{name}.yaml"
    return load_spec(path, tiny_sets(path) + list(extra or []))


def genai_python_or_skip() -> str:
    """The python that has onnxruntime_genai (ARCHC_GENAI_PYTHON, else this one if it imports genai). Without
    one the test skips, unless ARCHC_REQUIRE_GENAI=1 (CI, which makes the venv with scripts/genai_env.sh)."""
    import os
    import sys

    env = os.environ.get("ARCHC_GENAI_PYTHON")
    if env:
        return env
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        if os.environ.get("ARCHC_REQUIRE_GENAI") == "1":
            pytest.fail("ARCHC_REQUIRE_GENAI=1 but no onnxruntime-genai: set ARCHC_GENAI_PYTHON (scripts/genai_env.sh)")
        pytest.skip("onnxruntime-genai is not installed (scripts/genai_env.sh makes its venv; .ci/run runs these)")
    return sys.executable


HEAVY_LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers")


@dataclass
class FreshRun:
    codes: list  # each command's exit status (main's return, or SystemExit's code; 0 for None)
    heavy: list  # which of HEAVY_LIBRARIES were imported when the last command returned
    stdout: str
    stderr: str  # the commands' own stderr


def _environ(base, **over) -> dict:
    """`base` with `over` applied; a None value removes the variable."""
    env = dict(base, **{k: v for k, v in over.items() if v is not None})
    for k in [k for k, v in over.items() if v is None]:
        env.pop(k, None)
    return env


def cli_in_fresh_python(*argvs: list, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> FreshRun:
    """`archc ARGV` for each argv in turn, in one new interpreter (the import state a shell command starts
    from), with this checkout first on sys.path and `env` added to the environment (e.g. torchrun's RANK).
    For light-command and argument-check-before-import tests."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys\nfrom archc.cli import main\ncodes = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try:\n        codes.append(main(argv) or 0)\n"
            "    except SystemExit as e:\n        codes.append(e.code or 0)\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_LIBRARIES!r}))\n"
            "print('@@fresh ' + json.dumps({'codes': codes, 'heavy': heavy}), file=sys.stderr)\n")
    argv = [[str(a) for a in one] for one in argvs]
    p = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, cwd=cwd,
                       env=_environ(os.environ, PYTHONPATH=str(ROOT), **(env or {})), timeout=timeout)
    head, sep, tail = p.stderr.rpartition("@@fresh ")
    assert sep and p.returncode == 0, p.stderr[-2000:]
    result = json.loads(tail)
    return FreshRun(result["codes"], result["heavy"], p.stdout, head)


def save_tiny_hf_llama(d: Path, layers: int) -> Path:
    """transformers' own save of a tiny random LlamaForCausalLM (GQA 4/2 heads, vocab 96) into `d`."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


LIBRARY = [p.stem for p in library_specs()]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`archc ARGV` in-process: (exit status, stdout, stderr). A UserError ends in SystemExit(2)."""
    from archc.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc or 0, out, err


@pytest.fixture(params=LIBRARY)
def library_name(request) -> str:
    return request.param


def pytest_collection_modifyitems(config, items):
    # The benchmark-plumbing tests (tests/bench) carry the `bench` marker, so a run can select or skip them.
    for item in items:
        if "bench" in item.path.parent.parts[-1:]:
            item.add_marker(pytest.mark.bench)
