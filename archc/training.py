"""The spec's training section as a torch optimizer and learning-rate schedule.

The training recipe is not part of the architecture, so it is not on the component graph: it is
read from the resolved spec the graph carries (`graph.spec.training`). Every entry point accepts a
ComponentGraph, a Spec or a TrainingSpec.

- AdamW (Loshchilov & Hutter 2019; LLaMA) and Adam (GPT, BLOOM) are torch.optim's. Weight decay
  applies to matrices only (parameters with 2 or more dims), never to biases, norm scales or, as
  the usual practice, vectors of any kind.
- Adafactor (Shazeer & Stern 2018; PaLM) is torch.optim.Adafactor: factored second moments,
  decay 1 - t^beta2_decay, update clipping at `clip_threshold` (torch's `d`), and the relative
  step min(lr, 1/sqrt(t)) scaled by max(eps2, RMS(param)) -- with PaLM's lr 1e-2 that is exactly
  PaLM's "1e-2 for 10k steps, then 1/sqrt(k)".
- Schedules are a multiplier on the peak lr (`lr_factor`), run through LambdaLR:
  linear warm-up from 0 over `warmup_steps`, then cosine or linear decay to `min_lr_ratio` at
  `total_steps` (held there afterwards), or constant.

Heavy imports (torch) happen inside the functions, so `import archc.training` stays light.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from archc.spec import AdafactorOptimizer, AdamOptimizer, AdamWOptimizer, ConstantSchedule, CosineSchedule, Spec, TrainingSpec

if TYPE_CHECKING:
    import torch

    from archc.graph import ComponentGraph


def training_of(source: "ComponentGraph | Spec | TrainingSpec") -> TrainingSpec:
    if isinstance(source, TrainingSpec):
        return source
    if isinstance(source, Spec):
        return source.training
    return source.spec.training  # a ComponentGraph


def lr_factor(schedule, step: int) -> float:
    """Multiplier on the peak learning rate before optimizer step `step` (0-based)."""
    warmup = schedule.warmup_steps
    if step < warmup:
        return step / warmup
    if isinstance(schedule, ConstantSchedule):
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, schedule.total_steps - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if isinstance(schedule, CosineSchedule) else 1.0 - progress
    return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * shape


def _param_groups(params: Iterable, weight_decay: float) -> list[dict[str, Any]]:
    params = list(params.parameters() if hasattr(params, "parameters") else params)
    params = [p[1] if isinstance(p, tuple) else p for p in params]  # named_parameters() works too
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}) if g["params"]]


def build_optimizer(source: "ComponentGraph | Spec | TrainingSpec", params) -> "torch.optim.Optimizer":
    """The optimizer the spec names, over `params` (a module, parameters or named parameters)."""
    import torch

    opt = training_of(source).optimizer
    if isinstance(opt, AdamWOptimizer):
        return torch.optim.AdamW(_param_groups(params, opt.weight_decay), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    if isinstance(opt, AdamOptimizer):
        return torch.optim.Adam(_param_groups(params, 0.0), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    if isinstance(opt, AdafactorOptimizer):
        return torch.optim.Adafactor(_param_groups(params, opt.weight_decay), lr=opt.lr, beta2_decay=opt.beta2_decay,
                                     eps=tuple(opt.eps), d=opt.clip_threshold)
    raise TypeError(f"unknown optimizer section {type(opt).__name__}")


def build_scheduler(source: "ComponentGraph | Spec | TrainingSpec", optimizer) -> "torch.optim.lr_scheduler.LambdaLR":
    """LambdaLR with `lr_factor`; call `scheduler.step()` after each `optimizer.step()`."""
    import torch

    schedule = training_of(source).schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step))


def clip_gradients(source: "ComponentGraph | Spec | TrainingSpec", params) -> float | None:
    """Clip the global gradient norm at the spec's grad_clip (none when unset); returns the norm before clipping."""
    import torch

    limit = training_of(source).grad_clip
    if limit is None:
        return None
    params = params.parameters() if hasattr(params, "parameters") else params
    return float(torch.nn.utils.clip_grad_norm_(list(params), limit))
