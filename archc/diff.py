"""What differs between two architectures, as data: spec axes, component-graph structure, cost.

Three pure functions, one per section of `archc diff`, plus `diff()` that runs all three:

- `spec_diff`: every resolved field of the two specs, flattened to dotted axes and grouped by section.
  name/description/reference are labels, not architecture, and are not axes.
- `structure_diff`: the two compiled component graphs, read as *facts* said in words (what each
  component is, what it reads, what it feeds), never node ids. Facts are taken per layer and
  compared layer by layer, so repeated layers are said once ("in all 32 layers") and a layer that
  differs from its siblings is named.
- `cost_diff`: parameters (total and by group), FLOPs per token, KV-cache bytes per token, from
  archc.cost, with the difference and the ratio.

Direction: everything describes B relative to A ("B-value instead of A-value").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from archc import words
from archc.components import MaskSettings, NormSettings, settings_to_json
from archc.cost import cost
from archc.quant import QuantSettings, weight_bytes
from archc.graph import ComponentGraph, ComponentKind
from archc.spec import AttentionKernel, MaskKind, Spec

# --------------------------------------------------------------------------------------------
# 1. Spec axes

META_FIELDS = ("name", "description", "reference")
SECTION_GROUPS = ("norm", "mlp", "position", "attention", "residual", "embedding", "sizes", "init", "training")
# Top-level scalars belong to a section too: the tokenizer goes with the embedding (vocabulary row).
TOP_LEVEL_GROUP = {"vocab_size": "sizes", "d_model": "sizes", "n_layers": "sizes", "max_seq_len": "sizes",
                   "dtype": "sizes", "tokenizer": "embedding"}


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'norm': {'kind': 'rmsnorm'}} -> {'norm.kind': 'rmsnorm'}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = list(value) if isinstance(value, tuple) else value
    return out


def spec_axes(spec: Spec) -> dict[str, Any]:
    """The resolved spec as {dotted axis: value}, labels (name, description, reference) left out."""
    flat = flatten(spec.to_yaml_dict())
    return {k: v for k, v in flat.items() if k.split(".")[0] not in META_FIELDS}


def axis_group(axis: str) -> str:
    top = axis.split(".")[0]
    return TOP_LEVEL_GROUP.get(top, top)


@dataclass
class SpecRow:
    group: str
    axis: str
    a: Any
    b: Any
    in_a: bool = True  # False when the axis does not exist on that side (e.g. position.theta for ALiBi)
    in_b: bool = True


@dataclass
class SpecDiff:
    changed: list[SpecRow]
    unchanged: list[SpecRow]


def spec_diff(a: Spec, b: Spec) -> SpecDiff:
    fa, fb = spec_axes(a), spec_axes(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    rank = {g: i for i, g in enumerate(SECTION_GROUPS)}
    pos = {k: i for i, k in enumerate(keys)}
    keys.sort(key=lambda k: (rank.get(axis_group(k), len(rank)), pos[k]))
    changed, unchanged = [], []
    for k in keys:
        row = SpecRow(axis_group(k), k, fa.get(k), fb.get(k), k in fa, k in fb)
        same = row.in_a and row.in_b and fa[k] == fb[k]
        (unchanged if same else changed).append(row)
    return SpecDiff(changed, unchanged)


# --------------------------------------------------------------------------------------------
# 2. Structure: facts read off the graph, in words

ROLE_NAME = {
    "attn_norm": "attention norm", "mlp_norm": "MLP norm", "shared_norm": "shared norm",
    "attn_post_norm": "post-attention norm", "mlp_post_norm": "post-MLP norm",
    "attn": "attention", "mlp": "MLP",
    "attn_residual": "residual add after attention", "mlp_residual": "residual add after the MLP",
    "residual": "residual add (attention + MLP)",
}
ROLE_OUTPUT = {
    "attn_norm": "the attention norm's output", "mlp_norm": "the MLP norm's output",
    "shared_norm": "the shared norm's output", "attn_post_norm": "the post-attention norm's output",
    "mlp_post_norm": "the post-MLP norm's output", "attn": "attention's output", "mlp": "the MLP's output",
    "attn_residual": "the residual stream after attention", "mlp_residual": "the residual stream after the MLP",
    "residual": "the residual stream after the layer",
}
LAYER_INPUT = "the layer input (residual stream)"


def role_name(role: str) -> str:
    return ROLE_NAME.get(role, role.replace("_", " "))


def norm_words(settings: NormSettings) -> str:
    """A norm node's settings in words, with its eps."""
    return f"{words.norm(settings.norm, settings.bias, settings.scale)}, eps {settings.eps:g}"


