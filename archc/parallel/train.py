"""`archc train --parallel fsdp|tp|fsdp+tp`: archc.train's loop, spread over the processes torchrun started.

The single-process loop (archc.train.loop) stays the reference: this module runs the same loop body
(archc.train.loop.run_steps: stepping, evaluation, log, plot, progress, signals) and the same run
folder, recipe and precision, and supplies only what spreading changes (archc.train.loop.LoopHooks):

- the model is built whole on each rank, then sharded (archc.parallel.apply.parallelize) before
  the optimizer is made (torchtitan's order);
- --batch is the GLOBAL batch: every rank draws the same batch from the same seeded stream and
  keeps its data-parallel share, so the data position does not depend on the world size and a
  run resumes at any world size;
- checkpoints are DCP folders (archc.parallel.checkpoint) at the run's usual places
  (checkpoints/step-N, checkpoints/latest); `archc compile DIR` consolidates them;
- the processes agree on the loss (a mean over data-parallel ranks) and on stopping (any signalled
  process stops all);
- rank 0 alone writes the log, the plot, the progress and the pointer to the latest checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from archc.errors import UserError
from archc.parallel.launch import Launch
from archc.train.device import pick_device
from archc.train.loop import (LoopHooks, TrainConfig, TrainResult, autocast_for, build_train_model, check_resume_matches,
                              prepare_out, run_steps, write_run_files)


def train_parallel(cfg: TrainConfig, launch: Launch) -> TrainResult:
    """Train as `cfg` says on the world `launch` describes (archc.parallel.launch.check_launch checked the
    arguments against it before torch was imported)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Partial

    import archc
    from archc.parallel import checkpoint as dcp_ckpt
    from archc.parallel.apply import Layout, clip_grad_norm, init_from_env, make_mesh, parallelize
    from archc.parallel.optim import build_optimizer
    from archc.train.checkpoint import checkpoint_dir, latest_checkpoint, point_latest, step_name
    from archc.train.data import DataPosition, open_data
    from archc.training import build_scheduler

    spec = cfg.spec
    kind, world, dp, tp_deg = launch.kind, launch.process.world, launch.dp, launch.tp
    if not dist.is_available():
        raise UserError(f"--parallel {kind.value}: this torch build has no torch.distributed; train without --parallel")
    # CUDA there, one GPU per local process: asked of torch before any process group or allocation
    device = pick_device(cfg.device, local_rank=launch.process.local_rank, local_world=launch.process.local_world)
    graph = archc.compile(spec)
    init_from_env(device.type)
    rank = dist.get_rank()
    layout = Layout.on(kind, make_mesh(device.type, dp, tp_deg), dp, tp_deg)

    data = open_data(cfg.data, vocab_size=spec.vocab_size, seq_len=cfg.seq_len, seed=spec.init.seed,
                     val_fraction=cfg.val_fraction, batch=cfg.batch, dtype=cfg.data_dtype, tokenizer=cfg.tokenizer)
    resume_from = None
    problem = [None]
    if rank == 0:  # the run folder is rank 0's; its verdict reaches every rank, so a bad --out stops all at once
        try:
            prepare_out(cfg)
            if cfg.resume:
                check_resume_matches(cfg)
            else:
                write_run_files(cfg, data.tokenizer_json)
        except UserError as e:
            problem = [str(e)]
    dist.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise UserError(problem[0])
    if cfg.resume:
        resume_from = latest_checkpoint(cfg.out)
        if resume_from is None:
            raise UserError(f"--resume: {cfg.out} has no checkpoint yet; start again without --resume (and --force)")
        if not dcp_ckpt.is_distributed_checkpoint(resume_from):
            raise UserError(f"--resume: {resume_from} is a one-process checkpoint; resume it without --parallel")
        dcp_ckpt.check_signature(resume_from, graph)

    model = build_train_model(graph, device, activation_checkpointing=cfg.activation_checkpointing)
    model = parallelize(model, graph, layout)
    optimizer = build_optimizer(graph, model)
    scheduler = build_scheduler(graph, optimizer)
    step, tokens = 0, 0
    if resume_from is not None:
        state = dcp_ckpt.load(resume_from, model, optimizer, graph)
        scheduler.load_state_dict(state["scheduler"])
        step, tokens = int(state["step"]), int(state["tokens"])
        data.train.position = DataPosition(**state["data"])

    def local(arr):
        """This rank's data-parallel share of a global batch, on the device."""
        return torch.from_numpy(arr).chunk(dp)[layout.dp_rank].to(device, non_blocking=True)

    def global_mean(x: torch.Tensor) -> float:
        if layout.dp_mesh is None:
            return float(x)
        return float(DTensor.from_local(x.detach().reshape(()), layout.dp_mesh, [Partial("avg")]).full_tensor())

    def save(step: int, tokens: int) -> Path:
        name = step_name(step)
        train_state = {"step": step, "tokens": tokens, "scheduler": scheduler.state_dict(), "data": asdict(data.train.position),
                       "parallel": {"kind": kind.value, "dp": dp, "tp": tp_deg}}
        path = dcp_ckpt.save(checkpoint_dir(cfg.out) / name, model, optimizer, graph, train_state)
        if rank == 0:
            point_latest(cfg.out, name)
        dist.barrier()
        return path

    cpu_group = dist.new_group(backend="gloo")  # the stop flag lives on the CPU whatever the device

    def any_stopped(mine: bool) -> bool:
        flag = torch.tensor([1 if mine else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=cpu_group)
        return bool(flag.item())

    hooks = LoopHooks(to_device=local, mean=global_mean, clip=lambda: clip_grad_norm(list(model.parameters()), spec.training.grad_clip),
                      save=save, any_stopped=any_stopped, writer=rank == 0, record={"world": world})
    return run_steps(cfg, hooks, loss_fn=model.loss, optimizer=optimizer, scheduler=scheduler, data=data, step=step,
                     tokens=tokens, model=model, amp=autocast_for(device))


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
