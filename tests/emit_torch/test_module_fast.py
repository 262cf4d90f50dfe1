"""The fast paths of the emitted module agree with its contract path, which the parity tests hold to
transformers (fp32, 1e-4): the implicit causal mask (training), the static KV cache, the chunked
loss, activation checkpointing; and torch.compile(fullgraph=True) traces every library spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archc
from exporters.torch_module import build_module, greedy_generate, static_greedy
from tests.conftest import LIBRARY, tiny_spec


def _ids(graph, B=2, S=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, graph.spec.vocab_size, (B, S), generator=g)


@pytest.mark.parametrize("name", LIBRARY)
def test_implicit_causal_mask_equals_the_mask_path(name):
    graph = archc.compile(tiny_spec(name))
    model = build_module(graph)
    ids = _ids(graph)
    fast, _ = model(ids)  # no attention_mask: is_causal, no mask tensor
    ones = torch.ones_like(ids)
    kw = {"prefix_len": torch.zeros(2, dtype=torch.long)} if "prefix_len" in graph.graph_inputs() else {}
    ref, _ = model(ids, ones, **kw)  # the contract path, mask tensor built
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "bloom", "glm", "mistral", "gpt2", "falcon"])
def test_static_cache_decodes_as_the_dynamic_cache(name):
    graph = archc.compile(tiny_spec(name))
    model = build_module(graph)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    want = greedy_generate(model, graph, prompts, 6)
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, 6 - len(p):], mask[b, 6 - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        got = static_greedy(model, ids, mask, 6)
    assert got.tolist() == want


def test_static_cache_logits_match_the_full_forward():
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    ids = _ids(graph, B=1, S=8)
    full, _ = model(ids)
    cache = model.static_cache(1, 12)
    mask = torch.zeros(1, 12, dtype=torch.long)
    mask[:, :5] = 1
    first, _ = model(ids[:, :5], mask, cache=cache, cache_position=torch.arange(5))
    steps = [first]
    for p in range(5, 8):
        mask[:, p] = 1
        steps.append(model(ids[:, p:p + 1], mask, cache=cache, cache_position=torch.tensor([p]))[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # negative control: a decode step that sees an empty cache gives other logits
    empty = model(ids[:, 7:8], mask, cache=model.static_cache(1, 12), cache_position=torch.tensor([7]))[0]
    assert (empty - full[:, 7:8]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom"])  # untied, tied + learned positions, ALiBi + tied
def test_chunked_loss_equals_cross_entropy_of_the_logits(name):
    graph = archc.compile(tiny_spec(name))
    ids = _ids(graph, S=12)
    targets = _ids(graph, S=12, seed=1)
    targets[0, :3] = -100
    a, b = build_module(graph).train(), build_module(graph).train()
    loss = a.loss(ids, targets, chunk=5)  # chunks that do not divide the 24 rows
    logits, _ = b(ids)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=n)
    with torch.no_grad():
        torch.testing.assert_close(a.loss(ids, targets, chunk=7), ref, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    graph = archc.compile(tiny_spec("llama"))
    ids = _ids(graph)
    a, b = build_module(graph).train(), build_module(graph).train()
    b.set_activation_checkpointing(True)
    la, lb = a.loss(ids, ids), b.loss(ids, ids)
    la.backward()
    lb.backward()
    assert la.item() == lb.item()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p.grad, q.grad), n


DECODE_COMPILED = ("llama", "bloom", "glm", "mistral")  # RoPE+GQA, ALiBi, 2D positions + prefix, sliding window


@pytest.mark.slow
@pytest.mark.parametrize("name", LIBRARY)
def test_compile_fullgraph_has_no_graph_break(name):
    """fullgraph=True raises on any graph break; backend "eager" keeps this to Dynamo's tracing."""
    torch._dynamo.reset()
    graph = archc.compile(tiny_spec(name))
    model = build_module(graph).train()
    ids = _ids(graph)
    torch.compile(model.loss, fullgraph=True, backend="eager")(ids, ids)  # training: loss with the chunked head
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kw = {"prefix_len": torch.tensor([3, 0])} if "prefix_len" in graph.graph_inputs() else {}
    with torch.no_grad():
        torch.compile(model, fullgraph=True, backend="eager")(ids, mask, **kw)  # padded batch: the mask path
    if name not in DECODE_COMPILED:
        return
    with torch.no_grad():
        step = torch.compile(model, fullgraph=True, backend="eager")
        cache = model.static_cache(2, 12)
        full = torch.zeros(2, 12, dtype=torch.long)
        full[:, :9] = mask
        model(ids, full, cache=cache, cache_position=torch.arange(9), **kw)
        for p in (9, 10):  # decode: the same shapes every step, so one trace serves both
            full[:, p] = 1
            step(ids[:, :1], full, cache=cache, cache_position=torch.tensor([p]), **kw)
