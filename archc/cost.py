"""What a compiled architecture costs, read off the component graph (never off the spec's axes).

- parameters: every owned parameter once; a tied head adds nothing.
- FLOPs per token (forward, at context length S): 2 per multiply-add of every matrix product
  (attention projections, MLP, output head), plus the attention scores and the weighted sum of
  values, 2 * S * head_dim each per query head (QK^T and AV) -- the Kaplan et al. 2020 count
  with the attention term written for one token that attends to S positions. Norms, activations
  and softmax are left out, as in the published counts.
- KV-cache bytes per token: 2 (K and V) * kv_heads * head_dim * itemsize, summed over layers.
- Sliding-window attention (Mistral; the window is a setting of the mask node each attention node
  reads): a token attends to at most `window` positions, so the attention term and the KV cache a
  context of S tokens needs count min(S, window) positions for that layer.
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
    # (attention FLOPs per position, KV elements per token, window or None) per distinct attention
    # layer shape, summed over the layers that share it; the totals above are their sums.
    attention_by_window: tuple[tuple[int, int, int | None], ...] = ()

    def _positions(self, window: int | None, seq_len: int) -> int:
        return seq_len if window is None else min(seq_len, window)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs of one token that attends to a context of seq_len positions (a sliding
        window caps the positions its layers attend to)."""
        attn = sum(f * self._positions(w, seq_len) for f, _, w in self.attention_by_window)
        return 2 * self.matmul_params + attn

    def kv_bytes_per_token(self, dtype: DType = DType.float16) -> int:
        return self.kv_elements_per_token * dtype.itemsize

    def kv_bytes_at(self, seq_len: int, dtype: DType = DType.float16) -> int:
        """KV-cache bytes a context of seq_len tokens needs: a windowed layer keeps its last `window`."""
        return sum(kv * self._positions(w, seq_len) for _, kv, w in self.attention_by_window) * dtype.itemsize

    @property
    def sliding_window(self) -> int | None:
        """The window when every attention layer has the same one, else None."""
        windows = {w for _, _, w in self.attention_by_window}
        return windows.pop() if len(windows) == 1 else None


def cost(graph: ComponentGraph) -> Cost:
    """The totals over every node. A light graph (built_layers < n_layers) holds the first layers
    only; the layers are identical, so the last built layer's nodes count for it and for every layer
    not built: the same totals as the full graph, in closed form."""
    by_group: dict[str, int] = {}
    total = matmul = attn_per_pos = kv = 0
    by_window: dict[int | None, list[int]] = {}
    last, missing = graph.built_layers - 1, graph.n_layers - graph.built_layers
    for name in graph.nodes():
        d = graph.node(name)
        kind = d["kind"]
        times = 1 + missing if d["layer"] == last else 1
        n_params = times * sum(math.prod(shape) for shape in d["params"].values())
        total += n_params
        if n_params:
            group = GROUPS.get(kind, kind)
            by_group[group] = by_group.get(group, 0) + n_params
        if kind in (ComponentKind.attention.value, ComponentKind.mlp.value, ComponentKind.head.value):
            matmul += times * sum(math.prod(s) for local, s in d["params"].items() if local.endswith("weight"))
        if kind == ComponentKind.head.value and d.get("tied"):  # the head is outside the layers (times 1)
            matmul += math.prod(next(iter(d["tied_shapes"].values())))
        if kind == ComponentKind.attention.value:
            s = d["settings"]
            mask = graph.input_of(name, "mask")
            window = graph.settings(mask).sliding_window if mask else None
            layer_flops, layer_kv = times * 2 * 2 * s.n_heads * s.head_dim, times * 2 * s.kv_heads * s.head_dim
            attn_per_pos += layer_flops
            kv += layer_kv
            acc = by_window.setdefault(window, [0, 0])
            acc[0] += layer_flops
            acc[1] += layer_kv
    groups = tuple((f, k, w) for w, (f, k) in by_window.items())
    return Cost(total, by_group, matmul, attn_per_pos, kv, groups)


# Layers a light command builds: every layer is the same, so a few show all there is to show.
LIGHT_LAYERS = 4


def light_graph(spec) -> ComponentGraph:
    """The graph `show`, `diff`, `compare`, `draw` and compile's size check read: at most
    LIGHT_LAYERS layers built (archc.graph.compile(layers=...)), costs in closed form."""
    from archc.graph import compile as compile_graph

    return compile_graph(spec, layers=LIGHT_LAYERS)
