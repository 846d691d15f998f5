"""Re-choosing a registered version's operating points without refitting it.

Every fitted :class:`CaseModel` keeps the calibrated out-of-fold predictions its thresholds were
chosen from, so another default target precision, other per-label targets or the other pooling
rule can be applied to the same fitted estimators in seconds, with no training data at
hand. :func:`rethreshold` does that and registers the result as a new version *derived from* the
one it started from:

- the parent version is never modified (its artifact is re-loaded and verified, and the change
  is made on that fresh copy), so a derived version can be rolled back like any other;
- the derived version's metadata names its parent and the settings it changed
  (``derived_from``), carries the parent's training-data identity (hash, name, record count)
  and has its own thresholds and held-out figures, recomputed by
  :meth:`CaseModel.choose_operating_points`; the parent's evaluation ``metrics`` are not copied
  (they were measured at the old thresholds);
- settings the caller leaves out keep the parent's values; ``label_precision``, when given,
  replaces the parent's overrides as a whole (``{}`` removes them all);
- a request that would change nothing (every setting equal to the parent's) is refused, and so is
  an override naming a target or label the model does not have, or a precision outside (0.5, 1);
- ``dry_run`` computes everything and registers nothing: the caller sees the coverage and
  precision each label would get before committing to them.

Pure with respect to its inputs: no database, no global state; the caller audits the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from classifiers.case_model import CaseModel
from classifiers.data import check_label_precision, check_target_precision
from classifiers.errors import DataError
from classifiers.registry import ModelRegistry


def _label_targets(
    per_target: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, float]]:
    """Per-label targets as plain ``{target: {label: float}}``, targets without any dropped (so
    that ``{}`` and ``{"queue": {}}`` are the same setting)."""
    return {
        str(t): {str(label): float(p) for label, p in per.items()}
        for t, per in (per_target or {}).items()
        if per
    }


@dataclass(frozen=True)
class OperatingPointSettings:
    """The parameters that decide a fitted model's thresholds (nothing else changes them)."""

    target_precision: float
    label_precision: dict[str, dict[str, float]]
    threshold_pooling: bool

    @classmethod
    def of(cls, model: CaseModel) -> OperatingPointSettings:
        return cls(
            target_precision=float(model.target_precision),
            label_precision=_label_targets(model.label_precision),
            threshold_pooling=bool(model.threshold_pooling),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_precision": self.target_precision,
            "label_precision": self.label_precision,
            "threshold_pooling": self.threshold_pooling,
        }


@dataclass(frozen=True)
class Rethresholded:
    """The outcome of :func:`rethreshold`. ``version`` is ``None`` for a dry run."""

    parent: str
    version: str | None
    activated: bool
    before: OperatingPointSettings
    after: OperatingPointSettings
    parent_points: dict[str, Any]
    points: dict[str, Any]

    def changed_labels(self) -> dict[str, list[str]]:
        """Per target, the labels whose threshold differs from the parent's."""
        out: dict[str, list[str]] = {}
        for target, view in self.points.items():
            old = self.parent_points[target]["labels"]
            changed = [
                label
                for label, stats in view["labels"].items()
                if stats["threshold"] != old[label]["threshold"]
            ]
            if changed:
                out[target] = changed
        return out

    def as_dict(self, *, activated: bool) -> dict[str, Any]:
        """The outcome as the API answers it and ``triage models rethreshold --json`` prints it
        (``activated`` is the caller's: activation goes with its audit event, not here)."""
        return {
            "parent": self.parent,
            "version": self.version,
            "activated": activated,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "changed_labels": self.changed_labels(),
            "parent_targets": self.parent_points,
            "targets": self.points,
        }

    def audit_payload(self, *, activated: bool, previous_active: str | None) -> dict[str, Any]:
        """What the audit trail records for a registered change (API, console and command
        line alike): versions, settings before and after, changed labels, held-out coverage
        before and after, whether it was activated and what was active before."""
        return {
            "version": self.version,
            "parent": self.parent,
            "activated": activated,
            "previous_active": previous_active,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "changed_labels": self.changed_labels(),
            "coverage": {
                t: {
                    "before": self.parent_points[t]["summary"]["coverage"],
                    "after": view["summary"]["coverage"],
                }
                for t, view in self.points.items()
            },
        }


def operating_point_view(model: CaseModel) -> dict[str, Any]:
    """Per target: ``summary`` (held-out accuracy, macro-F1, coverage and precision at the
    thresholds, out-of-fold) and ``labels`` (each label's threshold, target precision,
    validation precision and coverage, predictions seen, whether pooled). JSON-ready."""
    labels = model.thresholds_dict()
    return {t: {"summary": dict(model.validation_[t]), "labels": labels[t]} for t in model.targets}


