"""Evaluation of a fitted :class:`CaseModel` on labelled records, and the written report.

Contract of :func:`evaluate_model` (the JSON that ``triage evaluate --json`` prints):
- ``targets``: ``{target: metrics}``; the first target's metrics are also copied to the top
  level so a single-label evaluation reads ``accuracy``, ``macro_f1``, ``per_class``,
  ``coverage_at_precision``, ``ece`` directly.
- ``accuracy``/``macro_f1``/``per_class`` are for the top label, thresholds ignored.
- ``coverage_at_precision`` applies the model's own per-label thresholds: ``coverage`` is the
  share of cases that got a label (not abstained), ``realized_precision`` the accuracy on those;
  ``validation_precision``/``validation_coverage`` are what the same thresholds scored on the
  held-out folds at training time, and ``drift`` is true when the realized precision fell below
  the target or below the validation precision by more than ``drift_tolerance``.
  ``oracle_coverage`` is the largest coverage any single global threshold reaches on this data
  at the target precision (what a perfectly transferred operating point would give).
- ``ece``: expected calibration error of the top-label confidence, 15 equal-width bins.
- ``calibration``: which way the confidence errs on this data: ``mean_confidence`` (top-label),
  ``gap`` (mean confidence minus accuracy) and ``reading``: ``over-confident`` when the gap
  exceeds ``drift_tolerance``, ``under-confident`` below minus it, else ``calibrated``. ECE
  says how far the probabilities are off, not which way; over-confidence on new data is the
  case that auto-fills wrong fields.
- Labels the model never saw count as errors (they cannot be predicted).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from classifiers.case_model import CaseModel, label_of
from classifiers.data import validate_training_data
from classifiers.errors import DataError
from classifiers.features import Record
from classifiers.operating_points import decide_batch

ECE_BINS = 15


def calibration_reading(
    mean_confidence: float, accuracy: float, tolerance: float
) -> dict[str, Any]:
    """Which way the top-label confidence errs (see the module contract's ``calibration``)."""
    gap = mean_confidence - accuracy
    if gap > tolerance:
        reading = "over-confident"
    elif gap < -tolerance:
        reading = "under-confident"
    else:
        reading = "calibrated"
    return {"mean_confidence": mean_confidence, "gap": gap, "reading": reading}


def calibration_sentence(calibration: dict[str, Any], accuracy: float) -> str:
    """One plain sentence on the ``calibration`` figures, for the table and the report."""
    points = abs(calibration["gap"]) * 100
    head = f"mean confidence {calibration['mean_confidence']:.4f} against accuracy {accuracy:.4f}"
    if calibration["reading"] == "over-confident":
        return (
            f"{head}: over-confident by {points:.1f} points (its probabilities read higher than "
            "they turn out on this data; expect the operating points' precision to fall short)"
        )
    if calibration["reading"] == "under-confident":
        return (
            f"{head}: under-confident by {points:.1f} points (it is right more often than it "
            "says; the operating points abstain more than they need to)"
        )
    return f"{head}: calibrated within {calibration['gap']:+.4f}"


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return 0.0
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total / len(confidence))


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float]]:
    bins = np.minimum((np.asarray(confidence) * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            out.append(
                {
                    "lower": b / n_bins,
                    "upper": (b + 1) / n_bins,
                    "count": int(mask.sum()),
                    "confidence": float(np.mean(confidence[mask])),
                    "accuracy": float(np.mean(correct[mask])),
                }
            )
    return out


def oracle_coverage(confidence: np.ndarray, correct: np.ndarray, precision: float) -> float:
    """Largest share of cases kept by one confidence cut with precision >= ``precision``."""
    if len(confidence) == 0:
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    cum = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(cum >= precision)
    return 0.0 if len(ok) == 0 else float((ok.max() + 1) / len(order))


def evaluate_target(
    model: CaseModel,
    target: str,
    proba: np.ndarray,
    y_true: Sequence[str],
    ood: np.ndarray,
    drift_tolerance: float = 0.02,
) -> dict[str, Any]:
    """Metrics for one target given the model's probabilities for the labelled rows."""
    classes = [str(c) for c in model.classes_[target]]
    y = np.array(y_true, dtype=object)
    pred_idx = proba.argmax(axis=1)
    pred = np.array([classes[i] for i in pred_idx], dtype=object)
    correct = pred == y
    accuracy = float(correct.mean())
    conf = proba.max(axis=1)
    all_labels = sorted(set(classes) | set(y.tolist()))
    prec, rec, f1, sup = precision_recall_fscore_support(
        y, pred, labels=all_labels, zero_division=0
    )
    present = [i for i, label in enumerate(all_labels) if label in set(y.tolist())]
    dec = decide_batch(
        proba, model.thresholds_[target], ood=ood, margin=model.margin, min_margin=model.min_margin
    )
    kept = dec.index >= 0
    realized = float(correct[kept].mean()) if kept.any() else None
    validation = model.validation_.get(target, {})
    target_precision = float(model.target_precision)
    val_prec = validation.get("precision")
    drift_reasons = []
    if realized is not None and realized < target_precision - drift_tolerance:
        drift_reasons.append(
            f"realized precision {realized:.3f} is below the target {target_precision:.2f}"
        )
    if realized is not None and val_prec is not None and realized < val_prec - drift_tolerance:
        drift_reasons.append(
            f"realized precision {realized:.3f} is below the validation precision {val_prec:.3f}"
        )
    per_label_drift = {}
    stats = model.threshold_stats_[target]
    for k, label in enumerate(classes):
        mask = kept & (pred_idx == k)
        if mask.sum() >= 20:
            p = float(correct[mask].mean())
            if p < stats[label].target_precision - drift_tolerance:
                per_label_drift[label] = {"realized_precision": p, "n": int(mask.sum())}
    if per_label_drift:
        drift_reasons.append(f"labels below target: {', '.join(sorted(per_label_drift))}")
    cm = confusion_matrix(y, pred, labels=all_labels)
    return {
        "n": len(y),
        "accuracy": accuracy,
        "macro_f1": float(np.mean(f1[present])) if present else 0.0,
        "per_class": {
            label: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(sup[i]),
            }
            for i, label in enumerate(all_labels)
        },
        "coverage_at_precision": {
            "target_precision": target_precision,
            "coverage": float(kept.mean()),
            "realized_precision": realized,
            "validation_precision": val_prec,
            "validation_coverage": validation.get("coverage"),
            "oracle_coverage": oracle_coverage(conf, correct, target_precision),
            "drift": bool(drift_reasons),
            "drift_reasons": drift_reasons,
            "labels_below_target": per_label_drift,
        },
        "ece": expected_calibration_error(conf, correct),
        "calibration": calibration_reading(float(conf.mean()), accuracy, drift_tolerance),
        "abstentions": dict(Counter(r for r in dec.reasons if r is not None)),
        "unknown_labels": sorted(set(y.tolist()) - set(classes)),
        "confusion": {"labels": all_labels, "matrix": cm.tolist()},
        "reliability": reliability_bins(conf, correct.astype(float)),
    }


def align_columns(
    records: list[dict[str, Any]],
    model: CaseModel,
    text_columns: Sequence[str],
    label_columns: Sequence[str],
    source: str = "data",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check an evaluation file's columns and rename them to the names ``model`` was trained
    with (what ``triage evaluate`` and ``POST /v1/models/{v}/evaluate`` score).

    The records must carry ``text_columns`` and labelled ``label_columns`` (one class is fine
    here). The text columns are joined into the model's first text column when they differ
    from the model's; one label column maps onto a one-target model whatever its name,
    otherwise label columns must be target names. Returns the renamed records and the targets
    to score; raises :class:`DataError` naming the problem.
    """
    validate_training_data(
        records,
        text_columns=text_columns,
        label_columns=label_columns,
        source=source,
        require_two_classes=False,
    )
    spec = model.feature_spec()
    targets = list(model.targets)
    if len(label_columns) == 1 and len(targets) == 1:
        mapping = {label_columns[0]: targets[0]}
    else:
        unknown = [c for c in label_columns if c not in targets]
        if unknown:
            raise DataError(
                f"the model predicts {', '.join(targets)}; it has no target {', '.join(unknown)}",
                field="label_columns",
            )
        mapping = {c: c for c in label_columns}
    model_text = spec.text_columns[0] if spec.text_columns else None
    aligned = []
    for r in records:
        row = dict(r)
        if model_text is not None and list(text_columns) != list(spec.text_columns):
            row[model_text] = " \n ".join(str(r.get(c) or "") for c in text_columns)
            for extra in spec.text_columns[1:]:
                row[extra] = ""
        for source, target in mapping.items():
            row[target] = r.get(source)
        aligned.append(row)
    return aligned, [mapping[c] for c in label_columns]


def unlabelled_targets(records: Sequence[Record], targets: Sequence[str]) -> list[str]:
    """The ``targets`` that no record carries a label for (``evaluate_model`` refuses them), so
    a caller can refuse the request before any work starts."""
    return [t for t in targets if all(label_of(r.get(t)) is None for r in records)]


def evaluate_model(
    model: CaseModel,
    records: Sequence[Record],
    *,
    targets: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    drift_tolerance: float = 0.02,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``targets`` (default: all model targets) on labelled ``records``.

    ``progress`` receives messages while the model's encoder (if any) encodes the texts.
    """
    targets = list(targets or model.targets)
    unknown = [t for t in targets if t not in model.estimators_]
    if unknown:
        raise ValueError(f"the model does not predict {unknown}; it predicts {list(model.targets)}")
    records = list(records)
    unlabelled = unlabelled_targets(records, targets)
    if unlabelled:  # before the encoder's minutes, not after
        raise ValueError(f"no record has a label for {', '.join(unlabelled)}")
    if embeddings is None:
        embeddings = model.embed(records, progress)
    X = model.transform(records, embeddings=embeddings)
    ood = model.out_of_distribution(X)
    results: dict[str, Any] = {}
    for target in targets:
        labels = [label_of(r.get(target)) for r in records]
        idx = np.array([i for i, v in enumerate(labels) if v is not None], dtype=int)
        proba = model.estimators_[target].predict_proba(X[idx])
        results[target] = evaluate_target(
            model,
            target,
            proba,
            [str(labels[i]) for i in idx],
            ood[idx],
            drift_tolerance,
        )
    primary = results[targets[0]]
    summary = {k: v for k, v in primary.items() if k not in ("confusion", "reliability")}
    return {**summary, "target": targets[0], "targets": results}


def format_table(result: dict[str, Any]) -> str:
    """Readable plain-text summary of :func:`evaluate_model` output."""
    lines: list[str] = []
    for target, m in result["targets"].items():
        cov = m["coverage_at_precision"]
        realized = cov["realized_precision"]
        lines.append(f"target: {target}  (n={m['n']})")
        lines.append(
            f"  accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}   ECE {m['ece']:.4f}"
        )
        lines.append(
            f"  coverage at precision {cov['target_precision']:.2f}: {cov['coverage']:.4f} "
            f"(realized precision {'n/a' if realized is None else f'{realized:.4f}'}; "
            f"oracle coverage {cov['oracle_coverage']:.4f})"
        )
        lines.append("  calibration: " + calibration_sentence(m["calibration"], m["accuracy"]))
        if cov["drift"]:
            lines.append("  DRIFT: " + "; ".join(cov["drift_reasons"]))
        if m["abstentions"]:
            lines.append(
                "  abstentions: "
                + ", ".join(f"{k} {v}" for k, v in sorted(m["abstentions"].items()))
            )
        width = max(12, *(len(label) for label in m["per_class"]))
        lines.append(f"  {'label':<{width}} precision  recall     f1  support")
        for label, s in m["per_class"].items():
            lines.append(
                f"  {label:<{width}} {s['precision']:9.4f} {s['recall']:7.4f} {s['f1']:6.4f}"
                f" {s['support']:8d}"
            )
        lines.append("")
    return "\n".join(lines)


def _plot_confusion(m: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = m["confusion"]["labels"]
    matrix = np.array(m["confusion"]["matrix"], dtype=float)
    row = matrix.sum(axis=1, keepdims=True)
    norm = matrix / np.where(row == 0, 1, row)
    size = max(5.0, 0.35 * len(labels) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7 if len(labels) > 20 else 9)
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 20:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=8,
                    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(m: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = m["reliability"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    if bins:
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        ax.bar(
            centres,
            [b["accuracy"] for b in bins],
            width=1 / ECE_BINS,
            alpha=0.6,
            edgecolor="black",
            label="accuracy",
        )
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color="tab:red",
            label="mean confidence vs accuracy",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of top label")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {m['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    result: dict[str, Any],
    out_dir: Path | str,
    *,
    model_version: str | None = None,
    data_name: str | None = None,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and per-target PNGs into ``out_dir``.

    Returns the path of the Markdown file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Classifier evaluation report", ""]
    if model_version:
        lines.append(f"- model version: `{model_version}`")
    if data_name:
        lines.append(f"- data: `{data_name}`")
    lines.append("")
    for target, m in result["targets"].items():
        cov = m["coverage_at_precision"]
        confusion_png = f"confusion_{target}.png"
        reliability_png = f"reliability_{target}.png"
        _plot_confusion(m, out / confusion_png, f"{target}: confusion (row-normalised)")
        _plot_reliability(m, out / reliability_png, f"{target}: reliability")
        realized = cov["realized_precision"]
        lines += [
            f"## Target `{target}` ({m['n']} cases)",
            "",
            "| metric | value |",
            "|---|---|",
            f"| accuracy | {m['accuracy']:.4f} |",
            f"| macro-F1 | {m['macro_f1']:.4f} |",
            f"| ECE (15 bins) | {m['ece']:.4f} |",
            f"| target precision | {cov['target_precision']:.2f} |",
            f"| coverage at the chosen thresholds | {cov['coverage']:.4f} |",
            f"| realized precision | {'n/a' if realized is None else f'{realized:.4f}'} |",
            f"| validation precision / coverage | {_fmt(cov['validation_precision'])} / "
            f"{_fmt(cov['validation_coverage'])} |",
            f"| oracle coverage at target precision | {cov['oracle_coverage']:.4f} |",
            f"| mean confidence (minus accuracy) | {m['calibration']['mean_confidence']:.4f} "
            f"({m['calibration']['gap']:+.4f}) |",
            "",
            "Calibration: " + calibration_sentence(m["calibration"], m["accuracy"]) + ".",
            "",
        ]
        if cov["drift"]:
            lines += [
                "**Drift detected**: the thresholds chosen at training time do not hold on this "
                "data: " + "; ".join(cov["drift_reasons"]) + ". Retrain or re-validate the "
                "operating points on recent data before trusting auto-filled fields.",
                "",
            ]
        else:
            lines += ["No drift: the operating points hold on this data.", ""]
        if m["unknown_labels"]:
            lines += [f"Labels the model never saw: {', '.join(m['unknown_labels'])}.", ""]
        if m["abstentions"]:
            lines += [
                "Abstentions: "
                + ", ".join(f"{k} {v}" for k, v in sorted(m["abstentions"].items())),
                "",
            ]
        lines += ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, s in m["per_class"].items():
            lines.append(
                f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | "
                f"{s['support']} |"
            )
        lines += [
            "",
            f"![confusion matrix for {target}]({confusion_png})",
            "",
            f"![reliability diagram for {target}]({reliability_png})",
            "",
        ]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
