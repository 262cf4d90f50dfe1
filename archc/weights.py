"""Seeded initial weights, drawn per parameter so every backend gets the same numbers.

Each parameter has its own torch.Generator seeded from sha256(init seed, parameter name), so a
parameter's values do not depend on which other parameters exist or the order they are made in,
and the ONNX exporter can draw one tensor at a time (memory near one copy of the weights) and get
exactly what the PyTorch emitter gets. The distribution of each parameter is recorded on its graph
node (`init`), decided once in archc.graph.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch

from archc.graph import ComponentGraph


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def init_tensor(graph: ComponentGraph, node: str, local: str) -> torch.Tensor:
    """The float32 initial value of parameter `node.local`."""
    d = graph.node(node)
    shape = tuple(d["params"][local])
    rule = d["init"][local]
    dist = rule["dist"]
    if dist == "zeros":
        return torch.zeros(shape, dtype=torch.float32)
    if dist == "ones":
        return torch.ones(shape, dtype=torch.float32)
    if dist == "normal":
        std = rule["std"]
    elif dist == "xavier":
        fan_out, fan_in = shape[0], math.prod(shape[1:])
        std = rule["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        raise ValueError(f"{node}.{local}: unknown init distribution {dist!r}")
    out = torch.empty(shape, dtype=torch.float32)
    out.normal_(0.0, std, generator=_generator(graph.model.seed, f"{node}.{local}"))
    return out


def iter_init(graph: ComponentGraph) -> Iterator[tuple[str, torch.Tensor]]:
    """(full name, float32 tensor) for every owned parameter, in graph order, one at a time."""
    for full, _shape, node in graph.params():
        yield full, init_tensor(graph, node, full[len(node) + 1 :])


def init_state(graph: ComponentGraph) -> dict[str, torch.Tensor]:
    return dict(iter_init(graph))
