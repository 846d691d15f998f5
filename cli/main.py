"""The ``triage`` command line. It sits above ``api`` and ``triage``: the web app is imported
inside the commands that serve it, so the rest of the CLI starts fast and the core never
depends on the web layer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from api.console.cli import users_app as console_users_app
from cli import backup as backup_cli
from cli import classifier as classifier_cli
from cli import kb as kb_cli
from cli import policy as policy_cli
from cli.actors import cli_admin
from triage.settings import Settings, get_settings

_M = TypeVar("_M", bound=BaseModel)

app = typer.Typer(
    help="Exception triage assistant: intake API, triage pipeline and audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and export the audit trail.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
jobs_app = typer.Typer(
    help="Triage jobs of the procrastinate engine: list, re-drive dead letters.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.command("train")(classifier_cli.train)
app.command("evaluate")(classifier_cli.evaluate)
app.add_typer(classifier_cli.models_app, name="models")
app.add_typer(policy_cli.policy_app, name="policy")
app.add_typer(kb_cli.app, name="kb")
app.add_typer(console_users_app, name="users")
app.command("backup")(backup_cli.backup)
app.command("restore")(backup_cli.restore)


def _settings() -> Settings:
    return get_settings()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _progress(done: int, total: int, started: float, label: str) -> None:
    rate = done / max(1e-9, time.perf_counter() - started)
    typer.echo(f"\r{label}: {done}/{total} ({rate:,.0f}/s)", err=True, nl=done >= total)


# ------------------------------------------------------------------ db


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply schema migrations up to REVISION (default: the latest)."""
    from triage import migrate

    settings = _settings()
    _upgrade(settings, revision)
    typer.echo(
        f"database at {migrate.current(settings)} ({_redact(settings.resolved_database_url)})"
    )


def _upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate, or exit 2 naming the other migration that held the lock too long."""
    from triage import migrate

    try:
        migrate.upgrade(settings, revision)
    except migrate.MigrationBusy as exc:
        raise _fail(f"{exc}. Nothing was changed.") from exc


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision the database is at."""
    from triage import migrate

    typer.echo(migrate.current(_settings()) or "empty (run: triage db upgrade)")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


