"""`triage backup` / `triage restore`: a deployment's state in one checked archive; a restore
writes nothing until every file and the audit chain check out."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from classifiers.registry import ModelRegistry
from tests.support import cli_runner
from triage import audit
from triage.backup import MANIFEST, create_backup, read_manifest, restore_backup
from triage.db import Database
from triage.errors import Conflict, ValidationFailed
from triage.models import AuditEvent
from triage.settings import Settings

KNOWLEDGE = Path(__file__).parents[1] / "knowledge"
ACTOR = audit.Actor(audit.ActorType.human, "ops", "admin")


def _append(db: Database, n: int) -> None:
    for i in range(n):
        with db.write() as s:
            audit.append(s, ACTOR, "test.event", {"i": i})


@contextmanager
def _held_store(path: Path) -> Iterator[None]:
    """Another process (standing for a running server) holds the embedded store at ``path``."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from retrieval.store import ChromaConfig, claim_embedded; "
            "claim_embedded(ChromaConfig(path=Path(sys.argv[1])), '`triage serve` (test)'); "
            "print('ready', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.kill()
        holder.wait()


def _deployment(db, settings, trained_models, monkeypatch):
    """Events, a model registry with an active version, and a knowledge base."""
    _append(db, 5)
    shutil.copytree(trained_models, settings.model_registry_dir)
    triage = cli_runner(monkeypatch, settings)
    ingested = triage("kb", "ingest", str(KNOWLEDGE))
    assert ingested.exit_code == 0, ingested.output
    return triage


def test_backup_and_restore_round_trip(db, settings, trained_models, monkeypatch, tmp_path):
    triage = _deployment(db, settings, trained_models, monkeypatch)
    archive = tmp_path / "backups" / "b1.tar.gz"
    made = triage("backup", str(archive))
    assert made.exit_code == 0, made.output
    manifest = read_manifest(archive)
    sqlite = settings.is_sqlite
    assert manifest["database"]["included"] is sqlite
    assert manifest["model_registry"]["included"] and manifest["vector_store"]["included"]
    active = ModelRegistry(settings.model_registry_dir).active_version()
    assert manifest["model_registry"]["active_version"] == active
    assert any(name.startswith("chroma/") for name in manifest["files"])
    assert not any(name.endswith(".triage-owner") for name in manifest["files"])
    with db.read() as s:
        last_seq, action, who, payload = s.execute(
            select(AuditEvent.seq, AuditEvent.action, AuditEvent.actor_id, AuditEvent.payload)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).one()
    assert (action, who) == ("backup.created", "cli-admin")
    recorded = json.loads(payload)
    assert recorded["audit_head_seq"] == last_seq - 1  # the snapshot's head: just before it
    assert manifest["database"]["audit_head"]["seq"] == last_seq - 1

    target = tmp_path / "restored"
    back = triage("restore", str(archive), "--into", str(target))
    assert back.exit_code == 0, back.output
    assert f"TRIAGE_DATA_DIR={target}" in back.output
    loaded = ModelRegistry(target / "models").load()
    assert loaded.version == active
    stats = triage("kb", "stats", "--json", "--chroma-path", str(target / "chroma"))
    original = triage("kb", "stats", "--json")
    assert json.loads(stats.stdout)["documents"] == json.loads(original.stdout)["documents"]
    assert len(json.loads(stats.stdout)["documents"]) == 11
    if sqlite:
        restored = Database(
            Settings(data_dir=target, database_url=f"sqlite:///{target / 'triage.db'}")
        )
        try:
            with restored.read() as s:
                result = audit.verify(s)
                actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
        finally:
            restored.dispose()
        assert result.intact and result.events == last_seq  # the snapshot, then the restore
        assert actions[-1] == "backup.restored" and "backup.created" not in actions
    else:
        assert "pg_dump" in made.output and "restore it from its own backup" in back.output
        assert not (target / "triage.db").exists()