def kernel_words(kernel: AttentionKernel) -> str:
    return f"{'backend-default' if kernel is AttentionKernel.default else words.KERNEL[kernel]} kernel"


@dataclass
class Fact:
    key: str  # stable identifier of the aspect, e.g. "attn.kv_heads"
    component: str  # in words, e.g. "attention"
    value: Any  # compared for equality
    phrase: str  # the value in words
    roles: tuple[str, ...] = ()  # graph roles this fact is about (for highlighting in drawings)


@dataclass
class Change:
    where: str  # "in all 32 layers", "in layer 3", "outside the layers"
    # The compared layers (layer i of A with layer i of B) as inclusive (first, last) ranges, so that a
    # change in all of a million layers is one pair; None outside the stack.
    layers: list[tuple[int, int]] | None
    component: str
    aspect: str
    a: str
    b: str
    text: str
    roles: list[str] = field(default_factory=list)


def _src_words(cg: ComponentGraph, layer: int | None, src: str) -> str:
    d = cg.node(src)
    if layer is not None and d["layer"] == layer:
        return ROLE_OUTPUT.get(d["role"], f"the {role_name(d['role'])}'s output")
    kind = d["kind"]
    if kind == ComponentKind.rotary.value:
        return "the rotary tables"
    if kind == ComponentKind.alibi.value:
        return "the ALiBi bias"
    if kind == ComponentKind.mask.value:
        return "the mask"
    return LAYER_INPUT if layer is not None else f"the {role_name(d['role'])}"


def _consumers(cg: ComponentGraph, name: str) -> list[tuple[str, str]]:
    return sorted(((v, d["port"]) for _, v, d in cg.g.out_edges(name, data=True)), key=lambda t: cg.g.edges[name, t[0]]["seq"])


def norm_position(cg: ComponentGraph, name: str) -> str:
    """pre | post | sandwich, read off the edges around a norm inside a layer.

    The sublayer a norm belongs to is its role's prefix (attn_norm -> attn); the shared norm of a
    parallel layer belongs to both. post: it reads the residual add whose branch is its sublayer;
    sandwich: it feeds a residual add as a branch; pre: otherwise (it reads the stream, feeds the sublayer).
    """
    d = cg.node(name)
    if any(port == "branch" and cg.node(v)["kind"] == ComponentKind.residual.value for v, port in _consumers(cg, name)):
        return "sandwich"
    sub = d["role"].split("_")[0] if d["role"].split("_")[0] in ("attn", "mlp") else None
    src = cg.input_of(name, "x")
    if src is not None and cg.node(src)["kind"] == ComponentKind.residual.value and cg.node(src)["layer"] == d["layer"]:
        if sub is None or any(cg.node(b)["role"] == sub for b in cg.inputs_at(src, "branch")):
            return "post"
    return "pre"


NORM_POSITION_WORDS = {
    "pre": "before the sublayer (pre)",
    "post": "after the residual add (post)",
    "sandwich": "after the sublayer, before the residual add (sandwich)",
}


def _flow_words(cg: ComponentGraph, layer: int, name: str) -> str:
    reads = [_src_words(cg, layer, s) for s, p in cg.inputs(name) if p in ("x", "skip", "branch")]
    feeds = []
    for v, _ in _consumers(cg, name):
        d = cg.node(v)
        feeds.append(role_name(d["role"]) if d["layer"] == layer else "the layer output")
    return f"reads {' and '.join(dict.fromkeys(reads)) or 'nothing'}; feeds {', '.join(dict.fromkeys(feeds)) or 'nothing'}"


