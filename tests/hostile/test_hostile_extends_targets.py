"""`extends:` naming something that is not a regular file (a directory, a FIFO, a character device) is one line naming
the extending file, its line and field, what the target is and the fix, exit 2. The read's own line for a directory
('adir: is a directory, not a file') named neither the file whose extends led there nor what to give. And a compiled
model directory whose spec.yaml is a dangling link is reported as that link, not as 'directory has no spec.yaml'.
Negative control: extends of a regular spec file still loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile_util import in_process, refused

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("make, target, kind", [
    (lambda t: (t / "adir").mkdir(), "adir", "a directory"),
    (lambda t: os.mkfifo(t / "fifo"), "fifo", "a FIFO (named pipe)"),
    (lambda t: None, "/dev/zero", "a character device"),
])
def test_extends_of_a_non_file_names_the_extending_file(tmp_path, capsys, make, target, kind):
    make(tmp_path)
    spec = tmp_path / "child.yaml"
    spec.write_text(f"# a comment\nextends: {target}\nn_layers: 2\n")
    for command in ("validate", "show"):
        refused(in_process([command, spec], capsys), f"{spec}:2: extends: extends target '{target}' is {kind}; give a path to a spec file")


def test_extends_of_a_spec_file_still_loads(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text((ROOT / "specs" / "llama.yaml").read_text())
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nn_layers: 2\n")
    rc, out, err = in_process(["validate", tmp_path / "child.yaml"], capsys)
    assert rc == 0, err


def test_a_model_directory_with_a_dangling_spec_link_names_the_link(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "spec.yaml").symlink_to("nowhere.yaml")
    refused(in_process(["show", tmp_path / "m"], capsys), f"{tmp_path / 'm' / 'spec.yaml'}: no such file")
    (tmp_path / "e").mkdir()  # control: a directory with nothing there keeps its message
    refused(in_process(["show", tmp_path / "e"], capsys), "directory has no spec.yaml")
