"""Tensor-parallel greedy generation: each rank holds 1/tp of every attention and MLP projection
and of the KV cache (its heads), and the greedy loop of the one-process emitter runs unchanged on
every rank (the logits come out whole on every rank, so every rank picks the same token).

Launched with torchrun (`archc generate-tp`), or called inside an initialised process group.
"""

from __future__ import annotations

import torch

from archc.graph import ComponentGraph
from archc.memory_plan import ParallelKind
from archc.parallel.apply import Layout, parallelize


def tp_model(graph: ComponentGraph, tp_mesh, *, weights: dict | None = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu"):
    """The emitted module with its projections sharded over `tp_mesh` (1-D), on `device`, in eval mode.

    The module is built whole on the CPU first (one copy per process in host memory), sharded, and
    only then moved: the accelerator holds this rank's shard and nothing else.
    """
    from exporters.torch_module import build_module

    model = build_module(graph, weights=weights, dtype=dtype)
    parallelize(model, graph, Layout(ParallelKind.tp, 1, tp_mesh.size(), None, tp_mesh))
    return model.to(device).eval()


class _OnDevice(torch.nn.Module):
    """Feeds the CPU tensors of the emitter's greedy loop to a model on an accelerator and hands its
    logits back on the CPU (the KV cache stays on the device)."""

    def __init__(self, model, device):
        super().__init__()
        self.model, self.device = model, torch.device(device)

    def forward(self, *args, **kwargs):
        moved = [a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args]
        logits, present = self.model(*moved, **kwargs)  # kwargs: greedy_generate's logits_start (an int)
        return logits.cpu(), present


def generate_tp(graph: ComponentGraph, prompts: list[list[int]], n_new: int, tp_mesh, *, weights: dict | None = None,
                dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> list[list[int]]:
    """Greedy tokens for `prompts` (the same on every rank), from a tensor-parallel model."""
    from exporters.torch_module import greedy_generate

    model = tp_model(graph, tp_mesh, weights=weights, dtype=dtype, device=device)
    if torch.device(device).type != "cpu":
        model = _OnDevice(model, device)
    return greedy_generate(model, graph, prompts, n_new)
