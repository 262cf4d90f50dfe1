"""`archc generate-tp`: tensor-parallel greedy generation across the processes of torchrun (archc.parallel)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import SetOption, load
from archc.errors import UserError


@app.command("generate-tp")
def generate_tp_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file, library name, or a training run folder (its spec and latest checkpoint).")],
    prompt_ids: Annotated[list[str], typer.Option("--prompt-ids", help="Comma-separated token ids; repeat for a batch.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate per prompt.")] = 16,
    weights: Annotated[Optional[str], typer.Option(help="A safetensors file of archc parameter names; default: the run folder's checkpoint, else the seeded init.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (each process takes the GPU of its LOCAL_RANK).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16.")] = "float32",
    sets: SetOption = None,
) -> None:
    """Greedy tokens from a model sharded over every process of torchrun (tensor parallel). Launch:
    torchrun --nproc-per-node 2 -m archc.cli generate-tp SPEC --prompt-ids 1,2,3"""
    import tempfile

    import torch

    import archc
    from archc.commands.onnx_cmds import _parse_ids
    from archc.parallel.apply import init_from_env
    from archc.parallel.sharding import make_plan

    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: choose cpu or cuda")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise UserError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    if "RANK" not in os.environ:
        raise UserError("generate-tp runs under torchrun: torchrun --nproc-per-node N -m archc.cli generate-tp ...")
    prompts = _parse_ids(prompt_ids)
    s = load(spec, sets)
    for p in prompts:
        if not p or max(p) >= s.vocab_size or min(p) < 0:
            raise UserError(f"--prompt-ids: every prompt needs ids in [0, {s.vocab_size}) (vocab_size of {s.name})")
    graph = archc.compile(s)
    world = int(os.environ["WORLD_SIZE"])
    make_plan(graph, world)  # refused in one line before any process group exists
    with tempfile.TemporaryDirectory(prefix="archc-gen-") as scratch:
        state = None
        if weights is None:
            from archc.parallel.checkpoint import run_weights_file

            found = run_weights_file(Path(spec), graph, Path(scratch)) if Path(spec).is_dir() else None
            weights = str(found) if found else None
        if weights is not None:
            from safetensors.torch import load_file

            state = load_file(weights)
        init_from_env(device)
        from torch.distributed.device_mesh import init_device_mesh

        from archc.parallel.generate import generate_tp

        mesh = init_device_mesh(device, (world,), mesh_dim_names=("tp",))
        dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else "cpu"
        tokens = generate_tp(graph, prompts, max_new_tokens, mesh, weights=state, dtype=dtypes[dtype], device=dev)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        for row in tokens:
            typer.echo(",".join(map(str, row)))
    dist.destroy_process_group()
