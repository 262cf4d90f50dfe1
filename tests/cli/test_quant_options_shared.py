"""compile, bench and show take the same --quant options (archc.commands.quant_options): each command is given the
same values and a spec that does not exist, which every one of them reads only after checking its options. So a
value a command accepts reaches the spec's error, and a value it refuses is the option's one line, before the spec.
The expected outcome of each case is written here by hand from the options' documented ranges (not read from
quant_options); show had its own copy, which took --quant-block-size 48 without --quant and had no
--quant-accuracy-level or --quant-method."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_cli

SPEC = "no-such-spec-7f3a"


def _outcome(command: str, args: list[str], tmp_path, capsys) -> str:
    extra = {"compile": ["-o", str(tmp_path / "out"), "--dtype", "fp32"], "bench": ["--dtype", "fp32", "--device", "cpu"],
             "show": []}[command]
    rc, out, err = run_cli([command, SPEC, *extra, *args], capsys)
    assert rc == 2 and "Traceback" not in out + err, (command, rc, out, err)
    if SPEC in err:
        return "accepted"
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(lines) == 1 and len(errors) == 1, err
    return re.sub(r" \(see `.* --help`\)$", "", errors[0])  # a usage error names its command's --help


ACCEPTED = [
    [],
    ["--quant", "none"],
    ["--quant", "int4"],
    ["--quant", "int8", "--quant-block-size", "128", "--quant-scheme", "asymmetric", "--quant-accuracy-level", "4",
     "--quant-head", "--quant-method", "search"],
    ["--quant", "int4", "--quant-block-size", "16", "--quant-accuracy-level", "0"],
]
REFUSED = [
    (["--quant", "int3"], "--quant int3"),
    (["--quant", "int4", "--quant-scheme", "skewed"], "--quant-scheme skewed"),
    (["--quant", "int4", "--quant-block-size", "48"], "--quant-block-size 48"),
    (["--quant-block-size", "48"], "--quant-block-size 48"),  # checked without --quant too
    (["--quant", "int4", "--quant-block-size", "8"], "--quant-block-size 8"),
    (["--quant", "int4", "--quant-accuracy-level", "5"], "--quant-accuracy-level 5"),
    (["--quant-method", "search"], "--quant-method search"),
    (["--quant", "int4", "--quant-method", "gptq"], "--quant-method gptq"),
    (["--quant", "int4", "--quant-block-size", "abc"], "--quant-block-size"),
]


@pytest.mark.parametrize("args", ACCEPTED, ids=lambda a: " ".join(a) or "defaults")
def test_the_three_commands_accept_the_same_values(args, tmp_path, capsys):
    assert [_outcome(c, args, tmp_path, capsys) for c in ("compile", "bench", "show")] == ["accepted"] * 3


@pytest.mark.parametrize("args, says", REFUSED, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_the_three_commands_refuse_the_same_values_with_the_same_line(args, says, tmp_path, capsys):
    outcomes = [_outcome(c, args, tmp_path, capsys) for c in ("compile", "bench", "show")]
    assert outcomes[0] != "accepted" and says in outcomes[0], outcomes
    assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0], outcomes


def test_show_help_is_compiles():
    """The same option names and help text (click's own parameter objects of the two commands)."""
    import typer.main

    from archc.cli import app

    group = typer.main.get_command(app)
    ctx_params = {name: {p.name: (tuple(p.opts), p.help) for p in group.commands[name].params if p.name.startswith("quant")}
                  for name in ("compile", "bench", "show")}
    assert len(ctx_params["compile"]) == 6
    assert ctx_params["show"] == ctx_params["compile"] == ctx_params["bench"]
