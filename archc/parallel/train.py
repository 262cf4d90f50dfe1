"""`archc train --parallel fsdp|tp|fsdp+tp`: archc.train's loop, spread over the processes torchrun started.

The single-process loop (archc.train.loop) stays the reference; this one reuses its pieces (data,
run folder, recipe, precision, signals, log and plot) and changes only what spreading needs:

- the model is built whole on each rank, then sharded (archc.parallel.apply.parallelize) before
  the optimizer is made (torchtitan's order);
- --batch is the GLOBAL batch: every rank draws the same batch from the same seeded stream and
  keeps its data-parallel share, so the data position does not depend on the world size and a
  run resumes at any world size;
- checkpoints are DCP folders (archc.parallel.checkpoint) at the run's usual places
  (checkpoints/step-N, checkpoints/latest); `archc compile DIR` consolidates them;
- rank 0 alone writes the log, the plot and the pointer to the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from archc.errors import UserError
from archc.memory_plan import ParallelKind
from archc.train.loop import (TrainConfig, TrainInterrupted, TrainResult, _read_log, _write_plot, autocast_for,
                              build_train_model, check_resume_matches, prepare_out, stop_on_signals, write_run_files)


def train_parallel(cfg: TrainConfig, kind: ParallelKind, tp: int | None) -> TrainResult:
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Partial

    import archc
    from archc.atomic import write_text_atomic
    from archc.parallel import checkpoint as dcp_ckpt
    from archc.parallel.apply import Layout, clip_grad_norm, degrees, init_from_env, make_mesh, parallelize
    from archc.parallel.optim import build_optimizer
    from archc.parallel.sharding import make_plan
    from archc.train.checkpoint import KEEP, checkpoint_dir, latest_checkpoint
    from archc.train.data import DataPosition, open_data
    from archc.training import build_scheduler

    spec = cfg.spec
    for name, v in (("--steps", cfg.steps), ("--batch", cfg.batch), ("--seq-len", cfg.seq_len), ("--grad-accum", cfg.grad_accum)):
        if v < 1:
            raise UserError(f"{name} {v}: must be at least 1")
    if cfg.seq_len > spec.max_seq_len:
        raise UserError(f"--seq-len {cfg.seq_len} is beyond the spec's max_seq_len {spec.max_seq_len}; pass --seq-len {spec.max_seq_len} or less")
    if cfg.compile:
        raise UserError("--compile is not supported with --parallel yet; drop one of them")
    if not dist.is_available() or "RANK" not in __import__("os").environ:
        raise UserError(f"--parallel {kind.value}: launch with torchrun, e.g. torchrun --nproc-per-node 2 -m archc.cli train ...")
    device_type = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") else "cpu"
    graph = archc.compile(spec)
    world = int(__import__("os").environ["WORLD_SIZE"])
    dp, tp_deg = degrees(kind, world, tp)
    make_plan(graph, tp_deg)  # refuse an impossible plan before any process group exists
    if cfg.batch % dp:
        raise UserError(f"--batch {cfg.batch} (the global batch) does not split over {dp} data-parallel ranks; pass a multiple of {dp}")
    init_from_env(device_type)
    rank = dist.get_rank()
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    layout = Layout.on(kind, make_mesh(device_type, dp, tp_deg), dp, tp_deg)

    data = open_data(cfg.data, vocab_size=spec.vocab_size, seq_len=cfg.seq_len, seed=spec.init.seed,
                     val_fraction=cfg.val_fraction, dtype=cfg.data_dtype, tokenizer=cfg.tokenizer)
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

    amp = autocast_for(device)
    log_path = cfg.out / "log.jsonl"
    records = _read_log(log_path, step)
    if rank == 0:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    val_batches = data.val.fixed_batches(cfg.batch, cfg.eval_batches) if data.val else []
    tokens_per_step = cfg.batch * cfg.seq_len * cfg.grad_accum

    def local(arr):
        """This rank's data-parallel share of a global batch, on the device."""
        return torch.from_numpy(arr).chunk(dp)[layout.dp_rank].to(device, non_blocking=True)

    def global_mean(x: torch.Tensor) -> float:
        if layout.dp_mesh is None:
            return float(x)
        return float(DTensor.from_local(x.detach().reshape(()), layout.dp_mesh, [Partial("avg")]).full_tensor())

    def evaluate() -> float | None:
        if not val_batches:
            return None
        model.eval()
        total = 0.0
        with torch.no_grad(), amp:
            for b in val_batches:
                t = local(b)
                total += global_mean(model.loss(t[:, :-1], t[:, 1:]))
        model.train()
        return total / len(val_batches)

    def save() -> Path:
        name = f"step-{step:08d}"
        train_state = {"step": step, "tokens": tokens, "scheduler": scheduler.state_dict(), "data": asdict(data.train.position),
                       "parallel": {"kind": kind.value, "dp": dp, "tp": tp_deg}}
        path = dcp_ckpt.save(checkpoint_dir(cfg.out) / name, model, optimizer, graph, train_state)
        if rank == 0:
            write_text_atomic(checkpoint_dir(cfg.out) / "latest", name + "\n")
            _write_plot(cfg.out, records)
            olds = sorted(p for p in checkpoint_dir(cfg.out).iterdir() if p.is_dir() and p.name.startswith("step-") and p.name < name)
            for old in olds[: max(0, len(olds) - (KEEP - 1))]:  # as archc.train keeps them: the newest KEEP
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path

    def log(record: dict) -> None:
        records.append(record)
        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    last_loss, val_loss, ckpt_path = None, None, None
    t_start, step0 = time.perf_counter(), step
    cpu_group = dist.new_group(backend="gloo")  # the stop flag lives on the CPU whatever the device
    with stop_on_signals() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            total = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum):
                batch = local(data.train.next_batch(cfg.batch))
                with amp:
                    loss = model.loss(batch[:, :-1], batch[:, 1:])
                (loss / cfg.grad_accum).backward()
                total += loss.detach()
            grad_norm = clip_grad_norm(list(model.parameters()), spec.training.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            last_loss = global_mean(total) / cfg.grad_accum
            dt = time.perf_counter() - t0
            rec = {"step": step, "loss": last_loss, "lr": lr, "tokens": tokens, "tok_s": tokens_per_step / dt,
                   "elapsed_s": time.perf_counter() - t_start, "world": world}
            if grad_norm is not None:
                rec["grad_norm"] = grad_norm
            log(rec)
            if not math.isfinite(last_loss):
                raise UserError(f"loss became {last_loss} at step {step}; lower the learning rate (--set training.optimizer.lr=...)")
            evaluating = step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)
            if evaluating:
                val_loss = evaluate()
                if val_loss is not None:
                    log({"step": step, "val_loss": val_loss})
                if rank == 0:
                    print(f"step {step}/{cfg.steps}  loss {last_loss:.4f}" + (f"  val {val_loss:.4f}" if val_loss is not None else "")
                          + f"  {(step - step0) * tokens_per_step / (time.perf_counter() - t_start):,.0f} tok/s", flush=True)
            # A signal reaches the ranks at different moments: they agree (any rank stopped -> all stop) before
            # the collective save, so none is left waiting in another step's collectives.
            stopped = torch.tensor([1 if stop["signal"] else 0])
            dist.all_reduce(stopped, op=dist.ReduceOp.MAX, group=cpu_group)
            if stopped.item() and not stop["signal"]:
                stop["signal"] = "SIGTERM"
            saving = step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0) or (not cfg.save_every and evaluating)
            if saving or stop["signal"]:
                ckpt_path = save()
            if stop["signal"]:
                raise TrainInterrupted(TrainResult(step, tokens, last_loss, val_loss, ckpt_path, True, records), stop["signal"])
    if ckpt_path is None:
        ckpt_path = latest_checkpoint(cfg.out)
    return TrainResult(step, tokens, last_loss, val_loss, ckpt_path, False, records)


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
