"""`archc plan`'s activation figures against the bytes autograd actually keeps for backward, on the CPU.

The oracle: torch.autograd.graph.saved_tensors_hooks sees every tensor the forward of
GraphModel.loss saves; their distinct storages, less the parameters, are the activations. The
planner counts them from the graph (archc.memory_plan, with cuda=False: on the CPU GQA K/V heads are
always expanded). Within 15%, the same bound as the GPU check in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import pytest
import torch

import archc
from archc.memory_plan import ParallelKind, Strategy, memory_row, one_layer_graph
from archc.spec import DType
from benchmarks.standard import load_family
from exporters.torch_module import build_module


def saved_bytes(model, tokens) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(tokens[:, :-1], tokens[:, 1:])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("family", ["llama", "palm", "bloom", "glm", "gpt2"])
def test_planned_activations_match_what_autograd_keeps(family):
    extra = ["n_layers=3", "d_model=256", "vocab_size=1000", "dtype=float32", "attention.n_heads=8", "attention.kernel=default",
             "mlp.d_ff=704"] + {"llama": ["attention.kv_heads=2"], "palm": ["attention.head_dim=32"]}.get(family, [])
    spec = load_family(family, extra=extra)
    graph = archc.compile(spec)
    torch.manual_seed(0)
    tokens = torch.randint(0, spec.vocab_size, (2, 193))
    measured = saved_bytes(build_module(graph).train(), tokens)
    planned = memory_row(spec, one_layer_graph(spec), Strategy(ParallelKind.single, 1, 1), batch=2, seq_len=192,
                         dtype=DType.float32, checkpointing=False, cuda=False).activations
    assert abs(planned / measured - 1) < 0.15, (planned, measured)


def test_negative_control_a_plan_without_the_mlp_is_caught():
    spec = load_family("llama", extra=["n_layers=3", "d_model=256", "vocab_size=1000", "dtype=float32", "mlp.d_ff=704",
                                       "attention.n_heads=8", "attention.kv_heads=2"])
    graph = archc.compile(spec)
    measured = saved_bytes(build_module(graph).train(), torch.randint(0, 1000, (2, 193)))
    planned = memory_row(spec, one_layer_graph(spec), Strategy(ParallelKind.single, 1, 1), batch=2, seq_len=192,
                         dtype=DType.float32, checkpointing=False, cuda=False).activations
    without_mlp = planned - 3 * 2 * 192 * 4 * 704 * 4  # the 4 d_ff-wide tensors of each layer left out
    assert abs(without_mlp / measured - 1) > 0.15
