"""What a compiled architecture costs, read off the component graph (never off the spec's axes).

- parameters: every owned parameter once; a tied head adds nothing.
- FLOPs per token (forward, at context length S): 2 per multiply-add of every matrix product
  (attention projections, MLP, output head), plus the attention scores and the weighted sum of
  values, 2 * S * head_dim each per query head (QK^T and AV) -- the Kaplan et al. 2020 count
  with the attention term written for one token that attends to S positions. Norms, activations
  and softmax are left out, as in the published counts.
- KV-cache bytes per token: 2 (K and V) * kv_heads * head_dim * itemsize, summed over layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from archc.dtypes import DType
from archc.graph import ComponentGraph, ComponentKind

# How `show` and `diff` group parameters.
GROUPS = {
    ComponentKind.token_embedding.value: "embedding",
    ComponentKind.learned_position.value: "position",
    ComponentKind.glm2d_position.value: "position",
    ComponentKind.attention.value: "attention",
    ComponentKind.mlp.value: "mlp",
    ComponentKind.norm.value: "norm",
    ComponentKind.head.value: "head",
}

@dataclass(frozen=True)
class Cost:
    params: int
    params_by_group: dict[str, int]
    matmul_params: int  # weights that take part in a matrix product per token (head included, even when tied)
    attention_flops_per_position: int  # per token, per position attended to, all layers
    kv_elements_per_token: int

    def flops_per_token(self, seq_len: int) -> int:
        return 2 * self.matmul_params + self.attention_flops_per_position * seq_len

    def kv_bytes_per_token(self, dtype: DType = DType.float16) -> int:
        return self.kv_elements_per_token * dtype.itemsize


def cost(graph: ComponentGraph) -> Cost:
    by_group: dict[str, int] = {}
    total = matmul = attn_per_pos = kv = 0
    for name in graph.nodes():
        d = graph.node(name)
        kind = d["kind"]
        n_params = sum(math.prod(shape) for shape in d["params"].values())
        total += n_params
        if n_params:
            group = GROUPS.get(kind, kind)
            by_group[group] = by_group.get(group, 0) + n_params
        if kind in (ComponentKind.attention.value, ComponentKind.mlp.value, ComponentKind.head.value):
            matmul += sum(math.prod(s) for local, s in d["params"].items() if local.endswith("weight"))
        if kind == ComponentKind.head.value and d.get("tied"):
            matmul += math.prod(next(iter(d["tied_shapes"].values())))
        if kind == ComponentKind.attention.value:
            s = d["settings"]
            attn_per_pos += 2 * 2 * s["n_heads"] * s["head_dim"]
            kv += 2 * s["kv_heads"] * s["head_dim"]
    return Cost(total, by_group, matmul, attn_per_pos, kv)