def recorded_operating_points(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`operating_point_view`'s shape read from a version's registry metadata (which
    records the same thresholds and held-out figures), without loading the artifact."""
    thresholds = metadata.get("thresholds") or {}
    validation = metadata.get("validation") or {}
    return {
        t: {"summary": validation.get(t, {}), "labels": labels} for t, labels in thresholds.items()
    }


def parent_version(metadata: Mapping[str, Any]) -> str | None:
    """The version a version's operating points were re-chosen from (``None``: trained)."""
    derived = metadata.get("derived_from") or {}
    return derived.get("version")


def recorded_settings(metadata: Mapping[str, Any]) -> OperatingPointSettings:
    """The operating-point settings a version's registry metadata records (its ``params``)."""
    params = metadata.get("params") or {}
    return OperatingPointSettings(
        target_precision=float(params.get("target_precision", 0.95)),
        label_precision=_label_targets(params.get("label_precision")),
        # versions saved before pooling existed record no such parameter: they chose without it
        threshold_pooling=bool(params.get("threshold_pooling", False)),
    )


def _checked_settings(
    before: OperatingPointSettings,
    label_sets: Mapping[str, list[str]],
    target_precision: float | None,
    label_precision: Mapping[str, Mapping[str, float]] | None,
    threshold_pooling: bool | None,
) -> OperatingPointSettings:
    """``before`` with the given settings applied (``None``: keep), or :class:`DataError`."""
    if target_precision is not None:
        check_target_precision(target_precision)
    if label_precision is not None:
        check_label_precision(label_precision, label_sets)
    after = OperatingPointSettings(
        target_precision=before.target_precision
        if target_precision is None
        else float(target_precision),
        label_precision=before.label_precision
        if label_precision is None
        else _label_targets(label_precision),
        threshold_pooling=before.threshold_pooling
        if threshold_pooling is None
        else bool(threshold_pooling),
    )
    if after == before:
        raise DataError(
            "these are the version's own settings (target precision "
            f"{before.target_precision}, {len(before.label_precision)} per-label override "
            f"target(s), pooling {'on' if before.threshold_pooling else 'off'}): nothing would "
            "change; give another target precision, per-label targets or pooling rule"
        )
    return after


def rethreshold(
    registry: ModelRegistry,
    version: str,
    *,
    target_precision: float | None = None,
    label_precision: Mapping[str, Mapping[str, float]] | None = None,
    threshold_pooling: bool | None = None,
    activate: bool = False,
    dry_run: bool = False,
) -> Rethresholded:
    """Re-choose ``version``'s thresholds under new settings and register the result (module
    contract). Raises ``UnknownVersion`` / ``IntegrityError`` for a version that cannot be
    loaded and :class:`DataError` (with ``field``) for settings that are refused; nothing is
    written then. ``activate`` activates the new version (not with ``dry_run``)."""
    loaded = registry.load(version)
    model = loaded.model
    parent_points = operating_point_view(model)
    before = OperatingPointSettings.of(model)
    after = _checked_settings(
        before, model.label_sets(), target_precision, label_precision, threshold_pooling
    )
    model.set_params(
        target_precision=after.target_precision,
        label_precision=after.label_precision or None,
        threshold_pooling=after.threshold_pooling,
    )
    model.choose_operating_points()
    points = operating_point_view(model)
    new_version: str | None = None
    if not dry_run:
        meta = loaded.metadata
        new_version = registry.save(
            model,
            training_data_sha256=meta.get("training_data_sha256"),
            training_data_name=meta.get("training_data_name"),
            n_training_records=meta.get("n_training_records"),
            extra={
                "derived_from": {
                    "version": loaded.version,
                    "change": "operating_points",
                    "before": before.to_dict(),
                    "after": after.to_dict(),
                }
            },
            activate=activate,
        )
    return Rethresholded(
        parent=loaded.version,
        version=new_version,
        activated=new_version is not None and activate,
        before=before,
        after=after,
        parent_points=parent_points,
        points=points,
    )


def format_operating_points(
    points: Mapping[str, Any], before: Mapping[str, Any] | None = None
) -> str:
    """A readable table of :func:`operating_point_view`'s ``points`` (as ``triage models
    operating-points`` prints it); with ``before`` (the parent's view) each threshold, coverage
    and precision shows ``old -> new`` and a changed label is marked ``*``. A threshold above 1
    prints as ``never`` (the label always abstains)."""

    def num(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    def threshold(value: float) -> str:
        return "never" if value > 1.0 else f"{value:.3f}"

    def pair(old: str, new: str) -> str:
        return new if old == new else f"{old} -> {new}"

    lines: list[str] = []
    for target, view in points.items():
        summary = view["summary"]
        head = (
            f"{target} ({len(view['labels'])} labels): held-out coverage "
            f"{num(summary.get('coverage'))} at precision {num(summary.get('precision'))}"
        )
        if before is not None:
            was = before[target]["summary"]
            head += f" (was {num(was.get('coverage'))} at {num(was.get('precision'))})"
        lines.append(head)
        width = max(len("label"), *(len(label) for label in view["labels"]))
        lines.append(
            f"  {'label':<{width}}  target  threshold       coverage        precision       "
            "predicted  pooled"
        )
        for label, stats in view["labels"].items():
            old = None if before is None else before[target]["labels"][label]
            cells = []
            for key, fmt in (
                ("threshold", threshold),
                ("validation_coverage", num),
                ("validation_precision", num),
            ):
                new_text = fmt(stats[key])
                cells.append(new_text if old is None else pair(fmt(old[key]), new_text))
            mark = "*" if old is not None and old["threshold"] != stats["threshold"] else " "
            lines.append(
                f"{mark} {label:<{width}}  {stats['target_precision']:<6}  {cells[0]:<14}  "
                f"{cells[1]:<14}  {cells[2]:<14}  {stats['n_predicted']:>9}  "
                f"{'yes' if stats['pooled'] else 'no'}"
            )
    return "\n".join(lines)
