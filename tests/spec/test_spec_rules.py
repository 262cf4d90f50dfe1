"""Cross-field rules of Spec._resolve and the values it derives.

Each rejected combination must name every field involved and say what would fix it; each derived
value is checked against the formula in its paper, written out here independently.
"""

from __future__ import annotations

import math

import pytest

from archc.errors import SpecError
from archc.loader import spec_from_dict


def make(**over):
    data = {"name": "t", "vocab_size": 100, "d_model": 64, "n_layers": 2, "max_seq_len": 32, "attention": {"n_heads": 4}}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return spec_from_dict(data)


def rejected(**over) -> str:
    with pytest.raises(SpecError) as e:
        make(**over)
    return str(e.value)


# ---- the rejected examples and every rule in _resolve ------------------------------------

RULES = [
    # (overrides, fields the message must name, words of the fix)
    ({"d_model": 65}, ["d_model", "attention.n_heads"], "attention.head_dim"),
    ({"attention": {"kv_heads": 3}}, ["attention.kv_heads", "attention.n_heads"], "divisors of 4"),
    ({"attention": {"n_heads": 8, "sharing": "mqa", "kv_heads": 4}}, ["attention.sharing", "attention.kv_heads"], "kv_heads: 1"),
    ({"attention": {"sharing": "mha", "kv_heads": 2}}, ["attention.sharing", "attention.kv_heads"], "kv_heads: 4"),
    ({"attention": {"sharing": "gqa", "kv_heads": 4}}, ["attention.sharing", "attention.kv_heads"], "1 < kv_heads < 4"),
    ({"attention": {"sharing": "gqa", "kv_heads": 1}}, ["attention.sharing", "attention.kv_heads"], "1 < kv_heads < 4"),
    ({"attention": {"sharing": "gqa"}}, ["attention.sharing", "attention.kv_heads"], "number of K/V groups"),
    ({"attention": {"head_dim": 6}, "position": {"kind": "rope", "rotary_fraction": 0.5}},
     ["rotary_fraction", "head_dim"], "even width"),
    ({"attention": {"head_dim": 2}, "position": {"kind": "rope", "rotary_fraction": 0.2}},
     ["rotary_fraction", "head_dim"], "odd or zero"),
    ({"position": {"kind": "rope", "rotary_dim": 8, "rotary_fraction": 1.0}}, ["position.rotary_dim", "rotary_fraction"], "only one"),
    ({"position": {"kind": "rope", "rotary_dim": 32}}, ["position.rotary_dim", "attention.head_dim"], "at most head_dim"),
    # rotary_dim written alone and odd: named as rotary_dim, the field the user wrote (issue 13, 5.13)
    ({"position": {"kind": "rope", "rotary_dim": 7}}, ["position.rotary_dim"], "even rotary_dim"),
    ({"position": {"kind": "learned", "max_positions": 16}}, ["position.max_positions", "max_seq_len"], "raise max_positions"),
    ({"position": {"kind": "learned", "max_positions": 32, "offset": 2}}, ["position.max_positions", "max_seq_len"], "offset 2"),
    ({"norm": {"deepnorm_alpha": 2.0}}, ["norm.deepnorm_alpha", "norm.placement"], "placement: deepnorm"),
    ({"norm": {"deepnorm_beta": 0.5, "placement": "post"}}, ["norm.deepnorm_alpha", "norm.placement"], "placement: deepnorm"),
    ({"residual": {"layout": "parallel"}, "norm": {"placement": "post"}}, ["residual.layout", "norm.placement"], "placement: pre"),
    ({"residual": {"layout": "parallel"}, "norm": {"placement": "deepnorm"}}, ["residual.layout", "norm.placement"], "layout: sequential"),
    ({"residual": {"parallel_norms": "separate"}}, ["residual.parallel_norms", "residual.layout"], "layout: parallel"),
    ({"embedding": {"output": "tied", "head_vocab_size": 128}}, ["embedding.output", "embedding.head_vocab_size"], "output: untied"),
    ({"attention": {"mask": "prefix", "sliding_window": 8}}, ["attention.mask", "attention.sliding_window"], "drop one"),
    # sizes each within its bound whose product is past 1e15 parameters (2^20 layers of width 2^20: ~7e18)
    ({"n_layers": 2**20, "d_model": 2**20}, ["n_layers", "d_model", "mlp.d_ff", "vocab_size", "1e+15"], "lower n_layers"),
    # ALiBi / glm2d combined with rotary settings: the setting belongs to another kind
    ({"position": {"kind": "alibi", "theta": 10000}}, ["theta", "rope", "alibi"], "set kind: rope"),
    ({"position": {"kind": "alibi", "rotary_fraction": 0.5}}, ["rotary_fraction", "rope"], "remove 'rotary_fraction'"),
    ({"position": {"kind": "glm2d", "style": "interleaved"}}, ["style", "rope", "glm2d"], "set kind: rope"),
    ({"position": {"kind": "glm2d", "rotary_dim": 8}}, ["rotary_dim", "rope"], "remove"),
]


