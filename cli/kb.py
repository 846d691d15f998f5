"""``triage kb``: ingest, search and inspect the knowledge base.

Mounted by the main CLI with ``app.add_typer(kb.app, name="kb")``. Options fall back to the
``TRIAGE_CHROMA_PATH``, ``TRIAGE_CHROMA_URL`` and ``TRIAGE_ENCODER`` environment variables (the
CLI is the process boundary, the only place where the environment is read).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from retrieval.defaults import DEFAULT_ENCODER
from retrieval.errors import RetrievalError

if TYPE_CHECKING:
    from retrieval.knowledge import KnowledgeBase
    from retrieval.store import ChromaConfig
    from triage.audit import Intent

app = typer.Typer(
    help="Knowledge base: ingest documents, search what would be retrieved, show statistics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ChromaPath = Annotated[
    Path | None,
    typer.Option(
        "--chroma-path",
        envvar="TRIAGE_CHROMA_PATH",
        help="Embedded Chroma folder (default: the deployment's, <data_dir>/chroma; "
        "TRIAGE_DATA_DIR or var). Changes to the deployment's store are audited.",
        show_default=False,
    ),
]
ChromaUrl = Annotated[
    str | None,
    typer.Option("--chroma-url", envvar="TRIAGE_CHROMA_URL", help="Chroma server URL."),
]
EncoderName = Annotated[
    str,
    typer.Option(
        "--encoder",
        envvar="TRIAGE_ENCODER",
        help="builtin:minilm-static-v2 (default), builtin:lsa-char-v1, hashing, minilm, "
        "or a fitted encoder folder.",
    ),
]


def _store(chroma_path: Path | None, chroma_url: str | None) -> tuple[ChromaConfig, bool]:
    """The store the options name, and whether it is the deployment's (the one ``triage
    serve`` uses with these settings), whose changes go on the audit trail."""
    from retrieval.store import ChromaConfig
    from triage.settings import get_settings

    settings = get_settings()
    deployment = ChromaConfig(path=settings.chroma_dir, url=settings.chroma_url)
    config = ChromaConfig(path=chroma_path or deployment.path, url=chroma_url)
    if config.url or deployment.url:
        return config, config.url == deployment.url
    return config, config.path.resolve() == deployment.path.resolve()


def _kb(config: ChromaConfig, encoder: str, *, writer: str | None = None) -> KnowledgeBase:
    """The knowledge base; ``writer`` (the command) claims an embedded store first."""
    from retrieval.embeddings import EncoderConfig, load_encoder
    from retrieval.knowledge import KnowledgeBase
    from retrieval.store import claim_embedded, open_client

    if writer is not None:
        claim_embedded(config, writer)
    return KnowledgeBase(
        open_client(config),
        load_encoder(EncoderConfig(name=encoder)),
        config.knowledge_collection,
    )


def _on_trail(
    audited: bool, change: str | Intent, step: Callable[[], dict[str, Any]], nothing: str
) -> dict[str, Any]:
    """Run ``step``, on the deployment's audit trail when ``audited`` (``change``: its action,
    or the Intent of a long change; see ``cli.actors.on_deployment_trail``): the deployment's
    store, whose changes the API audits too. Another folder (an experiment) has no audit
    trail. Exit 2 when the trail cannot be written (``nothing`` says what was left undone)."""
    if not audited:
        return step()
    from cli.actors import on_deployment_trail

    return on_deployment_trail(
        change, step, target="this is the deployment's knowledge base", nothing=nothing
    )


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .pdf).")],
    chroma_path: ChromaPath = None,
    chroma_url: ChromaUrl = None,
    encoder: EncoderName = DEFAULT_ENCODER,
) -> None:
    """Ingest documents; unchanged documents are skipped, changed ones replaced. Every file is
    read first (one that cannot be read is reported and skipped); on the deployment's store the
    ingest is audited as the API's is (knowledge.ingest_started, then knowledge.ingested)."""
    from retrieval.chunking import load_document
    from retrieval.errors import IngestError
    from retrieval.knowledge import DocumentOutcome, IngestReport, expand_paths
    from triage.stages import knowledge_ingest_intent, knowledge_ingested

    config, audited = _store(chroma_path, chroma_url)
    try:
        kb = _kb(config, encoder, writer="`triage kb ingest`")
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    files = expand_paths(paths)
    if not files:
        raise _fail("no supported files (.md, .txt, .pdf) under the given paths")
    done = 0

    def progress(outcome: DocumentOutcome) -> None:
        nonlocal done
        done += 1
        colour = typer.colors.RED if outcome.status == "error" else None
        detail = outcome.error or (
            f"{outcome.doc_id} v{outcome.version}: +{outcome.chunks_added} "
            f"-{outcome.chunks_removed} chunks"
        )
        typer.secho(f"[{done}/{len(files)}] {outcome.status:9s} {detail}", fg=colour)

    docs, unreadable = [], []
    for path in files:
        try:
            docs.append(load_document(path))
        except IngestError as exc:
            unreadable.append(DocumentOutcome(path=str(path), status="error", error=str(exc)))
            progress(unreadable[-1])
    report = IngestReport(documents=list(unreadable))

    def step() -> dict[str, Any]:
        report.documents.extend(kb.ingest_documents(docs, progress=progress).documents)
        return knowledge_ingested(report, kb.count())

    try:
        done_payload = _on_trail(
            audited and bool(docs),
            knowledge_ingest_intent(docs),
            step,
            nothing="nothing was ingested",
        )
    except RetrievalError as exc:  # the store failed part-way (audited knowledge.ingest_failed)
        raise _fail(str(exc)) from exc
    typer.echo(
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.errors)} errors; {report.chunks_added} chunks added, "
        f"{report.chunks_removed} removed; {done_payload['chunks']} chunks in the knowledge base"
    )
    if report.errors:
        raise typer.Exit(1)


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="Query text, e.g. a customer message.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=50, help="Passages to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    chroma_path: ChromaPath = None,
    chroma_url: ChromaUrl = None,
    encoder: EncoderName = DEFAULT_ENCODER,
) -> None:
    """Show what would be retrieved for TEXT and why (cosine score, document, chunk id)."""
    try:
        kb = _kb(_store(chroma_path, chroma_url)[0], encoder)
        passages = kb.search(text, k)
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "query": text,
                    "encoder": kb.encoder.fingerprint,
                    "score": "cosine similarity (1 = same direction)",
                    "results": [p.model_dump() for p in passages],
                },
                indent=2,
            )
        )
        return
    if not passages:
        typer.echo("no passages: the knowledge base is empty (run `triage kb ingest knowledge/`)")
        return
    for rank, p in enumerate(passages, start=1):
        typer.secho(
            f"{rank}. score {p.score:.3f}  {p.doc_id} v{p.version}  {p.chunk_id}", bold=True
        )
        typer.echo(f"   {p.heading}")
        snippet = " ".join(p.text.split())
        typer.echo(f"   {snippet[:240]}{'...' if len(snippet) > 240 else ''}")


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    chroma_path: ChromaPath = None,
    chroma_url: ChromaUrl = None,
    encoder: EncoderName = DEFAULT_ENCODER,
) -> None:
    """Chunks, documents (with versions) and the encoder of the knowledge base."""
    try:
        info = _kb(_store(chroma_path, chroma_url)[0], encoder).stats()
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(
        f"collection {info.collection}: {info.chunks} chunks from {len(info.documents)} "
        f"documents; encoder {info.encoder} ({info.encoder_dim} dims)"
    )
    for doc_id, version in info.documents.items():
        typer.echo(f"  {doc_id}  v{version}")


