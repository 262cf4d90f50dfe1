"""The loop closes: a model trained by `archc train` compiles from its run folder (`archc compile DIR`), and
onnxruntime's greedy tokens equal the trained PyTorch model's; the text tokenizer travels along."""

from __future__ import annotations

from pathlib import Path

import torch

import archc
from archc.loader import load_spec
from tests.conftest import run_cli

TINY = ["n_layers=2", "d_model=32", "attention.n_heads=4", "attention.sharing=gqa", "attention.kv_heads=2", "mlp.d_ff=64",
        "vocab_size=256", "max_seq_len=64", "training.schedule.warmup_steps=2", "training.optimizer.lr=1e-2"]


def test_compiled_run_folder_decodes_as_the_trained_module(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    rc, _, err = run_cli(["train", "llama", *sets, "--data", str(text), "--out", str(run), "--steps", "8", "--batch", "4",
                          "--seq-len", "32", "--device", "cpu", "--eval-every", "0"], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["compile", str(run), "-o", str(tmp_path / "onnx")], capsys)
    assert rc == 0, err
    assert (tmp_path / "onnx" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()

    from archc.runner import Session
    from archc.train.checkpoint import latest_checkpoint, load_model_weights
    from exporters.torch_module import build_module, greedy_generate

    graph = archc.compile(load_spec(run / "spec.yaml"))
    trained = build_module(graph, weights=load_model_weights(latest_checkpoint(run)))
    init = build_module(graph)
    prompts = [list(b"the quick "), list(b"lazy ")]
    want = greedy_generate(trained, graph, prompts, 12)
    got = Session(tmp_path / "onnx", device="cpu").generate(prompts, 12).ids
    assert [list(g) for g in got] == want
    # negative control: the compiled model is the trained one, not the spec's init
    assert greedy_generate(init, graph, prompts, 12) != want
