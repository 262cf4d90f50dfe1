"""archc.runner is a package (providers, session, steppers, sampling, placement). A monkeypatch works only
where the code reads the name: the package's re-exports are copies bound at import. So the patch points
that are not public API are not re-exported, and a patch aimed at the package fails loudly instead of
changing nothing; the one patched public name (choose_providers) is checked by test_runner_providers.py,
whose assertions fail when its patch does not land; generate's reading of steppers.GENERATE_LOGITS_START by
test_logits_start.py::test_generate_feeds_minus_one_and_keeps_its_tokens (its negative control)."""

from __future__ import annotations

import pytest

import archc.runner
from archc.errors import UserError
from archc.runner import providers, session


@pytest.mark.parametrize("name", ["FULL_LOGITS_LIMIT", "GENERATE_LOGITS_START", "_session", "_ort"])
def test_private_patch_points_are_not_reexported(name, monkeypatch):
    with pytest.raises(AttributeError):
        monkeypatch.setattr(archc.runner, name, None)


def test_reexports_are_the_modules_objects():
    assert archc.runner.Session is session.Session and archc.runner.open_session is providers.open_session
    assert archc.runner.choose_providers is providers.choose_providers


def _session(vocab: int) -> session.Session:
    s = session.Session.__new__(session.Session)
    s.model_dir, s.vocab, s.logits, s.has_logits_start = "out/m", vocab, "all", True
    return s


def test_the_logits_limit_is_read_where_it_is_patched(monkeypatch):
    s = _session(10)
    s.check_logits_size(2, 5)  # negative control: 100 elements, far below the real limit
    monkeypatch.setattr(session, "FULL_LOGITS_LIMIT", 100)
    with pytest.raises(UserError, match="reach 100"):
        s.check_logits_size(2, 5)
    s.check_logits_size(1, 5)
    s.check_logits_size(2, 5, -1)  # the last position only: 20 elements

