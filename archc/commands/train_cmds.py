"""`archc train SPEC --data PATH --out DIR`: train the emitted PyTorch module (archc.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import Replaces, SetOption, force_option, load
from archc.errors import UserError


@app.command("train")
def train_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file or library name (llama); with --resume, the run's DIR/spec.yaml works too.")],
    data: Annotated[Path, typer.Option("--data", help="Token file (flat uint16/uint32 ids, nanoGPT style) or text: a .txt file or a folder of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: spec.yaml, checkpoints/, log.jsonl, loss.png (and tokenizer.json for text).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps in total (a resumed run continues up to this).")] = 100,
    batch: Annotated[int, typer.Option(help="Sequences per micro-batch.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (at most the spec's max_seq_len).")] = 128,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validation loss (and a checkpoint) every N steps; 0: only at the end.")] = 50,
    eval_batches: Annotated[int, typer.Option("--eval-batches", help="Validation batches per evaluation.")] = 4,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps; 0: at each evaluation.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    force: force_option(Replaces.RUN_FOLDER) = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (fullgraph).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]. CUDA trains with bf16 autocast, the CPU in float32.")] = "auto",
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of the data held out for validation (its tail).")] = 0.1,
    data_dtype: Annotated[str, typer.Option("--data-dtype", help="Token file id width: auto (uint16 when vocab_size <= 65536) | uint16 | uint32.")] = "auto",
    tokenizer: Annotated[Optional[Path], typer.Option(help="Hugging Face tokenizer.json for text data; default: bytes (256 ids).")] = None,
    checkpoint_layers: Annotated[bool, typer.Option("--activation-checkpointing", help="Recompute each layer in backward (less memory).")] = False,
    parallel: Annotated[Optional[str], typer.Option("--parallel", help="fsdp | tp | fsdp+tp across the processes of torchrun (archc.parallel); --batch is then the global batch.")] = None,
    tp: Annotated[Optional[int], typer.Option("--tp", help="Tensor-parallel degree for --parallel fsdp+tp (tp uses every process).")] = None,
    sets: SetOption = None,
) -> None:
    """Train a spec on a token file or text, with checkpoints that `archc compile DIR` turns into ONNX."""
    from archc.train.data import TokenDType
    from archc.train.device import parse_device
    from archc.train.loop import TrainConfig, TrainInterrupted, train

    if data_dtype not in {d.value for d in TokenDType}:
        raise UserError(f"--data-dtype {data_dtype}: choose one of {', '.join(d.value for d in TokenDType)}")
    parse_device(device)
    s = load(spec, sets)
    cfg = TrainConfig(spec=s, data=data, out=out, steps=steps, batch=batch, seq_len=seq_len, grad_accum=grad_accum,
                      eval_every=eval_every, eval_batches=eval_batches, save_every=save_every, resume=resume, force=force,
                      compile=compile_, device=device, val_fraction=val_fraction, data_dtype=TokenDType(data_dtype),
                      tokenizer=tokenizer, activation_checkpointing=checkpoint_layers)
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # names and paths as written
    if parallel is not None:
        from archc.parallel.launch import check_launch

        launch = check_launch(cfg, parallel, tp)  # every argument checked before torch is imported
        from archc.parallel.train import finish, train_parallel

        try:
            result = train_parallel(cfg, launch)
        except TrainInterrupted as stop:
            err.print(f"{stop.signame}: stopped at step {stop.result.step}; checkpoint {stop.result.checkpoint}; continue with --resume")
            raise typer.Exit(130) from None
        finally:
            finish()
        if launch.process.rank == 0:
            err.print(f"trained {s.name} to step {result.step} ({result.tokens:,} tokens, --parallel {parallel}): "
                      f"loss {result.train_loss:.4f}; checkpoint {result.checkpoint}")
        return
    if tp is not None:
        raise UserError("--tp needs --parallel tp or fsdp+tp")
    from archc.parallel.launch import check_one_process

    check_one_process()
    try:
        result = train(cfg)
    except TrainInterrupted as stop:
        r = stop.result
        err.print(f"{stop.signame}: stopped at step {r.step}; checkpoint {r.checkpoint}; continue with --resume")
        raise typer.Exit(130) from None
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    loss = f"loss {result.train_loss:.4f}" if result.train_loss is not None else "nothing to do"
    err.print(f"trained {s.name} to step {result.step} ({result.tokens:,} tokens): {loss}{val}; checkpoint {result.checkpoint}")
    err.print(f"next: archc compile {out} -o {out}-onnx")
