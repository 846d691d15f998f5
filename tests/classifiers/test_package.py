"""The package's lazy exports, and what importing the command line costs."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import classifiers


def test_every_public_name_resolves_to_its_defining_module() -> None:
    assert sorted(classifiers.__all__) == sorted(classifiers._MODULE_OF)
    for name in classifiers.__all__:
        module = importlib.import_module(classifiers._MODULE_OF[name])
        assert getattr(classifiers, name) is getattr(module, name), name
    assert set(classifiers.__all__) <= set(dir(classifiers))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = classifiers.no_such_name  # type: ignore[attr-defined]


def test_the_command_line_starts_without_the_model_libraries() -> None:
    # `triage --help`, `triage jobs list`, `triage audit verify`, ... must not pay for
    # scikit-learn, scipy, skops or the encoders: only the commands that use a model do
    heavy = ("sklearn", "skops", "scipy", "classifiers.case_model", "retrieval.embeddings")
    code = f"import sys, cli.main\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