def test_a_snapshot_taken_under_writes_is_consistent(settings, db, tmp_path):
    """Appends keep landing while the backup runs; the snapshot is a whole prefix of the
    chain, and a restore checks it against the head the manifest recorded."""
    if not settings.is_sqlite:
        pytest.skip("the archive holds the database only on SQLite")
    _append(db, 200)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            _append(db, 1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [create_backup(settings, tmp_path / f"b{i}.tar.gz") for i in range(3)]
    finally:
        stop.set()
        thread.join()
    heads = [r.manifest["database"]["audit_head"]["seq"] for r in results]
    assert heads == sorted(heads) and heads[0] >= 200
    for i, r in enumerate(results):
        done = restore_backup(r.path, tmp_path / f"r{i}")
        assert done.audit_events == heads[i]


def test_backup_refusals(db, settings, trained_models, monkeypatch, tmp_path):
    triage = _deployment(db, settings, trained_models, monkeypatch)
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(b"something else")
    exists = triage("backup", str(archive))
    assert exists.exit_code == 2 and "never overwrites" in exists.output
    assert archive.read_bytes() == b"something else"
    assert not list(tmp_path.glob(".backup-*"))  # no scratch left behind

    # another process holds the embedded vector store
    with _held_store(settings.data_dir / "chroma-held"):
        monkeypatch.setenv("TRIAGE_CHROMA_PATH", str(settings.data_dir / "chroma-held"))
        held = triage("backup", str(tmp_path / "b2.tar.gz"))
        assert held.exit_code == 2, held.output
        assert "`triage serve` (test)" in held.output and "--no-vector-store" in held.output
        assert not (tmp_path / "b2.tar.gz").exists()
        left_out = triage("backup", str(tmp_path / "b3.tar.gz"), "--no-vector-store")
        assert left_out.exit_code == 0, left_out.output
        assert read_manifest(tmp_path / "b3.tar.gz")["vector_store"] == {
            "included": False,
            "reason": "left out on request",
        }


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy archive ``src`` to ``dst`` with ``change(name, data) -> [(name, data), ...]``."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for member in tin:
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            for name, body in change(member.name, data):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tout.addfile(info, io.BytesIO(body))


def test_restore_refuses_anything_but_a_complete_unmodified_archive(settings, db, tmp_path):
    if not settings.is_sqlite:
        pytest.skip("checks of the archive format; the database file is the member tampered with")
    _append(db, 3)
    good = create_backup(settings, tmp_path / "good.tar.gz", include_vector_store=False).path
    manifest = read_manifest(good)
    victim = next(iter(manifest["files"]))

    def flip(name, data):
        return [(name, data[:-1] + bytes([data[-1] ^ 1]) if name == victim else data)]

    def grow(name, data):
        return [(name, data + b"\0" * 4096 if name == victim else data)]

    def extra(name, data):
        return [(name, data)] + ([("../escape.txt", b"x")] if name == MANIFEST else [])

    def traversal(name, data):
        if name != MANIFEST:
            return [(name, data)]
        m = json.loads(data)
        m["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
        return [(name, json.dumps(m).encode())]

    def twice(name, data):
        return [(name, data), (name, data)] if name == victim else [(name, data)]

    def malformed(name, data):
        if name != MANIFEST:
            return [(name, data)]
        m = json.loads(data)
        m["files"] = list(m["files"])
        return [(name, json.dumps(m).encode())]

    def drop(name, data):
        return [] if name == victim else [(name, data)]

    cases = {
        "flip": (flip, "does not match its recorded sha256"),
        "grow": (grow, "bytes, the manifest recorded"),
        "extra": (extra, "not a file the manifest lists"),
        "traversal": (traversal, "unsafe path"),
        "drop": (drop, "missing"),
        "twice": (twice, "appears twice"),
        "malformed": (malformed, "file list is malformed"),
    }
    for label, (change, message) in cases.items():
        bad = tmp_path / f"{label}.tar.gz"
        _rewrite(good, bad, change)
        target = tmp_path / f"into-{label}"
        with pytest.raises(ValidationFailed, match=message):
            restore_backup(bad, target)
        assert not target.exists(), label
        assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside").exists()
    assert not list(tmp_path.glob(".into-*"))  # scratch directories removed

    not_a_backup = tmp_path / "other.tar.gz"
    with tarfile.open(not_a_backup, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValidationFailed, match="not a triage backup"):
        restore_backup(not_a_backup, tmp_path / "x")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValidationFailed, match="cannot be read"):
        restore_backup(garbage, tmp_path / "x")

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        restore_backup(good, occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert restore_backup(good, empty).target == empty  # an empty directory is fine


def test_a_chain_that_does_not_end_at_the_recorded_head_is_refused(settings, db, tmp_path):
    if not settings.is_sqlite:
        pytest.skip("the archive holds the database only on SQLite")
    _append(db, 3)
    good = create_backup(settings, tmp_path / "good.tar.gz", include_vector_store=False).path

    def claim_later_head(name, data):
        if name != MANIFEST:
            return [(name, data)]
        m = json.loads(data)
        m["database"]["audit_head"]["seq"] += 1  # as if events were cut off after the backup
        return [(name, json.dumps(m).encode())]

    bad = tmp_path / "bad.tar.gz"
    _rewrite(good, bad, claim_later_head)
    with pytest.raises(ValidationFailed, match="the manifest recorded 4"):
        restore_backup(bad, tmp_path / "into")
    assert not (tmp_path / "into").exists()
    with Database(settings).read() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 3


def test_a_backup_from_a_newer_schema_restores_with_a_note(settings, db, tmp_path):
    if not settings.is_sqlite:
        pytest.skip("the archive holds the database only on SQLite")
    good = create_backup(settings, tmp_path / "good.tar.gz", include_vector_store=False)
    assert good.manifest["database"]["alembic_revision"] is not None
    assert restore_backup(good.path, tmp_path / "same").notes == []

    def newer(name, data):
        if name != MANIFEST:
            return [(name, data)]
        m = json.loads(data)
        m["database"]["alembic_revision"] = "0999"
        m["product_version"] = "9.0.0"
        return [(name, json.dumps(m).encode())]

    _rewrite(good.path, tmp_path / "newer.tar.gz", newer)
    done = restore_backup(tmp_path / "newer.tar.gz", tmp_path / "restored")
    assert done.notes and "0999" in done.notes[0] and "9.0.0" in done.notes[0]


def test_a_backup_without_the_vector_store_gets_its_case_index_rebuilt(
    settings, db, monkeypatch, tmp_path
):
    """Resolved cases are in the database; the similar-case index is only in the store. A
    restore without the store marks them for re-indexing, and `triage kb rebuild-cases`
    puts them back (audited) with the deployment's encoder."""
    if not settings.is_sqlite:
        pytest.skip("the archive holds the database only on SQLite")
    from contracts.case import CaseIn
    from tests.support import sample_case
    from triage import cases
    from triage.lifecycle import Status
    from triage.stages import RetrievalStage, default_pipeline
    from triage.worker import Worker

    orch = audit.Actor(audit.ActorType.integration, "orch", "orchestrator")
    agent = audit.Actor(audit.ActorType.human, "agent-1", "agent")
    pipe = default_pipeline(settings)
    ids = []
    for n in range(3):
        with db.write() as s:
            case = CaseIn.model_validate(sample_case(n))
            ids.append(cases.submit(s, case, actor=orch, settings=settings).case.id)
    worker = Worker(db, settings, pipe)
    assert worker.run_once() == 3
    for case_id in ids:
        with db.write() as s:
            cases.human_transition(s, case_id, Status.resolved, actor=agent, resolution="done")
    assert worker.index_resolved() == 3

    archive = create_backup(settings, tmp_path / "b.tar.gz", include_vector_store=False).path
    target = tmp_path / "restored"
    done = restore_backup(archive, target)
    assert any("3 resolved cases will re-enter" in note for note in done.notes), done.notes

    restored = Settings(
        environment="test",
        data_dir=target,
        database_url=f"sqlite:///{target / 'triage.db'}",
        worker_enabled=False,
    )
    triage = cli_runner(monkeypatch, restored)
    rebuilt = triage("kb", "rebuild-cases")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "3 resolved cases in the similar-case index" in rebuilt.output
    assert RetrievalStage(restored).service.cases.count() == 3
    again = triage("kb", "rebuild-cases")  # idempotent: the same three, not six
    assert again.exit_code == 0 and RetrievalStage(restored).service.cases.count() == 3
    restored_db = Database(restored)
    try:
        with restored_db.read() as s:
            actions = s.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.action.like("similar_cases.%"))
                .order_by(AuditEvent.seq)
            ).all()
    finally:
        restored_db.dispose()
    assert actions == ["similar_cases.rebuild_started", "similar_cases.rebuilt"] * 2


def test_rebuild_cases_refusals(settings, db, monkeypatch):
    """No index to rebuild with retrieval off; an embedded store held by a server is named."""
    triage = cli_runner(monkeypatch, settings)
    monkeypatch.setenv("TRIAGE_RETRIEVAL_ENABLED", "false")
    off = triage("kb", "rebuild-cases")
    assert off.exit_code == 2 and "retrieval is disabled" in off.output
    monkeypatch.delenv("TRIAGE_RETRIEVAL_ENABLED")
    held_path = settings.data_dir / "chroma-held"
    with _held_store(held_path):
        monkeypatch.setenv("TRIAGE_CHROMA_PATH", str(held_path))
        held = triage("kb", "rebuild-cases")
        assert held.exit_code == 2 and "`triage serve` (test)" in held.output, held.output
    with db.read() as s:  # refused before the trail: nothing started
        assert not s.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("similar_cases.%"))
        ).all()
