"""`archc train --device`: the choice as written (light: parse_device, checked before torch is imported)
and the torch device it names (pick_device, which asks torch what is there).

--device is auto | cpu | cuda | cuda:N. Under torchrun (--parallel) every process takes the GPU of its
LOCAL_RANK, so there an index is refused rather than silently ignored (archc.parallel.launch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from archc.errors import UserError


class DeviceKind(str, Enum):
    auto = "auto"  # CUDA where torch sees a device, else the CPU
    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class DeviceChoice:
    kind: DeviceKind
    index: int | None  # cuda:N; None: no index written


_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::([0-9]+))?$")


def parse_device(text: str) -> DeviceChoice:
    """--device as written; UserError (one line) for anything but auto, cpu, cuda and cuda:N."""
    m = _DEVICE.match(text)
    if m is None or (m.group(2) is not None and m.group(1) != DeviceKind.cuda.value):
        raise UserError(f"--device {text!r}: not a device; use auto, cpu, cuda or cuda:N")
    return DeviceChoice(DeviceKind(m.group(1)), None if m.group(2) is None else int(m.group(2)))


def pick_device(text: str, *, local_rank: int | None = None, local_world: int = 1):
    """The torch device --device names. Under torchrun (`local_rank` set) CUDA means this process's
    LOCAL_RANK GPU, one per process on the node (`local_world` of them). Refuses in one line what torch
    cannot give: CUDA where it sees none, an index beyond its devices, fewer GPUs than local processes."""
    import torch

    choice = parse_device(text)
    kind = choice.kind
    if kind is DeviceKind.auto:
        kind = DeviceKind.cuda if torch.cuda.is_available() else DeviceKind.cpu
    if kind is DeviceKind.cpu:
        return torch.device("cpu")
    if kind is DeviceKind.cuda:
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: no CUDA device here; use --device cpu")
        count = torch.cuda.device_count()
        if local_rank is not None:
            if local_world > count or local_rank >= count:
                raise UserError(f"--device {text}: torchrun started {max(local_world, local_rank + 1)} processes on this node but "
                                f"torch sees {count} CUDA device(s), one per process; pass --nproc-per-node {count} or --device cpu")
            return torch.device("cuda", local_rank)
        if choice.index is not None and choice.index >= count:
            raise UserError(f"--device {text}: torch sees {count} CUDA device(s) here; pass --device cuda:N with N below {count}")
        return torch.device(text)
    raise ValueError(f"unknown device kind {kind}")
