"""archc.runner.providers.ort_ops_library: the archc.ort_ops metadata must name a file in the model folder."""

from __future__ import annotations

import pytest

from archc.errors import UserError
from archc.model_dir import META_ORT_OPS
from archc.runner.providers import ort_ops_library


@pytest.mark.parametrize("name", ["..", ".", "", "sub/x.so", "/etc/x.so"])
def test_not_a_file_name_is_refused_as_such(tmp_path, name):
    # '..' passed the check (Path('..').name == '..') and was reported as a missing library
    with pytest.raises(UserError, match="not a file name in the model folder"):
        ort_ops_library(tmp_path / "model.onnx", {META_ORT_OPS: name})


def test_a_missing_library_is_named(tmp_path):  # the control: a plain name passes the check, then is missing
    with pytest.raises(UserError, match="x.so: missing"):
        ort_ops_library(tmp_path / "model.onnx", {META_ORT_OPS: "x.so"})


def test_no_metadata_no_library(tmp_path):
    assert ort_ops_library(tmp_path / "model.onnx", {}) is None
