"""The PyTorch emitter: cached decode equals one full forward for every library spec and every axis
value of the spec language; parameter names are the graph's; weights are deterministic."""

from __future__ import annotations

import pytest
import torch

import archc
from archc import spec as S
from archc.components import PositionIds
from exporters.torch_module import _Context, build_module
from tests.conftest import LIBRARY, tiny_spec

B, T, CHUNK = 2, 9, 4  # batch, total length, first (prompt) chunk before token-by-token decode
PAD = 2  # left padding of row 0


def _inputs(graph, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab = graph.spec.vocab_size
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :PAD] = 0
    prefix = torch.tensor([2, 3]) if "prefix_len" in graph.graph_inputs() else None  # both inside the first chunk
    return ids, mask, prefix


def assert_decode_matches_full(model, graph, atol=2e-5, rtol=1e-4):
    """Prompt chunk + one token at a time through the cache == one forward over everything."""
    ids, mask, prefix = _inputs(graph)
    with torch.no_grad():
        full, present = model(ids, mask, prefix_len=prefix)
        logits, past = model(ids[:, :CHUNK], mask[:, :CHUNK], prefix_len=prefix)
        steps = [logits]
        for t in range(CHUNK, T):
            logits, past = model(ids[:, t : t + 1], mask[:, : t + 1], prefix_len=prefix, past_key_values=past)
            steps.append(logits)
    inc = torch.cat(steps, dim=1)
    real = mask.bool()
    assert full.dtype == torch.float32 and full.shape == (B, T, graph.settings("head").vocab_size)
    assert torch.isfinite(full).all(), "padded rows must stay finite too"
    torch.testing.assert_close(inc[real], full[real], atol=atol, rtol=rtol)
    for (k, v), (pk, pv) in zip(present, past):  # cache rows of real tokens ([B,kv,T,hd] -> [real, kv, hd])
        torch.testing.assert_close(pk.transpose(1, 2)[real], k.transpose(1, 2)[real], atol=atol, rtol=rtol)
        torch.testing.assert_close(pv.transpose(1, 2)[real], v.transpose(1, 2)[real], atol=atol, rtol=rtol)
    return full


@pytest.mark.parametrize("name", LIBRARY)
def test_library_spec_cached_decode(name):
    graph = archc.compile(tiny_spec(name))
    model = build_module(graph)
    assert_decode_matches_full(model, graph)


@pytest.mark.parametrize("name", LIBRARY)
def test_state_dict_keys_are_graph_parameter_names(name):
    graph = archc.compile(tiny_spec(name))
    model = build_module(graph)
    sd = model.state_dict()
    assert sorted(sd) == sorted(full for full, _, _ in graph.params())
    for full, shape, _ in graph.params():
        assert tuple(sd[full].shape) == shape
    for tied, owner in graph.tied().items():
        assert tied not in sd  # the tied head borrows the owner's Parameter
        assert model.get_parameter(model.get_submodule("head").tied_to) is model.get_parameter(owner)


def test_present_cache_layout():
    graph = archc.compile(tiny_spec("llama", ["attention.sharing=gqa", "attention.kv_heads=2"]))
    ids = torch.randint(0, 97, (3, 5))
    _, present = build_module(graph)(ids)
    assert len(present) == graph.spec.n_layers
    assert all(k.shape == v.shape == (3, 2, 5, 16) for k, v in present)


# ---- every axis value of the spec language ---------------------------------------------------

