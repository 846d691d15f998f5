"""Back up a deployment's state into one archive, and restore it into a new data directory.

What a deployment keeps, and what the archive holds:

- the database: a SQLite file is copied with SQLite's online backup API, a consistent snapshot
  taken while servers and workers keep writing. PostgreSQL is not copied (``pg_dump`` and the
  operator's own backups are the tools for it); the manifest records its schema revision and
  audit head, so a restored dump can be checked against the moment of the backup;
- the model registry (``<data_dir>/models``), copied under the registry's lock, so no
  activation or rollback lands half-way;
- the embedded vector store (``<data_dir>/chroma``: knowledge base and similar-case index),
  copied only while no server, worker or ``kb`` command holds it (Chroma's embedded mode keeps
  part of its index in the owner's memory, so a copy taken beside a running owner can be torn).
  A Chroma server (``TRIAGE_CHROMA_URL``) is backed up on its side.

``manifest.json`` (the archive's last member) lists every file with its size and sha256, the
schema revision, and the audit trail's head (sequence and hash). :func:`restore_backup` writes
nothing until every file has been checked against it, refuses members it does not list (or
paths that would leave the target), restores into a directory that does not exist yet (or is
empty), and verifies the restored audit chain against the recorded head before the directory
appears under its name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from classifiers.data import file_sha256
from classifiers.registry import ModelRegistry
from retrieval.errors import StoreError
from retrieval.store import OWNER_FILE, ChromaConfig, claim_embedded
from triage import audit, migrate
from triage.common import now_ts
from triage.db import Database
from triage.errors import Conflict, ValidationFailed
from triage.settings import Settings

FORMAT = "triage-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PACKAGE = "exception-triage"
# gzip's own default; tarfile's is 9 (bench/backup_bench.py compares them)
COMPRESSLEVEL = 6
DATABASE_FILE = "triage.db"
# Lock and ownership files belong to the processes of the source machine, never to a copy.
_SKIP_NAMES = {OWNER_FILE, ".lock"}

Progress = Callable[[str], None]


@dataclass
class BackupResult:
    """What :func:`create_backup` wrote (``manifest`` is the archive's manifest.json)."""

    path: Path
    sha256: str
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _sqlite_settings(db_file: Path) -> Settings:
    return Settings(data_dir=db_file.parent, database_url=f"sqlite:///{db_file}")


def _facts(settings: Settings) -> dict[str, Any]:
    """Schema revision and audit head of ``settings``' database."""
    db = Database(settings)
    try:
        with db.read() as s:
            seq, digest = audit.head(s)
    finally:
        db.dispose()
    return {
        "alembic_revision": migrate.current(settings),
        "audit_head": {"seq": seq, "hash": digest},
    }


def _files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name not in _SKIP_NAMES:
            yield path


class _HashingReader:
    """A file object that hashes what tarfile reads from it: each file is read once, for the
    archive and its manifest entry together."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _add(tar: tarfile.TarFile, path: Path, name: str, files: dict[str, dict[str, Any]]) -> None:
    """Add ``path`` as member ``name`` and record its size and sha256 in ``files``."""
    info = tar.gettarinfo(path, arcname=name)
    with path.open("rb") as handle:
        reader = _HashingReader(handle)
        tar.addfile(info, reader)  # read() is all tarfile uses
    files[name] = {"bytes": info.size, "sha256": reader.digest.hexdigest()}


def create_backup(
    settings: Settings,
    out: Path,
    *,
    include_vector_store: bool = True,
    compresslevel: int = COMPRESSLEVEL,
    progress: Progress | None = None,
) -> BackupResult:
    """Write a backup archive (``.tar.gz``) of ``settings``' deployment to ``out``.

    Raises :class:`~triage.errors.Conflict` when ``out`` exists, or when the embedded vector
    store is held by a running process and ``include_vector_store`` is true (the message says
    to stop it or to pass ``include_vector_store=False``). The archive appears under ``out``
    only when complete."""
    say = progress or (lambda _m: None)
    if out.exists():
        raise Conflict(f"{out} exists; choose another name (a backup never overwrites)")
    out.parent.mkdir(parents=True, exist_ok=True)
    chroma = ChromaConfig(path=settings.chroma_dir, url=settings.chroma_url)
    vector_store = include_vector_store and not chroma.url and chroma.path.is_dir()
    if vector_store:  # before anything is written: a store in use refuses the backup
        try:
            claim_embedded(chroma, "`triage backup`")
        except StoreError as exc:
            raise Conflict(
                f"{exc}; or leave the vector store out of the backup "
                "(--no-vector-store) and re-ingest the knowledge base after a restore",
                field="vector_store",
            ) from None
    sqlite_file = settings.sqlite_file
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ValidationFailed(
            f"no database at {sqlite_file}: nothing to back up (run `triage db upgrade` "
            "or start the product first)",
            fields={"database": "missing"},
        )
    notes: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as tmp:
        partial = Path(tmp) / "archive.tar.gz"
        with tarfile.open(partial, "w:gz", compresslevel=compresslevel) as tar:
            if sqlite_file is not None:
                say(f"database: SQLite snapshot of {sqlite_file}")
                snapshot = Path(tmp) / DATABASE_FILE
                source = sqlite3.connect(sqlite_file, timeout=30)
                copy = sqlite3.connect(snapshot)
                try:
                    # One step (pages=-1): a read transaction over the whole copy, so the
                    # snapshot is consistent while others write (WAL). A stepped backup with
                    # progress would restart whenever another connection writes between steps,
                    # never ending under steady intake.
                    source.backup(copy)
                finally:
                    copy.close()
                    source.close()
                database = {
                    "engine": "sqlite",
                    "included": True,
                    **_facts(_sqlite_settings(snapshot)),
                }
                _add(tar, snapshot, DATABASE_FILE, files)
            else:
                say("database: PostgreSQL, not copied (back it up with pg_dump)")
                database = {"engine": "postgresql", "included": False, **_facts(settings)}
                notes.append(
                    "the PostgreSQL database is not in the archive: back it up with pg_dump; the "
                    f"manifest records its audit head (seq {database['audit_head']['seq']})"
                )

            registry = settings.model_registry_dir
            if registry.is_dir():
                reg = ModelRegistry(registry)
                # no activation or rollback lands half-way through (they wait for this lock)
                with reg.exclusive():
                    for path in _files_under(registry):
                        _add(tar, path, f"models/{path.relative_to(registry).as_posix()}", files)
                    active = reg.active_version()
                model_registry = {"included": True, "active_version": active}
                say(f"model registry: {sum(n.startswith('models/') for n in files)} files")
            else:
                model_registry = {"included": False, "reason": "no registry yet"}

            if vector_store:  # claimed above: no other process writes it
                for path in _files_under(chroma.path):
                    _add(tar, path, f"chroma/{path.relative_to(chroma.path).as_posix()}", files)
                store: dict[str, Any] = {"included": True}
                say(f"vector store: {sum(n.startswith('chroma/') for n in files)} files")
            elif chroma.url:
                store = {"included": False, "reason": "a Chroma server"}
                notes.append(
                    f"the vector store is the Chroma server at {chroma.url}: back it up there"
                )
            elif not include_vector_store:
                store = {"included": False, "reason": "left out on request"}
                notes.append(
                    "the vector store was left out: re-ingest the knowledge base after a restore"
                )
            else:
                store = {"included": False, "reason": "no embedded store yet"}

            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": now_ts(),
                "product_version": _product_version(),
                "database": database,
                "model_registry": model_registry,
                "vector_store": store,
                "files": files,
            }
            body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(body)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(body))
        say(f"wrote {len(files)} files")
        digest = file_sha256(partial)
        os.replace(partial, out)
    return BackupResult(out, digest, manifest, notes)


def _product_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that is not installed
        return None


class BackupRefused(ValidationFailed):
    """An archive that is not a complete, unmodified backup of this format."""


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest, checked for format and version (:class:`BackupRefused`)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = tar.getmember(MANIFEST)
            handle = tar.extractfile(member)
            if handle is None:
                raise BackupRefused(f"{archive}: {MANIFEST} is not a file")
            manifest = json.loads(handle.read())
    except KeyError:
        raise BackupRefused(f"{archive} has no {MANIFEST}: not a triage backup") from None
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupRefused(f"{archive} cannot be read as a backup archive ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRefused(f"{archive}: not a triage backup (no {FORMAT!r} manifest)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupRefused(
            f"{archive}: backup format version {manifest.get('format_version')!r}; this "
            f"version of the product reads version {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        raise BackupRefused(f"{archive}: the manifest's file list is malformed")
    for part in ("database", "model_registry", "vector_store"):
        if not isinstance(manifest.get(part), dict):
            raise BackupRefused(f"{archive}: the manifest has no {part!r} section")
    return manifest


@dataclass
class RestoreResult:
    target: Path
    manifest: dict[str, Any]
    files: int
    audit_events: int | None
    notes: list[str] = field(default_factory=list)


def restore_backup(
    archive: Path, target: Path, *, progress: Progress | None = None
) -> RestoreResult:
    """Restore ``archive`` into ``target``, a data directory that does not exist yet or is
    empty. Every member is checked (listed in the manifest, a regular file, a path inside the
    target, size and sha256 as recorded) and a restored SQLite audit chain must verify and end
    at the recorded head, all in a scratch directory beside ``target``; only then does it take
    ``target``'s name. Raises :class:`BackupRefused` (nothing written) or
    :class:`~triage.errors.Conflict` for a non-empty ``target``."""
    say = progress or (lambda _m: None)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise Conflict(
            f"{target} exists and is not empty: restore into a new data directory",
            field="target",
        )
    manifest = read_manifest(archive)
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    for name in files:
        if not _safe_name(name) or name == MANIFEST:
            raise BackupRefused(f"{archive}: the manifest names an unsafe path {name!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        seen: set[str] = set()
        try:
            _extract_checked(archive, files, scratch, seen)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BackupRefused(f"{archive} is damaged ({exc})") from None
        missing = sorted(set(files) - seen)
        if missing:
            raise BackupRefused(
                f"{archive}: {len(missing)} listed file(s) missing, e.g. {missing[0]}"
            )
        say(f"checked {len(seen)} files")
        events = None
        to_index = 0
        if (manifest.get("database") or {}).get("included"):
            events = _verify_restored_chain(scratch / DATABASE_FILE, manifest, archive)
            say(f"audit chain intact: {events} events, head as recorded")
            if not (manifest.get("vector_store") or {}).get("included"):
                to_index = _unmark_indexed(scratch / DATABASE_FILE)
        (scratch / "restored-from.json").write_text(
            json.dumps(
                {"archive": str(archive), "restored_at": now_ts(), "manifest": manifest},
                indent=2,
                sort_keys=True,
            ),
            encoding="utf-8",
        )
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    notes = []
    if to_index:
        notes.append(
            f"the vector store was not in the backup: {to_index} resolved cases will re-enter "
            "the similar-case index (the worker adds 200 per housekeeping pass; `triage kb "
            "rebuild-cases` does it at once, before serving)"
        )
    revision = (manifest.get("database") or {}).get("alembic_revision")
    if revision and not migrate.known_revision(revision):
        notes.append(
            f"the backup's schema revision {revision} is newer than this version of the product "
            f"knows (it was made by {manifest.get('product_version') or 'another version'}): "
            "serve the restored directory with that version or later"
        )
    return RestoreResult(target, manifest, len(files), events, notes)


def _extract_checked(
    archive: Path, files: dict[str, dict[str, Any]], scratch: Path, seen: set[str]
) -> None:
    """Write the archive's members into ``scratch``, each checked against ``files`` (listed,
    a regular file, once, its size before and its sha256 after writing); ``seen`` collects
    the names written. Raises :class:`BackupRefused`; tar and gzip errors propagate."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            expected = files.get(member.name)
            if expected is None or not member.isfile() or member.name in seen:
                raise BackupRefused(
                    f"{archive}: member {member.name!r} is not a file the manifest lists"
                    " (or appears twice)"
                )
            if member.size != expected.get("bytes"):  # before writing a byte of it
                raise BackupRefused(
                    f"{archive}: {member.name} is {member.size} bytes, the manifest "
                    f"recorded {expected.get('bytes')}: the archive was modified or damaged"
                )
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file
            dest = scratch / member.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            with dest.open("wb") as out:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if size != expected.get("bytes") or digest.hexdigest() != expected.get("sha256"):
                raise BackupRefused(
                    f"{archive}: {member.name} does not match its recorded sha256: the "
                    "archive was modified or damaged"
                )
            seen.add(member.name)


