"""Fixtures for the policy layer tests: the shipped default policy, loaded once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policies import DEFAULT_POLICY_DIR, PolicySet, load_default_policy


@pytest.fixture(scope="session")
def policy() -> PolicySet:
    return load_default_policy()


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    """A writable copy of the default bundle, for tests that break it on purpose."""
    target = tmp_path / "bundle"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    return target