def layer_facts(cg: ComponentGraph, layer: int) -> dict[str, Fact]:
    facts: dict[str, Fact] = {}

    def put(key: str, component: str, value: Any, phrase: str, roles: tuple[str, ...] = ()) -> None:
        facts[key] = Fact(key, component, value, phrase, roles)

    nodes = cg.layer_nodes(layer)
    by_role = {cg.node(n)["role"]: n for n in nodes}
    roles = tuple(by_role)
    put("components", "layer", roles, ", ".join(role_name(r) for r in roles), roles)
    for role, n in by_role.items():
        put(f"{role}.flow", role_name(role), _flow_words(cg, layer, n), _flow_words(cg, layer, n), (role,))

    residuals = [n for n in nodes if cg.node(n)["kind"] == ComponentKind.residual.value]
    parallel = any(len(cg.inputs_at(r, "branch")) > 1 for r in residuals)
    put("layout", "residual", "parallel" if parallel else "sequential",
        "parallel: attention and MLP read the same input and are added to the stream together (y = x + attn + mlp)"
        if parallel else "sequential: attention, then the MLP, each added to the stream", tuple(cg.node(r)["role"] for r in residuals))
    alphas = sorted({cg.settings(r).alpha for r in residuals})
    put("residual.alpha", "residual", alphas, "stream scaled by α = " + ", ".join(f"{a:.4g}" for a in alphas)
        if alphas != [1.0] else "plain sum (α = 1)", tuple(cg.node(r)["role"] for r in residuals))

    norms = [n for n in nodes if cg.node(n)["kind"] == ComponentKind.norm.value]
    kinds = sorted({norm_words(cg.node(n)["settings"]) for n in norms})
    put("norm.kind", "norms", kinds, "; ".join(kinds) or "none", tuple(cg.node(n)["role"] for n in norms))
    for n in norms:
        role = cg.node(n)["role"]
        pos = norm_position(cg, n)
        put(f"{role}.position", role_name(role), pos, NORM_POSITION_WORDS[pos], (role,))

    for n in nodes:
        d = cg.node(n)
        role, s, params = d["role"], d["settings"], d["params"]
        if d["kind"] == ComponentKind.attention.value:
            x = cg.input_of(n, "x")
            put("attn.reads", "attention", _src_words(cg, layer, x), _src_words(cg, layer, x), (role,))
            rot, bias = cg.input_of(n, "rotary"), cg.input_of(n, "bias")
            pos = "rotary" if rot else "alibi" if bias else "none"
            put("attn.position", "attention", pos, {"rotary": "rotary (RoPE) applied to q/k", "alibi": "ALiBi bias feeds attention",
                                                    "none": "no position signal inside attention"}[pos], (role,))
            mask = cg.settings(cg.input_of(n, "mask"))
            put("attn.mask", "attention", [mask.mask.value, mask.sliding_window], _mask_words(mask), (role,))
            put("attn.n_heads", "attention", s.n_heads, f"{s.n_heads} query heads", (role,))
            put("attn.kv_heads", "attention", s.kv_heads,
                f"{s.kv_heads} head{'s' if s.kv_heads != 1 else ''} ({words.sharing(s.n_heads, s.kv_heads)})", (role,))
            put("attn.head_dim", "attention", s.head_dim, f"head size {s.head_dim}", (role,))
            biases = [p.split(".")[0] for p in params if p.endswith("bias")]
            put("attn.bias", "attention", biases, ("biases on " + "/".join(biases)) if biases else "no biases", (role,))
            put("attn.kernel", "attention", s.kernel.value, kernel_words(s.kernel), (role,))
            # Only said when it is not the default 1/sqrt(head_dim) (a head-size change already says that).
            default = abs(s.softmax_scale * s.head_dim ** 0.5 - 1) < 1e-9
            put("attn.softmax_scale", "attention", None if default else s.softmax_scale,
                "softmax scale 1/√head_dim" if default else f"softmax scale {s.softmax_scale:.6g}", (role,))
        elif d["kind"] == ComponentKind.mlp.value:
            x = cg.input_of(n, "x")
            put("mlp.reads", "MLP", _src_words(cg, layer, x), _src_words(cg, layer, x), (role,))
            gated = "gate.weight" in params
            act = s.activation.value
            put("mlp.activation", "MLP", [act, gated],
                f"{words.ACTIVATION[s.activation]} ({'gated, 3 matrices' if gated else '2 matrices'})", (role,))
            put("mlp.d_ff", "MLP", s.d_ff, f"{s.d_ff} hidden units", (role,))
            biases = [p.split(".")[0] for p in params if p.endswith("bias")]
            put("mlp.bias", "MLP", biases, ("biases on " + "/".join(biases)) if biases else "no biases", (role,))
        if d["kind"] in (ComponentKind.attention.value, ComponentKind.mlp.value):
            # Only the drawn weights: bias and norm rules (zeros/ones) follow from the bias facts.
            drawn = {k: v for k, v in d.get("init", {}).items() if v["dist"] not in ("zeros", "ones")}
            put(f"{role}.init", role_name(role), drawn, "init " + _init_words(drawn), (role,))
    return facts


