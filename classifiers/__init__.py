"""Classifiers: calibrated, abstaining case classifiers, their evaluation and model registry.

Public API (what the triage pipeline, the CLI and the API use):
- :class:`CaseModel` predicts several targets (category, queue, priority) for flat case records
  and returns ``contracts.suggestion.Prediction`` objects; :data:`CASE_FEATURE_SPEC` describes
  the case record, :class:`FeatureSpec` any other record shape.
- :func:`evaluate_model` / :func:`write_report` measure a model on labelled records.
- :class:`ModelRegistry` stores verified, versioned skops artifacts with activate/rollback.
- :func:`retrain` trains on base data plus reviewer feedback and activates only if not worse.
- :func:`rethreshold` re-chooses a version's operating points (target precisions, pooling)
  without refitting and registers the result as a derived version.
- :func:`load_records` / :func:`parse_records` / :func:`validate_training_data` read labelled
  CSV/JSONL files (from disk or an upload); :func:`align_columns` maps a file's columns onto a
  model's.
This package imports nothing of ours except ``contracts``.

Names are imported on first use (PEP 562), so that ``import classifiers.options`` or
``classifiers.errors`` does not pay for scikit-learn, scipy and skops: the command line's
start-up (``triage --help``, ``triage jobs list``) stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from classifiers.case_model import (
        CASE_TARGETS,
        CaseModel,
    )
    from classifiers.data import (
        load_records,
        parse_label_precision,
        parse_records,
        validate_training_data,
    )
    from classifiers.errors import (
        ClassifierError,
        DataError,
        IntegrityError,
        RegistryError,
        SignatureError,
        UnknownVersion,
    )
    from classifiers.evaluation import (
        align_columns,
        evaluate_model,
        unlabelled_targets,
        write_report,
    )
    from classifiers.features import (
        CASE_FEATURE_SPEC,
        FeatureSpec,
        RecordFeaturizer,
        embed_texts,
        set_embedder,
        set_word_splitter,
    )
    from classifiers.operating_points import (
        ABSTAIN_REASONS,
    )
    from classifiers.options import (
        DEFAULT_CLASS_WEIGHT,
        ClassWeight,
    )
    from classifiers.registry import (
        LoadedModel,
        ModelRegistry,
        open_model,
    )
    from classifiers.rethresholding import (
        OperatingPointSettings,
        Rethresholded,
        format_operating_points,
        operating_point_view,
        parent_version,
        recorded_operating_points,
        recorded_settings,
        rethreshold,
    )
    from classifiers.retraining import (
        RetrainResult,
        retrain,
    )

_MODULE_OF: dict[str, str] = {
    "CASE_TARGETS": "classifiers.case_model",
    "CaseModel": "classifiers.case_model",
    "DEFAULT_CLASS_WEIGHT": "classifiers.options",
    "ClassWeight": "classifiers.options",
    "load_records": "classifiers.data",
    "parse_label_precision": "classifiers.data",
    "parse_records": "classifiers.data",
    "validate_training_data": "classifiers.data",
    "ClassifierError": "classifiers.errors",
    "DataError": "classifiers.errors",
    "IntegrityError": "classifiers.errors",
    "RegistryError": "classifiers.errors",
    "SignatureError": "classifiers.errors",
    "UnknownVersion": "classifiers.errors",
    "align_columns": "classifiers.evaluation",
    "evaluate_model": "classifiers.evaluation",
    "unlabelled_targets": "classifiers.evaluation",
    "write_report": "classifiers.evaluation",
    "CASE_FEATURE_SPEC": "classifiers.features",
    "FeatureSpec": "classifiers.features",
    "RecordFeaturizer": "classifiers.features",
    "embed_texts": "classifiers.features",
    "set_embedder": "classifiers.features",
    "set_word_splitter": "classifiers.features",
    "ABSTAIN_REASONS": "classifiers.operating_points",
    "LoadedModel": "classifiers.registry",
    "ModelRegistry": "classifiers.registry",
    "open_model": "classifiers.registry",
    "OperatingPointSettings": "classifiers.rethresholding",
    "Rethresholded": "classifiers.rethresholding",
    "format_operating_points": "classifiers.rethresholding",
    "operating_point_view": "classifiers.rethresholding",
    "parent_version": "classifiers.rethresholding",
    "recorded_operating_points": "classifiers.rethresholding",
    "recorded_settings": "classifiers.rethresholding",
    "rethreshold": "classifiers.rethresholding",
    "RetrainResult": "classifiers.retraining",
    "retrain": "classifiers.retraining",
}

__all__ = [
    "ABSTAIN_REASONS",
    "CASE_FEATURE_SPEC",
    "CASE_TARGETS",
    "DEFAULT_CLASS_WEIGHT",
    "CaseModel",
    "ClassWeight",
    "ClassifierError",
    "DataError",
    "FeatureSpec",
    "IntegrityError",
    "LoadedModel",
    "ModelRegistry",
    "OperatingPointSettings",
    "RecordFeaturizer",
    "RegistryError",
    "Rethresholded",
    "RetrainResult",
    "SignatureError",
    "UnknownVersion",
    "align_columns",
    "embed_texts",
    "evaluate_model",
    "format_operating_points",
    "load_records",
    "open_model",
    "operating_point_view",
    "parent_version",
    "parse_label_precision",
    "parse_records",
    "recorded_operating_points",
    "recorded_settings",
    "rethreshold",
    "retrain",
    "set_embedder",
    "set_word_splitter",
    "unlabelled_targets",
    "validate_training_data",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access and cache the value here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'classifiers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
