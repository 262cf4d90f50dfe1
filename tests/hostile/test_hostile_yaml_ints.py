"""Integers in a spec (file or --set) read as written. YAML 1.1, which PyYAML implements, also reads a leading zero as
octal and colons as base 60: `n_layers: 012` built 10 layers and `--set n_layers=1:00` 60, without a word (the
control below shows PyYAML's own SafeLoader doing so). Such text now stays a string, so an integer field refuses
it in one line; decimal (with _), 0x and 0b integers read as before, and every library spec reads the same."""

from __future__ import annotations

import pytest
import yaml

from archc.loader import _Loader, _PyLoader, library_specs, load_spec
from hostile_util import in_process, refused


@pytest.mark.parametrize("text, yaml11", [("012", 10), ("1:00", 60), ("-010", -8)])
def test_octal_and_base_60_are_refused(tmp_path, capsys, text, yaml11):
    assert yaml.safe_load(f"n: {text}")["n"] == yaml11  # the control: what YAML 1.1 made of it
    for loader in (_Loader, _PyLoader):
        assert yaml.load(f"n: {text}", Loader=loader)["n"] == text  # a string now
    refused(in_process(["validate", "llama", "--set", f"n_layers={text}"], capsys), f"--set n_layers={text}", f"(got '{text}')")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: llama\nn_layers: {text}\n")
    refused(in_process(["validate", spec], capsys), "n_layers", f"(got '{text}')")


@pytest.mark.parametrize("text, value", [("12", 12), ("1_000", 1000), ("0x10", 16), ("0b11", 3), ("+7", 7), ("0", 0), ("-3", -3)])
def test_other_integers_read_as_before(text, value):
    assert yaml.safe_load(f"n: {text}")["n"] == value  # YAML 1.1's reading, unchanged for these
    for loader in (_Loader, _PyLoader):
        assert yaml.load(f"n: {text}", Loader=loader)["n"] == value


def test_library_specs_read_the_same_as_with_yaml_1_1_integers():
    """Every library spec as _Loader reads it equals its reading with YAML 1.1's integers (SafeLoader plus archc's
    float rule): no library spec relied on octal or base 60."""

    class Yaml11Ints(yaml.SafeLoader):
        pass

    for first, rules in _PyLoader.yaml_implicit_resolvers.items():
        for tag, rx in rules:
            if tag.endswith(":float") and (tag, rx) not in yaml.SafeLoader.yaml_implicit_resolvers.get(first, []):
                Yaml11Ints.add_implicit_resolver(tag, rx, [first])
    specs = list(library_specs())
    assert len(specs) >= 10
    for path in specs:
        text = path.read_text()
        assert yaml.load(text, Loader=_Loader) == yaml.load(text, Loader=Yaml11Ints), path
        load_spec(path)


@pytest.mark.parametrize("text, yaml11", [("2:46:40.0", 10000.0), ("-1:30.5", -90.5)])
def test_base_60_floats_are_refused(tmp_path, capsys, text, yaml11):
    """YAML 1.1's float rule read colons as base 60 too: position.theta=2:46:40.0 was a rope theta of 10000.0."""
    assert yaml.safe_load(f"x: {text}")["x"] == yaml11  # the control: what YAML 1.1 made of it
    for loader in (_Loader, _PyLoader):
        assert yaml.load(f"x: {text}", Loader=loader)["x"] == text  # a string now
    refused(in_process(["validate", "llama", "--set", f"position.theta={text}"], capsys), "position.theta", f"(got '{text}')")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: llama\nposition: {{kind: rope, theta: {text}, style: half}}\n")
    refused(in_process(["validate", spec], capsys), "theta", f"(got '{text}')")


@pytest.mark.parametrize("text, value", [("1.5", 1.5), ("1e-5", 1e-5), ("1.0e-05", 1e-5), ("-2.", -2.0), (".5", 0.5), ("1_0.5", 10.5),
                                         ("+.inf", float("inf")), ("-.inf", float("-inf"))])
def test_other_floats_read_as_before(text, value):
    for loader in (_Loader, _PyLoader):
        assert yaml.load(f"x: {text}", Loader=loader)["x"] == value
    assert yaml.load("x: .nan", Loader=_Loader)["x"] != yaml.load("x: .nan", Loader=_Loader)["x"]