@app.command()
def remove(
    doc_id: Annotated[str, typer.Argument(help="Document id (as `triage kb stats` lists it).")],
    chroma_path: ChromaPath = None,
    chroma_url: ChromaUrl = None,
    encoder: EncoderName = DEFAULT_ENCODER,
) -> None:
    """Remove a document from the knowledge base: it is no longer retrieved or cited (a running
    server does the same with DELETE /v1/knowledge/documents/{doc_id}). Audited
    knowledge.removed on the deployment's store."""
    from triage.stages import knowledge_removed

    config, audited = _store(chroma_path, chroma_url)

    def step() -> dict[str, Any]:
        removed = kb.remove(doc_id)
        if removed is None:  # raised inside the step: no event is written
            raise _fail(f"the knowledge base holds no document {doc_id!r} (see `triage kb stats`)")
        return knowledge_removed(removed, kb.count())

    try:
        kb = _kb(config, encoder, writer="`triage kb remove`")
        done = _on_trail(audited, "knowledge.removed", step, nothing="nothing was removed")
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"removed {doc_id}: {done['chunks_removed']} chunks; {done['chunks']} chunks in the "
        "knowledge base"
    )


@app.command()
def reindex(
    chroma_path: ChromaPath = None,
    chroma_url: ChromaUrl = None,
    encoder: EncoderName = DEFAULT_ENCODER,
) -> None:
    """Re-embed the knowledge base and the similar-case index with --encoder (after switching
    encoders; ids, texts and metadata are kept). Audited on the deployment's store
    (knowledge.reindex_started, then knowledge.reindexed)."""
    from retrieval.cases import CaseIndex
    from retrieval.embeddings import EncoderConfig, load_encoder
    from retrieval.knowledge import KnowledgeBase
    from retrieval.store import claim_embedded, open_client
    from triage import audit

    config, audited = _store(chroma_path, chroma_url)
    try:
        claim_embedded(config, "`triage kb reindex`")
        client = open_client(config)
        enc = load_encoder(EncoderConfig(name=encoder))

        def step() -> dict[str, Any]:
            chunks = KnowledgeBase.reindex(client, enc, config.knowledge_collection)
            cases = CaseIndex.reindex(client, enc, config.cases_collection)
            return {"encoder": enc.fingerprint, "chunks": chunks, "cases": cases}

        intent = audit.Intent(
            started="knowledge.reindex_started",
            done="knowledge.reindexed",
            failed="knowledge.reindex_failed",
            payload={"encoder": enc.fingerprint},
        )
        done = _on_trail(audited, intent, step, nothing="nothing was re-embedded")
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"re-embedded {done['chunks']} chunks and {done['cases']} cases with {enc.fingerprint}"
    )


