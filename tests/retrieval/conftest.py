"""Fixtures for the retrieval tests: no network, a temporary Chroma, realistic cases.

Real network calls are blocked twice over: vcrpy runs with ``record_mode="none"`` (an
unrecorded request fails) and the socket guard below refuses any connection or DNS lookup that
is not loopback, so a forgotten cassette can never reach a real endpoint.

Re-recording (docs/retrieval.md): ``TRIAGE_RECORD_LLM=1`` switches vcrpy to
``record_mode="once"`` (only missing cassettes are recorded) and lifts the socket guard; the
endpoint comes from ``TRIAGE_LLM_BASE_URL``, ``TRIAGE_LLM_MODEL`` and ``TRIAGE_LLM_API_KEY``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import vcr

from retrieval.embeddings import Encoder, load_encoder
from retrieval.knowledge import KnowledgeBase, Passage
from retrieval.store import ChromaConfig, open_client
from tests.retrieval.llm_recording import RECORDING

HERE = Path(__file__).parent
KNOWLEDGE = HERE.parents[1] / "knowledge"
CASSETTES = HERE / "cassettes"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def _socket_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    if RECORDING:
        return
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("/"):
            raise RuntimeError(f"retrieval tests must not touch the network: {address!r}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOOPBACK and host is not None:
            raise RuntimeError(f"retrieval tests must not resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return load_encoder()


@pytest.fixture
def chroma_config(tmp_path: Path) -> ChromaConfig:
    return ChromaConfig(path=tmp_path / "chroma")


@pytest.fixture
def kb(chroma_config: ChromaConfig, encoder: Encoder) -> KnowledgeBase:
    return KnowledgeBase(open_client(chroma_config), encoder)


@pytest.fixture(scope="session")
def demo_passages() -> list[Passage]:
    """Two fixed passages (ids used by the cassettes)."""
    return [
        Passage(
            chunk_id="SOP-SHT-001:2:95900b14c8",
            doc_id="SOP-SHT-001",
            title="Shortage handling SOP",
            version="1.4",
            heading="Shortage handling SOP > Resolve",
            text="If stock is available, reship the missing quantity on the original order at "
            "our cost. If stock is not available, issue a credit note for the missing quantity "
            "multiplied by the invoiced unit price, never more.",
            chunk_hash="95900b14c8" + "0" * 54,
            source_path="knowledge/shortage-sop.md",
            score=0.61,
        ),
        Passage(
            chunk_id="POL-CRN-004:1:0a1b2c3d4e",
            doc_id="POL-CRN-004",
            title="Credit note rules",
            version="2.1",
            heading="Credit note rules > Allowed reasons",
            text="SHORTAGE: missing quantity multiplied by the invoiced unit price.",
            chunk_hash="0a1b2c3d4e" + "0" * 54,
            source_path="knowledge/credit-note-rules.md",
            score=0.48,
        ),
    ]


@pytest.fixture
def cassette_vcr() -> vcr.VCR:
    return vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="once" if RECORDING else "none",
        match_on=["method", "scheme", "host", "port", "path"],
        filter_headers=["authorization"],
        decode_compressed_response=True,
    )


@pytest.fixture
def knowledge_dir() -> Path:
    return KNOWLEDGE


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio only (the product's event loop)."""
    return "asyncio"
