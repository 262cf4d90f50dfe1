"""Tensor-parallel sharding plans, derived from the component graph (never written per family).

Every component kind declares how its parameters and per-head state shard across `tp` ranks
(Megatron-LM's layout, Shoeybi et al. 2019):

- attention: q, k, v column-wise (each rank owns n_heads / tp query heads and their K/V heads),
  o row-wise (its output is summed across ranks); K/V are split when kv_heads >= tp and
  replicated otherwise (multi-query attention, or GQA with fewer K/V heads than ranks: each rank
  then uses the one K/V head its query heads read, r * kv_heads // tp).
- mlp: gate and up column-wise (d_ff / tp each), down row-wise.
- token embedding, position tables, head: replicated (every rank holds the whole table).
- norms: replicated.
- ALiBi: per-head state; slopes split by head in the same contiguous blocks as the query heads.
- mask (causal, GLM's prefix, sliding window) and RoPE tables: the same for every head
  (broadcast over the head axis), so replicated.

`make_plan` checks the plan when it is made: a degree that cannot work raises a UserError whose one
line names the field, the degree and the degrees that would work.

Light: no torch here (`archc plan` uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from archc.errors import UserError
from archc.graph import ComponentGraph, ComponentKind as K


class ShardRule(str, Enum):
    colwise = "colwise"  # output features split (weight rows, bias): q/k/v heads, gate/up d_ff
    rowwise = "rowwise"  # input features split (weight columns); the outputs are summed across ranks
    replicate = "replicate"  # a whole copy on every rank
    heads = "heads"  # per-head state (ALiBi slopes): split as the query heads are


class HeadSplit(str, Enum):
    contiguous = "contiguous"  # rank r owns heads [r*h, (r+1)*h): the same blocks as q's rows
    strided = "strided"  # rank r owns heads r, r+tp, ...: WRONG for q's contiguous rows (negative control)


@dataclass(frozen=True)
class TpPlan:
    """How each parameter (full graph name) and each per-head state node shards at degree `tp`."""

    tp: int
    params: dict[str, ShardRule]  # full parameter name -> rule
    state: dict[str, ShardRule]  # node name -> rule for its per-head state (ALiBi)
    kv_split: bool  # K/V projections column-wise (True) or replicated (False, kv_heads < tp)
    head_split: HeadSplit = HeadSplit.contiguous

    def rule(self, name: str) -> ShardRule:
        return self.params[name]


def _param_rule(kind: K, local: str, kv_split: bool) -> ShardRule:
    """The rule for one parameter of one component kind; an explicit branch for every kind."""
    proj = local.split(".")[0]
    if kind is K.attention:
        if proj == "q":
            return ShardRule.colwise
        if proj in ("k", "v"):
            return ShardRule.colwise if kv_split else ShardRule.replicate
        if proj == "o":
            return ShardRule.rowwise if local.endswith("weight") else ShardRule.replicate  # bias added once, after the sum
        raise ValueError(f"attention parameter {local} has no sharding rule")
    if kind is K.mlp:
        if proj in ("gate", "up"):
            return ShardRule.colwise
        if proj == "down":
            return ShardRule.rowwise if local.endswith("weight") else ShardRule.replicate
        raise ValueError(f"mlp parameter {local} has no sharding rule")
    if kind in (K.token_embedding, K.learned_position, K.glm2d_position, K.head, K.norm):
        return ShardRule.replicate
    if kind in (K.input, K.output, K.sinusoidal_position, K.rotary, K.alibi, K.mask, K.add, K.scale, K.residual):
        raise ValueError(f"{kind.value} nodes own no parameters")
    raise ValueError(f"unknown component kind {kind}")


def _state_rule(kind: K) -> ShardRule | None:
    """Per-head state a node carries outside its parameters: ALiBi slopes follow their heads; masks
    and rotary tables are broadcast over heads, so every rank computes the whole of them."""
    if kind is K.alibi:
        return ShardRule.heads
    if kind in (K.mask, K.rotary, K.input, K.output, K.token_embedding, K.learned_position, K.sinusoidal_position,
                K.glm2d_position, K.add, K.scale, K.norm, K.attention, K.mlp, K.residual, K.head):
        return None
    raise ValueError(f"unknown component kind {kind}")


def valid_tp_degrees(graph: ComponentGraph, upto: int | None = None) -> list[int]:
    """Every degree a plan accepts for this graph (1 always), ascending."""
    n_heads = _heads(graph)[0]
    limit = n_heads if upto is None else min(upto, n_heads)
    return [t for t in range(1, limit + 1) if _problem(graph, t) is None]


def _heads(graph: ComponentGraph) -> tuple[int, int]:
    """(n_heads, kv_heads) of the graph's attention (every layer's is the same); (1, 1) without attention."""
    attn = graph.nodes(K.attention)
    if not attn:
        return 1, 1
    s = graph.settings(attn[0])
    return s.n_heads, s.kv_heads


def _problem(graph: ComponentGraph, tp: int) -> str | None:
    """Why degree `tp` cannot shard this graph, or None."""
    for name in graph.nodes(K.attention)[:1]:  # every layer's attention has the same settings
        s = graph.settings(name)
        if s.n_heads % tp:
            return f"attention.n_heads={s.n_heads} is not divisible by --tp {tp}"
        if s.kv_heads >= tp and s.kv_heads % tp:
            return f"attention.kv_heads={s.kv_heads} is not divisible by --tp {tp}"
        if s.kv_heads < tp and tp % s.kv_heads:
            return (f"attention.kv_heads={s.kv_heads} does not divide --tp {tp} (with fewer K/V heads than ranks, "
                    f"each rank's query heads must read one K/V head)")
    for name in graph.nodes(K.mlp)[:1]:
        d_ff = graph.settings(name).d_ff
        if d_ff % tp:
            return f"mlp.d_ff={d_ff} is not divisible by --tp {tp}"
    return None


def explain(graph: ComponentGraph, tp: int) -> str | None:
    """Why degree `tp` cannot shard this graph, naming the field, the spec and the degrees that work; or None."""
    problem = _problem(graph, tp)
    if problem is None:
        return None
    choices = valid_tp_degrees(graph)
    if len(choices) <= 4:
        return f"{problem} ({graph.spec.name}); choose {' or '.join(map(str, reversed(choices)))}"
    return f"{problem} ({graph.spec.name}); choose one of {', '.join(map(str, choices))}"


def make_plan(graph: ComponentGraph, tp: int, head_split: HeadSplit = HeadSplit.contiguous) -> TpPlan:
    """The tensor-parallel plan for `graph` at degree `tp`, checked; UserError (one line) when impossible."""
    if tp < 1:
        raise UserError(f"--tp {tp}: the tensor-parallel degree must be at least 1")
    problem = explain(graph, tp)
    if problem:
        raise UserError(problem)
    kv = _heads(graph)[1]
    kv_split = kv % tp == 0
    params, state = {}, {}
    for n in graph.nodes():
        kind = K(graph.node(n)["kind"])
        for local in graph.node(n)["params"]:
            params[f"{n}.{local}"] = _param_rule(kind, local, kv_split) if tp > 1 else ShardRule.replicate
        rule = _state_rule(kind)
        if rule is not None and tp > 1:
            state[n] = rule
    return TpPlan(tp, params, state, kv_split or tp == 1, head_split)


def local_elements(shape: tuple[int, ...] | list[int], rule: ShardRule, tp: int) -> int:
    """Elements of one parameter held by one tensor-parallel rank (exact: the plan checked divisibility)."""
    n = math.prod(shape)
    if rule is ShardRule.replicate:
        return n
    if rule in (ShardRule.colwise, ShardRule.rowwise, ShardRule.heads):
        return n // tp
    raise ValueError(f"unknown rule {rule}")
