"""Cost of a model profile (``GET /v1/models/{version}/profile``) by the number of cases read.

The profile explains each of a version's most recent cases exactly and sums the evidence, on
request (nothing is stored). This bench times ``triage.classification.model_profile`` against
an existing installation (for example one set up by ``triage demo --no-serve``, which classifies
its demo cases with the demo model): the first call loads the model, then each ``--limits``
value is timed ``--repeats`` times, interleaved; it prints the median seconds and milliseconds
per case read.

    TRIAGE_DATA_DIR=var TRIAGE_DATABASE_URL=sqlite:///var/triage.db \\
        nice .venv/bin/python bench/model_profile_bench.py --limits 50 200 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triage import classification
from triage.db import Database
from triage.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default=None, help="default: the active version")
    parser.add_argument("--limits", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=classification.PROFILE_DEFAULT_TOP)
    args = parser.parse_args()
    settings = get_settings()
    db = Database(settings)
    version = args.version or classification.registry(settings).active_version()
    if version is None:
        sys.exit("no active model version: pass --version")
    started = time.perf_counter()
    classification.model_profile(settings, db, version, limit=1, top=args.top)
    print(f"{version}: first call (loads the model) {time.perf_counter() - started:.2f}s")
    times: dict[int, list[float]] = {limit: [] for limit in args.limits}
    read: dict[int, int] = {}
    for _ in range(args.repeats):
        for limit in args.limits:
            started = time.perf_counter()
            profile = classification.model_profile(settings, db, version, limit=limit, top=args.top)
            times[limit].append(time.perf_counter() - started)
            read[limit] = profile.cases
    for limit, values in times.items():
        median = statistics.median(values)
        per_case = 1000 * median / max(read[limit], 1)
        print(
            f"limit {limit:>5}: {read[limit]:>5} cases read, median {median:.3f}s "
            f"({per_case:.1f} ms per case, {args.repeats} runs)"
        )


if __name__ == "__main__":
    main()
