"""Backup and restore of a SQLite deployment at 100k and 1M audit events.

Events are generated with valid hashes and bulk-loaded (as in ``audit_verify_bench.py``), then
``triage.backup.create_backup`` writes the archive (online SQLite snapshot, gzip) and
``restore_backup`` checks every file and the audit chain into a new directory. Prints the
database and archive sizes and the median seconds of each step over ``--repeat`` runs.

    .venv/bin/python bench/backup_bench.py --sizes 100000 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.audit_verify_bench import load  # noqa: E402
from triage import migrate  # noqa: E402
from triage.backup import create_backup, restore_backup  # noqa: E402
from triage.db import Database  # noqa: E402
from triage.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per size (median quoted)")
    args = ap.parse_args()
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "var"
            settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'triage.db'}")
            data.mkdir()
            migrate.upgrade(settings)
            db = Database(settings)
            load(db, n)
            db.dispose()
            db_mb = (data / "triage.db").stat().st_size / 1e6
            backups, restores, sizes = [], [], []
            for i in range(args.repeat):
                out = Path(tmp) / f"b{i}.tar.gz"
                t0 = time.perf_counter()
                create_backup(settings, out)
                backups.append(time.perf_counter() - t0)
                sizes.append(out.stat().st_size / 1e6)
                t0 = time.perf_counter()
                done = restore_backup(out, Path(tmp) / f"r{i}")
                restores.append(time.perf_counter() - t0)
                assert done.audit_events == n, done
            b, r = statistics.median(backups), statistics.median(restores)
            print(
                f"{n:>9,} events: database {db_mb:7.1f} MB, archive {statistics.median(sizes):6.1f}"
                f" MB; backup median {b:6.2f} s ({db_mb / b:5.1f} MB/s), restore (checks and chain"
                f" verification included) median {r:6.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
