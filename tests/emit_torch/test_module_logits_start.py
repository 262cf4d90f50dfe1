"""GraphModel.forward's logits_start, the twin of the ONNX model's input (archc.model_dir.LOGITS_START): the head
computes positions logits_start: only, so a generate's prefill (greedy_generate feeds -1) makes [B, 1, V] logits,
not [B, S, V]. Expected values: the full forward's own columns (the head is per position)."""

from __future__ import annotations

import torch

import archc
from conftest import tiny_spec
from exporters.torch_module import build_module, greedy_generate


def test_logits_start_keeps_the_columns_of_the_full_forward():
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    ids = torch.randint(0, graph.spec.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the last column is every row's last real token
    with torch.no_grad():
        full, _ = model(ids, mask)
        last, _ = model(ids, mask, logits_start=-1)
        tail, _ = model(ids, mask, logits_start=-3)
        default, _ = model(ids, mask, logits_start=0)
    assert full.shape == (2, 9, graph.spec.vocab_size) and last.shape == (2, 1, graph.spec.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tail, full[:, -3:], rtol=1e-5, atol=1e-5)
    assert torch.equal(default, full)


def test_greedy_generate_asks_for_the_last_position_only():
    """Negative control of the saving: the head sees one position per row in the prefill (a hook counts)."""
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    seen = []
    model.get_submodule("head").register_forward_pre_hook(lambda m, args, kw: seen.append(tuple(kw["x"].shape)),
                                                          with_kwargs=True)
    greedy_generate(model, graph, [[1, 2, 3, 4, 5], [6, 7]], 2)
    assert [s[1] for s in seen] == [1, 1], seen  # prefill and one decode step: one position each
