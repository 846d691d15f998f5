"""``triage backup`` and ``triage restore``: a deployment's state in one checked archive.

Mounted by the main CLI as top-level commands; the work is in :mod:`triage.backup`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def backup(
    out: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz); never overwritten.")],
    vector_store: Annotated[
        bool,
        typer.Option(
            "--vector-store/--no-vector-store",
            help="Include the embedded vector store (needs it free: stop the server first), or "
            "leave it out and re-ingest the knowledge base after a restore.",
        ),
    ] = True,
    compress_level: Annotated[
        int,
        typer.Option(
            "--compress-level",
            min=1,
            max=9,
            help="gzip level: 1 is about twice as fast as 6 for a ~12% larger archive "
            "(docs/benchmarks.md).",
        ),
    ] = 6,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Back up the deployment (TRIAGE_DATA_DIR, TRIAGE_DATABASE_URL): a consistent snapshot of
    the SQLite database taken while the product runs, the model registry and the embedded
    vector store, with a manifest of every file's sha256 and the audit trail's head. A
    PostgreSQL database is not copied (use pg_dump); its audit head is recorded. Audited
    backup.created."""
    from triage.backup import create_backup
    from triage.errors import TriageError
    from triage.settings import get_settings

    settings = get_settings()
    try:
        result = create_backup(
            settings,
            out,
            include_vector_store=vector_store,
            compresslevel=compress_level,
            progress=_say,
        )
    except TriageError as exc:
        raise _fail(exc.message) from exc
    except OSError as exc:  # a full disk, a folder we may not write: nothing was written
        raise _fail(f"cannot write the backup: {exc}") from exc
    manifest = result.manifest
    head = manifest["database"].get("audit_head") or {}
    payload: dict[str, Any] = {
        "archive": str(out),
        "sha256": result.sha256,
        "files": len(manifest["files"]),
        "audit_head_seq": head.get("seq"),
        "database_included": manifest["database"]["included"],
        "model_registry_included": manifest["model_registry"]["included"],
        "vector_store_included": manifest["vector_store"]["included"],
    }
    _record(settings, "backup.created", payload)
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(json.dumps(manifest | {"archive_sha256": result.sha256}, indent=2))
        return
    size = out.stat().st_size
    typer.echo(
        f"wrote {out} ({size / 1e6:.1f} MB, {len(manifest['files'])} files, sha256 "
        f"{result.sha256[:16]}…); audit head {head.get('seq')} {str(head.get('hash'))[:16]}…"
    )


def restore(
    archive: Annotated[Path, typer.Argument(help="An archive `triage backup` wrote.")],
    into: Annotated[
        Path,
        typer.Option(
            "--into",
            help="New data directory to restore into (must not exist, or be empty). Serve it "
            "with TRIAGE_DATA_DIR=DIR.",
        ),
    ],
) -> None:
    """Restore a backup into a new data directory. Nothing is written until every file has
    been checked against the manifest's sha256 and the restored audit chain verifies up to
    the recorded head; the restored trail then records backup.restored."""
    from triage.backup import DATABASE_FILE, restore_backup
    from triage.errors import TriageError
    from triage.settings import Settings

    if not archive.is_file():
        raise _fail(f"{archive}: no such file")
    try:
        result = restore_backup(archive, into, progress=_say)
    except TriageError as exc:
        raise _fail(exc.message) from exc
    except OSError as exc:  # the scratch directory is removed: nothing was restored
        raise _fail(f"cannot restore into {into}: {exc}") from exc
    manifest = result.manifest
    head = manifest["database"].get("audit_head") or {}
    if manifest["database"]["included"]:
        restored = Settings(data_dir=into, database_url=f"sqlite:///{into / DATABASE_FILE}")
        _record(
            restored,
            "backup.restored",
            {
                "archive": str(archive),
                "created_at": manifest["created_at"],
                "audit_head_seq": head.get("seq"),
            },
        )
    typer.echo(
        f"restored {result.files} files into {into}; audit head at backup time "
        f"{head.get('seq')} {head.get('hash')}"
    )
    if not manifest["database"]["included"]:
        typer.echo(
            "the database was PostgreSQL and is not in the archive: restore it from its own "
            "backup and check that `triage audit verify` reaches the head above"
        )
    if not manifest["vector_store"]["included"]:
        typer.echo(
            f"the vector store was not in the archive ({manifest['vector_store'].get('reason')}):"
            " re-ingest the knowledge base (`triage kb ingest`)"
        )
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"serve it with: TRIAGE_DATA_DIR={into} triage serve")


def _record(settings: Any, action: str, payload: dict[str, Any]) -> None:
    """Append ``action`` as the CLI admin to ``settings``' database; a trail that cannot be
    written is reported, not fatal (the archive is written and checked either way)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cli.actors import cli_admin
    from triage import audit
    from triage.db import Database

    db = Database(settings)
    try:
        audit.with_event(db, cli_admin(), action, lambda: payload)
    except SQLAlchemyError as exc:
        typer.secho(
            f"warning: {action} could not be written to the audit trail ({type(exc).__name__})",
            fg=typer.colors.YELLOW,
            err=True,
        )
    finally:
        db.dispose()
