"""`archc plan`: does a spec fit on N GPUs, and how? Light: no torch, closed forms (archc.memory_plan)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from archc.cli import app
from archc.commands.common import SetOption, load
from archc.errors import UserError


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=120)  # the tables' width, whatever the terminal


@app.command("plan")
def plan_cmd(
    spec: Annotated[str, typer.Argument(help="Spec file, library name (llama2-70b) or compiled model directory.")],
    gpus: Annotated[int, typer.Option("--gpus", help="Number of GPUs.")] = 1,
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="Memory of one GPU, e.g. 141GiB (H200), 80GB.")] = "141GiB",
    batch: Annotated[int, typer.Option("--batch", help="Global batch in sequences (split over the data-parallel ranks).")] = 1,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per sequence; default max_seq_len.")] = None,
    parallel: Annotated[Optional[list[str]], typer.Option("--parallel", help="single | fsdp | tp | fsdp+tp (repeatable); default all.")] = None,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="Training totals with per-layer activation checkpointing.")] = False,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32 | bfloat16 | float16 for weights, gradients and optimizer state; default the spec's dtype.")] = None,
    compute_dtype: Annotated[Optional[str], typer.Option("--compute-dtype", help="Activations and KV cache dtype; default --dtype. `archc train` on CUDA: --dtype float32 --compute-dtype bfloat16.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON (bytes) instead of tables.")] = False,
    sets: SetOption = None,
) -> None:
    """Per-GPU memory for training and generation under single, fsdp, tp and fsdp+tp; marks which fit."""
    from rich.markup import escape
    from rich.table import Table

    from archc.memory_plan import (MAX_GPUS, ParallelKind, fmt_bytes, memory_row, no_strategy_reason, one_layer_graph, parse_size,
                                   strategies)
    from archc.spec import DType

    if not 1 <= gpus <= MAX_GPUS:
        raise UserError(f"--gpus {gpus}: give between 1 and {MAX_GPUS:,} GPUs")
    if batch < 1:
        raise UserError(f"--batch {batch}: give at least 1 sequence")
    capacity = parse_size(gpu_memory)
    kinds = []
    for p in parallel or [k.value for k in ParallelKind]:
        try:
            kinds.append(ParallelKind(p))
        except ValueError:
            raise UserError(f"--parallel {p!r}: choose single, fsdp, tp or fsdp+tp") from None
    s = load(spec, sets)
    S = seq_len if seq_len is not None else s.max_seq_len
    if S < 1:
        raise UserError(f"--seq-len {S}: give at least 1 token")
    if S > s.max_seq_len:
        raise UserError(f"--seq-len {S} is beyond max_seq_len={s.max_seq_len} of {s.name}; lower it or --set max_seq_len={S}")
    try:  # `is not None`: an empty --dtype '' is refused, not read as the default
        dt = DType(dtype) if dtype is not None else s.dtype
    except ValueError:
        raise UserError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16") from None
    try:
        ct = DType(compute_dtype) if compute_dtype is not None else dt
    except ValueError:
        raise UserError(f"--compute-dtype {compute_dtype!r}: choose float32, bfloat16 or float16") from None

    graph1 = one_layer_graph(s)
    found = strategies(graph1, gpus, kinds)
    # A kind asked for with --parallel that has no strategy on --gpus (fsdp or tp on one GPU, fsdp+tp on a prime count)
    # was left out without a word: `--parallel fsdp --gpus 1` printed two empty tables and exit 0. (Without --parallel
    # every kind is tried and those that do not apply stay out, as before.)
    offered = {st.kind for st, _ in found}
    missing = [f"{k.value}: {no_strategy_reason(k, gpus)}" for k in dict.fromkeys(kinds) if parallel and k not in offered]
    if not found:
        raise UserError("; ".join(f"--parallel {m}" for m in missing))
    rows, refused = [], list(missing)
    for strategy, problem in found:
        if problem:
            refused.append(f"{strategy.label}: {problem}")
        elif batch % strategy.dp:
            refused.append(f"{strategy.label}: --batch {batch} does not split over {strategy.dp} data-parallel ranks")
        else:
            rows.append(memory_row(s, graph1, strategy, batch=batch, seq_len=S, dtype=dt, checkpointing=checkpointing, compute_dtype=ct))

    if as_json:
        import json

        typer.echo(json.dumps({
            "spec": s.name, "gpus": gpus, "gpu_memory": capacity, "batch": batch, "seq_len": S, "dtype": dt.value, "compute_dtype": ct.value,
            "optimizer": s.training.optimizer.kind.value, "checkpointing": checkpointing,
            "strategies": [{"strategy": r.strategy.kind.value, "dp": r.strategy.dp, "tp": r.strategy.tp,
                            "local_batch": r.local_batch, "weights": r.weights, "gradients": r.gradients,
                            "optimizer": r.optimizer, "activations": r.activations, "activations_checkpointed": r.activations_ckpt,
                            "loss_transient": r.loss_transient, "fsdp_transient": r.fsdp_transient,
                            "train_peak": r.train_peak, "train_fits": r.train_peak <= capacity, "kv_cache": r.kv_cache,
                            "prefill_transient": r.prefill_transient, "generate_peak": r.infer_peak,
                            "generate_fits": r.infer_peak <= capacity} for r in rows],
            "not_possible": refused,
        }, indent=1))
        return
    out = _console()
    opt = s.training.optimizer.kind.value
    out.print(f"{escape(s.name)}: {gpus} x {fmt_bytes(capacity)}, batch {batch} x {S} tokens, {dt.value}" + (f" (compute {ct.value})" if ct is not dt else "") + f", optimizer {opt}"
              f"{', activation checkpointing' if checkpointing else ''}")
    train = Table(title="training, per GPU", title_justify="left", box=None, pad_edge=False)
    for col in ("strategy", "weights", "grads", "optimizer", "activations", "with ckpt", "peak", "fits"):
        train.add_column(col, justify="left" if col == "strategy" else "right")
    infer = Table(title=f"generation (KV cache at {S} tokens, batch {batch}), per GPU", title_justify="left", box=None, pad_edge=False)
    for col in ("strategy", "weights", "KV cache", "prefill", "peak", "fits"):
        infer.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        fits_t, fits_i = r.train_peak <= capacity, r.infer_peak <= capacity
        train.add_row(r.strategy.label, fmt_bytes(r.weights), fmt_bytes(r.gradients), fmt_bytes(r.optimizer),
                      fmt_bytes(r.activations), fmt_bytes(r.activations_ckpt), fmt_bytes(r.train_peak),
                      "[green]yes[/]" if fits_t else "[red]no[/]")
        infer.add_row(r.strategy.label, fmt_bytes(r.weights), fmt_bytes(r.kv_cache), fmt_bytes(r.prefill_transient),
                      fmt_bytes(r.infer_peak), "[green]yes[/]" if fits_i else "[red]no[/]")
    out.print(train)
    out.print()
    out.print(infer)
    for line in refused:
        out.print(f"[yellow]not possible[/] {escape(line)}")
