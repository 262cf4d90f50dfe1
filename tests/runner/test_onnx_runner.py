"""onnxruntime runner and the `archc compile` / `archc run` commands, on the CPU.

Generation is checked against a greedy loop over the PyTorch module written here from the contract
(left padding, positions cumsum - 1, prefix = prompt, GLM 2D positions for generated tokens).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import onnxruntime  # noqa: F401  (a test dependency: fail, never skip, when missing)

import archc  # noqa: E402
from archc.runner import Sampler, Session  # noqa: E402
from conftest import LIBRARY, SPECS, run_cli, tiny_sets, tiny_spec  # noqa: E402
from exporters.onnx_export import export  # noqa: E402
from exporters.torch_module import build_module, greedy_generate  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]
NEW = 5


def torch_greedy(graph, prompts, n_new):
    """Reference: the PyTorch module's own cached greedy decode."""
    return greedy_generate(build_module(graph), graph, prompts, n_new)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (graph, compiled dir), portable fp32, compiled lazily once per module."""
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name, target="portable", **kw):
        key = (name, target)
        if key not in cache:
            graph = archc.compile(tiny_spec(name))
            d = root / f"{name}-{target}"
            export(graph, d, target=target, fused_fp32=True, **kw)
            cache[key] = (graph, d)
        return cache[key]

    return get


@pytest.mark.parametrize("name", LIBRARY)
def test_generation_matches_pytorch_greedy(name, models):
    graph, d = models(name)
    res = Session(d, device="cpu").generate(PROMPTS, NEW)
    assert res.ids == torch_greedy(graph, PROMPTS, NEW)
    assert res.sequences[1][:2] == PROMPTS[1] and res.prefill_ms > 0 and res.decode_tokens_per_s > 0


@pytest.mark.parametrize("io_binding", [False, True], ids=["numpy", "io_binding"])
@pytest.mark.parametrize("name", ["llama", "mistral", "bloom"])
def test_cuda_target_and_bound_cache_path_on_cpu(name, io_binding, models):
    """The cuda target (GroupQueryAttention in fp32 on the CPU kernel) through the IO-binding path the
    CUDA runner uses, shared past/present buffer included (llama, mistral) and not (bloom: ALiBi)."""
    if name not in LIBRARY:
        pytest.skip(f"{name} is not in specs/")
    graph, d = models(name, "cuda")
    s = Session(d, device="cpu", io_binding=io_binding)
    assert s.kv_cache == ("concat" if name == "bloom" else "shared")
    assert s.generate(PROMPTS, NEW).ids == torch_greedy(graph, PROMPTS, NEW)


def test_sampling_is_seeded_and_degenerates_to_greedy(models):
    graph, d = models("llama")
    s = Session(d, device="cpu")
    greedy = s.generate(PROMPTS, NEW).ids
    assert s.generate(PROMPTS, NEW, top_k=1, temperature=0.7, seed=3).ids == greedy
    assert s.generate(PROMPTS, NEW, top_p=1e-9, seed=3).ids == greedy
    a = s.generate(PROMPTS, 8, top_k=20, top_p=0.95, temperature=2.0, seed=11).ids
    assert a == s.generate(PROMPTS, 8, top_k=20, top_p=0.95, temperature=2.0, seed=11).ids
    assert a != s.generate(PROMPTS, 8, top_k=20, top_p=0.95, temperature=2.0, seed=12).ids


def test_sampler_keeps_the_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(Sampler(top_p=0.75, seed=i)(logits)[0]) for i in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 >= 0.75; tokens 2 and 3 never drawn
    assert {int(Sampler(top_k=3, seed=i)(logits)[0]) for i in range(300)} == {0, 1, 2}


def test_compile_and_run_commands(tmp_path, capsys, models):
    sets = [a for s in tiny_sets(SPECS / "llama.yaml") for a in ("--set", s)]
    code, out, err = run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "m"), "--target", "cuda", "--dtype", "fp16"], capsys)
    assert code == 0, err
    assert "cuda:GroupQueryAttention (packed qkv, rotary inside)" in out and "SkipSimplifiedLayerNormalization" in out
    graph, _ = models("llama")
    code, out, err = run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "p")], capsys)
    assert code == 0, err
    code, out, err = run_cli(["run", str(tmp_path / "p"), "--prompt-ids", "5,6,7,8,9", "--prompt-ids", "10,11",
                              "--max-new-tokens", str(NEW), "--device", "cpu"], capsys)
    assert code == 0, err
    assert [list(map(int, line.split(","))) for line in out.split()] == torch_greedy(graph, PROMPTS, NEW)
    assert "prefill" in err and "tokens/s" in err


def _one_line_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, models):
    graph, d = models("llama")
    run = lambda *a: run_cli(["run", *map(str, a), "--device", "cpu"], capsys)  # noqa: E731
    (tmp_path / "empty").mkdir()
    _one_line_error(*run(tmp_path / "empty", "--prompt-ids", "1,2"), "no model.onnx")
    _one_line_error(*run(d, "--prompt-ids", "1,2,97"), "outside the vocabulary")
    _one_line_error(*run(d, "--prompt-ids", "1,x"), "integer token ids")
    _one_line_error(*run(d, "--prompt-ids", ",".join(["1"] * 60), "--max-new-tokens", "10"), "max_seq_len 64")
    # corrupt and truncated files
    for what in ("garbage", "truncated_model", "truncated_data"):
        bad = tmp_path / what
        export(graph, bad)
        if what == "garbage":
            (bad / "model.onnx").write_bytes(b"\x00not a model" * 10)
        elif what == "truncated_model":
            raw = (bad / "model.onnx").read_bytes()
            (bad / "model.onnx").write_bytes(raw[: len(raw) // 2])
        else:
            raw = (bad / "model.onnx.data").read_bytes()
            (bad / "model.onnx.data").write_bytes(raw[: len(raw) // 2])
        _one_line_error(*run(bad, "--prompt-ids", "1,2"), str(bad))
    # a target or dtype the run cannot express
    sets = [a for s in tiny_sets(SPECS / "llama.yaml") for a in ("--set", s)]
    _one_line_error(*run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "x"), "--target", "tensorrt"], capsys), "--target")
    assert not (tmp_path / "x").exists()
    _one_line_error(*run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "x"), "--weights", str(tmp_path / "nope")], capsys), "--weights")
    assert not (tmp_path / "x").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    _one_line_error(*run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "x"), "--weights", str(tmp_path / "junk.safetensors")], capsys),
                    "safetensors")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    _one_line_error(*run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "mine")], capsys), "not an archc model directory")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    code, _, err = run_cli(["compile", "llama", *sets, "-o", str(tmp_path / "bf"), "--dtype", "bf16"], capsys)
    assert code == 0, err
    _one_line_error(*run(tmp_path / "bf", "--prompt-ids", "1,2"), "bf16")


def test_device_auto_says_one_line_without_provider_pages(models):
    """A fresh process (provider-load errors are C++ stderr): one note line when CUDA cannot start."""
    from archc.runner import choose_providers

    _, d = models("gpt2" if "gpt2" in LIBRARY else "llama")
    providers, note = choose_providers("auto")
    proc = subprocess.run([sys.executable, "-m", "archc.cli", "run", str(d), "--prompt-ids", "1,2", "--max-new-tokens", "2"],
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    if note:  # no usable GPU here
        assert lines[0].startswith("cuda unavailable (") and lines[0].endswith("running on CPU"), proc.stderr
        assert len(lines) == 2 and "device cpu" in lines[1], proc.stderr
    else:
        assert len(lines) == 1 and "device" in lines[0], proc.stderr


def test_node_placement_reads_the_profile(models):
    from archc.runner import node_placement

    _, d = models("llama", "cuda")
    placed = node_placement(d, device="cpu")
    ops = {op for op, _ in placed.values()}
    assert "GroupQueryAttention" in ops and "SkipSimplifiedLayerNormalization" in ops
    assert {prov for _, prov in placed.values()} == {"CPUExecutionProvider"}