# ------------------------------------------------------------------ keys


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")],
    role: Annotated[str, typer.Option("--role", help="orchestrator|agent|approver|auditor|admin")],
    authority: Annotated[
        list[str] | None,
        typer.Option(
            "--authority",
            help="Policy role for approvals, repeatable (finance_approver, "
            "inventory_manager, finance_controller, cfo).",
        ),
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from triage import auth
    from triage.db import Database
    from triage.errors import ValidationFailed

    db = Database(_settings())
    try:
        with db.write() as s:
            k = auth.create_key(
                s,
                name,
                role,
                authorities=authority,
                created_by=cli_admin(),
            )
    except ValidationFailed as exc:
        raise _fail(exc.message) from exc
    typer.echo(f"id:   {k.id}\nname: {k.name}\nrole: {k.role.value}\nkey:  {k.key}")
    typer.echo("Store the key now: it cannot be shown again.", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never the keys themselves)."""
    from triage import auth
    from triage.db import Database

    with Database(_settings()).read() as s:
        for k in auth.list_keys(s):
            state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
            typer.echo(f"{k.id}  {k.role:<12} trg_{k.prefix}_…  {k.name}  ({state})")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; it stops working immediately."""
    from triage import auth
    from triage.db import Database
    from triage.errors import NotFound

    try:
        with Database(_settings()).write() as s:
            auth.revoke_key(s, key_id, by=cli_admin())
    except NotFound as exc:
        raise _fail(exc.message) from exc
    typer.echo(f"revoked {key_id}")


# ------------------------------------------------------------------ audit


@audit_app.command("verify")
def audit_verify(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Verify the hash chain. Exit 0 if intact, 1 with the first broken sequence otherwise.
    Also lists long changes (knowledge ingests, re-indexes) that started without a recorded
    outcome: still running, or their process stopped; they do not make the chain broken."""
    from triage import audit
    from triage.db import Database

    started = time.perf_counter()
    with Database(_settings()).read() as s:
        res = audit.verify(s)
        open_changes = audit.unfinished(s)
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {
        **res.as_dict(),
        "unfinished": [u.as_dict() for u in open_changes],
        "seconds": round(elapsed, 3),
        "events_per_second": round(res.events / elapsed) if elapsed else None,
    }
    if as_json:
        typer.echo(json.dumps(out))
        raise typer.Exit(0 if res.intact else 1)
    if res.intact:
        typer.echo(
            f"intact: {res.events} events, head seq {res.head_seq} hash {res.head_hash}"
            f" ({elapsed:.2f}s)"
        )
    else:
        typer.secho(
            f"BROKEN at sequence {res.first_bad_seq}: {res.problem}"
            f" ({res.events} events verified before it)",
            fg=typer.colors.RED,
        )
    if open_changes:
        typer.secho(
            f"{len(open_changes)} change(s) started without a recorded outcome (still running, "
            "or the process stopped before it could record one):",
            fg=typer.colors.YELLOW,
        )
        for u in open_changes:
            typer.echo(f"  event {u.seq}  {u.ts}  {u.action}  by {u.actor_id}")
    raise typer.Exit(0 if res.intact else 1)


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write (default stdout).")
    ] = None,
    case_id: Annotated[str | None, typer.Option("--case")] = None,
    actor_id: Annotated[str | None, typer.Option("--actor")] = None,
    action: Annotated[str | None, typer.Option("--action")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 with timezone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 with timezone")] = None,
) -> None:
    """Export audit events (all, or filtered) as JSONL or CSV for auditors."""
    from datetime import datetime

    from triage import audit
    from triage.common import to_ts
    from triage.db import Database

    if fmt not in ("jsonl", "csv"):
        raise _fail("--format must be jsonl or csv")

    def ts(v: str | None, name: str) -> str | None:
        if v is None:
            return None
        try:
            return to_ts(datetime.fromisoformat(v))
        except ValueError as exc:
            raise _fail(f"--{name} must be ISO 8601 with a timezone, got {v!r}") from exc

    f = audit.AuditFilter(case_id, actor_id, action, ts(since, "since"), ts(until, "until"))
    sink = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    n = 0
    try:
        with Database(_settings()).read() as s:
            for line in audit.export_lines(audit.iter_events(s, f), fmt):
                sink.write(line)
                n += 1
    finally:
        if out:
            sink.close()
    if out:
        typer.echo(f"wrote {n - (fmt == 'csv')} events to {out}", err=True)


# ------------------------------------------------------------------ simulate


@app.command("simulate")
def simulate(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Cases to generate.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cases).")] = 42,
    exception_rate: Annotated[
        float, typer.Option(min=0.001, max=1.0, help="Share of orders that raise a case.")
    ] = 0.2,
    rates: Annotated[
        str | None,
        typer.Option(
            help="Relative weights per exception type, e.g. 'shortage=3,carrier_delay=1'."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write JSONL here (default stdout).")] = None,
    with_labels: Annotated[
        bool, typer.Option(help="Emit {case, labels} records (ground truth) instead of bare cases.")
    ] = False,
    post: Annotated[
        str | None, typer.Option(help="Base URL of a running instance to POST the cases to.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="TRIAGE_API_KEY", help="Orchestrator key for --post.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=500)] = 100,
) -> None:
    """Generate realistic exception cases from a simulated order-to-cash flow."""
    from triage.simulator import DEFAULT_TYPE_WEIGHTS, SimConfig, Simulator, parse_rates

    try:
        weights = parse_rates(rates) if rates else dict(DEFAULT_TYPE_WEIGHTS)
    except ValueError as exc:
        raise _fail(f"--rates: {exc}") from exc
    sim = Simulator(SimConfig(seed=seed, exception_rate=exception_rate, type_weights=weights))
    records = sim.cases(count)
    if post:
        if not api_key:
            raise _fail("--post needs --api-key (or TRIAGE_API_KEY)")
        _post_cases(post, api_key, (r.case for r in records), count, batch_size)
        return
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        for r in records:
            sink.write(json.dumps(r.as_record() if with_labels else r.case) + "\n")
    finally:
        if out:
            sink.close()
    if out:
        typer.echo(f"wrote {count} cases to {out} ({sim.orders_seen} orders simulated)", err=True)


def _post_cases(base: str, key: str, cases_iter: Any, total: int, batch_size: int) -> None:
    import httpx

    started = time.perf_counter()
    done = created = 0
    batch: list[dict[str, Any]] = []
    with httpx.Client(
        base_url=base.rstrip("/"), timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        def flush() -> None:
            nonlocal done, created
            if not batch:
                return
            resp = client.post("/v1/cases/batch", json={"items": batch})
            if resp.status_code >= 400:
                raise _fail(f"server answered {resp.status_code}: {resp.text[:300]}")
            created += resp.json()["created"]
            done += len(batch)
            batch.clear()
            _progress(done, total, started, "posted")

        for case in cases_iter:
            batch.append(case)
            if len(batch) >= batch_size:
                flush()
        flush()
    typer.echo(f"{created} created, {done - created} replayed/invalid/conflict", err=True)


# ------------------------------------------------------------------ serve, worker, demo


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _claim_store(settings: Settings, role: str) -> None:
    """Claim the embedded vector store for this process, or exit 2 naming its holder."""
    from retrieval.errors import RetrievalError
    from triage.stages import claim_vector_store

    try:
        claim_vector_store(settings, role)
    except RetrievalError as exc:
        raise _fail(f"{exc}. Nothing was started.") from exc


def _check_model(settings: Settings) -> None:
    """Refuse to start triaging on an active model version the registry refuses (exit 2 with
    the remedy) instead of failing every case's classify stage."""
    from triage.classification import ModelUnusable, check_active_model

    try:
        check_active_model(settings)
    except ModelUnusable as exc:
        raise _fail(f"{exc} Nothing was started.") from exc


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Run the embedded triage worker in-process.")] = True,
    upgrade: Annotated[bool, typer.Option(help="Apply migrations before starting.")] = True,
    log_format: Annotated[
        str,
        typer.Option(
            help="text, or json (one object per line with request ids, for log shippers)."
        ),
    ] = "text",
) -> None:
    """Serve the API (OpenAPI docs at /docs) with the embedded worker."""
    import uvicorn

    from api.app import create_app

    if log_format not in ("text", "json"):
        raise _fail("--log-format must be text or json")
    if log_format == "json":
        from api.console.observability import configure_json_logging

        configure_json_logging()
    else:
        _logging()
    settings = _settings()
    if upgrade:
        _upgrade(settings)
    if worker:
        _check_model(settings)
    _claim_store(settings, f"`triage serve` on port {port}")
    uvicorn.run(create_app(settings, start_worker=worker), host=host, port=port, log_level="info")


@app.command("worker")
def worker_cmd(
    once: Annotated[bool, typer.Option(help="Triage what is due, then exit.")] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            help="embedded (poll the cases table) or procrastinate (PostgreSQL job queue, "
            "for workers on several machines); default: TRIAGE_JOB_ENGINE."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="procrastinate: jobs run at once (TRIAGE_JOB_CONCURRENCY)."),
    ] = None,
) -> None:
    """Run a standalone triage worker process against the configured database.

    SIGTERM or SIGINT stops it gracefully: the cases in hand are finished first.
    """
    import signal

    from triage.db import Database
    from triage.worker import Worker

    _logging()
    settings = _settings()
    from triage.stages import default_pipeline

    engine = engine or settings.job_engine
    if engine not in ("embedded", "procrastinate"):
        raise _fail("--engine must be embedded or procrastinate")
    _check_model(settings)
    _claim_store(settings, "`triage worker`")
    if engine == "procrastinate":
        from triage import jobs

        try:
            jobs.require_engine(settings)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        db = Database(settings)
        with db.read() as s:
            if not jobs.schema_present(s):
                raise _fail("the job engine's schema is missing: run `triage db upgrade` first")
        jw = jobs.JobWorker(db, settings, default_pipeline(settings), concurrency=concurrency)
        typer.echo(f"worker {jw.id} running (procrastinate, {jw.concurrency} at once)", err=True)
        jw.run(once=once)
        typer.echo(f"triaged {jw.triaged} cases")
        return
    w = Worker(Database(settings), settings, default_pipeline(settings))
    if once:
        typer.echo(f"triaged {w.run_once()} cases")
        return
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    w.start()
    typer.echo(f"worker {w.id} running; Ctrl-C to stop", err=True)
    while not stop:
        time.sleep(0.5)
    w.stop()