# Extra --set values an axis value needs to be valid on the tiny LLaMA base.
NEEDS = {
    ("attention.sharing", "gqa"): ["attention.kv_heads=2"],
    ("residual.parallel_norms", "shared"): ["residual.layout=parallel"],
    ("residual.parallel_norms", "separate"): ["residual.layout=parallel"],
    ("attention.mask", "prefix"): ["position={kind: glm2d}"],
}
ENUM_AXES = {
    "norm.kind": S.NormKind, "norm.scale": S.NormScale, "norm.placement": S.NormPlacement,
    "mlp.activation": S.Activation, "position.kind": S.PositionKind, "position.style": S.RopeStyle,
    "attention.sharing": S.Sharing, "attention.mask": S.MaskKind, "attention.kernel": S.AttentionKernel,
    "residual.layout": S.ResidualLayout, "residual.parallel_norms": S.ParallelNorms,
    "embedding.norm": S.EmbeddingNorm, "embedding.output": S.OutputHead, "init.scheme": S.InitScheme,
}
ENUM_VARIANTS = [
    [f"position={{kind: {v.value}}}" if axis == "position.kind" else f"{axis}={v.value}"] + NEEDS.get((axis, v.value), [])
    for axis, enum in ENUM_AXES.items() for v in enum
]
# Numeric and boolean fields, and combinations the library specs do not reach.
OTHER_VARIANTS = [
    ["norm.bias=true"], ["norm.kind=layernorm", "norm.bias=false"], ["mlp.bias=true"], ["mlp.activation=geglu", "mlp.bias=true"],
    ["attention.qkv_bias=true", "attention.out_bias=true"], ["embedding.head_bias=true"],
    ["embedding.head_vocab_size=101"], ["embedding.output=tied", "embedding.head_bias=true"],
    ["embedding.multiplier=sqrt_d_model"], ["embedding.multiplier=0.5", "embedding.norm=rmsnorm"],
    ["attention.sliding_window=3"], ["attention.sliding_window=2", "attention.sharing=mqa"],
    ["attention.softmax_scale=0.3"], ["attention.head_dim=8"],
    ["position.rotary_fraction=0.5"], ["position.rotary_fraction=0.25", "position.style=interleaved"],
    ["position.theta=500000.0"],
    ["position={kind: learned, offset: 2}"], ["position={kind: sinusoidal, base: 100.0}"],
    ["position={kind: alibi, max_bias: 4.0}", "attention.n_heads=8", "attention.head_dim=8"],
    ["position={kind: alibi}", "attention.n_heads=6", "attention.head_dim=8"],  # slopes for a non-power of two
    ["position={kind: alibi}", "attention.mask=prefix"], ["position={kind: rope}", "attention.mask=prefix"],
    ["norm.placement=deepnorm", "norm.deepnorm_alpha=3.0"], ["norm.placement=sandwich", "residual.layout=parallel"],
    ["residual.layout=parallel", "residual.parallel_norms=separate", "attention.sharing=mqa"],
    ["norm.placement=post", "norm.final=true"], ["norm.placement=pre", "norm.final=false"],
    ["attention.sharing=gqa", "attention.kv_heads=2", "attention.sliding_window=4", "position.style=interleaved"],
]


def test_every_enum_value_is_exercised():
    seen = {(axis, v.value) for axis, enum in ENUM_AXES.items() for v in enum}
    assert len(ENUM_VARIANTS) == len(seen)
    spec_enums = {obj for obj in vars(S).values() if isinstance(obj, type) and issubclass(obj, S.Enum) and obj is not S.Enum}
    graph_axes = set(ENUM_AXES.values()) | {S.Tokenizer, S.DType, S.OptimizerKind, S.ScheduleKind}
    assert spec_enums <= graph_axes, f"an axis enum has no variant here: {spec_enums - graph_axes}"


@pytest.mark.parametrize("sets", ENUM_VARIANTS + OTHER_VARIANTS, ids=lambda s: ",".join(s))
def test_axis_value_runs_and_decodes(sets):
    graph = archc.compile(tiny_spec("llama", sets))
    assert_decode_matches_full(build_module(graph), graph)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype):
    graph = archc.compile(tiny_spec("llama"))
    ids, mask, _ = _inputs(graph)
    ref, _ = build_module(graph)(ids, mask)
    out, present = build_module(graph, dtype=dtype)(ids, mask)
    assert out.dtype == torch.float32 and present[0][0].dtype == dtype
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=0.05, rtol=0.05)


def test_kernel_choice_does_not_change_numbers():
    base = archc.compile(tiny_spec("llama", ["attention.kernel=default"]))
    ids, mask, _ = _inputs(base)
    ref, _ = build_module(base)(ids, mask)
    for kernel in ("math", "memory_efficient", "flash"):
        graph = archc.compile(tiny_spec("llama", [f"attention.kernel={kernel}"]))
        out, _ = build_module(graph)(ids, mask)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ---- positions, masks and padding ------------------------------------------------------------


def test_left_padding_equals_unpadded_row():
    """A left-padded prompt gives the same logits as the same prompt alone (positions shift with the mask)."""
    for name in ("llama", "bloom", "gpt2", "glm"):
        graph = archc.compile(tiny_spec(name))
        model = build_module(graph)
        ids, mask, prefix = _inputs(graph)
        padded, _ = model(ids, mask, prefix_len=prefix)
        alone, _ = model(ids[:1, PAD:], prefix_len=None if prefix is None else prefix[:1])
        torch.testing.assert_close(padded[0, PAD:], alone[0], atol=2e-5, rtol=1e-4, msg=name)


