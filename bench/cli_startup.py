"""Command-line start-up: this tree against an earlier revision, alternated in one run.

Usage (from the repository root):
    nice .venv/bin/python bench/cli_startup.py --old-rev 4bc427d [--rounds 7]

Every ``triage`` command first imports ``cli.main`` (all sub-apps are mounted there), so that
import is what the quick commands (``triage --help``, ``jobs list``, ``audit verify``, ``keys``,
``users``) pay before doing anything. The script checks ``--old-rev`` out into a temporary git
worktree and times a fresh interpreter importing ``cli.main`` from each tree in turn (same
virtualenv, same machine load), ``--rounds`` times each, then prints the wall-clock medians,
their ratio, and which numerical libraries (scikit-learn, scipy, skops, numpy) each
import pulled in. It asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, cli.main\n"
    "print(','.join(m for m in ('sklearn', 'scipy', 'skops', 'numpy') if m in sys.modules))"
)


def time_import(tree: Path) -> tuple[float, str]:
    """Wall seconds for a fresh interpreter to import ``cli.main`` from ``tree``, and the numerical
    libraries it loaded."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tree, capture_output=True, text=True, check=True
    )
    return time.perf_counter() - started, out.stdout.strip() or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rev", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.old_rev],
            check=True,
        )
        try:
            trees = {args.old_rev: old, "this tree": ROOT}
            times: dict[str, list[float]] = {name: [] for name in trees}
            loaded: dict[str, str] = {}
            for round_no in range(args.rounds):
                for name, tree in trees.items():
                    seconds, loaded[name] = time_import(tree)
                    times[name].append(seconds)
                print(
                    f"round {round_no + 1}/{args.rounds}: "
                    + "  ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False
            )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:<12} median {median:.2f}s  numerical libraries loaded: {loaded[name]}")
    print(f"ratio (this tree / {args.old_rev}): {medians['this tree'] / medians[args.old_rev]:.2f}")


if __name__ == "__main__":
    main()
