"""`archc generate-tp`: tensor-parallel greedy generation across the processes of torchrun (archc.parallel)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import SetOption, load
from archc.errors import UserError


DTYPES = ("float32", "bfloat16", "float16")  # torch's names of the same dtypes


@app.command("generate-tp")
def generate_tp_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file, library name, or a training run folder (its spec and latest checkpoint).")],
    prompt_ids: Annotated[list[str], typer.Option("--prompt-ids", help="Comma-separated token ids; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate per prompt.")] = 16,
    weights: Annotated[Optional[str], typer.Option(help="A safetensors file of archc parameter names; default: the run folder's checkpoint, else the seeded init.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (each process takes the GPU of its LOCAL_RANK).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16.")] = "float32",
    sets: SetOption = None,
) -> None:
    """Greedy tokens from a model sharded over every process of torchrun (tensor parallel). Launch:
    torchrun --nproc-per-node 2 -m archc.cli generate-tp SPEC --prompt-ids 1,2,3"""
    import tempfile

    import archc
    from archc.commands.onnx_cmds import _parse_ids
    from archc.feeds import check_prompts
    from archc.parallel.launch import check_torchrun_device, torchrun_world
    from archc.parallel.sharding import make_plan

    # Every argument and torchrun's environment checked before torch is imported (as `archc train --parallel`).
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    check_torchrun_device(device, "generate-tp")
    w = torchrun_world("generate-tp", "generate-tp")
    prompts = _parse_ids(prompt_ids)
    s = load(spec, sets)
    check_prompts(prompts, max_new_tokens, s.vocab_size, s.max_seq_len)
    graph = archc.compile(s)
    make_plan(graph, w.world)  # refused in one line before any process group exists

    import torch

    from archc.parallel.apply import init_from_env
    from archc.train.device import pick_device

    # CUDA there, one GPU per local process: asked of torch before any process group (was a traceback in set_device)
    dev = pick_device(device, local_rank=w.local_rank, local_world=w.local_world)
    with tempfile.TemporaryDirectory(prefix="archc-gen-") as scratch:
        state = None
        if weights is None:
            from archc.parallel.checkpoint import run_weights_file

            found = run_weights_file(Path(spec), graph, Path(scratch)) if Path(spec).is_dir() else None
            weights = str(found) if found else None
        if weights is not None:
            from archc.hf.export import safetensors_source

            get = safetensors_source(graph, Path(weights))  # one line for an unreadable file, a missing or misshapen parameter
            state = {full: get(full) for full, _, _ in graph.params()}
        init_from_env(dev.type)
        from torch.distributed.device_mesh import init_device_mesh

        from archc.parallel.generate import generate_tp

        mesh = init_device_mesh(dev.type, (w.world,), mesh_dim_names=("tp",))
        tokens = generate_tp(graph, prompts, max_new_tokens, mesh, weights=state, dtype=getattr(torch, dtype), device=dev)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        for row in tokens:
            typer.echo(",".join(map(str, row)))
    dist.destroy_process_group()