# ------------------------------------------------------------------ jobs (procrastinate engine)


def _job_line(j: Any) -> str:
    when = j.updated_at.isoformat(timespec="seconds") if j.updated_at else "-"
    return (
        f"{j.id:>8}  {j.status:<9} attempts={j.attempts:<3} case={j.case_id or '-'}"
        f" ({j.case_status or '-'})  {when}"
    )


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="todo, doing, failed (dead letters), succeeded, ...")
    ] = "failed",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    after: Annotated[int | None, typer.Option(help="List jobs after this id (paging).")] = None,
) -> None:
    """List triage jobs of the procrastinate engine (default: the dead letters)."""
    from triage import jobs
    from triage.db import Database

    settings = _settings()
    if not jobs.enabled(settings):
        raise _fail(
            "TRIAGE_JOB_ENGINE is embedded: there are no jobs (the cases table is the queue)"
        )
    if status is not None and status not in jobs.LIST_STATUSES:
        raise _fail(f"--status must be one of {', '.join(jobs.LIST_STATUSES)}")
    with Database(settings).read() as s:
        rows = jobs.list_jobs(s, status, limit, after)
    for j in rows:
        typer.echo(_job_line(j))
    typer.echo(f"{len(rows)} jobs", err=True)


@jobs_app.command("retry")
def jobs_retry(job_id: int) -> None:
    """Re-drive a failed (dead-lettered) job; a failed case goes back to received. Audited."""
    from triage import jobs
    from triage.db import Database
    from triage.errors import TriageError

    settings = _settings()
    if not jobs.enabled(settings):
        raise _fail("TRIAGE_JOB_ENGINE is embedded: there are no jobs to retry")
    try:
        with Database(settings).write() as s:
            j = jobs.retry_job(s, job_id, actor=cli_admin())
    except TriageError as exc:
        raise _fail(exc.message) from exc
    typer.echo(_job_line(j))


