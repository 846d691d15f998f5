"""The knowledge base against a real Chroma server (``chroma run`` on loopback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.embeddings import Encoder
from retrieval.knowledge import KnowledgeBase
from retrieval.store import ChromaConfig, open_client

CHROMA = Path(sys.executable).parent / "chroma"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    if not CHROMA.is_file() and shutil.which("chroma") is None:
        pytest.fail("the chroma CLI (installed with chromadb) is missing")
    port = _free_port()
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    proc = subprocess.Popen(
        [
            str(CHROMA),
            "run",
            "--path",
            str(tmp_path / "server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma server did not start within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.integration
def test_ingest_and_search_through_a_chroma_server(
    chroma_server: str, encoder: Encoder, knowledge_dir: Path
) -> None:
    config = ChromaConfig(url=chroma_server)
    kb = KnowledgeBase(open_client(config), encoder)
    assert kb.ingest([knowledge_dir]).added == 11
    assert kb.ingest([knowledge_dir]).unchanged == 11
    assert kb.search("the pallet arrived crushed and wet", k=1)[0].doc_id == "SOP-DMG-002"
    # The server stored our embedding function's config: a fresh client embeds queries itself.
    import chromadb
    from chromadb.config import Settings

    host, port = chroma_server.removeprefix("http://").split(":")
    plain = chromadb.HttpClient(
        host=host, port=int(port), settings=Settings(anonymized_telemetry=False)
    )
    ids = plain.get_collection("knowledge").query(
        query_texts=["the pallet arrived crushed and wet"], n_results=1
    )["ids"][0]
    assert ids[0].startswith("SOP-DMG-002:")
