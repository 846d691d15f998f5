"""Chroma plumbing: client factory and the registered embedding function.

Contract:
- :func:`open_client` builds an embedded ``PersistentClient`` on ``ChromaConfig.path`` unless
  ``ChromaConfig.url`` is set, in which case it connects to that Chroma server. Telemetry is off:
  the product makes no call it was not asked to make.
- :class:`TriageEmbeddingFunction` is registered with Chroma under the name
  ``exception_triage``; its config (the encoder spec, with a fingerprint) is stored with each
  collection so ``client.get_collection(name)`` works in a new process without passing the
  function again. Chroma's default ONNX embedding (which downloads a model) is never used:
  every collection here is created with an explicit embedding function.
- :func:`open_collection` refuses to use a collection built with a different encoder
  (different fingerprint): mixing vector spaces silently returns nonsense.
- :func:`claim_embedded` makes a process the one user of an embedded store: Chroma's embedded
  mode keeps each process's vector index in memory, so a second process's writes are not seen
  by the first (measured: a server's queries missed documents `kb ingest` added in another
  process) and both persist their own index. Servers, workers and the CLI's writing commands
  claim; a second claimant gets a :class:`StoreError` naming the holder and the remedy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.errors import ChromaError
from chromadb.utils.embedding_functions import register_embedding_function
from pydantic import BaseModel, ConfigDict

from retrieval.embeddings import Encoder, encoder_from_spec
from retrieval.errors import EncoderError, StoreError

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

try:  # POSIX: the claim on an embedded store is a file lock
    import fcntl
except ImportError:  # pragma: no cover - Windows: no claim, as before
    fcntl = None  # type: ignore[assignment]

EF_NAME = "exception_triage"
OWNER_FILE = ".triage-owner"
_CLAIMS: dict[str, Any] = {}  # resolved store path -> the open, locked owner file
_CLAIMS_GUARD = threading.Lock()


class ChromaConfig(BaseModel):
    """Where the vector store lives. ``url`` (e.g. ``http://chroma:8000``) wins over ``path``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("var/chroma")
    url: str | None = None
    knowledge_collection: str = "knowledge"
    cases_collection: str = "similar_cases"


def open_client(config: ChromaConfig) -> ClientAPI:
    """Build the Chroma client described by ``config`` (no network unless ``url`` is set)."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if config.url:
        parsed = urlparse(config.url)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise StoreError(f"Chroma URL must be http(s)://host[:port], got {config.url!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            return chromadb.HttpClient(
                host=parsed.hostname, port=port, ssl=parsed.scheme == "https", settings=settings
            )
        except Exception as exc:  # chromadb raises bare exceptions when unreachable
            raise StoreError(f"cannot reach Chroma at {config.url}: {exc}") from exc
    config.path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(config.path), settings=settings)


def claim_embedded(config: ChromaConfig, role: str) -> None:
    """Claim the embedded store at ``config.path`` for this process until it exits (a no-op
    with ``config.url``, or when this process holds the claim already).

    Raises :class:`StoreError` when another process holds it, naming that process (``role``
    and pid, as it wrote them) and the remedy: stop it, or run a Chroma server and point every
    process at it with ``TRIAGE_CHROMA_URL``. Read-only tools (``triage kb search``) need no
    claim; they read what the holder has persisted."""
    if config.url or fcntl is None:
        return
    config.path.mkdir(parents=True, exist_ok=True)
    key = str(config.path.resolve())
    with _CLAIMS_GUARD:
        if key in _CLAIMS:
            return
        handle = open(config.path / OWNER_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"the embedded vector store at {config.path} is in use by {holder}. Chroma's "
                "embedded mode serves one process: another would not see its writes and could "
                "overwrite its index. Stop that process first, or run a Chroma server "
                "(`chroma run --path DIR`) and set TRIAGE_CHROMA_URL for every process"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{role} (pid {os.getpid()})\n")
        handle.flush()
        _CLAIMS[key] = handle


@register_embedding_function
class TriageEmbeddingFunction(EmbeddingFunction[Documents]):
    """Adapter from an :class:`~retrieval.embeddings.Encoder` to Chroma's interface."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(self, input: Documents) -> Embeddings:  # Chroma's parameter name
        return list(self.encoder.encode(list(input)))

    @staticmethod
    def name() -> str:
        return EF_NAME

    def get_config(self) -> dict[str, Any]:
        return dict(self.encoder.spec())

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> TriageEmbeddingFunction:
        return TriageEmbeddingFunction(encoder_from_spec(config))

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        if old_config.get("fingerprint") != new_config.get("fingerprint"):
            raise EncoderError("changing the encoder of an existing collection needs a re-index")


def open_collection(client: ClientAPI, name: str, encoder: Encoder) -> Collection:
    """Get or create ``name`` embedded with ``encoder``; refuses a fingerprint mismatch.

    Several processes may open the same collection at once (worker processes starting against
    one Chroma server): one creates it, the others find it already there and open it.
    """
    ef = TriageEmbeddingFunction(encoder)
    if name not in {c.name for c in client.list_collections()}:
        try:
            return client.create_collection(
                name,
                embedding_function=ef,  # type: ignore[arg-type]
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"encoder_fingerprint": encoder.fingerprint, "encoder_dim": encoder.dim},
            )
        except ChromaError as exc:
            if "already exists" not in str(exc):
                raise
            # created by another process between our listing and our create: open it below
    stored = client.get_collection(name, embedding_function=None)
    stored_fp = _stored_fingerprint(stored)
    if stored_fp is not None and stored_fp != encoder.fingerprint:
        raise EncoderError(
            f"collection {name!r} was built with encoder {stored_fp}, the configured "
            f"encoder is {encoder.fingerprint}: re-index it (triage kb reindex --encoder "
            "...) or configure the original encoder"
        )
    return client.get_collection(name, embedding_function=ef)  # type: ignore[arg-type]