def test_prefix_mask_is_bidirectional_over_the_prefix_only():
    graph = archc.compile(tiny_spec("glm"))
    model = build_module(graph)
    ids = torch.randint(0, 97, (1, 8))
    base, _ = model(ids, prefix_len=torch.tensor([4]))
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1) % 97  # a prefix token: every position sees it
    out, _ = model(changed, prefix_len=torch.tensor([4]))
    assert (out[0, :3] - base[0, :3]).abs().max() > 1e-4
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 97  # a generated token: only later positions see it
    out, _ = model(changed, prefix_len=torch.tensor([4]))
    torch.testing.assert_close(out[0, :6], base[0, :6])
    assert (out[0, 6:] - base[0, 6:]).abs().max() > 1e-4


def test_sliding_window_limits_the_view():
    graph = archc.compile(tiny_spec("llama", ["attention.sliding_window=2", "n_layers=1"]))
    model = build_module(graph)
    ids = torch.randint(0, 97, (1, 6))
    base, _ = model(ids)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 97
    out, _ = model(changed)
    torch.testing.assert_close(out[0, 2:], base[0, 2:])  # one layer, window 2: position 2 no longer sees 0
    assert (out[0, 1] - base[0, 1]).abs().max() > 1e-4


def test_explicit_position_ids_are_used():
    for sets in ([], ["position={kind: learned}"], ["position={kind: glm2d}", "attention.mask=prefix"]):
        graph = archc.compile(tiny_spec("llama", sets))
        model = build_module(graph)
        ids = torch.randint(0, 97, (1, 5))
        default, _ = model(ids)
        pos = torch.arange(5)[None]
        if graph.model.position_ids is PositionIds.glm2d:
            pos = torch.stack((pos, torch.zeros_like(pos)), dim=1)
        same, _ = model(ids, position_ids=pos)
        torch.testing.assert_close(same, default)
        stretched, _ = model(ids, position_ids=pos * 2)  # not a shift: RoPE is shift-invariant
        assert (stretched - default).abs().max() > 1e-4, sets


# ---- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "palm", "glm"])
def test_two_builds_are_bit_identical_and_seed_matters(name):
    a = build_module(archc.compile(tiny_spec(name))).state_dict()
    b = build_module(archc.compile(tiny_spec(name))).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    c = build_module(archc.compile(tiny_spec(name, ["init.seed=1"]))).state_dict()
    assert not torch.equal(a["embed.weight"], c["embed.weight"])
    assert not torch.equal(a["layers.0.attn.q.weight"], c["layers.0.attn.q.weight"])


def test_given_weights_are_loaded_and_checked():
    graph = archc.compile(tiny_spec("llama", ["embedding.output=tied"]))
    weights = {k: torch.randn(v.shape) for k, v in build_module(graph).state_dict().items()}
    model = build_module(graph, weights=weights)
    assert torch.equal(model.state_dict()["embed.weight"], weights["embed.weight"])
    build_module(graph, weights=dict(weights, **{"head.weight": weights["embed.weight"]}))  # tied copy: accepted
    with pytest.raises(ValueError, match="tied"):
        build_module(graph, weights=dict(weights, **{"head.weight": torch.zeros_like(weights["embed.weight"])}))
    with pytest.raises(ValueError, match="missing.*final_norm.weight"):
        build_module(graph, weights={k: v for k, v in weights.items() if k != "final_norm.weight"})
    with pytest.raises(ValueError, match="unexpected.*layers.9"):
        build_module(graph, weights=dict(weights, **{"layers.9.attn.q.weight": torch.zeros(1)}))


def test_mask_that_does_not_cover_the_cache_is_rejected():
    graph = archc.compile(tiny_spec("llama"))
    model = build_module(graph)
    _, past = model(torch.randint(0, 97, (1, 4)))
    with pytest.raises(ValueError, match=r"past \+ new tokens: \(1, 5\)"):
        model(torch.randint(0, 97, (1, 1)), torch.ones(1, 1, dtype=torch.long), past_key_values=past)


# ---- components against their formulas ---------------------------------------------------------