@app.command("retrain")
def retrain_cmd(
    base: Annotated[
        Path | None,
        typer.Option(
            help="Base training data (CSV/JSONL); default: "
            "the data the default model was trained on."
        ),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval", help="Fixed evaluation set; default: the one stored at set-up."),
    ] = None,
) -> None:
    """Retrain on base data + reviewer overrides; activate only if not worse on the eval set."""
    from classifiers import ClassifierError
    from triage import classification, model_jobs
    from triage.db import Database
    from triage.errors import TriageError

    settings = _settings()
    db = Database(settings)
    # The same job slot as POST /v1/models/retrain: never two retrainings at once, and this
    # one shows in GET /v1/models/jobs and the console like any other.
    try:
        out = model_jobs.RETRAINING.run(
            db,
            settings,
            cli_admin(),
            classification.retrain_work(settings, db, base, eval_data),
            echo=classifier_cli.progress_printer(),
        )
    except (ClassifierError, OSError, TriageError) as exc:  # TriageError: busy, cancelled
        raise _fail(exc.message if isinstance(exc, TriageError) else str(exc)) from exc
    typer.echo(f"candidate {out['candidate_version']}: {out['reason']}")
    for check in out["checks"]:
        typer.echo(f"  - {check}")
    raise typer.Exit(0)