def _init_words(rules: dict) -> str:
    """{'q.weight': {'dist': 'normal', 'std': 0.02}, ...} -> 'N(0, 0.02) on q, k, v; N(0, 0.0029) on o'."""
    groups: dict[str, list[str]] = {}
    for local, r in rules.items():
        if r["dist"] in ("zeros", "ones"):
            continue
        rule = f"N(0, {r['std']:.3g})" if r["dist"] == "normal" else f"Xavier-normal gain {r['gain']:.3g}" \
            if r["dist"] == "xavier" else r["dist"]
        groups.setdefault(rule, []).append(local.split(".")[0])
    return "; ".join(f"{w} on {', '.join(ps)}" for w, ps in groups.items()) or "no weights"


def _mask_words(mask: MaskSettings) -> str:
    text = "prefix mask (bidirectional over the prefix, causal after it)" if mask.mask is MaskKind.prefix else "causal mask"
    if mask.sliding_window:
        text += f", sliding window {mask.sliding_window}"
    return text


POSITION_TABLE_WORDS = {
    ComponentKind.learned_position.value: "learned absolute position table added to the embedding",
    ComponentKind.sinusoidal_position.value: "sinusoidal position table added to the embedding",
    ComponentKind.glm2d_position.value: "2D position tables (position + block) added to the embedding",
}


