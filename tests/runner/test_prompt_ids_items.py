"""--prompt-ids items (`archc run`, `archc generate-tp` share the parser): an empty item is refused with one
line naming --prompt-ids, exit 2, before any model is opened. It was skipped, so "1,,2" ran the prompt 1,2
(the id the user meant between the commas silently gone). Expected ids below are written by hand."""

from __future__ import annotations

import pytest

from archc.commands.onnx_cmds import _parse_ids
from archc.errors import UserError
from conftest import run_cli


@pytest.mark.parametrize("value, item", [("1,,2", 2), ("1,2,", 3), (",1", 1), ("1, ,2", 2), (",", 1)])
def test_an_empty_item_is_refused_naming_the_argument(tmp_path, capsys, value, item):
    (tmp_path / "m").mkdir()  # no model.onnx: the ids are checked first, so the message is about them
    rc, out, err = run_cli(["run", str(tmp_path / "m"), "--prompt-ids", value, "--device", "cpu"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err + out, err
    assert lines[0].startswith(f"error: --prompt-ids {value!r}: item {item} is empty"), lines[0]


def test_well_formed_ids_still_reach_the_model(tmp_path, capsys):
    """Negative control: the same command with good ids gets past the parser (to the missing model)."""
    (tmp_path / "m").mkdir()
    rc, _, err = run_cli(["run", str(tmp_path / "m"), "--prompt-ids", "1, 2", "--device", "cpu"], capsys)
    assert rc == 2 and "no model.onnx" in err and "--prompt-ids" not in err, err


def test_parsed_ids():
    assert _parse_ids(["1,2,3", " 4 , 5 ", "0", "-1"]) == [[1, 2, 3], [4, 5], [0], [-1]]  # -1: check_prompts names the vocabulary
    assert _parse_ids([""]) == [[]]  # no ids at all: check_prompts' "needs at least one token id"


@pytest.mark.parametrize("value", ["1 2", "1_0", "+1", "0x10", "1.0", "\u0661", "9" * 5000])
def test_what_int_would_stretch_to_read_is_refused(value):
    """int() reads "1_0" as 10 and Arabic-Indic digits as digits; "1 2" lost its space and read as 12."""
    with pytest.raises(UserError) as e:
        _parse_ids([value])
    assert str(e.value).startswith("--prompt-ids ") and "integer token ids" in str(e.value)


def test_a_long_value_is_quoted_in_part_in_either_refusal():
    """Both refusals quote the value as far as its first 80 characters: the empty-item one echoed all of it
    (a 10,000-character line for 5,000 ids with one empty)."""
    from archc.commands.onnx_cmds import _parse_ids

    for value in ["1," * 5000 + ",2", "1;" * 5000]:
        with pytest.raises(UserError) as e:
            _parse_ids([value])
        assert len(str(e.value)) < 300 and str(e.value).startswith("--prompt-ids '1")
