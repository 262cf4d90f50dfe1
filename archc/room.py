"""Will it fit? A model's bytes, from the graph's parameter shapes, against free disk and memory,
checked before anything is allocated: a vocabulary of 1e9 or a position table of 1e12 rows is one
line and exit 2, not an allocator traceback after minutes.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
from pathlib import Path

from archc.errors import UserError


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by RLIMIT_AS when one is set."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = 0
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
        left = max(0, soft - used)
        avail = left if avail is None else min(avail, left)
    return avail


def check_export_room(graph, out: Path, itemsize: int, *, whole_in_memory: bool, label: str) -> None:
    """Refuse an export that cannot fit: the weights file needs sum(params) * itemsize on disk; memory
    holds a few float32 tensors at a time (the exporter streams), or all of them when the weights
    come from a checkpoint that is read whole (`whole_in_memory`). `graph` may be a light graph
    (archc.cost.light_graph): compile checks it before building a graph of a million layers."""
    from archc.cost import cost

    total = cost(graph).params  # closed form on a light graph (a few layers built)
    largest = max((math.prod(shape) for _, shape, _ in graph.params()), default=0)
    spec = graph.spec
    tables = 2 * spec.max_seq_len * spec.attention.head_dim * 4  # cos/sin caches some lowerings build
    disk_need = total * itemsize
    mem_need = (total * 4 if whole_in_memory else 3 * largest * 4) + tables
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free_disk = shutil.disk_usage(probe).free
    except OSError:
        free_disk = None
    if free_disk is not None and disk_need > free_disk:
        raise UserError(f"{label}: the weights need {_gib(disk_need)} ({total:,} parameters), and {probe} has "
                        f"{_gib(free_disk)} free; make the model smaller or write elsewhere")
    free_mem = available_memory()
    if free_mem is not None and mem_need > free_mem:
        raise UserError(f"{label}: writing the weights needs about {_gib(mem_need)} of memory "
                        f"(largest tensor {largest:,} values), and {_gib(free_mem)} is available; make the model smaller")
