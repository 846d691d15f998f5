"""Per-model statistics (override rate, precision-at-close) as the case table grows.

``GET /v1/models`` and the console's models page (which reloads every 5 s while a model job
runs) call ``triage.classification.model_stats`` on every load. Until the tenth session it read
every classified case's current suggestion body (JSON) and counted in Python; now the
classifier's labels sit on the case row (``predicted_*``, migration 0008) and two aggregate
queries count them. This bench fills a fresh database per size with ``bench.console_bench.
populate`` (realistic cases, suggestions, overrides), checks that both give the same figures,
and times them side by side, alternated, in one run: median milliseconds and the ratio.

    nice .venv/bin/python bench/model_stats_bench.py --db sqlite --db postgres \\
        --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.console_bench import populated_database  # noqa: E402
from bench.intake_bench import _drop  # noqa: E402
from triage import classification  # noqa: E402
from triage.lifecycle import Status  # noqa: E402
from triage.models import Case, LabelFeedback  # noqa: E402
from triage.models import Suggestion as SuggestionRow  # noqa: E402

TARGETS = classification.TARGETS


def reference_stats(session: Session) -> dict[str, tuple[int, int, int, dict[str, Any]]]:
    """The ninth session's ``model_stats``: every current suggestion body read and counted in
    Python (kept here as the reference the new queries are measured against)."""
    rows = session.execute(
        select(
            Case.id,
            Case.model_version,
            Case.status,
            Case.category,
            Case.queue,
            Case.priority,
            SuggestionRow.body,
        )
        .join(
            SuggestionRow,
            (SuggestionRow.case_id == Case.id)
            & (SuggestionRow.revision == Case.suggestion_revision),
        )
        .where(Case.model_version.is_not(None))
    ).all()
    overridden = set(session.execute(select(LabelFeedback.case_id, LabelFeedback.model_version)))
    acc: dict[str, dict[str, Any]] = {}
    for cid, mv, status, category, queue, priority, body in rows:
        s = acc.setdefault(
            mv, {"n": 0, "over": 0, "closed": 0, "hit": dict.fromkeys(TARGETS, 0),
                 "tot": dict.fromkeys(TARGETS, 0)},
        )  # fmt: skip
        s["n"] += 1
        s["over"] += (cid, mv) in overridden
        if status != Status.resolved.value:
            continue
        s["closed"] += 1
        final = {"category": category, "queue": queue, "priority": priority}
        for t in TARGETS:
            label = ((body or {}).get("classifier") or {}).get(t, {}).get("label")
            if label is None:
                continue
            s["tot"][t] += 1
            s["hit"][t] += label == final[t]
    return {
        mv: (
            s["n"],
            s["over"],
            s["closed"],
            {t: s["hit"][t] / s["tot"][t] if s["tot"][t] else None for t in TARGETS},
        )
        for mv, s in acc.items()
    }


def new_stats(session: Session) -> dict[str, tuple[int, int, int, dict[str, Any]]]:
    return {
        m.model_version: (m.classified, m.overridden_cases, m.closed, m.precision_at_close)
        for m in classification.model_stats(session)
    }


def run(kind: str, size: int, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        _, db, schema = populated_database(kind, Path(tmp), "modelstats", size)
        with db.read() as s:
            ref, new = reference_stats(s), new_stats(s)
        assert ref == new, f"figures differ:\n{ref}\n{new}"
        old_ms: list[float] = []
        new_ms: list[float] = []
        for _ in range(repeats):  # alternated, so both see the same machine
            for fn, out in ((reference_stats, old_ms), (new_stats, new_ms)):
                with db.read() as s:
                    t = time.perf_counter()
                    fn(s)
                    out.append((time.perf_counter() - t) * 1000)
        db.dispose()
        _drop(schema)
        return statistics.median(old_ms), statistics.median(new_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each, alternated")
    args = ap.parse_args()
    for kind in args.db or ["sqlite"]:
        rows = [(size, *run(kind, size, args.repeats)) for size in args.sizes]
        print(f"\n{kind}: median ms of model_stats (load average {os.getloadavg()[0]:.1f})")
        print("| cases | bodies read in Python (before) | aggregates over columns (now) | ratio |")
        print("|---|---|---|---|")
        for size, old, new in rows:
            print(f"| {size:,} | {old:,.1f} | {new:,.1f} | {old / new:,.0f}x |")


if __name__ == "__main__":
    main()
