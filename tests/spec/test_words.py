"""archc.words: every axis value has its display words (a new enum member fails here until it gets
them), an unknown value raises instead of printing raw, and the number formats against hand counts."""

from __future__ import annotations

import pytest

from archc import words
from archc.components import NormSettings
from archc.diff import kernel_words, norm_words
from archc.spec import (
    Activation,
    AttentionKernel,
    MaskKind,
    NormKind,
    NormPlacement,
    NormScale,
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


def test_node_settings_in_words_and_unknown_values_raise():
    assert norm_words(NormSettings(NormKind.rmsnorm, 1e-6, False, NormScale.one_plus_weight)) == "RMSNorm, (1 + w) scale, eps 1e-06"
    assert norm_words(NormSettings(NormKind.layernorm, 1e-5, False, NormScale.weight)) == "LayerNorm, no bias, eps 1e-05"
    assert norm_words(NormSettings(NormKind.rmsnorm, 1e-5, True, NormScale.weight)) == "RMSNorm with bias, eps 1e-05"
    assert kernel_words(AttentionKernel.default) == "backend-default kernel" and kernel_words(AttentionKernel.flash) == "flash kernel"
    # negative controls: a value no enum has is an error, not its raw string in a report
    with pytest.raises(ValueError):
        words.norm("no_such_norm", False, NormScale.weight)
    with pytest.raises(KeyError):
        words.ACTIVATION["no_such_activation"]


def test_sharing_from_head_counts():
    assert [words.sharing(8, k) for k in (8, 1, 2)] == ["multi-head", "multi-query", "grouped-query"]


def test_number_formats():
    assert words.human(6_738_415_616) == "6.74 B"
    assert words.human(14_287_896_576, "FLOP") == "14.3 GFLOP"
    assert words.human(999) == "999" and words.human(8192) == "8.19 k"
    assert words.human(-8192) == "-8.19 k"
    assert words.human_bytes(524_288) == "512 KiB" and words.human_bytes(2**31) == "2 GiB" and words.human_bytes(100) == "100 B"
    assert words.sci(3e-4) == "3e-4" and words.sci(1.5e-5) == "1.5e-5" and words.sci(0.1) == "1e-1"