def model_facts(cg: ComponentGraph) -> dict[str, Fact]:
    """Facts about everything outside the repeated layers."""
    facts: dict[str, Fact] = {}

    def put(key: str, component: str, value: Any, phrase: str, roles: tuple[str, ...] = ()) -> None:
        facts[key] = Fact(key, component, value, phrase, roles)

    g = cg
    L = g.n_layers  # one attention per layer; a light graph builds only the first few
    put("stack.layers", "stack", L, f"{L} layers")
    embed = g.nodes(ComponentKind.token_embedding)[0]
    V, D = g.node(embed)["params"]["weight"]
    put("embed.vocab", "token embedding", V, f"{V} tokens", ("token_embedding",))
    put("embed.width", "model width", D, f"d_model {D}", ("token_embedding",))
    scale = [n for n in g.nodes(ComponentKind.scale)]
    factor = g.settings(scale[0]).factor if scale else 1.0
    put("embed.scale", "token embedding", factor, f"scaled by {factor:.6g}" if scale else "not scaled", ("embedding_multiplier",))
    pos = [n for n in g.nodes() if g.node(n)["kind"] in POSITION_TABLE_WORDS]
    if pos:
        d = g.node(pos[0])
        rows = getattr(d["settings"], "max_positions", None)
        extra = [f"{rows} rows" + (" each" if d["kind"] == ComponentKind.glm2d_position.value else "")] if rows else []
        if getattr(d["settings"], "offset", 0):
            extra.append(f"offset {d['settings'].offset}")
        put("embed.position", "embedding", [d["kind"], settings_to_json(d["settings"])], POSITION_TABLE_WORDS[d["kind"]]
            + (f" ({', '.join(extra)})" if extra else ""), (d["role"],))
    else:
        put("embed.position", "embedding", None, "nothing added to the embedding", ())
    enorm = [n for n in g.nodes(ComponentKind.norm) if g.node(n)["layer"] is None and g.node(n)["role"] == "embedding_norm"]
    put("embed.norm", "embedding", settings_to_json(g.settings(enorm[0])) if enorm else None,
        f"embedding {norm_words(g.node(enorm[0])['settings']).split(',')[0]} after the token embedding" if enorm else "no embedding norm",
        ("embedding_norm",))
    rot = g.nodes(ComponentKind.rotary)
    if rot:
        s = g.settings(rot[0])
        put("rotary", "rotary", settings_to_json(s), f"θ {s.theta:g}, {s.rotary_dim} of {s.head_dim} head dims, {s.style.value} style",
            ("rotary",))
    al = g.nodes(ComponentKind.alibi)
    if al:
        s = g.settings(al[0])
        put("alibi", "ALiBi", s.max_bias, f"slopes 2^(-{s.max_bias:g}·h/n_heads)", ("alibi",))
    fin = [n for n in g.nodes(ComponentKind.norm) if g.node(n)["role"] == "final_norm"]
    put("final_norm", "final norm", settings_to_json(g.settings(fin[0])) if fin else None,
        norm_words(g.node(fin[0])["settings"]) if fin else "none", ("final_norm",))
    head = g.nodes(ComponentKind.head)[0]
    hd = g.node(head)
    put("head.tied", "head", bool(hd.get("tied")),
        "tied to the token embedding" if hd.get("tied") else "its own weight matrix (untied)", ("head",))
    put("head.bias", "head", "bias" in hd["params"], "with bias" if "bias" in hd["params"] else "no bias", ("head",))
    put("head.vocab", "head", hd["settings"].vocab_size, f"{hd['settings'].vocab_size} logits", ("head",))
    ins = [f"{n} [{', '.join(str(x) for x in g.settings(n).shape)}]" for n in g.graph_inputs()]
    put("inputs", "model inputs", ins, "; ".join(ins))
    return facts


def _change_text(fa: Fact, fb: Fact, b_facts: dict[str, Fact]) -> str:
    k = fa.key
    if fa.phrase == fb.phrase:  # the words do not show the difference: say the values
        return f"{fa.component}: {fb.phrase}: {json.dumps(fb.value, sort_keys=True)} instead of {json.dumps(fa.value, sort_keys=True)}"
    if k == "head.tied":
        return "head tied to the token embedding instead of its own weight matrix" if fb.value else \
            "head has its own weight matrix instead of being tied to the token embedding"
    if k == "attn.position":
        lost = {"rotary": "no rotary on q/k", "alibi": "no ALiBi bias", "none": ""}[fa.value]
        return f"{fb.phrase}; {lost}" if lost else f"{fb.phrase} instead of {fa.phrase}"
    if k == "attn.kv_heads":
        return f"K/V projections: {fb.phrase} instead of {fa.phrase.split(' (')[0]}"
    if k in ("mlp.reads", "attn.reads"):
        who = "MLP" if k == "mlp.reads" else "attention"
        text = f"{who} reads {fb.phrase} instead of {fa.phrase}"
        lay = b_facts.get("layout")
        if k == "mlp.reads" and lay is not None and lay.value == "parallel" and fb.phrase != LAYER_INPUT:
            text += " (parallel residual)"
        return text
    if k.endswith(".position") and k not in ("embed.position", "attn.position"):
        return f"{fa.component}: norm {fb.phrase} instead of {fa.phrase}"
    if k in ("embed.position", "embed.norm"):
        return f"{fb.phrase} instead of {fa.phrase}"
    if k == "layout":
        return f"residual layout {fb.phrase}, instead of {fa.phrase}"
    if k == "components":
        return ""  # said per component by _presence_changes
    return f"{fa.component}: {_instead(fb.phrase, fa.phrase)}"