def test_sinusoidal_positions_follow_vaswani():
    import math

    graph = archc.compile(tiny_spec("llama", ["position={kind: sinusoidal, base: 10000.0}"]))
    table = build_module(graph).pos_embed(torch.tensor([[0, 1, 7, 40]]))[0]
    D = graph.spec.d_model
    for row, p in enumerate((0, 1, 7, 40)):
        for i in (0, 3, D // 2 - 1):
            angle = p / 10000 ** (2 * i / D)
            assert float(table[row, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-5)
            assert float(table[row, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-5)


def test_learned_offset_and_glm2d_lookups():
    graph = archc.compile(tiny_spec("llama", ["position={kind: learned, offset: 2}"]))
    model = build_module(graph)
    pos = torch.tensor([[0, 3, 5]])
    torch.testing.assert_close(model.pos_embed(pos)[0], model.pos_embed.weight[[2, 5, 7]])
    graph = archc.compile(tiny_spec("glm"))
    model = build_module(graph)
    pos = torch.tensor([[[0, 1, 2, 2], [0, 0, 1, 2]]])
    expected = model.pos_embed.position.weight[[0, 1, 2, 2]] + model.pos_embed.block.weight[[0, 0, 1, 2]]
    torch.testing.assert_close(model.pos_embed(pos)[0], expected)


def test_alibi_bias_is_minus_slope_times_distance_up_to_a_row_constant():
    graph = archc.compile(tiny_spec("bloom"))
    model = build_module(graph)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    bias = model.alibi(mask)[0, :, 0]  # [H, T]
    slopes = torch.tensor(graph.settings("alibi").slopes)
    assert slopes.tolist() == pytest.approx([2 ** (-8 * (h + 1) / 4) for h in range(4)])
    i = 5  # the last query; real keys j = 2..5 have distances 3, 2, 1, 0
    rel = bias[:, 2:] - bias[:, i : i + 1]
    torch.testing.assert_close(rel, -slopes[:, None] * torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_mask_values():
    graph = archc.compile(tiny_spec("llama", ["attention.sliding_window=2"]))
    m = build_module(graph).mask(torch.tensor([[0, 1, 1, 1, 1]]), ctx=_Context(seq=3, past=None, dtype=torch.float32))[0, 0]
    visible = (m == 0).int().tolist()
    # queries are the last 3 columns (positions 1, 2, 3); key 0 is padding; window 2
    assert visible == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert torch.isfinite(m).all() and float(m.min()) == torch.finfo(torch.float32).min


def test_init_follows_the_spec_init_section():
    import math

    sd = build_module(archc.compile(tiny_spec("gpt2", ["init.std=0.05"]))).state_dict()
    L = 2
    assert torch.equal(sd["layers.0.attn_norm.weight"], torch.ones(64)) and torch.equal(sd["layers.0.attn.q.bias"], torch.zeros(64))
    assert float(sd["layers.0.attn.q.weight"].std()) == pytest.approx(0.05, rel=0.1)
    assert float(sd["layers.0.attn.o.weight"].std()) == pytest.approx(0.05 / math.sqrt(2 * L), rel=0.1)  # scaled_residual
    assert float(sd["layers.1.mlp.down.weight"].std()) == pytest.approx(0.05 / math.sqrt(2 * L), rel=0.1)
    sd = build_module(archc.compile(tiny_spec("gemma"))).state_dict()
    assert torch.equal(sd["final_norm.weight"], torch.zeros(64))  # (1 + w) norms start at w = 0
    graph = archc.compile(tiny_spec("llama", ["norm.placement=deepnorm", "init.scheme=deepnorm"]))
    sd, beta = build_module(graph).state_dict(), graph.spec.norm.deepnorm_beta
    xavier = math.sqrt(2.0 / (64 + 64))
    assert float(sd["layers.0.attn.q.weight"].std()) == pytest.approx(xavier, rel=0.1)
    assert float(sd["layers.0.attn.v.weight"].std()) == pytest.approx(beta * xavier, rel=0.1)


@pytest.mark.parametrize("name", ["gpt2", "llama"])  # tied, untied
def test_every_head_use_reads_the_one_head_weight(name):
    """forward, head_logits and loss all take the head's matrix from GraphModel.head_weight (one lookup,
    tied or not): swapped for another matrix there, all three follow. Before the helper each of them
    looked the tied/untied weight up on its own, so this swap reached none of them."""
    import torch.nn.functional as F

    graph = archc.compile(tiny_spec(name))
    model = build_module(graph)
    head = model.get_submodule("head")
    tied = graph.tied().get("head.weight")
    assert (tied is not None) == (name == "gpt2")
    assert model.head_weight() is model.get_parameter(tied or "head.weight")
    ids = torch.randint(0, graph.spec.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    other = torch.randn(model.head_weight().shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)
        expected = F.linear(hidden, other, head.bias).float()
        model.head_weight = lambda: other  # an instance attribute shadows the method
        logits, _ = model(ids)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(model.head_logits(hidden), expected)
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        want = F.cross_entropy(F.linear(model(ids[:, :-1], return_hidden=True), other, head.bias).flatten(0, 1).float(),
                               ids[:, 1:].flatten())
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