def _unmark_indexed(db_file: Path) -> int:
    """Mark a restored database's resolved cases as not in the similar-case index (which the
    archive did not hold), so the worker or ``triage kb rebuild-cases`` puts them back."""
    con = sqlite3.connect(db_file)
    try:
        with con:
            cursor = con.execute(
                "UPDATE cases SET indexed_at = NULL WHERE status = 'resolved' "
                "AND indexed_at IS NOT NULL"
            )
        return cursor.rowcount
    finally:
        con.close()


def _verify_restored_chain(db_file: Path, manifest: dict[str, Any], archive: Path) -> int:
    db = Database(_sqlite_settings(db_file))
    try:
        with db.read() as s:
            result = audit.verify(s)
    finally:
        db.dispose()
    head = (manifest.get("database") or {}).get("audit_head") or {}
    if not result.intact:
        raise BackupRefused(
            f"{archive}: the restored audit chain is broken at sequence "
            f"{result.first_bad_seq} ({result.problem})"
        )
    if (result.head_seq, result.head_hash) != (head.get("seq"), head.get("hash")):
        raise BackupRefused(
            f"{archive}: the restored audit chain ends at {result.head_seq} "
            f"{result.head_hash[:16]}…, the manifest recorded {head.get('seq')} "
            f"{str(head.get('hash'))[:16]}…"
        )
    return result.events