@app.command("rebuild-cases")
def rebuild_cases() -> None:
    """Put every resolved case of the deployment's database back into the similar-case index
    (after the vector store was lost, or restored from a backup without it), with progress.
    Uses the deployment's store and encoder (TRIAGE_DATA_DIR, TRIAGE_CHROMA_PATH|URL,
    TRIAGE_ENCODER); an embedded store must be free (stop the server). Audited
    similar_cases.rebuild_started, then similar_cases.rebuilt."""
    from cli.actors import on_deployment_trail
    from triage import audit
    from triage.db import Database
    from triage.settings import get_settings
    from triage.stages import RetrievalStage, claim_vector_store, rebuild_case_index

    settings = get_settings()
    if not settings.retrieval_enabled:
        raise _fail("retrieval is disabled (TRIAGE_RETRIEVAL_ENABLED=false): there is no index")
    try:
        claim_vector_store(settings, "`triage kb rebuild-cases`")
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    stage = RetrievalStage(settings)
    db = Database(settings)

    def progress(done: int, total: int) -> None:
        typer.echo(f"\rindexed {done}/{total} resolved cases", err=True, nl=done >= total)

    def step() -> dict[str, Any]:
        return {"cases": rebuild_case_index(db, stage, progress=progress)}

    intent = audit.Intent(
        started="similar_cases.rebuild_started",
        done="similar_cases.rebuilt",
        failed="similar_cases.rebuild_failed",
        payload={"encoder": settings.encoder},
    )
    try:
        done = on_deployment_trail(
            intent,
            step,
            target="the similar-case index is the deployment's",
            nothing="nothing was indexed",
        )
    except RetrievalError as exc:  # the store failed part-way (audited ..._failed)
        raise _fail(str(exc)) from exc
    finally:
        db.dispose()
    typer.echo(f"{done['cases']} resolved cases in the similar-case index")