@pytest.mark.parametrize("over,fields,fix", RULES, ids=[str(i) for i in range(len(RULES))])
def test_rule_rejects_and_names_fields(over, fields, fix):
    msg = rejected(**over)
    for f in fields:
        assert f in msg, f"message does not name {f}: {msg}"
    assert fix in msg, f"message does not say the fix ({fix!r}): {msg}"


def test_every_conflict_rule_is_covered():
    """Guard: the rules Spec._resolve applies (archc.spec._RULES) raise 15 cross-field conflicts, and RULES
    covers each (rows 0-21). A new conflict changes the count here; add a RULES row for it and update the
    number. Negative control: _resolve runs every rule function in the module (none left out of _RULES)."""
    import inspect

    import archc.spec as spec_mod

    assert sum(inspect.getsource(rule).count("raise SpecConflict(") for rule in spec_mod._RULES) == 15
    defined = {n for n, f in vars(spec_mod).items() if inspect.isfunction(f) and n.startswith(("_derive_", "_check_"))}
    assert defined == {rule.__name__ for rule in spec_mod._RULES}


# ---- negative controls: the boundary cases that must be accepted ----------------------------------


@pytest.mark.parametrize(
    "over",
    [
        {"d_model": 65, "attention": {"head_dim": 16}},  # explicit head_dim lifts the divisibility rule
        {"attention": {"n_heads": 8, "sharing": "mqa", "kv_heads": 1}},
        {"attention": {"n_heads": 8, "kv_heads": 4, "sharing": "gqa"}},
        {"attention": {"kv_heads": 4, "sharing": "mha"}},
        {"position": {"kind": "rope", "rotary_fraction": 0.25}},  # head_dim 16 -> 4 rotary dims
        {"position": {"kind": "rope", "rotary_dim": 16}},
        {"position": {"kind": "learned", "max_positions": 34, "offset": 2}},
        {"residual": {"layout": "parallel"}, "norm": {"placement": "sandwich"}},
        {"residual": {"layout": "parallel", "parallel_norms": "separate"}},
        {"norm": {"placement": "post"}},
        {"norm": {"placement": "deepnorm", "deepnorm_alpha": 2.0}},
        {"embedding": {"output": "untied", "head_vocab_size": 128}},
        {"embedding": {"output": "tied", "head_vocab_size": 100}},
        {"attention": {"sliding_window": 8}},
        {"position": {"kind": "alibi", "max_bias": 4}},
        {"position": {"kind": "glm2d"}, "attention": {"mask": "prefix"}},
    ],
)
def test_boundary_accepted(over):
    make(**over)


# ---- derived values ------------------------------------------------------------------------------


