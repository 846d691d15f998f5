"""Reading labelled CSV / JSONL files into records, with operator-readable errors.

Contract:
- :func:`load_records` accepts ``.csv`` (header row, UTF-8 with or without BOM) and ``.jsonl`` /
  ``.ndjson`` (one JSON object per line; blank lines skipped). Any other extension, an empty
  file, a file that is not valid UTF-8, a malformed line or a non-object JSON value raises
  :class:`~classifiers.errors.DataError` naming the file (and line) at fault.
- :func:`validate_training_data` checks that the named columns exist and that every label
  column has non-empty labels with at least two distinct values.
- :func:`file_sha256` is the training-data fingerprint stored in registry metadata.
- :data:`BITEXT_FIXTURE` is the shipped Bitext sample (read it with :func:`load_records`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from classifiers.errors import DataError

SUPPORTED_EXTENSIONS = (".csv", ".jsonl", ".ndjson")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BITEXT_FIXTURE = FIXTURES / "bitext" / "bench_train_2023.csv"
"""Bitext customer-support sample (CDLA-Sharing-1.0; licence and NOTICE.md beside it): columns
``text, intent, category, flags, release, triage_category``; 6,509 rows. Shipped for tests, the
demo model and realistic customer messages in the simulator."""


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_records(path: Path | str) -> list[dict[str, Any]]:
    """Every row of a CSV or JSONL file as a ``dict`` (CSV values are strings)."""
    path = Path(path)
    _check_extension(path.name)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return parse_records(path.name, path.read_bytes())


def _check_extension(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{name}: unknown file extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return suffix


def parse_records(name: str, raw: bytes) -> list[dict[str, Any]]:
    """The rows of an uploaded or read file called ``name`` (its extension picks CSV or JSONL).

    Raises :class:`DataError` naming the file and the problem: unknown extension, not UTF-8,
    empty, no header or data rows, malformed CSV or JSON lines.
    """
    suffix = _check_extension(name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: unreadable encoding (not UTF-8) at byte {exc.start}; "
            "re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{name}: the file is empty")
    records = _read_csv(name, text) if suffix == ".csv" else _read_jsonl(name, text)
    if not records:
        raise DataError(f"{name}: the file has no data rows")
    return records


def _read_csv(name: str, text: str) -> list[dict[str, Any]]:
    try:
        # a StringIO keeps newlines inside quoted cells (splitlines would drop them)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise DataError(f"{name}: no header row")
        rows: list[dict[str, Any]] = []
        for row in reader:
            if None in row:  # more cells than header names
                raise DataError(f"{name}: line {reader.line_num} has more cells than the header")
            rows.append(dict(row))
        return rows
    except csv.Error as exc:
        raise DataError(f"{name}: malformed CSV: {exc}") from None


def _read_jsonl(name: str, text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise DataError(f"{name}: line {number} is not a JSON object")
        rows.append(value)
    return rows


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


MAX_LABEL_CHARS = 64  # the width of the case's category / queue / priority columns


def validate_training_data(
    records: Sequence[dict[str, Any]],
    *,
    text_columns: Sequence[str],
    label_columns: Sequence[str],
    feature_columns: Sequence[str] = (),
    source: str = "data",
    require_two_classes: bool = True,
    label_precision: Mapping[str, Mapping[str, float]] | None = None,
    target_precision: float | None = None,
) -> None:
    """Raise :class:`DataError` when the records cannot train (or evaluate) a model, or when
    ``label_precision`` (``{target: {label: precision}}``) names a target that is not a label
    column, a label no record has, or a precision outside (0.5, 1), or ``target_precision`` is
    outside it (checked first: it needs no look at the records)."""
    if target_precision is not None:
        check_target_precision(target_precision)
    if not records:
        raise DataError(f"{source}: the file has no data rows")
    present: set[str] = set()
    for row in records:
        present.update(row.keys())
    for kind, columns in (
        ("text", text_columns),
        ("label", label_columns),
        ("feature", feature_columns),
    ):
        missing = [c for c in columns if c not in present]
        if missing:
            raise DataError(
                f"{source}: missing {kind} column(s) {', '.join(missing)}; "
                f"the file has {', '.join(sorted(present))}",
                field=f"{kind}_columns",
            )
    if not label_columns:
        raise DataError(f"{source}: name at least one label column", field="label_columns")
    _refuse_nested(records, [*text_columns, *label_columns, *feature_columns], source)
    label_sets: dict[str, set[str]] = {}
    for column in label_columns:
        labels = Counter(
            str(r.get(column)).strip() for r in records if not _is_empty(r.get(column))
        )
        if not labels:
            raise DataError(f"{source}: label column {column!r} is empty (no row has a label)")
        long = [label for label in labels if len(label) > MAX_LABEL_CHARS]
        if require_two_classes and long:  # training: what the model predicts must be storable
            raise DataError(
                f"{source}: label column {column!r} has a label longer than {MAX_LABEL_CHARS} "
                f"characters ({long[0][:40]!r}...); labels are identifiers (a case stores "
                f"its category, queue and priority in {MAX_LABEL_CHARS} characters)"
            )
        if require_two_classes and len(labels) < 2:
            only = next(iter(labels))
            raise DataError(
                f"{source}: label column {column!r} has only one class ({only!r}); "
                "a classifier needs at least two"
            )
        label_sets[column] = set(labels)
    check_label_precision(label_precision, label_sets, f"no row of {source} has label")


def _refuse_nested(records: Sequence[dict[str, Any]], columns: Sequence[str], source: str) -> None:
    """A JSONL cell of a named column that is an array or an object cannot be a text, a label
    or a feature value (it would be read as its Python repr): refused, naming row and column."""
    wanted = list(dict.fromkeys(columns))
    for number, row in enumerate(records, start=1):
        for column in wanted:
            value = row.get(column)
            if isinstance(value, list | dict):
                kind = "an array" if isinstance(value, list) else "an object"
                raise DataError(
                    f"{source}: data row {number}, column {column!r} holds {kind}; a cell must be "
                    "text or a number (flatten nested fields before exporting)",
                    field=f"records[{number - 1}].{column}",  # the API's records list
                )


def check_target_precision(value: float) -> None:
    """Raise :class:`DataError` (field ``target_precision``) for a default target precision
    outside (0.5, 1): at or below a half a threshold means nothing, and 1 cannot be earned
    under the Wilson bound (every label would abstain). The rule of per-label targets too."""
    if not 0.5 < value < 1.0:
        raise DataError(
            f"target precision {value}: use a value between 0.5 and 1 (exclusive)",
            field="target_precision",
        )


def check_label_precision(
    label_precision: Mapping[str, Mapping[str, float]] | None,
    label_sets: Mapping[str, Collection[str]],
    missing: str = "the model has no label",
) -> None:
    """Raise :class:`DataError` (field ``label_precision``) when ``label_precision`` names a
    target outside ``label_sets`` (the label columns), a label outside its target's set
    (``missing`` starts that message) or a precision outside (0.5, 1). An override that names
    nothing real would silently change nothing, so it is refused."""
    for column, per_label in (label_precision or {}).items():
        if column not in label_sets:
            continue  # reported below, all unknown targets at once
        for label, precision in per_label.items():
            if label not in label_sets[column]:
                raise DataError(
                    f"label precision {column}:{label}: {missing} {label!r}",
                    field="label_precision",
                )
            if not 0.5 < precision < 1.0:
                raise DataError(
                    f"label precision {column}:{label}={precision}: use a value between 0.5 "
                    "and 1 (exclusive)",
                    field="label_precision",
                )
    unknown = sorted(set(label_precision or {}) - set(label_sets))
    if unknown:
        raise DataError(
            f"label precision for {', '.join(unknown)}: not a label column "
            f"(label columns: {', '.join(label_sets)})",
            field="label_precision",
        )


def parse_label_precision(items: Sequence[str]) -> dict[str, dict[str, float]]:
    """``TARGET:LABEL=PRECISION`` items (CLI options, a console field) into
    ``{target: {label: precision}}``; :class:`DataError` names a malformed item."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        try:
            key, value = item.rsplit("=", 1)
            target, label = key.split(":", 1)
            out.setdefault(target.strip(), {})[label.strip()] = float(value)
        except ValueError:
            raise DataError(
                f"label precision {item!r}: expected TARGET:LABEL=PRECISION "
                "(e.g. queue:fraud=0.99)",
                field="label_precision",
            ) from None
    return out


def infer_numeric_columns(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """The columns whose non-empty values all parse as numbers (others are categorical)."""
    numeric: list[str] = []
    for column in columns:
        values = [r.get(column) for r in records if not _is_empty(r.get(column))]
        if not values:
            continue
        try:
            for value in values:
                if isinstance(value, bool):
                    raise ValueError
                float(str(value))
        except (TypeError, ValueError):
            continue
        numeric.append(column)
    return numeric