def _corpus(paths: list[Path], text_columns: list[str]) -> list[str]:
    """Texts of the given files: one per line of a ``.txt`` file, one per chunk of a document
    (``.md``, ``.pdf``, knowledge folders), one per row of a CSV or JSONL export (its
    ``text_columns`` joined as the classifier joins them). Exits 2 naming the file at fault."""
    from classifiers import ClassifierError
    from classifiers.data import SUPPORTED_EXTENSIONS, load_records
    from classifiers.features import texts_of
    from retrieval.chunking import SUPPORTED_SUFFIXES, chunk_document, load_document
    from retrieval.knowledge import expand_paths

    texts: list[str] = []
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(expand_paths([path]))
        elif not path.is_file():
            raise _fail(f"{path}: no such file or folder")
        else:
            files.append(path)
    for path in files:
        suffix = path.suffix.lower()
        try:
            if suffix in SUPPORTED_EXTENSIONS:
                records = load_records(path)
                missing = [c for c in text_columns if not any(c in r for r in records)]
                if missing:
                    columns = ", ".join(sorted(records[0])) if records else "none"
                    raise _fail(
                        f"{path}: no column {', '.join(map(repr, missing))} "
                        f"(columns: {columns}); choose with --text-column"
                    )
                texts.extend(t for t in texts_of(records, text_columns) if t.strip())
            elif suffix == ".txt":
                texts.extend(
                    line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
                )
            elif suffix in SUPPORTED_SUFFIXES:
                texts.extend(c.embed_text for c in chunk_document(load_document(path)))
            else:
                raise _fail(
                    f"{path}: unsupported file type {suffix or '(none)'!r}; use "
                    + ", ".join(sorted({*SUPPORTED_EXTENSIONS, *SUPPORTED_SUFFIXES}))
                )
        except ClassifierError as exc:  # already names the file
            raise _fail(str(exc)) from exc
        except (OSError, UnicodeDecodeError, RetrievalError) as exc:
            raise _fail(f"{path}: {exc}") from exc
    return texts


TextColumns = Annotated[
    list[str],
    typer.Option(
        "--text-column",
        help="Text column of CSV/JSONL files (repeat for several, joined per row).",
    ),
]


