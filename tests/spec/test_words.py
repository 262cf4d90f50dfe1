"""archc.words: every axis value has its display words (a new enum member fails here until it gets
them), an unknown value raises instead of printing raw, and the number formats against hand counts."""

from __future__ import annotations

import pytest

from archc import words
from archc.diff import activation_words, kernel_words, norm_words
from archc.spec import (
    Activation,
    AttentionKernel,
    MaskKind,
    NormKind,
    NormPlacement,
    OptimizerKind,
    PositionKind,
    Sharing,
    Tokenizer,
)

TABLES = [
    (words.NORM, NormKind, set()),
    (words.NORM_PLACEMENT, NormPlacement, set()),
    (words.ACTIVATION, Activation, set()),
    (words.POSITION, PositionKind, {PositionKind.rope}),  # rope's words carry theta, fraction and style
    (words.SHARING, Sharing, set()),
    (words.MASK, MaskKind, set()),
    (words.KERNEL, AttentionKernel, set()),
    (words.TOKENIZER, Tokenizer, set()),
    (words.OPTIMIZER, OptimizerKind, set()),
]


@pytest.mark.parametrize("table, enum, said_elsewhere", TABLES, ids=[t[1].__name__ for t in TABLES])
def test_every_member_has_words(table, enum, said_elsewhere):
    assert set(table) == set(enum) - said_elsewhere
    assert all(isinstance(k, enum) for k in table)  # keyed by members, not loose strings
    named = [w for k, w in table.items() if k is not Tokenizer.unspecified]
    assert all(named) and len(set(named)) == len(named)  # no empty or repeated words


def test_graph_settings_strings_convert_and_unknown_values_raise():
    assert norm_words({"norm": "rmsnorm", "bias": False, "scale": "one_plus_weight", "eps": 1e-6}) == "RMSNorm, (1 + w) scale, eps 1e-06"
    assert norm_words({"norm": "layernorm", "bias": False, "eps": 1e-5}) == "LayerNorm, no bias, eps 1e-05"
    assert activation_words("gelu_tanh") == "GELU (tanh)"
    assert kernel_words("default") == "backend-default kernel" and kernel_words("flash") == "flash kernel"
    # negative controls: a value no enum has is an error, not its raw string in a report
    with pytest.raises(ValueError):
        activation_words("no_such_activation")
    with pytest.raises(ValueError):
        norm_words({"norm": "no_such_norm", "bias": False, "eps": 1e-5})
    with pytest.raises(ValueError):
        kernel_words("no_such_kernel")


def test_sharing_from_head_counts():
    assert [words.sharing(8, k) for k in (8, 1, 2)] == ["multi-head", "multi-query", "grouped-query"]


def test_number_formats():
    assert words.human(6_738_415_616) == "6.74 B"
    assert words.human(14_287_896_576, "FLOP") == "14.3 GFLOP"
    assert words.human(999) == "999" and words.human(8192) == "8.19 k"
    assert words.human(-8192) == "-8.19 k"
    assert words.human_bytes(524_288) == "512 KiB" and words.human_bytes(2**31) == "2 GiB" and words.human_bytes(100) == "100 B"
    assert words.sci(3e-4) == "3e-4" and words.sci(1.5e-5) == "1.5e-5" and words.sci(0.1) == "1e-1"
