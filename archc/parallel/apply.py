"""Apply a sharding plan to an emitted GraphModel: DTensor tensor parallelism, then FSDP2 per layer,
on a 2-D DeviceMesh (dp x tp). torchtitan's order: TP first (parameters become DTensors on the tp
mesh), then `fully_shard` over the dp mesh (FSDP2 composes the two into 2-D DTensors).

The model code knows nothing of this. What changes on the module after `parallelize`:
- q/k/v, gate/up are ColwiseParallel, o/down RowwiseParallel (torch.distributed.tensor.parallel);
  their outputs stay local tensors, so each attention module now sees n_heads / tp query heads,
  and its head counts are set to the local ones;
- K/V with fewer heads than ranks (multi-query attention, or GQA with kv_heads < tp) stay whole on
  every rank; their output passes through `_sum_grad_over_tp` (identity forward, gradient summed
  over the tp ranks in backward: Megatron's "f"), because each rank's query heads contribute only
  part of K/V's gradient, and is then cut to the one K/V head this rank's query heads read;
- per-head state (ALiBi slopes) is cut to this rank's heads, in the same contiguous blocks as q's rows;
- FSDP2 `fully_shard` groups the modules of each layer (they are called one by one by the graph
  walk, so the group is a list of modules, not the layer container), then the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from archc.graph import ComponentGraph, ComponentKind as K
from archc.memory_plan import ParallelKind
from archc.parallel.sharding import HeadSplit, ShardRule, TpPlan, make_plan


@dataclass(frozen=True)
class Layout:
    """Where this process sits: the mesh and its degrees."""

    kind: ParallelKind
    dp: int
    tp: int
    dp_mesh: object = None  # 1-D DeviceMesh (or the "dp" dimension of a 2-D one); None when dp == 1
    tp_mesh: object = None  # likewise for tp

    @classmethod
    def on(cls, kind: ParallelKind, mesh, dp: int, tp: int) -> "Layout":
        """The layout on a 2-D ("dp", "tp") mesh; a degree of 1 uses no mesh dimension, except FSDP's dp
        (fully_shard over one rank still needs the named dimension to compose with tp)."""
        fsdp = kind in (ParallelKind.fsdp, ParallelKind.fsdp_tp)
        return cls(kind, dp, tp, mesh["dp"] if dp > 1 or fsdp else None, mesh["tp"] if tp > 1 else None)

    @property
    def dp_rank(self) -> int:
        return self.dp_mesh.get_local_rank() if self.dp_mesh is not None else 0

    @property
    def tp_rank(self) -> int:
        return self.tp_mesh.get_local_rank() if self.tp_mesh is not None else 0


def make_mesh(device_type: str, dp: int, tp: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))


def init_from_env(device_type: str) -> None:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, MASTER_ADDR in the environment)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


# ------------------------------------------------------------------------------------------------
# Tensor parallelism


def _sum_grad_over_tp(t: torch.Tensor, tp_mesh) -> torch.Tensor:
    """Identity forward; backward sums the gradient over the tp ranks (DTensor's Partial -> Replicate)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    return DTensor.from_local(t, tp_mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def _kv_columns(kv_heads: int, head_dim: int, tp: int, rank: int) -> slice:
    """Output columns of a whole K or V projection that rank `rank`'s query heads read (kv_heads < tp,
    tp a multiple of kv_heads: query heads [r n/tp, (r+1) n/tp) all map to K/V head r kv/tp)."""
    head = rank * kv_heads // tp
    return slice(head * head_dim, (head + 1) * head_dim)


def _head_slice(n_heads: int, tp: int, rank: int, split: HeadSplit) -> list[int]:
    per = n_heads // tp
    if split is HeadSplit.contiguous:
        return list(range(rank * per, (rank + 1) * per))
    if split is HeadSplit.strided:  # wrong for contiguous q rows: the negative control
        return list(range(rank, n_heads, tp))
    raise ValueError(f"unknown head split {split}")


def _localize_heads_state(module: nn.Module, name: str, heads: list[int]) -> None:
    """Cut a per-head state module (ALiBi) to `heads`, whether it keeps its slopes as a list or a tensor."""
    if not hasattr(module, "slopes"):
        raise TypeError(f"{name}: {type(module).__name__} has no `slopes` to split by head; archc.parallel.apply needs updating")
    slopes = module.slopes
    module.slopes = slopes[heads].clone() if isinstance(slopes, torch.Tensor) else [slopes[h] for h in heads]
    if hasattr(module, "n_heads"):
        module.n_heads = len(heads)


def apply_tp(model: nn.Module, graph: ComponentGraph, plan: TpPlan, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    rank = tp_mesh.get_local_rank()
    style = {ShardRule.colwise: ColwiseParallel, ShardRule.rowwise: RowwiseParallel}
    for n in graph.nodes():
        d = graph.node(n)
        kind = K(d["kind"])
        if kind in (K.attention, K.mlp):
            module = model.get_submodule(n)
            layout: dict = {}
            replicated: list[str] = []
            for local in d["params"]:
                if not local.endswith("weight"):
                    continue  # biases follow their weight's module
                proj = local.rsplit(".", 1)[0]
                rule = plan.rule(f"{n}.{local}")
                if rule in style:
                    layout[proj] = style[rule]()
                elif rule is ShardRule.replicate:
                    replicated.append(proj)
                else:
                    raise ValueError(f"{n}.{local}: rule {rule} does not apply to a projection")
            parallelize_module(module, tp_mesh, layout)
            if kind is K.attention:
                s = graph.settings(n)
                # whole K/V (kv_heads < tp): the K/V head this rank's query heads read, r * kv_heads // tp
                kv_cols = _kv_columns(s.kv_heads, s.head_dim, plan.tp, rank)
                for proj in replicated:
                    module.get_submodule(proj).register_forward_hook(
                        lambda _m, _i, out, cols=kv_cols: _sum_grad_over_tp(out, tp_mesh)[..., cols])
                for attr, value in (("n_heads", s.n_heads // plan.tp),
                                    ("kv_heads", s.kv_heads // plan.tp if plan.kv_split else 1)):
                    if hasattr(module, attr):
                        setattr(module, attr, value)
        elif kind is K.alibi:
            if plan.state.get(n) is ShardRule.heads:
                _localize_heads_state(model.get_submodule(n), n,
                                      _head_slice(graph.settings(n).n_heads, plan.tp, rank, plan.head_split))
        elif kind in (K.input, K.output, K.token_embedding, K.learned_position, K.sinusoidal_position, K.glm2d_position,
                      K.rotary, K.mask, K.add, K.scale, K.norm, K.residual, K.head):
            for local in d["params"]:
                if plan.rule(f"{n}.{local}") is not ShardRule.replicate:
                    raise ValueError(f"{n}.{local}: only replication is implemented for {kind.value}")
        else:
            raise ValueError(f"unknown component kind {kind}")


# ------------------------------------------------------------------------------------------------
# FSDP2


def apply_fsdp(model: nn.Module, graph: ComponentGraph, dp_mesh, mp_policy=None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": dp_mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    layers = sorted({graph.node(n)["layer"] for n in graph.nodes() if graph.node(n)["layer"] is not None})
    for layer in layers:
        with_params = [model.get_submodule(n) for n in graph.layer_nodes(layer) if graph.node(n)["params"]]
        if with_params:
            fully_shard(with_params, **kw)
    fully_shard(model, **kw)


def parallelize(model: nn.Module, graph: ComponentGraph, layout: Layout, *,
                head_split: HeadSplit = HeadSplit.contiguous) -> nn.Module:
    """Shard `model` (built for one device, on this rank's device) as `layout` says; returns it."""
    if layout.tp > 1:
        apply_tp(model, graph, make_plan(graph, layout.tp, head_split), layout.tp_mesh)
    if layout.kind in (ParallelKind.fsdp, ParallelKind.fsdp_tp):
        apply_fsdp(model, graph, layout.dp_mesh)
    return model


def clip_grad_norm(params, max_norm: float | None) -> float | None:
    """Clip the global gradient norm over parameters that may be DTensors on different meshes (FSDP on
    dp, FSDP x TP on dp x tp) or plain tensors (replicated under TP): each gradient's norm is made whole
    by DTensor (full_tensor), then combined; returns the norm before clipping."""
    from torch.distributed.tensor import DTensor

    if max_norm is None:
        return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sq = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    for g in grads:
        n = torch.linalg.vector_norm(g, dtype=torch.float32)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        sq = sq + n.pow(2)
    total = float(sq.sqrt())
    coef = min(1.0, max_norm / (total + 1e-6))  # torch.nn.utils.clip_grad_norm_'s coefficient
    for g in grads:
        g.mul_(coef)
    return total
