"""Property test: no malformed spec escapes as a traceback.

Hypothesis generates broken specs four ways: library files with random edits, random data on top
of a valid spec (unknown keys, wrong types, extreme numbers, random kinds), arbitrary bytes (non
UTF-8, empty) and random --set expressions. Loading must either succeed or raise a one-line
UserError; `archc validate` must exit 0 or 2 and print exactly one line, never a traceback.
"""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archc.errors import UserError
from archc.loader import load_spec
from conftest import LIBRARY, SPECS, run_cli

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXTS = [(SPECS / f"{n}.yaml").read_text() for n in LIBRARY]
FIELD_NAMES = sorted({
    "name", "extends", "vocab_size", "d_model", "n_layers", "max_seq_len", "dtype", "tokenizer", "norm", "kind",
    "bias", "eps", "scale", "placement", "final", "deepnorm_alpha", "deepnorm_beta", "mlp", "activation", "d_ff",
    "position", "theta", "rotary_fraction", "rotary_dim", "style", "max_positions", "offset", "max_bias", "attention",
    "n_heads", "kv_heads", "sharing", "head_dim", "qkv_bias", "out_bias", "mask", "sliding_window", "softmax_scale",
    "residual", "layout", "parallel_norms", "embedding", "output", "multiplier", "head_bias", "head_vocab_size",
    "init", "std", "seed", "training", "optimizer", "schedule", "lr", "betas", "weight_decay", "warmup_steps",
})
KIND_WORDS = ["rope", "alibi", "glm2d", "learned", "none", "mqa", "gqa", "mha", "pre", "post", "deepnorm", "parallel",
              "tied", "swiglu", "layernorm", "rmsnorm", "adamw", "adafactor", "cosine", "prefix", "sqrt_d_model", "llama"]
YAML_NOISE = st.text(alphabet=list(":{}[],-#&*!|>'\"\n\t ?%@`.eE+0123456789abcxyz_\\\u00e9\u2028"), max_size=12)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(KIND_WORDS), st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=1, max_size=10))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=4), max_leaves=12)


def check_load(path, sets=None) -> None:
    try:
        load_spec(path, sets)
    except UserError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg, msg


def check_cli(path, capsys, sets=()) -> None:
    argv = ["validate", str(path)] + [a for s in sets for a in ("--set", s)]
    rc, out, err = run_cli(argv, capsys)
    assert rc in (0, 2, None), (rc, err)
    text = (out + err).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


# ---- the four generators of broken input -----------------------------------------------------------

mutated_texts = st.builds(
    lambda base, edits: _apply_edits(base, edits),
    st.sampled_from(TEXTS),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 12), YAML_NOISE), min_size=1, max_size=4),
)


def _apply_edits(text: str, edits) -> bytes:
    for at, cut, insert in edits:
        at = at % (len(text) + 1)
        text = text[:at] + insert + text[at + cut:]
    return text.encode("utf-8", errors="surrogatepass")


def _random_spec(base: str, section: str, extra: dict) -> bytes:
    data: dict = {"extends": base}
    if section:
        data[section] = extra
    else:
        data.update(extra)
    try:
        return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", errors="surrogatepass")
    except yaml.YAMLError:
        return b"{}"


random_specs = st.builds(
    _random_spec,
    st.sampled_from(LIBRARY),
    st.sampled_from(["", "attention", "position", "norm", "mlp", "embedding", "residual", "training"]),
    st.dictionaries(keys, values, min_size=1, max_size=4),
)
arbitrary_bytes = st.one_of(
    st.binary(max_size=300), st.just(b""), st.just(b"\xff\xfe\x00"),
    st.builds(lambda t, b: t.encode() + b, st.sampled_from(TEXTS), st.binary(min_size=1, max_size=8)),
)
set_lists = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(FIELD_NAMES + ["attention.kv_heads", "position.kind", "norm.eps",
                                                                      "training.optimizer.kind", "position.theta", "mlp.d_ff"]),
              st.one_of(YAML_NOISE, st.sampled_from(KIND_WORDS), st.integers(-5, 10**12).map(str))),
    st.text(max_size=20)), min_size=1, max_size=3)


@SETTINGS
@given(raw=mutated_texts)
def test_mutated_library_text(spec_file, raw):
    spec_file.write_bytes(raw)
    check_load(spec_file)


@SETTINGS
@given(raw=random_specs)
def test_random_data_on_a_valid_spec(spec_file, raw):
    spec_file.write_bytes(raw)
    check_load(spec_file)


@SETTINGS
@given(raw=arbitrary_bytes)
def test_arbitrary_bytes(spec_file, raw):
    spec_file.write_bytes(raw)
    check_load(spec_file)


@SETTINGS
@given(sets=set_lists)
def test_random_set_expressions(sets):
    check_load(SPECS / "gpt2.yaml", sets)


# The CLI costs more per call (typer builds the command tree), so fewer examples drawn from all four.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(mutated_texts, random_specs, arbitrary_bytes), sets=st.one_of(st.just([]), set_lists))
def test_validate_never_tracebacks(spec_file, capsys, raw, sets):
    spec_file.write_bytes(raw)
    check_cli(spec_file, capsys, sets)


def test_fuzz_check_can_fail():
    """Negative control: check_load lets an exception other than UserError through."""
    class Boom(Exception):
        pass

    import archc.loader as loader

    original = loader.validate_data
    loader.validate_data = lambda *a, **k: (_ for _ in ()).throw(Boom())
    try:
        with pytest.raises(Boom):
            check_load(SPECS / "gpt2.yaml")
    finally:
        loader.validate_data = original
    assert math.isfinite(1.0)