@app.command("fit-encoder")
def fit_encoder(
    corpus: Annotated[
        list[Path],
        typer.Argument(
            help="Text files (one text per line), documents or knowledge folders, CSV/JSONL "
            "exports."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the encoder to.")],
    dim: Annotated[
        int, typer.Option("--dim", min=8, max=1024, help="Dimensions of the vectors.")
    ] = 256,
    text_column: TextColumns = ["text"],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Fit a TF-IDF + SVD encoder on your own texts (then use it with --encoder FOLDER).

    A collection built with one encoder must be re-ingested to use another.
    """
    from retrieval.embeddings import LsaConfig, LsaEncoder

    texts = _corpus(corpus, text_column)
    try:
        encoder = LsaEncoder.fit(texts, LsaConfig(dim=dim))
    except RetrievalError as exc:
        raise _fail(str(exc)) from exc
    encoder.save(out)
    typer.echo(
        f"fitted on {len(texts)} texts: vocabulary {len(encoder.vocabulary)}, dim {encoder.dim}, "
        f"fingerprint {encoder.fingerprint} -> {out}"
    )


@app.command("distil-encoder")
def distil_encoder(
    corpus: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Your unlabelled texts: CSV/JSONL case exports, text files (one text per "
            "line), documents or knowledge folders."
        ),
    ] = None,
    *,
    teacher: Annotated[
        Path,
        typer.Option(
            "--teacher",
            help="An ONNX sentence-encoder folder (bench/export_minilm_onnx.py writes one).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the static table to.")],
    text_column: TextColumns = ["text"],  # noqa: B006 - typer reads the default, never mutates it
    augment: Annotated[
        int, typer.Option("--augment", min=0, max=8, help="Typo'd variants per text.")
    ] = 2,
    dim: Annotated[
        int,
        typer.Option("--dim", min=8, max=1024, help="Dimensions kept (PCA of the teacher's)."),
    ] = 256,
    max_texts: Annotated[
        int, typer.Option("--max-texts", min=1, help="Sample this many distinct texts at most.")
    ] = 40_000,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace the static encoder already in --out (models and indexes built on it "
            "must then be retrained and re-indexed).",
        ),
    ] = False,
    from_cases: Annotated[
        bool,
        typer.Option(
            "--from-cases",
            help="Add the texts of the most recent stored cases (up to --max-texts) from the "
            "database (TRIAGE_DATABASE_URL).",
        ),
    ] = False,
) -> None:
    """Distil a fast static encoder from an ONNX teacher, refined on your own texts.

    The result runs like the default encoder (numpy, thousands of texts per second) and,
    refined on the operator's texts, comes close to its teacher's accuracy (docs/classifier.md).
    Texts only, never labels. Then: `triage kb reindex --encoder OUT` and
    `triage train --encoder OUT ...`, and serve with TRIAGE_ENCODER=OUT.
    """
    from retrieval.distil import DistilConfig, distil_static_table
    from retrieval.embeddings import OnnxEncoder

    if not corpus and not from_cases:
        raise _fail("give files of texts, --from-cases, or both")
    texts = _corpus(corpus or [], text_column)
    if from_cases:
        texts += _stored_case_texts(max_texts)
    if not texts:
        raise _fail("no texts in the given files" + (" or stored cases" if from_cases else ""))
    texts = _redacted_like_the_pipeline(texts)
    try:
        config = DistilConfig(dim=dim, augment=augment, max_texts=max_texts)
        encoder = OnnxEncoder(teacher.expanduser().resolve(), source=str(teacher))
        table = distil_static_table(
            encoder, texts, out, config, replace=replace, progress=typer.echo
        )
    except (RetrievalError, OSError) as exc:  # an OSError names the teacher's or --out's file
        raise _fail(str(exc)) from exc
    typer.echo(
        f"distilled {teacher}: vocabulary {table.vectors.shape[0]}, dim {table.dim}, "
        f"fingerprint {table.fingerprint} -> {out}"
    )


def _stored_case_texts(limit: int) -> list[str]:
    """The classifier's text of the most recent stored cases (``triage.classification``)."""
    from sqlalchemy.exc import SQLAlchemyError

    from triage.classification import case_texts
    from triage.db import Database
    from triage.errors import TriageError
    from triage.settings import get_settings

    try:
        db = Database(get_settings())
        with db.read() as session:
            texts = case_texts(session, limit)
    except (TriageError, OSError, SQLAlchemyError) as exc:
        # no database, or one not migrated: say so in one line, not a traceback
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(f"reading stored cases: {detail}") from exc
    typer.echo(f"stored cases: {len(texts)} texts")
    return texts


def _redacted_like_the_pipeline(texts: list[str]) -> list[str]:
    """The texts with personal data replaced as the pipeline replaces it before embedding a
    case (``TRIAGE_REDACTION_ENABLED``, on by default): the table is then fitted on the text
    it will encode, and names, e-mails or phone numbers do not shape it."""
    from retrieval.redaction import Redactor
    from triage.settings import get_settings
    from triage.stages import retrieval_config

    config = retrieval_config(get_settings()).redaction  # the pipeline's own
    if not config.enabled:
        return texts
    redactor = Redactor(config)
    out = [redactor.redact_text(t) for t in texts]
    changed = sum(a != b for a, b in zip(texts, out, strict=True))
    typer.echo(f"redacted personal data in {changed} of {len(texts)} texts, as the pipeline does")
    return out
