"""Distributed checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint folder holds
    dcp/            DCP's files: every rank writes its own shards of the model and optimizer state,
                    keyed by the graph's parameter names (get_state_dict strips FSDP/TP wrappers)
    state.pt        rank 0's train state: step, tokens, scheduler, data position (not sharded)
    archc-dist.json the spec and every parameter's name and shape: a checkpoint is loaded only
                    into the model it was saved from
DCP reshards on load, so a run saved on 4 processes (fsdp 2 x tp 2) resumes on 2, or on 1.
`consolidate` reads the model part in one process, with no process group, as one state dict
under the graph's names (what `archc compile` writes to a single safetensors file).

Saving writes into a hidden temporary folder that rank 0 renames once every rank is done, so an
interrupted save leaves no half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from archc.errors import UserError

DCP_DIR = "dcp"
STATE_FILE = "state.pt"
SIGNATURE_FILE = "archc-dist.json"


def is_distributed_checkpoint(path: Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def signature(graph) -> dict:
    """What must agree between a checkpoint and the model it loads into."""
    params = {name: list(shape) for name, shape, _ in graph.params()}
    return {"format": 1, "spec": graph.spec.to_yaml_dict(), "params": params}


def check_signature(path: Path, graph) -> None:
    """UserError (one line) when the checkpoint at `path` was saved from another spec."""
    file = Path(path) / SIGNATURE_FILE
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: not a readable archc distributed checkpoint ({type(e).__name__}); "
                        f"resume from another checkpoint or start again") from None
    mine = signature(graph)
    if saved.get("params") != mine["params"] or saved.get("spec") != json.loads(json.dumps(mine["spec"])):
        theirs = saved.get("spec", {}).get("name", "?")
        theirs_params = saved.get("params", {})
        diff = sorted(k for k in set(theirs_params) | set(mine["params"]) if theirs_params.get(k) != mine["params"].get(k))
        what = f"parameters differ (e.g. {diff[0]})" if diff else "the spec differs"
        raise UserError(f"{path}: checkpoint of spec {theirs!r} does not fit spec {graph.spec.name!r}: {what}; "
                        f"pass the spec it was trained with (its archc-dist.json holds it)")


def save(path: Path, model, optimizer, graph, train_state: dict, *, process_group=None) -> Path:
    """Collective: every rank calls it. Returns the final folder."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    rank = dist.get_rank(process_group)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier(process_group)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR), process_group=process_group)
    if rank == 0:
        torch.save(train_state, tmp / STATE_FILE)
        (tmp / SIGNATURE_FILE).write_text(json.dumps(signature(graph), indent=1) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    dist.barrier(process_group)
    return path


def load(path: Path, model, optimizer, graph, *, process_group=None) -> dict:
    """Collective: load the checkpoint into this (possibly differently sharded) model and optimizer;
    returns rank 0's train state."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    check_signature(path, graph)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / DCP_DIR), process_group=process_group)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(path / STATE_FILE, weights_only=False)


def consolidate(path: Path) -> dict:
    """The model's parameters as one state dict {graph name: tensor}, read in this process alone."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    try:
        _load_state_dict(state, storage_reader=FileSystemReader(str(Path(path) / DCP_DIR)),
                         planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
    except Exception as e:  # DCP raises its own CheckpointException for damaged files
        raise UserError(f"{path}: cannot read the distributed checkpoint ({type(e).__name__}); "
                        f"resume or compile from another checkpoint") from None
    return {k: v.contiguous() for k, v in state["model"].items()}


def run_weights_file(run_dir: Path, graph, scratch: Path) -> Path | None:
    """The weights `archc compile DIR` reads for a training run folder: its latest checkpoint's
    model.safetensors, or, for a distributed checkpoint, one safetensors file consolidated into
    `scratch` (checked against `graph` first). None when the folder is not a training run."""
    from safetensors.torch import save_file

    from archc.train.checkpoint import MODEL_FILE, latest_checkpoint
    from archc.train.loop import is_run_dir

    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        return None
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir}: the training run has no checkpoint yet; train it first (or compile its spec.yaml for the init)")
    if not is_distributed_checkpoint(ckpt):
        return ckpt / MODEL_FILE
    check_signature(ckpt, graph)
    file = Path(scratch) / MODEL_FILE
    save_file(consolidate(ckpt), str(file), metadata={"format": "archc-train", "source": str(ckpt)})
    return file
