"""Retraining from reviewer feedback, with a not-worse gate before activation.

:func:`retrain` is a pure function of its inputs and the registry it is given (no database, no
global state): the triage layer loads base data and feedback rows, passes them in, and records
the returned :class:`RetrainResult` on the audit trail.

"Not worse" (all must hold, for every target, on the fixed evaluation set):
1. ``candidate.macro_f1 >= active.macro_f1 - f1_tolerance``;
2. ``candidate.oracle_coverage >= active.oracle_coverage - coverage_tolerance``, where
   oracle coverage is the share of evaluation cases a single confidence cut can label at the
   target precision (a threshold-free measure of how much the model can fill in safely);
3. when the candidate's own thresholds fill fields, their realized precision is not below
   ``min(target_precision, active realized precision) - precision_tolerance``.
With no active model the candidate is activated if it trains. The candidate is always saved in
the registry (activated or not) so the decision can be audited and reversed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import clone

from classifiers.case_model import CaseModel
from classifiers.evaluation import evaluate_model
from classifiers.features import Record
from classifiers.registry import ModelRegistry


@dataclass(frozen=True)
class RetrainResult:
    """What happened: both metric sets, the decision and why."""

    candidate_version: str
    active_version: str | None
    activated: bool
    reason: str
    candidate_metrics: dict[str, Any]
    active_metrics: dict[str, Any] | None
    n_base: int
    n_feedback: int
    checks: list[str] = field(default_factory=list)


def merge_feedback(
    base_records: Sequence[Record], feedback_records: Sequence[Record], id_key: str | None
) -> list[dict[str, Any]]:
    """Base rows plus feedback; with ``id_key`` a feedback row replaces the base row it names."""
    if id_key is None:
        return [dict(r) for r in base_records] + [dict(r) for r in feedback_records]
    replaced = {r.get(id_key) for r in feedback_records if r.get(id_key) is not None}
    kept = [dict(r) for r in base_records if r.get(id_key) not in replaced]
    return kept + [dict(r) for r in feedback_records]


def _compact(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Per-target headline figures (no confusion matrices) for the result and the audit row."""
    out = {}
    for target, m in metrics["targets"].items():
        cov = m["coverage_at_precision"]
        out[target] = {
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "ece": m["ece"],
            "coverage": cov["coverage"],
            "realized_precision": cov["realized_precision"],
            "oracle_coverage": cov["oracle_coverage"],
            "target_precision": cov["target_precision"],
        }
    return out


def not_worse(
    candidate: Mapping[str, Mapping[str, Any]],
    active: Mapping[str, Mapping[str, Any]],
    *,
    f1_tolerance: float = 0.005,
    coverage_tolerance: float = 0.0,
    precision_tolerance: float = 0.01,
) -> tuple[bool, list[str]]:
    """Apply the module's rule to compact metric sets; returns (ok, human-readable checks)."""
    ok = True
    checks: list[str] = []
    for target, cand in candidate.items():
        act = active.get(target)
        if act is None:
            checks.append(f"{target}: the active model does not predict it; nothing to compare")
            continue
        f1_ok = cand["macro_f1"] >= act["macro_f1"] - f1_tolerance
        cov_ok = cand["oracle_coverage"] >= act["oracle_coverage"] - coverage_tolerance
        floor = cand["target_precision"]
        if act["realized_precision"] is not None:
            floor = min(floor, act["realized_precision"])
        prec_ok = (
            cand["realized_precision"] is None
            or cand["realized_precision"] >= floor - precision_tolerance
        )
        checks.append(
            f"{target}: macro-F1 {cand['macro_f1']:.4f} vs {act['macro_f1']:.4f} "
            f"({'ok' if f1_ok else 'worse'}); coverage at precision {cand['oracle_coverage']:.4f}"
            f" vs {act['oracle_coverage']:.4f} ({'ok' if cov_ok else 'worse'}); realized "
            f"precision {_fmt(cand['realized_precision'])} vs floor {floor:.4f} "
            f"({'ok' if prec_ok else 'worse'})"
        )
        ok = ok and f1_ok and cov_ok and prec_ok
    return ok, checks


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def retrain(
    base_records: Sequence[Record],
    feedback_records: Sequence[Record],
    eval_records: Sequence[Record],
    registry: ModelRegistry,
    *,
    template: CaseModel | None = None,
    id_key: str | None = None,
    groups: Sequence[Any] | None = None,
    f1_tolerance: float = 0.005,
    coverage_tolerance: float = 0.0,
    precision_tolerance: float = 0.01,
    training_data_name: str | None = None,
    progress: Any = None,
) -> RetrainResult:
    """Train a candidate on base + feedback, compare it with the active model, maybe activate.

    ``template`` gives the candidate's parameters; by default the active model's parameters are
    reused (same targets, spec and operating-point settings), else ``CaseModel()``'s defaults.
    ``groups`` (one per merged training row) keeps near-duplicates in one validation fold.
    """
    active = registry.load() if registry.active_version() else None
    if template is not None:
        candidate = clone(template)
    elif active is not None:
        candidate = clone(active.model)
    else:
        candidate = CaseModel()
    training = merge_feedback(base_records, feedback_records, id_key)
    candidate.fit(training, groups=groups, progress=progress)
    targets = list(candidate.targets)
    candidate_metrics = _compact(evaluate_model(candidate, eval_records, targets=targets))
    active_metrics = None
    if active is not None:
        shared = [t for t in targets if t in active.model.estimators_]
        if shared:
            active_metrics = _compact(evaluate_model(active.model, eval_records, targets=shared))
    if active_metrics is None:
        activated, checks = True, ["no comparable active model"]
        reason = "activated: there was no active model to compare with"
    else:
        activated, checks = not_worse(
            candidate_metrics,
            active_metrics,
            f1_tolerance=f1_tolerance,
            coverage_tolerance=coverage_tolerance,
            precision_tolerance=precision_tolerance,
        )
        reason = (
            "activated: not worse than the active model on the evaluation set"
            if activated
            else "kept the active model: the candidate is worse on the evaluation set"
        )
    compared = None if active is None else active.version
    with registry.exclusive():
        # The fit took minutes: an admin may have activated or rolled back meanwhile, and
        # their choice is not what the candidate was compared with, so it is not replaced.
        now_active = registry.active_version()
        if activated and now_active != compared:
            activated, checks = False, [*checks, f"active version changed to {now_active}"]
            reason = (
                f"kept the active model: the active version changed to {now_active} while "
                f"retraining (the candidate was compared with {compared or 'no model'})"
            )
        version = registry.save(
            candidate,
            training_data_name=training_data_name,
            n_training_records=len(training),
            metrics={"evaluation": candidate_metrics},
            extra={
                "retrain": {
                    "n_base": len(base_records),
                    "n_feedback": len(feedback_records),
                    "decision": reason,
                    "checks": checks,
                }
            },
            activate=activated,
        )
    return RetrainResult(
        candidate_version=version,
        active_version=compared,
        activated=activated,
        reason=reason,
        candidate_metrics=candidate_metrics,
        active_metrics=active_metrics,
        n_base=len(base_records),
        n_feedback=len(feedback_records),
        checks=checks,
    )