def _instead(b: str, a: str) -> str:
    """'head size 64', 'head size 128' -> 'head size 64 instead of 128' (one differing word is said once)."""
    wb, wa = b.split(" "), a.split(" ")
    if len(wb) == len(wa) > 1:
        diff = [i for i, (x, y) in enumerate(zip(wb, wa)) if x != y]
        if len(diff) == 1:
            return f"{b} instead of {wa[diff[0]]}"
    return f"{b} instead of {a}"


def _presence_changes(ca: ComponentGraph, cb: ComponentGraph, la: int, lb: int, fa: dict, fb: dict) -> list[tuple[str, str, str, str, list[str]]]:
    """(component, a phrase, b phrase, text, roles) for roles present on one side only."""
    ra, rb = fa["components"].value, fb["components"].value
    out = []
    for role in ra:
        if role not in rb:
            flow = fa[f"{role}.flow"].phrase
            out.append((role_name(role), flow, "absent", f"{role_name(role)} only in A ({flow})", [role]))
    for role in rb:
        if role not in ra:
            flow = fb[f"{role}.flow"].phrase
            out.append((role_name(role), "absent", flow, f"{role_name(role)} only in B ({flow})", [role]))
    return out


def _compare_facts(fa: dict[str, Fact], fb: dict[str, Fact]) -> list[tuple[str, str, str, str, str, list[str]]]:
    """(aspect, component, a, b, text, roles) for facts present on both sides with different values.

    Facts about a component on one side only are skipped (its presence is said once). The per-
    component data-flow facts are a fallback: said only when no specific fact explains the layer's
    change, so a rewiring the specific facts do not name still shows up.
    """
    rows = []
    both = [k for k in fa if k in fb]
    for k in both:
        if k == "components" or k.endswith(".flow") or fa[k].value == fb[k].value:
            continue
        if k == "attn.kv_heads" and all(f["attn.kv_heads"].value == f["attn.n_heads"].value for f in (fa, fb)):
            continue  # multi-head on both sides: the query-head line says it
        rows.append((k, fa[k].component, fa[k].phrase, fb[k].phrase, _change_text(fa[k], fb[k], fb),
                     sorted(set(fa[k].roles) | set(fb[k].roles))))
    if rows or fa["components"].value != fb["components"].value:
        return rows
    for k in both:
        if k.endswith(".flow") and fa[k].value != fb[k].value:
            rows.append((k, fa[k].component, fa[k].phrase, fb[k].phrase,
                         f"{fa[k].component}: {fb[k].phrase} instead of {fa[k].phrase}", list(fa[k].roles)))
    return rows


def _where(layers: list[tuple[int, int]], n_a: int, n_b: int, uniform: bool) -> str:
    n = min(n_a, n_b)
    count = sum(last - first + 1 for first, last in layers)
    if uniform and count == n:
        return f"in all {n} layers" if n_a == n_b else f"in every layer (A: {n_a}, B: {n_b})"
    return ("in layer " if count == 1 else "in layers ") + _ranges(layers)


def _ranges(layers: list[tuple[int, int]]) -> str:
    return ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in layers)


def layer_ranges(indices: list[int], compared: int, n: int) -> list[tuple[int, int]]:
    """Sorted layer indices (all below `compared`) as inclusive ranges; a range reaching the last
    compared layer runs on to layer n-1: the layers past a light graph's are its last one's copies.
    Work and size are in the number of ranges, never in n."""
    out: list[tuple[int, int]] = []
    for x in indices:
        if out and out[-1][1] == x - 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    if out and out[-1][1] == compared - 1:
        out[-1] = (out[-1][0], n - 1)
    return out


def _layer_signature(facts: dict[str, Fact]) -> tuple:
    return tuple((k, repr(f.value)) for k, f in facts.items())


