"""Validation messages a new user meets: every problem can be listed, enum typos get a did-you-mean,
a tab in YAML is named, an odd rotary_dim is reported in the field the user wrote."""

from __future__ import annotations

import pytest

from archc.errors import SpecError
from archc.loader import load_spec
from tests.conftest import run_cli

BAD = ["norm.kind=rms_norm", "mlp.activation=swiglu2", "n_layers=-1", "position.kind=rop"]


def _error(arg, sets=()) -> SpecError:
    with pytest.raises(SpecError) as e:
        load_spec(arg, list(sets))
    return e.value


def test_first_problem_says_how_to_see_the_rest():
    msg = str(_error("llama", BAD))
    assert "(and 3 more problems; `archc validate --all-errors` lists them)" in msg


def test_validate_all_errors_lists_every_problem(capsys):
    argv = ["validate", "llama", *sum((["--set", s] for s in BAD), []), "--all-errors"]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 4, err
    assert all(line.startswith("invalid --set ") for line in lines)
    for field in ("norm.kind", "mlp.activation", "n_layers", "position"):
        assert any(field in line for line in lines), field
    # without the flag: one line per file
    rc, _, err = run_cli(argv[:-1], capsys)
    assert rc == 2 and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "sets, hint",
    [(["norm.kind=rms_norm"], "did you mean 'rmsnorm'?"),
     (["mlp.activation=swiglu2"], "did you mean 'swiglu'?"),
     (["position.kind=rop"], "did you mean 'rope'?"),
     (["training.optimizer.kind=adam_w"], "did you mean 'adamw'?"),
     (["norm.placement=Pre"], "did you mean 'pre'?")],
)
def test_enum_typo_did_you_mean(sets, hint):
    assert hint in str(_error("llama", sets))


def test_no_did_you_mean_for_a_far_value():
    assert "did you mean" not in str(_error("llama", ["norm.kind=batchnorm2000xyz"]))


def test_tab_in_yaml_is_named(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("extends: llama\nattention:\n\tn_heads: 4\n")
    msg = str(_error(p))
    assert "t.yaml:3" in msg and "tab" in msg and "spaces" in msg and "cannot start any token" not in msg


def test_odd_rotary_dim_names_rotary_dim_not_the_fraction():
    msg = str(_error("llama", ["position.rotary_dim=63"]))
    assert "rotary_dim=63" in msg and "even" in msg and "rotary_fraction" not in msg
    # the fraction written by the user is still reported as the fraction
    msg = str(_error("llama", ["position.rotary_fraction=0.4921875"]))
    assert "rotary_fraction" in msg


def test_one_structural_change_is_singular(capsys):
    rc, out, _ = run_cli(["diff", "llama", "llama", "--set-b", "n_layers=31"], capsys)
    assert rc == 1
    assert "1 structural change" in out and "1 structural changes" not in out
