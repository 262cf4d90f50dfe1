"""The loader: YAML with line numbers, extends chains, --set overrides, one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from archc.errors import SpecError, UserError
from archc.loader import load_spec, parse_set
from archc.spec import AlibiPosition, RopePosition
from conftest import SPECS

BASE = """\
name: t
vocab_size: 100
d_model: 64
n_layers: 2
max_seq_len: 32
attention:
  n_heads: 4
"""


def write(folder: Path, name: str, text: str | bytes) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(textwrap.dedent(text))
    return p


def error(path: Path, sets: list[str] | None = None) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(path, sets)
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    return msg


# ---- values written as in published configs ------------------------------------------------------


@pytest.mark.parametrize("text", ["1e-5", "1.0e-05", "1E-5", "1e-05", "+1e-5", "0.00001", "1.e-5"])
def test_float_forms_accepted(tmp_path, text):
    p = write(tmp_path, "s.yaml", BASE + f"norm: {{eps: {text}}}\ntraining:\n  optimizer: {{lr: 3e-4, betas: [0.9, 9.5e-1]}}\n")
    spec = load_spec(p)
    assert spec.norm.eps == 1e-5
    assert spec.training.optimizer.lr == 3e-4
    assert spec.training.optimizer.betas == (0.9, 0.95)


def test_float_forms_via_set(tmp_path):
    p = write(tmp_path, "s.yaml", BASE)
    assert load_spec(p, ["norm.eps=1e-6"]).norm.eps == 1e-6
    assert load_spec(p, ["norm.eps=1.0e-06"]).norm.eps == 1e-6


def test_library_specs_use_published_spellings():
    assert load_spec(SPECS / "llama.yaml").norm.eps == 1e-6  # written 1.0e-06, as in the HF config


# ---- extends --------------------------------------------------------------------------------------


def test_extends_chain_merges_key_by_key(tmp_path):
    write(tmp_path, "a.yaml", BASE + "position: {kind: rope, theta: 500000.0}\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\nn_layers: 3\n")
    c = write(tmp_path, "c.yaml", "extends: b.yaml\nname: c\nattention: {kv_heads: 2}\nposition: {rotary_fraction: 0.5}\n")
    spec = load_spec(c)
    assert (spec.name, spec.n_layers, spec.d_model) == ("c", 3, 64)
    assert (spec.attention.n_heads, spec.attention.kv_heads, spec.attention.sharing.value) == (4, 2, "gqa")
    assert isinstance(spec.position, RopePosition)
    assert (spec.position.theta, spec.position.rotary_fraction, spec.position.rotary_dim) == (500000.0, 0.5, 8)


def test_extends_is_relative_to_the_file_not_the_cwd(tmp_path, monkeypatch):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "sub/child.yaml", "extends: ../base.yaml\nn_layers: 5\n")
    monkeypatch.chdir(tmp_path / "sub")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_spec(child).n_layers == 5


@pytest.mark.parametrize("target", ["llama", "llama.yaml"])
def test_extends_library_name(tmp_path, target):
    p = write(tmp_path, "mine.yaml", f"extends: {target}\nname: mine\nn_layers: 2\n")
    spec = load_spec(p)
    assert (spec.name, spec.n_layers, spec.d_model, spec.norm.kind.value) == ("mine", 2, 4096, "rmsnorm")


def test_library_spec_extending_library_spec():
    spec = load_spec(SPECS / "llama2-70b.yaml")
    assert spec.norm.kind.value == "rmsnorm" and spec.attention.kv_heads == 8 and spec.d_model == 8192


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    msg = error(b)
    assert "extends cycle" in msg and "a.yaml" in msg and "b.yaml" in msg


def test_extends_self(tmp_path):
    a = write(tmp_path, "a.yaml", "extends: a.yaml\n" + BASE)
    assert "extends cycle" in error(a)


def test_extends_missing_target(tmp_path):
    p = write(tmp_path, "a.yaml", "name: a\nextends: nope.yaml\n")
    msg = error(p)
    assert msg.startswith(f"{_shown(p)}:2: extends: ")
    assert "'nope.yaml' not found" in msg


def test_extends_missing_deeper_in_chain(tmp_path):
    write(tmp_path, "b.yaml", "extends: gone.yaml\n")
    p = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    msg = error(p)
    assert "b.yaml:1" in msg and "gone.yaml" in msg


@pytest.mark.parametrize("value", ["3", "''", "[a.yaml]", "{x: 1}"])
def test_extends_must_be_a_path(tmp_path, value):
    p = write(tmp_path, "a.yaml", f"extends: {value}\n" + BASE)
    assert "extends" in error(p)


def test_kind_switch_replaces_the_section(tmp_path):
    write(tmp_path, "a.yaml", BASE + "position: {kind: rope, theta: 500000.0, style: interleaved}\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nposition: {kind: alibi}\n")
    spec = load_spec(b)
    assert isinstance(spec.position, AlibiPosition)


def test_kind_switch_with_stale_setting_rejected(tmp_path):
    """ALiBi combined with a rotary setting: the message says whose setting it is."""
    write(tmp_path, "a.yaml", BASE)
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nposition:\n  kind: alibi\n  theta: 10000\n")
    msg = error(b)
    assert msg.startswith(f"{_shown(b)}:4:")
    assert "'theta' is a setting of position kind 'rope', not of kind 'alibi'" in msg


# ---- --set ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr,path,value",
    [
        ("n_layers=2", ("n_layers",), 2),
        ("attention.kv_heads=8", ("attention", "kv_heads"), 8),
        ("norm.eps=1e-5", ("norm", "eps"), 1e-5),
        ("training.optimizer.betas=[0.9, 0.99]", ("training", "optimizer", "betas"), [0.9, 0.99]),
        ("mlp.bias=false", ("mlp", "bias"), False),
        ("name=my model", ("name",), "my model"),
        ("description=a=b", ("description",), "a=b"),
        (" n_layers = 3", ("n_layers",), 3),
    ],
)
def test_parse_set(expr, path, value):
    assert parse_set(expr) == (path, value)


@pytest.mark.parametrize("expr", ["n_layers", "=3", "attention..kv_heads=2", ".x=1", "x.=1"])
def test_parse_set_rejects(expr):
    with pytest.raises(UserError) as e:
        parse_set(expr)
    assert "--set" in str(e.value)


def test_set_overrides_file_and_extends(tmp_path):
    write(tmp_path, "a.yaml", BASE)
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nn_layers: 3\n")
    spec = load_spec(b, ["attention.kv_heads=2", "n_layers=2", "n_layers=6"])
    assert (spec.n_layers, spec.attention.kv_heads, spec.attention.n_heads) == (6, 2, 4)


def test_set_kind_switch():
    spec = load_spec(SPECS / "llama.yaml", ["position.kind=alibi", "position.max_bias=4"])
    assert isinstance(spec.position, AlibiPosition) and spec.position.max_bias == 4
    msg = error(SPECS / "llama.yaml", ["position.kind=alibi", "position.theta=5e5"])
    assert msg.startswith("--set position.theta=5e5:") and "kind 'rope'" in msg


def test_set_error_names_the_set():
    msg = error(SPECS / "llama.yaml", ["attention.kv_heads=5"])
    assert msg.startswith("--set attention.kv_heads=5:")
    assert "attention.kv_heads=5" in msg and "attention.n_heads=32" in msg


def test_set_creates_missing_section(tmp_path):
    p = write(tmp_path, "s.yaml", BASE)
    assert load_spec(p, ["residual.layout=parallel"]).residual.parallel_norms.value == "shared"


# ---- line numbers and fields in messages ----------------------------------------------------------


def _shown(p: Path) -> str:
    from archc.loader import _display

    return _display(p)


def test_type_error_points_at_line_and_field(tmp_path):
    p = write(tmp_path, "s.yaml", BASE.replace("n_heads: 4", "n_heads: four"))
    msg = error(p)
    assert msg.startswith(f"{_shown(p)}:7: attention.n_heads: ")
    assert "'four'" in msg


def test_conflict_points_at_the_file_that_wrote_the_value(tmp_path):
    base = write(tmp_path, "a.yaml", BASE.replace("d_model: 64", "d_model: 60"))
    child = write(tmp_path, "b.yaml", "extends: a.yaml\nattention:\n  n_heads: 8\n")
    msg = error(child)
    # first field named by the rule is d_model, written on line 3 of the base
    assert msg.startswith(f"{_shown(base)}:3: ")
    assert "d_model=60" in msg and "attention.n_heads=8" in msg and "head_dim" in msg


def test_conflict_in_child_points_at_child_line(tmp_path):
    write(tmp_path, "a.yaml", BASE)
    child = write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\nattention:\n  kv_heads: 3\n")
    assert error(child).startswith(f"{_shown(child)}:4: ")


def test_missing_required_field_named(tmp_path):
    p = write(tmp_path, "s.yaml", BASE.replace("vocab_size: 100\n", ""))
    msg = error(p)
    assert "vocab_size" in msg and "required" in msg
    p = write(tmp_path, "t.yaml", BASE.replace("  n_heads: 4\n", "  kv_heads: 2\n"))
    assert "attention.n_heads" in error(p)


@pytest.mark.parametrize(
    "text,expect",
    [
        (BASE + "vocab_sise: 3\n", "unknown key 'vocab_sise' in the spec; did you mean 'vocab_size'?"),
        (BASE + "position: {kind: rope, rotary_frac: 0.25}\n", "unknown key 'rotary_frac' in position; did you mean 'rotary_fraction'?"),
        (BASE + "  rotary_frac: 0.25\n", "unknown key 'rotary_frac' in attention; did you mean position.rotary_fraction?"),
        (BASE + "training:\n  optimizer: {kind: adamw, beta: [0.9, 0.9]}\n", "unknown key 'beta' in training.optimizer; did you mean 'betas'?"),
        (BASE + "norm: {kind: rmsnorm, epsilon: 1e-5}\n", "did you mean 'eps'?"),
    ],
)
def test_unknown_key_suggests_nearest(tmp_path, text, expect):
    p = write(tmp_path, "s.yaml", text)
    msg = error(p)
    assert expect in msg
    assert msg.startswith(f"{_shown(p)}:{len(text.splitlines())}:"), "points at the line of the unknown key"


def test_unknown_key_without_near_match_lists_valid_keys(tmp_path):
    p = write(tmp_path, "s.yaml", BASE + "zzzz: 1\n")
    assert "valid keys: attention, d_model" in error(p)


@pytest.mark.parametrize(
    "section,value,expect",
    [
        ("position", "{kind: foo}", "unknown position kind 'foo'; expected one of learned, sinusoidal, rope, alibi, glm2d, none"),
        ("position", "{kind: [rope]}", "unknown position kind"),
        ("training", "{optimizer: {kind: sgd}}", "unknown optimizer kind 'sgd'; expected one of adamw, adam, adafactor"),
        ("training", "{schedule: {kind: rsqrt}}", "unknown schedule kind 'rsqrt'; expected one of cosine, constant, linear"),
        ("norm", "{kind: batchnorm}", "norm.kind: Input should be 'layernorm' or 'rmsnorm'"),
    ],
)
def test_unknown_kind(tmp_path, section, value, expect):
    p = write(tmp_path, "s.yaml", BASE + f"{section}: {value}\n")
    assert expect in error(p)


# ---- malformed files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,expect",
    [
        (b"", "empty file"),
        (b"   \n\n", "empty file"),
        (b"# only a comment\n", "empty file"),
        (b"- a\n- b\n", "must be a mapping"),
        (b"42\n", "must be a mapping"),
        (b"name: t\n\xff\xfe bad\n", "not UTF-8"),
        (b"name: [unclosed\n", "YAML syntax error"),
        (b"name: a\nname: b\n", "key 'name' appears twice"),
        (b"a: !!int abc\n", "cannot be read"),
        (b"? [a, b]\n: 1\n", "keys must be plain names"),
        (b"name: t\nvocab_size: *undefined\n", "YAML"),
        (b"a: " + b"[" * 3000 + b"\n", "YAML"),
    ],
)
def test_malformed_file(tmp_path, content, expect):
    p = write(tmp_path, "s.yaml", content)
    msg = error(p)
    assert expect in msg and msg.startswith(_shown(p))


def test_non_utf8_line_number(tmp_path):
    p = write(tmp_path, "s.yaml", b"name: t\nvocab_size: 3\nd_model: \xe9\n")
    assert error(p).startswith(f"{_shown(p)}:3: ")


def test_yaml_syntax_error_line(tmp_path):
    p = write(tmp_path, "s.yaml", BASE + "norm: {kind: rmsnorm\nmlp: {}\n")
    msg = error(p)
    assert "YAML syntax error" in msg and f"{_shown(p)}:" in msg


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in error(tmp_path / "absent.yaml")
    assert "directory" in error(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [("n_layers", "0"), ("d_model", "-64"), ("vocab_size", "0"), ("max_seq_len", "-1"), ("n_layers", "two"),
     ("n_layers", "2.5"), ("d_model", "[64]"), ("name", "''"), ("dtype", "float8"), ("attention", "3"), ("norm", "[1]")],
)
def test_bad_values(tmp_path, field, value):
    text = "\n".join(f"{field}: {value}" if line.startswith(f"{field}:") else line for line in BASE.splitlines()) + "\n"
    if f"{field}:" not in BASE:
        text = BASE + f"{field}: {value}\n"
    if field == "attention":
        text = BASE.replace("attention:\n  n_heads: 4\n", f"attention: {value}\n")
    p = write(tmp_path, "s.yaml", text)
    msg = error(p)
    assert field in msg


@pytest.mark.parametrize("field", ["mlp.d_ff=0", "attention.n_heads=0", "attention.kv_heads=-1", "attention.head_dim=0",
                                   "norm.eps=0", "init.std=-0.02", "position.rotary_fraction=1.5"])
def test_non_positive_sizes_via_set(tmp_path, field):
    p = write(tmp_path, "s.yaml", BASE)
    msg = error(p, [field])
    assert msg.startswith(f"--set {field}:") and field.split("=")[0] in msg


def test_section_without_kind_takes_the_default_kind(tmp_path):
    p = write(tmp_path, "s.yaml", BASE + "position: {theta: 500000}\ntraining: {optimizer: {lr: 1e-3}, schedule: {warmup_steps: 5}}\n")
    spec = load_spec(p)
    assert isinstance(spec.position, RopePosition) and spec.position.theta == 500000
    assert spec.training.optimizer.kind.value == "adamw" and spec.training.schedule.kind.value == "cosine"


# ---- fields that state one fact twice --------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "palm", "gemma"])
def test_set_kv_heads_on_a_spec_that_wrote_sharing(name):
    """The issue's example `--set attention.kv_heads=8 --set n_layers=2`: an override of kv_heads
    replaces the inherited `sharing:` (and vice versa); the new sharing is derived."""
    spec = load_spec(SPECS / f"{name}.yaml", ["attention.kv_heads=2", "n_layers=2"])
    assert (spec.attention.kv_heads, spec.attention.sharing.value, spec.n_layers) == (2, "gqa", 2)


def test_set_sharing_replaces_inherited_kv_heads():
    spec = load_spec(SPECS / "llama2-70b.yaml", ["attention.sharing=mqa"])
    assert spec.attention.kv_heads == 1


def test_coupled_fields_set_together_must_agree():
    msg = error(SPECS / "llama.yaml", ["attention.kv_heads=8", "attention.sharing=mqa"])
    assert "attention.sharing" in msg and "attention.kv_heads=8" in msg


def test_coupled_override_in_extending_file(tmp_path):
    write(tmp_path, "a.yaml", BASE.replace("  n_heads: 4\n", "  n_heads: 4\n  sharing: mha\n") + "position: {kind: rope, rotary_fraction: 0.5}\n")
    b = write(tmp_path, "b.yaml", "extends: a.yaml\nattention: {kv_heads: 1}\nposition: {rotary_dim: 4}\n")
    spec = load_spec(b)
    assert (spec.attention.sharing.value, spec.position.rotary_dim, spec.position.rotary_fraction) == ("mqa", 4, 0.25)


def test_later_set_of_the_same_field_wins():
    assert load_spec(SPECS / "gpt2.yaml", ["n_layers=3", "n_layers=1"]).n_layers == 1


def test_too_few_tuple_values_and_union_alternatives():
    msg = error(SPECS / "llama.yaml", ["training.optimizer.betas=[0.9]"])
    assert msg.startswith("--set training.optimizer.betas=[0.9]: training.optimizer.betas: too few values")
    msg = error(SPECS / "gemma.yaml", ["embedding.multiplier=sqrt"])
    assert "valid number" in msg and "'sqrt_d_model'" in msg and "(got 'sqrt')" in msg


def test_several_missing_fields_counted(tmp_path):
    p = write(tmp_path, "s.yaml", "name: x\nvocab_size: 3\n")
    msg = error(p)
    assert "d_model: required field is missing" in msg and "(and 3 more problems;" in msg


@pytest.mark.parametrize("content,line", [(b"name: t\nd_model: \x00\n", 2), (b"\x07name: t\n", 1)])
def test_control_character(tmp_path, content, line):
    p = write(tmp_path, "s.yaml", content)
    assert error(p).startswith(f"{_shown(p)}:{line}: character U+00")


def test_bom_and_crlf_accepted(tmp_path):
    p = write(tmp_path, "s.yaml", b"\xef\xbb\xbf" + BASE.replace("\n", "\r\n").encode())
    assert load_spec(p).d_model == 64