def structure_diff(ga: ComponentGraph, gb: ComponentGraph) -> list[Change]:
    changes: list[Change] = []
    ma, mb = model_facts(ga), model_facts(gb)
    for k in list(ma) + [k for k in mb if k not in ma]:
        fa, fb = ma.get(k), mb.get(k)
        if fa is not None and fb is not None:
            if fa.value != fb.value:
                changes.append(Change("outside the layers", None, fa.component, k, fa.phrase, fb.phrase,
                                      _change_text(fa, fb, mb), sorted(set(fa.roles) | set(fb.roles))))
        else:
            f = fa or fb
            side = "A" if fb is None else "B"
            changes.append(Change("outside the layers", None, f.component, k, fa.phrase if fa else "absent",
                                  fb.phrase if fb else "absent", f"{f.component}: {f.phrase} (only in {side})", list(f.roles)))

    n_a, n_b = ga.n_layers, gb.n_layers
    la = [layer_facts(ga, i) for i in range(ga.built_layers)]
    lb = [layer_facts(gb, i) for i in range(gb.built_layers)]
    uniform = len({_layer_signature(f) for f in la}) <= 1 and len({_layer_signature(f) for f in lb}) <= 1
    # Compare layer i with layer i; collect each change's layers so that a repeated change is said once.
    # Layers past what a light graph built are the same as its last one: compared once, they stand for
    # the rest as one range (no per-layer work for a million layers).
    n = min(n_a, n_b)
    compared = min(n, max(ga.built_layers, gb.built_layers))
    found: dict[tuple, list[int]] = {}  # change -> the compared layers (fewer than `compared`) it holds in
    order: list[tuple] = []
    for i in range(compared):
        fa, fb = la[min(i, len(la) - 1)], lb[min(i, len(lb) - 1)]
        rows = [("components", comp, a, b, text, roles) for comp, a, b, text, roles in _presence_changes(ga, gb, i, i, fa, fb)]
        rows += _compare_facts(fa, fb)
        for row in rows:
            key = (row[0], row[1], row[2], row[3], row[4], tuple(row[5]))
            if key not in found:
                found[key] = []
                order.append(key)
            found[key].append(i)
    spans = {key: layer_ranges(layers, compared, n) for key, layers in found.items()}
    order = _merge_norm_positions(order, spans)
    for key in order:
        aspect, component, a, b, text, roles = key
        layers = spans[key]
        changes.append(Change(_where(layers, n_a, n_b, uniform), layers, component, aspect, a, b, text, list(roles)))
    return changes


def _merge_norm_positions(order: list[tuple], found: dict[tuple, list[tuple[int, int]]]) -> list[tuple]:
    """'attention norm: post instead of pre' and 'MLP norm: post instead of pre' -> one line naming both."""
    out: list[tuple] = []
    merged: dict[tuple, int] = {}
    for key in order:
        aspect, component, a, b, text, roles = key
        if not aspect.endswith("_norm.position") or aspect.startswith("embed"):
            out.append(key)
            continue
        group = (a, b, tuple(found[key]))
        if group not in merged:
            merged[group] = len(out)
            out.append(key)
            continue
        i = merged[group]
        first = out[i]
        components = f"{first[1]}, {component}"
        new = ("norm.position", components, a, b, f"{components}: norm {b} instead of {a}", tuple(first[5]) + tuple(roles))
        found[new] = found[key]
        out[i] = new
    return out


def changed_roles(changes: list[Change], layer: int = 0) -> set[str]:
    """Graph roles touched by a change in `layer` or outside the layers (for highlighting)."""
    out: set[str] = set()
    for c in changes:
        if c.layers is None or any(first <= layer <= last for first, last in c.layers):
            out.update(c.roles)
    return out


# --------------------------------------------------------------------------------------------
# 3. Cost

COST_GROUP_ORDER = ("embedding", "position", "attention", "mlp", "norm", "head")


@dataclass
class CostRow:
    metric: str  # stable key: params, params.<group>, flops_per_token, kv_cache_bytes_per_token
    label: str
    a: int
    b: int

    @property
    def diff(self) -> int:
        return self.b - self.a

    @property
    def ratio(self) -> float | None:
        return self.b / self.a if self.a else None


