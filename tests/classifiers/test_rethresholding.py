"""Re-choosing a registered version's operating points: a derived version, the parent untouched,
settings refused before anything is written."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifiers.case_model import CaseModel
from classifiers.errors import DataError, UnknownVersion
from classifiers.registry import ModelRegistry
from classifiers.rethresholding import OperatingPointSettings, operating_point_view, rethreshold

TARGET = "triage_category"


@pytest.fixture
def registered(tmp_path: Path, bitext_model: CaseModel) -> tuple[ModelRegistry, str]:
    registry = ModelRegistry(tmp_path / "models", signing_key=b"k")
    version = registry.save(
        bitext_model,
        training_data_sha256="ab" * 32,
        training_data_name="bitext slice",
        n_training_records=540,
        metrics={"evaluation": {"x": 1}},
        activate=True,
    )
    return registry, version


def _thresholds(meta: dict[str, Any]) -> dict[str, float]:
    return {label: s["threshold"] for label, s in meta["thresholds"][TARGET].items()}


def test_a_derived_version_has_the_thresholds_the_new_settings_choose(
    registered: tuple[ModelRegistry, str], bitext_model: CaseModel, bitext_small: list[Any]
) -> None:
    registry, parent = registered
    parent_meta = registry.verify(parent)
    out = rethreshold(registry, parent, target_precision=0.8, threshold_pooling=False)

    assert out.parent == parent and out.version is not None and not out.activated
    assert out.before == OperatingPointSettings(0.95, {}, True)
    assert out.after == OperatingPointSettings(0.8, {}, False)
    # the same estimators, other thresholds: what re-choosing on a copy of the fitted model gives
    expected = copy.deepcopy(bitext_model).set_params(target_precision=0.8, threshold_pooling=False)
    expected.choose_operating_points()
    derived = registry.load(out.version).model
    assert derived.thresholds_dict() == expected.thresholds_dict()
    assert out.points == operating_point_view(expected)
    np.testing.assert_allclose(
        derived.predict_proba(bitext_small)[TARGET],
        bitext_model.predict_proba(bitext_small)[TARGET],
    )
    # a lower target opens labels: more held-out predictions are filled
    assert (
        out.points[TARGET]["summary"]["coverage"] > out.parent_points[TARGET]["summary"]["coverage"]
    )
    assert out.changed_labels()[TARGET]

    meta = registry.verify(out.version)  # signed with the registry's key and verified
    assert meta["derived_from"] == {
        "version": parent,
        "change": "operating_points",
        "before": {"target_precision": 0.95, "label_precision": {}, "threshold_pooling": True},
        "after": {"target_precision": 0.8, "label_precision": {}, "threshold_pooling": False},
    }
    assert meta["training_data_sha256"] == "ab" * 32
    assert meta["training_data_name"] == "bitext slice"
    assert meta["n_training_records"] == 540
    assert meta["metrics"] == {}  # the parent's were measured at its own thresholds
    assert meta["params"]["target_precision"] == 0.8
    assert meta["params"]["threshold_pooling"] is False
    assert meta["validation"][TARGET] == out.points[TARGET]["summary"]

    # the parent is untouched and still active
    assert registry.verify(parent) == parent_meta
    assert registry.active_version() == parent
    assert _thresholds(parent_meta) != _thresholds(meta)


def test_dry_run_registers_nothing(registered: tuple[ModelRegistry, str]) -> None:
    registry, parent = registered
    out = rethreshold(registry, parent, target_precision=0.9, dry_run=True)
    assert out.version is None and not out.activated
    assert [m["version"] for m in registry.versions()] == [parent]
    assert out.points[TARGET]["labels"].keys() == out.parent_points[TARGET]["labels"].keys()


def test_activate_then_roll_back_to_the_parent(registered: tuple[ModelRegistry, str]) -> None:
    registry, parent = registered
    out = rethreshold(registry, parent, target_precision=0.9, activate=True)
    assert out.activated and registry.active_version() == out.version
    assert registry.rollback() == parent


def test_label_precision_replaces_the_parents_overrides(tmp_path: Path) -> None:
    from tests.classifiers.conftest import synthetic_cases

    model = CaseModel(targets=("queue",), cv=3, label_precision={"queue": {"finance": 0.99}}).fit(
        synthetic_cases(200, seed=3)
    )
    registry = ModelRegistry(tmp_path)
    parent = registry.save(model)

    kept = rethreshold(registry, parent, target_precision=0.9, dry_run=True)
    assert kept.after.label_precision == {"queue": {"finance": 0.99}}
    assert kept.points["queue"]["labels"]["finance"]["target_precision"] == 0.99
    assert kept.points["queue"]["labels"]["claims"]["target_precision"] == 0.9

    cleared = rethreshold(registry, parent, label_precision={}, dry_run=True)
    assert cleared.after == OperatingPointSettings(0.95, {}, True)
    assert cleared.points["queue"]["labels"]["finance"]["target_precision"] == 0.95


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({}, None, "nothing would change"),
        ({"target_precision": 0.95, "threshold_pooling": True}, None, "nothing would change"),
        ({"target_precision": 1.0}, "target_precision", "between 0.5 and 1"),
        ({"target_precision": 0.5}, "target_precision", "between 0.5 and 1"),
        ({"label_precision": {TARGET: {"NO_SUCH": 0.9}}}, "label_precision", "'NO_SUCH'"),
        ({"label_precision": {"queue": {"x": 0.9}}}, "label_precision", "not a label column"),
        ({"label_precision": {TARGET: {"order": 1.2}}}, "label_precision", "between 0.5 and 1"),
    ],
)
def test_refused_settings_write_nothing(
    registered: tuple[ModelRegistry, str], kwargs: dict[str, Any], field: str | None, words: str
) -> None:
    registry, parent = registered
    with pytest.raises(DataError, match=words) as caught:
        rethreshold(registry, parent, **kwargs)
    assert caught.value.field == field
    assert [m["version"] for m in registry.versions()] == [parent]


def test_unknown_version(registered: tuple[ModelRegistry, str]) -> None:
    registry, _ = registered
    with pytest.raises(UnknownVersion):
        rethreshold(registry, "v20990101T000000000000Z-deadbeef", target_precision=0.9)


def test_an_artifact_from_before_pooling_can_turn_it_on(
    tmp_path: Path, bitext_model: CaseModel
) -> None:
    old = copy.deepcopy(bitext_model).set_params(threshold_pooling=False)
    old.choose_operating_points()
    del old.__dict__["threshold_pooling"]  # as saved before the parameter existed
    registry = ModelRegistry(tmp_path)
    parent = registry.save(old)
    assert "threshold_pooling" not in registry.load(parent).model.__dict__

    out = rethreshold(registry, parent, threshold_pooling=True)
    assert out.before.threshold_pooling is False and out.after.threshold_pooling is True
    assert out.version is not None
    derived = registry.load(out.version).model
    assert derived.threshold_pooling is True
    assert derived.thresholds_dict() == bitext_model.thresholds_dict()


def test_rethresholding_equals_training_at_those_settings(
    tmp_path: Path, bitext_model: CaseModel, bitext_small: list[Any]
) -> None:
    """The point of the operation: the same thresholds a full refit at the new settings would
    choose (fitting is deterministic, so the out-of-fold predictions are the same)."""
    registry = ModelRegistry(tmp_path)
    parent = registry.save(bitext_model)
    out = rethreshold(
        registry, parent, target_precision=0.85, label_precision={TARGET: {"order": 0.99}}
    )
    refit = CaseModel(
        spec=bitext_model.spec,
        targets=(TARGET,),
        cv=3,
        target_precision=0.85,
        label_precision={TARGET: {"order": 0.99}},
    ).fit(bitext_small)
    assert out.version is not None
    derived = registry.load(out.version).model.thresholds_dict()[TARGET]
    expected = refit.thresholds_dict()[TARGET]
    assert derived.keys() == expected.keys()
    for label, point in derived.items():
        # two fits agree to rounding (summation order differs between runs), not bit for bit
        assert point["threshold"] == pytest.approx(expected[label]["threshold"], abs=1e-3)
        rest = {k: v for k, v in point.items() if k != "threshold"}
        assert rest == {k: v for k, v in expected[label].items() if k != "threshold"}, label
    summary = out.points[TARGET]["summary"]
    assert summary == pytest.approx(refit.validation_[TARGET], abs=1e-3)