# ------------------------------------------------------------------ model jobs


@classifier_cli.models_app.command("jobs")
def model_jobs_list(
    kind: Annotated[str | None, typer.Option(help="train, retrain or evaluate.")] = None,
    status: Annotated[
        str | None, typer.Option(help="running, done, failed, interrupted or cancelled.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    before: Annotated[
        int | None, typer.Option(help="List jobs older than this id (paging).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List model jobs (training, retraining, evaluation), newest first.

    Read from the deployment's database: the history GET /v1/models/jobs returns."""
    from triage import model_jobs
    from triage.db import Database

    if kind is not None and kind not in model_jobs.KINDS:
        raise _fail(f"--kind must be one of {', '.join(model_jobs.KINDS)}")
    if status is not None and status not in model_jobs.STATUSES:
        raise _fail(f"--status must be one of {', '.join(model_jobs.STATUSES)}")
    settings = _settings()
    with Database(settings).read() as s:
        items, cursor = model_jobs.history(
            s,
            lease_seconds=settings.model_job_lease_seconds,
            kind=kind,
            status=status,
            before=before,
            limit=limit,
        )
    for j in items:
        if as_json:
            typer.echo(json.dumps(j, sort_keys=True))
            continue
        note = j.get("error") or j.get("progress") or ""
        typer.echo(
            f"{j['id']:>6}  {j['kind']:<8} {j['status']:<11} {j['started_at']}  "
            f"{j['started_by']}  {note}".rstrip()
        )
    more = f"; older: --before {cursor}" if cursor is not None else ""
    typer.echo(f"{len(items)} job{'' if len(items) == 1 else 's'}{more}", err=True)


@classifier_cli.models_app.command("prune-jobs")
def model_jobs_prune(
    older_than_days: Annotated[
        float, typer.Option(min=0, help="Delete ended jobs that finished more than this ago.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only count what would be deleted.")] = False,
) -> None:
    """Delete ended model jobs older than N days, with their stored results.

    An evaluation keeps its confusion matrices on its row. Running jobs are never touched,
    and the audit events of the outcomes stay. Audited as the CLI admin."""
    from triage import model_jobs
    from triage.db import Database

    count = model_jobs.prune(
        Database(_settings()),
        cli_admin(),
        older_than_days=older_than_days,
        dry_run=dry_run,
    )
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {count} model job{'' if count == 1 else 's'}")


@classifier_cli.models_app.command("cancel")
def model_jobs_cancel(job_id: Annotated[int, typer.Argument(help="The job's id.")]) -> None:
    """Ask a running model job to stop.

    It stops at its next progress line, or at once if the process running it is gone.
    Audited as the CLI admin."""
    from triage import model_jobs
    from triage.db import Database
    from triage.errors import TriageError

    settings = _settings()
    try:
        state = model_jobs.request_cancel(
            Database(settings),
            job_id,
            cli_admin(),
            lease_seconds=settings.model_job_lease_seconds,
        )
    except TriageError as exc:
        raise _fail(exc.message) from exc
    if state["status"] == "cancelled":
        typer.echo(f"job {job_id} ({state['kind']}) cancelled: its runner was gone")
    else:
        typer.echo(
            f"job {job_id} ({state['kind']}): cancel requested; it stops at its next progress line"
        )


def _answer(fetch: Callable[[], _M], *, as_json: bool) -> _M | None:
    """``fetch()``'s answer, or exit 2 with a ``TriageError``'s message; with ``as_json`` the
    answer is printed as the API's JSON object and ``None`` returned (nothing left to print)."""
    from triage.errors import TriageError

    try:
        found = fetch()
    except TriageError as exc:
        raise _fail(exc.message) from exc
    if as_json:
        typer.echo(json.dumps(found.model_dump(mode="json"), sort_keys=True))
        return None
    return found


@classifier_cli.models_app.command("explain")
def model_explain(
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    top: Annotated[int, typer.Option(min=1, max=50, help="Evidence items per target.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON object.")] = False,
) -> None:
    """Why the classifier routed a case: per target, the case's evidence for the top label
    against the runner-up (log-odds that add up to the total), recomputed with the model
    version that classified the case; or the fixed rules that decided.

    The same answer as GET /v1/cases/{id}/explanation. Exit 2 for an unknown case, one not
    classified yet, or a model version that can no longer be loaded."""
    from triage import classification
    from triage.db import Database

    settings = _settings()
    found = _answer(
        lambda: classification.explain_case(settings, Database(settings), case_id, top=top),
        as_json=as_json,
    )
    if found is None:
        return
    typer.echo(f"case {found.case_id}: classified by {found.model_version} ({found.source})")
    for target, exp in found.targets.items():
        check = "" if found.reproduced[target] else "  [stored probabilities NOT reproduced]"
        typer.echo(
            f"\n{target}: {exp.label} {exp.probability:.0%} over {exp.versus} "
            f"{exp.versus_probability:.0%} (log-odds {exp.log_odds:+.2f}){check}"
        )
        for ev in exp.evidence:
            name = f"{ev.feature} = {ev.value}" if ev.value is not None else ev.feature
            towards = exp.label if ev.weight > 0 else exp.versus
            typer.echo(f"  {ev.weight:+7.2f}  {ev.kind:<7} {name}  -> {towards}")
        typer.echo(f"  {exp.other:+7.2f}  (all other evidence)")
        typer.echo(f"  {exp.baseline:+7.2f}  (label frequency, before any evidence)")
    for target, reasons in found.rules.items():
        typer.echo(f"\n{target} (fixed rules): " + "; ".join(reasons))


@classifier_cli.models_app.command("profile")
def model_profile_cmd(
    version: Annotated[
        str | None, typer.Argument(help="The model version (default: the active one).")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="Most recent cases classified by it to read.")
    ] = 200,
    top: Annotated[int, typer.Option(min=1, max=50, help="Evidence items per label.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON object.")] = False,
) -> None:
    """What a model version relied on, per target and label, over its recent cases: each case
    explained exactly (as `triage models explain` does) and the evidence summed per label.

    The same answer as GET /v1/models/{version}/profile. Exit 2 for an unknown version or
    one that can no longer be loaded."""
    from triage import classification
    from triage.db import Database

    settings = _settings()
    chosen = version or classification.registry(settings).active_version()
    if chosen is None:
        raise _fail("no active model version: name one (triage models list)")
    found = _answer(
        lambda: classification.model_profile(
            settings, Database(settings), chosen, limit=limit, top=top
        ),
        as_json=as_json,
    )
    if found is None:
        return
    typer.echo(f"model {found.model_version}: {found.cases} most recent cases it classified")
    if not found.cases:
        typer.echo("  no cases yet: nothing to profile")
    for target, labels in found.targets.items():
        typer.echo(f"\n{target}")
        for lp in labels:
            typer.echo(
                f"  {lp.label}: {lp.cases} cases, mean probability {lp.mean_probability:.0%}, "
                f"{lp.abstained} abstained"
            )
            for ev in lp.evidence:
                name = f"{ev.feature} = {ev.value}" if ev.value is not None else ev.feature
                typer.echo(
                    f"    {ev.weight:+8.2f}  {ev.kind:<7} {name}  "
                    f"(in {ev.cases} cases, {ev.mean_weight:+.2f} each)"
                )


@app.command("demo")
def demo(
    cases: Annotated[int, typer.Option(help="Demo cases to load on first start.")] = 200,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server after loading.")
    ] = True,
) -> None:
    """Set up the embedded default (SQLite + local files), load demo data, and serve."""
    from triage import demo as demo_mod

    _logging()
    settings = _settings()
    _upgrade(settings)
    _claim_store(settings, f"`triage demo` on port {port}")
    summary = demo_mod.load(settings, cases, progress=lambda d, t, s: _progress(d, t, s, "demo"))
    typer.echo(demo_mod.describe(summary, host, port))
    if serve_after:
        serve(host=host, port=port, worker=True, upgrade=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