def reindex_collection(
    client: ClientAPI,
    name: str,
    encoder: Encoder,
    embed_text: Callable[[str, dict[str, Any]], str],
    *,
    batch: int = 1000,
) -> int:
    """Re-embed every entry of ``name`` with ``encoder`` (to switch encoders); returns the count.

    Ids, documents and metadata are kept; ``embed_text(document, metadata)`` rebuilds the text
    that was embedded. The new vectors go into a temporary collection first; only when it is
    complete is the old collection dropped and the new one renamed, so a failure half-way
    leaves the old collection untouched (and the temporary one to be dropped on the next try).
    """
    names = {c.name for c in client.list_collections()}
    if name not in names:
        return 0
    old = client.get_collection(name, embedding_function=None)
    tmp_name = f"{name}__reindex"
    if tmp_name in names:
        client.delete_collection(tmp_name)
    new = client.create_collection(
        tmp_name,
        embedding_function=TriageEmbeddingFunction(encoder),  # type: ignore[arg-type]
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"encoder_fingerprint": encoder.fingerprint, "encoder_dim": encoder.dim},
    )
    total = 0
    offset = 0
    while True:
        page = old.get(include=["documents", "metadatas"], limit=batch, offset=offset)
        ids = list(page["ids"])
        if not ids:
            break
        docs = [d or "" for d in page["documents"] or []]
        metas = [dict(m or {}) for m in page["metadatas"] or []]
        vectors = encoder.encode([embed_text(d, m) for d, m in zip(docs, metas, strict=True)])
        new.add(
            ids=ids,
            documents=docs,
            embeddings=as_rows(vectors),
            # Chroma refuses empty metadata dicts (entries added without metadata).
            metadatas=[m or {"reindexed": True} for m in metas],
        )
        total += len(ids)
        offset += len(ids)
    client.delete_collection(name)
    new.modify(name=name)
    return total


def _stored_fingerprint(collection: Collection) -> str | None:
    meta = collection.metadata or {}
    value = meta.get("encoder_fingerprint")
    return str(value) if value is not None else None


def as_rows(vectors: np.ndarray) -> list[np.ndarray]:
    """Chroma wants a list of 1-D float32 arrays."""
    return [np.asarray(row, dtype=np.float32) for row in np.atleast_2d(vectors)]
