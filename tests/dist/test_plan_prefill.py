"""`archc plan`'s generation figure (prefill transient + KV cache) against the bytes the CPU allocator
actually holds at the peak of one no_grad prefill forward of the emitted module.

The oracle: torch.profiler with profile_memory=True records every allocation and free of the CPU
allocator, attributed to the op that made it; their running sum in time order is the bytes held, its
maximum the peak (parameters and inputs, allocated before, are not in it). The emitter drops each
node's output after its last reader (tests/emit_torch/test_activation_freeing.py), so the peak is the
KV cache, the head's logits and a few [b, S, D] tensors, not every layer's outputs. The shapes are
chosen so that the logits, not one layer's temporaries, are the largest transient, as at real vocab
sizes (the planner bounds a layer's temporaries by what it saves in training, which overestimates a
no_grad layer's on these tiny widths)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import archc
from archc.memory_plan import ParallelKind, Strategy, memory_row, one_layer_graph
from archc.spec import DType
from benchmarks.standard import load_family
from exporters.torch_module import build_module

B, S, LAYERS, D = 2, 192, 16, 256


def prefill_peak(model, ids) -> int:
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(ids, torch.ones_like(ids))
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end)):
        held += event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "bloom", "gpt2"])
def test_planned_prefill_matches_what_the_allocator_holds(family):
    spec = load_family(family, extra=[f"n_layers={LAYERS}", f"d_model={D}", "vocab_size=8000", "dtype=float32",
                                      "attention.n_heads=8", "mlp.d_ff=704"])
    graph = archc.compile(spec)
    model = build_module(graph).eval()
    ids = torch.randint(0, spec.vocab_size, (B, S), generator=torch.Generator().manual_seed(0))
    measured = prefill_peak(model, ids)
    row = memory_row(spec, one_layer_graph(spec), Strategy(ParallelKind.single, 1, 1), batch=B, seq_len=S,
                     dtype=DType.float32, checkpointing=False, cuda=False)
    planned = row.prefill_transient + row.kv_cache
    assert abs(planned / measured - 1) < 0.15, (planned, measured)
    # negative control: a plan that held every layer's six [b, S, D] outputs (the walk before it freed them)
    held_all = LAYERS * 6 * B * S * D * 4
    assert abs((planned + held_all) / measured - 1) > 0.15
    # and the walk with its plan emptied holds them: the oracle sees the difference
    for seg in model._segments:
        seg.frees = [()] * len(seg.steps)
        seg.frees_inputs = ()
    assert prefill_peak(model, ids) > measured + held_all // 2
