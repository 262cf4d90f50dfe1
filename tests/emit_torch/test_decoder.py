"""exporters.torch_decode.Decoder (the fast decode path) gives greedy_generate's tokens for every kind of
model, and transformers' generate's tokens where a transformers class computes the spec; its step traces
as one Dynamo graph; pack_projections changes no logit."""

from __future__ import annotations

import pytest
import torch

import archc
from exporters.torch_decode import Decoder
from exporters.torch_module import build_module, greedy_generate
from tests.conftest import tiny_spec

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
OTHER = [[40, 41], [50, 51, 52, 53, 54, 55]]


def _left_pad(prompts, width=6):
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):], mask[b, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def _model(graph):
    """The module with seeded N(0, 0.5^2) weights: archc's small init makes most tiny models repeat one
    token, which would let a wrong cache pass unseen."""
    model = build_module(graph)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


VARIED = ("llama", "mistral", "gpt2", "falcon", "palm")  # families whose tokens vary with these weights


# RoPE + GQA, ALiBi, GLM (2D positions + prefix mask), sliding window, learned positions + tied head,
# parallel residual + MQA, PaLM (parallel, MQA with head_dim)
@pytest.mark.parametrize("name", ["llama", "bloom", "glm", "mistral", "gpt2", "falcon", "palm"])
def test_decoder_gives_greedy_generate_tokens(name):
    graph = archc.compile(tiny_spec(name))
    model = _model(graph)
    want = greedy_generate(model, graph, PROMPTS, 7)
    want_other = greedy_generate(model, graph, OTHER, 7)
    decoder = Decoder(model, 2, 14)
    assert decoder.generate(*_left_pad(PROMPTS), 7).tolist() == want
    # the same decoder again, other prompts: nothing of the first call leaks into the second
    assert decoder.generate(*_left_pad(OTHER), 7).tolist() == want_other
    assert decoder.generate(*_left_pad(PROMPTS), 1).tolist() == [w[:1] for w in want]
    # negative control: without the first prompt's first token the tokens change, so the comparison
    # above sees what the cache holds
    ids, mask = _left_pad(PROMPTS)
    mask[0, 0] = 0
    if name in VARIED:
        assert decoder.generate(ids, mask, 7).tolist()[0] != want[0]


@pytest.mark.parametrize("name", ["llama", "glm", "bloom"])
def test_compiled_step_is_one_graph_with_the_same_tokens(name):
    """fullgraph=True raises on a graph break; backend "eager" keeps this to Dynamo's tracing (the
    inductor path runs in the benchmark, benchmarks/train_bench.py)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graph = archc.compile(tiny_spec(name))
    model = _model(graph)
    want = greedy_generate(model, graph, PROMPTS, 6)
    decoder = Decoder(model, 2, 12, compile=True, backend="eager")
    assert decoder.generate(*_left_pad(PROMPTS), 6).tolist() == want
    assert decoder.generate(*_left_pad(PROMPTS), 6).tolist() == want
    assert counters["stats"]["unique_graphs"] == 1  # one trace for every step of both calls


def test_decoder_matches_transformers_generate():
    """Independent oracle: transformers' LlamaForCausalLM with the same weights, greedy generate."""
    from archc.bench.hf import build_hf_model

    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    hf, _ = build_hf_model(graph, model.state_dict(), dtype=torch.float32, device="cpu", attn_implementation="sdpa")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 3, 2]])
    with torch.no_grad():
        want = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, min_new_tokens=10,
                           do_sample=False, num_beams=1)[:, ids.shape[1]:]
    decoder = Decoder(model, 1, 18)
    got = decoder.generate(ids, None, 10)
    assert got.tolist() == want.tolist()
    assert len(set(want[0].tolist())) > 2  # the oracle's tokens vary, so agreement means something
    # negative control: another prompt's tokens differ from these
    assert decoder.generate(ids.flip(1), None, 10).tolist() != want.tolist()


def test_eos_stops_after_the_chunk_that_produced_it():
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    want = greedy_generate(model, graph, PROMPTS[:1], 8)[0]
    eos = want[3]
    first = want.index(eos)
    got = Decoder(model, 1, 14).generate(torch.tensor(PROMPTS[:1]), None, 8, eos_token_id=eos)
    assert got.tolist()[0] == want[:first + 1]  # on the CPU a chunk is one step
    full = Decoder(model, 1, 14).generate(torch.tensor(PROMPTS[:1]), None, 8)
    assert full.tolist()[0] == want  # negative control: without eos all 8 come


def test_pack_projections_keeps_logits_and_state_dict():
    for name in ("llama", "gpt2"):  # gated MLP without biases; q|k|v with biases, ungated MLP
        graph = archc.compile(tiny_spec(name))
        model = build_module(graph)
        ids = torch.tensor([[5, 6, 7, 8, 9]])
        before, _ = model(ids)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert model.pack_projections() > 0
        after, _ = model(ids)
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
        assert set(model.state_dict()) == set(state)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        # loading weights into a packed model writes through to the packed copy forward reads
        doubled = {k: 2 * v if k.endswith("attn.q.weight") else v for k, v in state.items()}
        model.load_state_dict(doubled)
        fresh = build_module(graph, weights=doubled)
        torch.testing.assert_close(model(ids)[0], fresh(ids)[0], atol=1e-6, rtol=1e-6)
        # negative control: the doubled q changes the logits
        assert (fresh(ids)[0] - before).abs().max() > 1e-4


def test_bad_arguments_say_what_to_change():
    graph = archc.compile(tiny_spec("llama"))
    decoder = Decoder(build_module(graph), 1, 8)
    with pytest.raises(ValueError, match="made for batch 1"):
        decoder.generate(torch.ones(2, 3, dtype=torch.long), None, 2)
    with pytest.raises(ValueError, match="within max_len 8"):
        decoder.generate(torch.ones(1, 5, dtype=torch.long), None, 4)
    with pytest.raises(ValueError, match="graph_steps"):
        Decoder(build_module(graph), 1, 8, graph_steps=-1)
