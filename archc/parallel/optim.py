"""The spec's optimizer over a sharded model.

AdamW and Adam are elementwise, so torch.optim runs them on DTensor shards as they are. Adafactor
(Shazeer & Stern 2018; PaLM) is not: its factored second moment averages each gradient over rows
and over columns, and torch.optim.Adafactor does that with in-place ops that DTensor cannot place
on a sharded gradient. `ShardedAdafactor` runs torch's single-tensor Adafactor step unchanged on
the whole gradient and parameter (DTensor.full_tensor: one all-gather per parameter, as FSDP itself
does in forward), keeps the factored state whole (rows + columns: small), and writes back this
rank's shard of the update. Every rank computes the same whole update, so the result equals one
process's torch.optim.Adafactor step.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim._adafactor import _single_tensor_adafactor


class ShardedAdafactor(torch.optim.Adafactor):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                sharded = isinstance(p, DTensor)
                param = p.full_tensor() if sharded else p
                grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                state = self.state[p]
                if not state:  # as torch.optim.Adafactor._init_group, on the whole tensor
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    if grad.dim() > 1:
                        state["row_var"] = grad.new_zeros([*grad.shape[:-1], 1])
                        state["col_var"] = grad.new_zeros([*grad.shape[:-2], 1, grad.shape[-1]])
                    else:
                        state["variance"] = torch.zeros_like(grad)
                _single_tensor_adafactor(
                    [param], [grad], [state.get("row_var")], [state.get("col_var")], [state.get("variance")], [state["step"]],
                    grad_scale=None, found_inf=None, d=group["d"], lr=group["lr"], beta2_decay=group["beta2_decay"],
                    weight_decay=group["weight_decay"], eps1=eps1, eps2=eps2, maximize=group["maximize"], has_complex=False)
                if sharded:  # this rank's piece of the updated whole (no communication: src_data_rank=None)
                    p.to_local().copy_(distribute_tensor(param, p.device_mesh, p.placements, src_data_rank=None).to_local())
        return loss


def build_optimizer(graph, model) -> torch.optim.Optimizer:
    """archc.training.build_optimizer, with Adafactor made shard-aware when the model has DTensors."""
    from archc.training import build_optimizer as build_single

    opt = build_single(graph, model)
    if isinstance(opt, torch.optim.Adafactor) and any(isinstance(p, DTensor) for p in model.parameters()):
        d = opt.defaults
        return ShardedAdafactor(opt.param_groups, lr=d["lr"], beta2_decay=d["beta2_decay"], eps=d["eps"], d=d["d"],
                                weight_decay=d["weight_decay"])
    return opt
