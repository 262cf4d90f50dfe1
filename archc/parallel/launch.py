"""`archc train --parallel`: the arguments and torchrun's environment checked together, before torch is
imported or anything allocated (light). Each combination that cannot work is one line naming the argument
and the fix (exit status 2):

- --parallel is fsdp | tp | fsdp+tp; `single` (a row of `archc plan`) is one process: drop --parallel;
- --parallel runs under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE in the environment);
  torchrun with more than one process but no --parallel is refused too: every process would train the
  same run into the same --out;
- --device cpu spreads over gloo (the CPU tests do), cuda over NCCL with each process on the GPU of its
  LOCAL_RANK; an explicit cuda:N would be ignored, so it is refused (CUDA_VISIBLE_DEVICES picks GPUs);
  whether CUDA is there, with a GPU per local process, only torch can say: archc.train.device.pick_device,
  still before the process group;
- --tp against --parallel and the world size (`degrees`), the spec's heads and d_ff against the tp
  degree (archc.parallel.sharding.make_plan), the global --batch against the data-parallel degree;
- --compile is not supported with --parallel yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from archc.errors import UserError
from archc.memory_plan import ParallelKind, one_layer_graph
from archc.parallel.sharding import make_plan
from archc.train.device import DeviceChoice, DeviceKind, parse_device

TORCHRUN = "torchrun --nproc-per-node N -m archc.cli {command} ..."


@dataclass(frozen=True)
class World:
    """torchrun's environment for this process, checked."""

    world: int
    rank: int
    local_rank: int
    local_world: int


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the torchrun world (`process`, as torchrun_world read it), and the
    parallel kind and degrees it trains with."""

    kind: ParallelKind
    process: World
    dp: int
    tp: int


def degrees(kind: ParallelKind, world: int, tp: int | None) -> tuple[int, int]:
    """(dp, tp) for `kind` on `world` processes; UserError when they do not fit."""
    if kind is ParallelKind.single:
        if world != 1:
            raise UserError(f"--parallel single runs on one process, but the world size is {world}; pass --parallel fsdp, tp or fsdp+tp")
        return 1, 1
    if kind is ParallelKind.fsdp:
        if tp not in (None, 1):
            raise UserError(f"--tp {tp} with --parallel fsdp: use --parallel fsdp+tp to combine them")
        return world, 1
    if kind is ParallelKind.tp:
        if tp not in (None, world):
            raise UserError(f"--tp {tp} with --parallel tp on {world} processes: tp uses every process; pass --tp {world} or --parallel fsdp+tp")
        return 1, world
    if kind is ParallelKind.fsdp_tp:
        if tp is None or tp < 1 or world % tp:
            raise UserError(f"--parallel fsdp+tp needs --tp N dividing the world size {world} (got {tp})")
        return world // tp, tp
    raise ValueError(f"unknown parallel kind {kind}")


def _env_int(env: Mapping[str, str], name: str, command: str, default: str | None = None) -> int:
    text = env.get(name, default)
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"environment {name}={text!r}: not a process count or rank; launch with {TORCHRUN.format(command=command)}") from None
    if value < 0:
        raise UserError(f"environment {name}={value}: negative; launch with {TORCHRUN.format(command=command)}")
    return value


def torchrun_world(command: str, what: str, env: Mapping[str, str] = os.environ) -> World:
    """The torchrun world `archc COMMAND` runs in; `what` (e.g. "--parallel tp") is what needs it. One line
    when a variable torchrun sets is missing or not a rank, instead of torch's rendezvous traceback."""
    launch = TORCHRUN.format(command=command)
    if "RANK" not in env or "WORLD_SIZE" not in env:
        raise UserError(f"{what}: launch with torchrun, e.g. {launch.replace(' N ', ' 2 ')}")
    world, rank = _env_int(env, "WORLD_SIZE", command), _env_int(env, "RANK", command)
    if world < 1 or rank >= world:
        raise UserError(f"environment RANK={rank}, WORLD_SIZE={world}: not a torchrun world; launch with {launch}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise UserError(f"environment {' and '.join(missing)} not set (torchrun sets them); launch with {launch}")
    local_rank = _env_int(env, "LOCAL_RANK", command, str(rank))
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", command, str(local_rank + 1))  # torchrun sets it; else what we know
    return World(world, rank, local_rank, local_world)


def check_torchrun_device(text: str, how: str) -> DeviceChoice:
    """--device of a command that runs one process per GPU under torchrun (`how` says which): an explicit
    cuda:N would be ignored, so it is refused. Whether CUDA is there is pick_device's, after torch."""
    device = parse_device(text)
    if device.kind is DeviceKind.cuda and device.index is not None:
        raise UserError(f"--device {text} with {how}: each process takes the GPU of its LOCAL_RANK; "
                        "pass --device cuda (and choose GPUs with CUDA_VISIBLE_DEVICES)")
    return device


def check_one_process(env: Mapping[str, str] = os.environ) -> None:
    """`archc train` without --parallel: refused under a torchrun world of more than one process."""
    if "RANK" in env and "WORLD_SIZE" in env and _env_int(env, "WORLD_SIZE", "train") > 1:
        raise UserError(f"archc train runs under torchrun with {env['WORLD_SIZE']} processes but without --parallel, so every "
                        "process would train the same run into the same --out; pass --parallel fsdp, tp or fsdp+tp")


def check_launch(cfg, parallel: str, tp: int | None, env: Mapping[str, str] = os.environ) -> Launch:
    """Every check of `archc train --parallel` that needs no torch, in the order a user fixes them.
    `cfg` is the run's archc.train.loop.TrainConfig (its options are checked first)."""
    from archc.train.loop import check_options

    try:
        kind = ParallelKind(parallel)
    except ValueError:
        raise UserError(f"--parallel {parallel!r}: choose fsdp, tp or fsdp+tp") from None
    if kind is ParallelKind.single:
        raise UserError("--parallel single: that is one process; drop --parallel (or choose fsdp, tp or fsdp+tp)")
    check_options(cfg)
    if cfg.compile:
        raise UserError("--compile is not supported with --parallel yet; drop one of them")
    check_torchrun_device(cfg.device, "--parallel")
    w = torchrun_world("train", f"--parallel {kind.value}", env)
    dp, tp_deg = degrees(kind, w.world, tp)
    make_plan(one_layer_graph(cfg.spec), tp_deg)  # every layer's heads and d_ff are the same
    if cfg.batch % dp:
        raise UserError(f"--batch {cfg.batch} (the global batch) does not split over {dp} data-parallel ranks; pass a multiple of {dp}")
    return Launch(kind, w, dp, tp_deg)
