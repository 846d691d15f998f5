"""Backup and restore of a SQLite deployment at 100k and 1M audit events.

Events are generated with valid hashes and bulk-loaded (as in ``audit_verify_bench.py``), then
``triage.backup.create_backup`` writes the archive (online SQLite snapshot, gzip) and
``restore_backup`` checks every file and the audit chain into a new directory. Prints the
database and archive sizes and the median seconds of each step over ``--repeat`` runs.

    .venv/bin/python bench/backup_bench.py --sizes 100000 1000000 --repeat 3 --levels 9 6 1
"""

from __future__ import annotations

import argparse
import shutil
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
    ap.add_argument(
        "--levels", nargs="+", type=int, default=[6], help="gzip levels to compare, in turn"
    )
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
            runs: dict[int, dict[str, list[float]]] = {
                lv: {"backup": [], "restore": [], "size": []} for lv in args.levels
            }
            for i in range(args.repeat):
                for level in args.levels:  # alternated, so drift hits every level alike
                    out = Path(tmp) / f"b{i}-{level}.tar.gz"
                    t0 = time.perf_counter()
                    create_backup(settings, out, compresslevel=level)
                    runs[level]["backup"].append(time.perf_counter() - t0)
                    runs[level]["size"].append(out.stat().st_size / 1e6)
                    t0 = time.perf_counter()
                    done = restore_backup(out, Path(tmp) / f"r{i}-{level}")
                    runs[level]["restore"].append(time.perf_counter() - t0)
                    assert done.audit_events == n, done
                    out.unlink()
                    shutil.rmtree(Path(tmp) / f"r{i}-{level}")
            for level, r in runs.items():
                b = statistics.median(r["backup"])
                print(
                    f"{n:>9,} events, gzip {level}: database {db_mb:7.1f} MB, archive "
                    f"{statistics.median(r['size']):6.1f} MB; backup median {b:6.2f} s "
                    f"({db_mb / b:5.1f} MB/s), restore (checks and chain verification "
                    f"included) median {statistics.median(r['restore']):6.2f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