def test_head_dim_and_kv_derivation():
    s = make()
    assert (s.attention.head_dim, s.attention.kv_heads, s.attention.sharing.value) == (16, 4, "mha")
    assert s.attention.softmax_scale == pytest.approx(1 / 4)
    s = make(attention={"sharing": "mqa"})
    assert (s.attention.kv_heads, s.kv_dim, s.q_dim) == (1, 16, 64)
    assert make(attention={"kv_heads": 2}).attention.sharing.value == "gqa"
    assert make(attention={"kv_heads": 1}).attention.sharing.value == "mqa"
    assert make(attention={"softmax_scale": 0.5}).attention.softmax_scale == 0.5
    s = make(d_model=64, attention={"n_heads": 2, "head_dim": 48})  # head_dim * n_heads != d_model is allowed
    assert (s.q_dim, s.attention.softmax_scale) == (96, pytest.approx(1 / math.sqrt(48)))


def test_rotary_dim_derivation():
    assert make().position.rotary_dim == 16
    s = make(position={"kind": "rope", "rotary_dim": 4})  # rotary_dim alone sets the fraction (GPT-J style)
    assert (s.position.rotary_dim, s.position.rotary_fraction) == (4, 0.25)
    assert make(position={"kind": "rope", "rotary_fraction": 0.25}).position.rotary_dim == 4
    # Pythia-1.4B: head_dim 128, rotary_pct 0.25 -> 32 rotary dims (GPT-NeoX rotary_ndims)
    s = spec_from_dict({"name": "p", "vocab_size": 10, "d_model": 2048, "n_layers": 1, "max_seq_len": 8,
                        "attention": {"n_heads": 16}, "position": {"kind": "rope", "rotary_fraction": 0.25}})
    assert s.position.rotary_dim == 32


@pytest.mark.parametrize("n_layers", [1, 24, 70])
def test_deepnorm_defaults(n_layers):
    """DeepNet (Wang et al. 2022), decoder-only column: alpha = (2N)^(1/4), beta = (8N)^(-1/4)."""
    s = make(n_layers=n_layers, norm={"placement": "deepnorm"})
    assert s.norm.deepnorm_alpha == pytest.approx(math.pow(2 * n_layers, 0.25))
    assert s.norm.deepnorm_beta == pytest.approx(1 / math.pow(8 * n_layers, 0.25))
    assert s.norm.final is False


def test_deepnorm_explicit_values_kept():
    s = make(norm={"placement": "deepnorm", "deepnorm_alpha": 3.0, "deepnorm_beta": 0.1})
    assert (s.norm.deepnorm_alpha, s.norm.deepnorm_beta) == (3.0, 0.1)


@pytest.mark.parametrize("placement,final", [("pre", True), ("sandwich", True), ("post", False), ("deepnorm", False)])
def test_final_norm_default(placement, final):
    assert make(norm={"placement": placement}).norm.final is final
    assert make(norm={"placement": placement, "final": not final}).norm.final is (not final)


def test_other_defaults():
    s = make()
    assert s.norm.bias is True and s.mlp.d_ff == 256 and s.embedding.head_vocab_size == 100
    assert make(norm={"kind": "rmsnorm"}).norm.bias is False
    assert make(residual={"layout": "parallel"}).residual.parallel_norms.value == "shared"
    assert make(embedding={"multiplier": "sqrt_d_model"}).embedding_multiplier == 8.0
    assert make(embedding={"multiplier": 2.5}).embedding_multiplier == 2.5
    s = make(position={"kind": "learned", "offset": 2})
    assert s.position.max_positions == 34
    assert make(position={"kind": "glm2d"}).position.max_positions == 32


def test_resolved_spec_round_trips():
    """The resolved spec (derived values filled in) loads back to itself: derived fields agree."""
    for over in ({}, {"position": {"kind": "rope", "rotary_fraction": 0.5}}, {"norm": {"placement": "deepnorm"}},
                 {"attention": {"kv_heads": 2}}, {"position": {"kind": "learned", "offset": 2}}):
        s = make(**over)
        again = spec_from_dict(s.to_yaml_dict())
        assert again == s