def cost_rows(ga: ComponentGraph, gb: ComponentGraph, seq_len: int,
              quant: tuple[QuantSettings, QuantSettings] = (QuantSettings(), QuantSettings())) -> list[CostRow]:
    ca, cb = cost(ga), cost(gb)
    rows = [CostRow("params", "parameters", ca.params, cb.params)]
    groups = [g for g in COST_GROUP_ORDER if g in ca.params_by_group or g in cb.params_by_group]
    groups += sorted((set(ca.params_by_group) | set(cb.params_by_group)) - set(groups))
    for g in groups:
        rows.append(CostRow(f"params.{g}", f"  {g} parameters", ca.params_by_group.get(g, 0), cb.params_by_group.get(g, 0)))
    rows.append(CostRow("flops_per_token", f"FLOPs per token (forward, context {seq_len})",
                        ca.flops_per_token(seq_len), cb.flops_per_token(seq_len)))
    rows.append(CostRow("kv_cache_bytes_per_token", "KV-cache bytes per token",
                        ca.kv_bytes_per_token(ga.spec.dtype), cb.kv_bytes_per_token(gb.spec.dtype)))
    qa, qb = quant
    rows.append(CostRow("weight_bytes", f"weight bytes ({ga.spec.dtype.value} {qa.short()} / {gb.spec.dtype.value} {qb.short()})",
                        weight_bytes(ga, ga.spec.dtype, qa), weight_bytes(gb, gb.spec.dtype, qb)))
    return rows


# --------------------------------------------------------------------------------------------
# All three


@dataclass
class Side:
    name: str
    source: str
    spec: Spec
    graph: ComponentGraph


@dataclass
class Diff:
    a: Side
    b: Side
    spec: SpecDiff
    structure: list[Change]
    cost: list[CostRow]
    seq_len: int

    @property
    def identical(self) -> bool:
        return not self.spec.changed and not self.structure


def diff(a: Spec, b: Spec, *, source_a: str = "A", source_b: str = "B", seq_len: int = 2048,
         graph_a: ComponentGraph | None = None, graph_b: ComponentGraph | None = None,
         quant: tuple[QuantSettings, QuantSettings] = (QuantSettings(), QuantSettings())) -> Diff:
    from archc.cost import light_graph

    ga = graph_a or light_graph(a)  # a few layers built; the rest in closed form
    gb = graph_b or light_graph(b)
    return Diff(Side(a.name, source_a, a, ga), Side(b.name, source_b, b, gb), spec_diff(a, b),
                structure_diff(ga, gb), cost_rows(ga, gb, seq_len, quant), seq_len)


DIFF_SCHEMA_ID = "archc-diff/2"  # /2: a change's layers are [first, last] ranges (/1 listed every index)


def to_json_data(d: Diff, *, include_unchanged: bool = False) -> dict:
    """The stable JSON structure documented in docs/diff-schema.json."""
    def row(r: SpecRow) -> dict:
        return {"group": r.group, "axis": r.axis, "a": r.a, "b": r.b, "in_a": r.in_a, "in_b": r.in_b}

    return {
        "schema": DIFF_SCHEMA_ID,
        "identical": d.identical,
        "a": {"name": d.a.name, "source": d.a.source},
        "b": {"name": d.b.name, "source": d.b.source},
        "spec": {
            "changed": [row(r) for r in d.spec.changed],
            "unchanged_count": len(d.spec.unchanged),
            "unchanged": [row(r) for r in d.spec.unchanged] if include_unchanged else None,
        },
        "structure": [dict(asdict(c), layers=None if c.layers is None else [list(r) for r in c.layers]) for c in d.structure],
        "cost": {
            "seq_len": d.seq_len,
            "rows": [{"metric": r.metric, "label": r.label.strip(), "a": r.a, "b": r.b, "diff": r.diff, "ratio": r.ratio}
                     for r in d.cost],
        },
    }
