"""Classifiers: calibrated, abstaining case classifiers, their evaluation and model registry.

Public API (what the triage pipeline, the CLI and the API use):
- :class:`CaseModel` predicts several targets (category, queue, priority) for flat case records
  and returns ``contracts.suggestion.Prediction`` objects; :data:`CASE_FEATURE_SPEC` describes
  the case record, :class:`FeatureSpec` any other record shape.
- :func:`evaluate_model` / :func:`write_report` measure a model on labelled records.
- :class:`ModelRegistry` stores verified, versioned skops artifacts with activate/rollback.
- :func:`retrain` trains on base data plus reviewer feedback and activates only if not worse.
- :func:`load_records` / :func:`parse_records` / :func:`validate_training_data` read labelled
  CSV/JSONL files (from disk or an upload); :func:`align_columns` maps a file's columns onto a
  model's.
This package imports nothing of ours except ``contracts``.
"""

from classifiers.case_model import CASE_TARGETS, DEFAULT_CLASS_WEIGHT, CaseModel, ClassWeight
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
from classifiers.operating_points import ABSTAIN_REASONS
from classifiers.registry import LoadedModel, ModelRegistry, open_model
from classifiers.retrain import RetrainResult, retrain

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
    "RecordFeaturizer",
    "RegistryError",
    "RetrainResult",
    "UnknownVersion",
    "align_columns",
    "embed_texts",
    "evaluate_model",
    "load_records",
    "open_model",
    "parse_label_precision",
    "parse_records",
    "retrain",
    "set_embedder",
    "set_word_splitter",
    "unlabelled_targets",
    "validate_training_data",
    "write_report",
]
