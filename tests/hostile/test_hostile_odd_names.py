"""Odd names from the hostile sweep of the light commands: a spec path with a byte that is not UTF-8 (os.fsdecode
makes it a surrogate, which one_line escapes) was named twice ('bad\\udcff.yaml: bad\\udcff.yaml: no such file': the
prefix removed before SpecError adds the name back was the unescaped one); a --draw path without a suffix was
said to have "the suffix '.'". Negative controls: a plain missing name is named once, a known suffix still draws."""

from __future__ import annotations

import os

import pytest

from hostile_util import in_process, refused


@pytest.mark.parametrize("command", ["validate", "show"])
def test_an_undecodable_name_is_named_once(tmp_path, capsys, command):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff.yaml")
    line = refused(in_process([command, name], capsys), "no such file")
    assert line.count("bad\\udcff.yaml") == 1, line
    plain = refused(in_process([command, tmp_path / "plain.yaml"], capsys), "no such file")
    assert plain.count("plain.yaml") == 1, plain


def test_draw_path_without_a_suffix(tmp_path, capsys):
    line = refused(in_process(["diff", "llama", "gpt2", "--draw", tmp_path / "picture"], capsys))
    assert "a name without a suffix" in line and "'.'" not in line, line
    refused(in_process(["diff", "llama", "gpt2", "--draw", tmp_path / "p.foo"], capsys), "the suffix '.foo'")
    rc, _, err = in_process(["diff", "llama", "gpt2", "--draw", tmp_path / "p.mmd"], capsys)
    assert rc in (0, 1) and (tmp_path / "p.mmd").exists(), err  # diff exits 1 when the specs differ
