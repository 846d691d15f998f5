"""Knowledge base and case index on a real embedded Chroma (temporary folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings

from retrieval.cases import CaseIndex
from retrieval.chunking import chunk_document, load_document
from retrieval.embeddings import Encoder, HashingEncoder
from retrieval.errors import EncoderError, IngestError
from retrieval.knowledge import KnowledgeBase
from retrieval.redaction import Redactor
from retrieval.store import ChromaConfig, open_client
from tests.support import build_pdf


def test_ingest_is_idempotent_and_reports_counts(kb: KnowledgeBase, knowledge_dir: Path) -> None:
    first = kb.ingest([knowledge_dir])
    assert first.added == 11 and first.unchanged == 0 and not first.errors
    assert kb.count() == first.chunks_added > 11
    second = kb.ingest([knowledge_dir])
    assert second.added == 0 and second.unchanged == 11 and second.chunks_added == 0
    assert kb.count() == first.chunks_added


def test_changed_document_replaces_its_old_chunks(kb: KnowledgeBase, tmp_path: Path) -> None:
    doc = tmp_path / "sop.md"
    doc.write_text(
        "---\nid: SOP-X\ntitle: Test SOP\nversion: '1'\n---\n# Test SOP\n\n## A\nOld rule one."
        "\n\n## B\nOld rule two.\n",
        encoding="utf-8",
    )
    kb.ingest([doc])
    old_ids = {p.chunk_id for p in kb.search("old rule", k=10)}
    assert len(old_ids) == 2
    doc.write_text(
        "---\nid: SOP-X\ntitle: Test SOP\nversion: '2'\n---\n# Test SOP\n\n## A\nNew rule.\n",
        encoding="utf-8",
    )
    report = kb.ingest([doc])
    assert report.updated == 1 and report.chunks_removed == 2 and report.chunks_added == 1
    hits = kb.search("rule", k=10)
    assert [p.version for p in hits] == ["2"]
    assert not old_ids & {p.chunk_id for p in hits}
    assert kb.stats().documents == {"SOP-X": "2"}


def test_search_finds_the_matching_procedure(kb: KnowledgeBase, knowledge_dir: Path) -> None:
    kb.ingest([knowledge_dir])
    expectations = {
        "the pallet arrived crushed and wet": "SOP-DMG-002",
        "customer wants to change the delivery address": "SOP-ADR-009",
        "unit price on the invoice is higher than the agreed price": "SOP-PRC-010",
        "EDI message rejected with HTTP 500 error, resend": "RUN-INT-008",
    }
    for query, doc_id in expectations.items():
        top3 = [p.doc_id for p in kb.search(query, k=3)]
        assert doc_id in top3, (query, top3)
    best = kb.search("the pallet arrived crushed and wet", k=1)[0]
    assert 0 < best.score <= 1 and best.chunk_hash and best.source_path.endswith(".md")
    assert best.citation().chunk_id == best.chunk_id


def test_collection_reopens_in_a_new_client_without_passing_the_function(
    kb: KnowledgeBase, knowledge_dir: Path, chroma_config: ChromaConfig
) -> None:
    kb.ingest([knowledge_dir])
    expected = [p.chunk_id for p in kb.search("damaged goods photos", k=3)]
    # A plain client in "another process": Chroma rebuilds our registered embedding function
    # from the stored config, so query_texts works and embeds exactly as before.
    client = chromadb.PersistentClient(
        path=str(chroma_config.path), settings=Settings(anonymized_telemetry=False)
    )
    collection = client.get_collection("knowledge")
    got = collection.query(query_texts=["damaged goods photos"], n_results=3)["ids"][0]
    assert got == expected


def test_a_different_encoder_is_refused(kb: KnowledgeBase, chroma_config: ChromaConfig) -> None:
    with pytest.raises(EncoderError, match="re-index"):
        KnowledgeBase(open_client(chroma_config), HashingEncoder(n_features=256))


def test_text_and_pdf_documents_are_ingested(kb: KnowledgeBase, tmp_path: Path) -> None:
    (tmp_path / "terms.txt").write_text(
        "Payment terms are 30 days net.\n\nLate payment interest is 8 percent.", encoding="utf-8"
    )
    (tmp_path / "claims.pdf").write_bytes(
        build_pdf("Pallet damage claims must reach the carrier within seven days.")
    )
    (tmp_path / "notes.docx").write_bytes(b"ignored: not a supported type")
    report = kb.ingest([tmp_path])
    assert report.added == 2 and not report.errors
    pdf = load_document(tmp_path / "claims.pdf")
    assert pdf.kind == "pdf" and "carrier within seven days" in pdf.body
    assert chunk_document(pdf)[0].page == 1
    assert kb.search("late payment interest", k=1)[0].doc_id == "terms"


def test_pdfs_that_cannot_be_ingested_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unreadable PDF is an IngestError naming the problem (the API turns it into a
    422), never another exception: damaged, not a PDF, password-protected, no text layer, too
    long."""
    import io

    from pypdf import PdfReader, PdfWriter

    from retrieval import chunking
    from retrieval.chunking import parse_document

    two = build_pdf("Claims within seven days.", "Photographs at the dock.")
    doc = parse_document("claims.pdf", two)
    assert [c.page for c in chunk_document(doc)] == [1, 2]

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(two)))
    writer.encrypt("s3cret")
    locked = io.BytesIO()
    writer.write(locked)
    problems = {
        "not a PDF file": b"PK\x03\x04 a zip archive",
        "cannot read the PDF": b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >>\n%%EOF",
        "password-protected": locked.getvalue(),
        "no text layer": build_pdf(""),
    }
    for expected, data in problems.items():
        with pytest.raises(IngestError, match=expected) as info:
            parse_document("manual.pdf", data)
        assert str(info.value).startswith("manual.pdf: "), info.value
    monkeypatch.setattr(chunking, "MAX_PDF_PAGES", 1)
    with pytest.raises(IngestError, match="has 2 pages, more than 1"):
        parse_document("manual.pdf", two)


def test_unreadable_file_is_reported_not_fatal(kb: KnowledgeBase, tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe\x00 not utf-8 \x81")
    (tmp_path / "good.md").write_text("# Good\n\nA rule.", encoding="utf-8")
    report = kb.ingest([tmp_path, tmp_path / "missing.md"])
    assert report.added == 1
    assert {e.path.rsplit("/", 1)[-1] for e in report.errors} == {"bad.md", "missing.md"}


def test_markdown_chunks_follow_headings(knowledge_dir: Path) -> None:
    doc = load_document(knowledge_dir / "shortage-sop.md")
    assert (doc.doc_id, doc.title, doc.version) == ("SOP-SHT-001", "Shortage handling SOP", "1.4")
    chunks = chunk_document(doc)
    assert [c.heading.split(" > ")[-1] for c in chunks] == [
        "When this applies",
        "Verify the shortage",
        "Resolve",
        "Timelines",
        "Customer communication",
    ]
    assert all(c.chunk_id.startswith("SOP-SHT-001:") for c in chunks)
    assert len({c.chunk_hash for c in chunks}) == len(chunks)


def test_case_index_upserts_and_accepts_vectors(
    chroma_config: ChromaConfig, encoder: Encoder
) -> None:
    index = CaseIndex(open_client(chroma_config), encoder, redactor=Redactor())
    index.add_resolved(
        "C-1", "received 30 of 40 units, short pick", {"exception_type": "shortage"}, "reshipped"
    )
    index.add_resolved(
        "C-2",
        "invoice billed twice for the same delivery",
        {"exception_type": "duplicate_invoice"},
        "credited duplicate",
    )
    index.add_resolved(
        "C-1", "received 30 of 40 units, short pick", {"exception_type": "shortage"}, "credit note"
    )
    assert index.count() == 2
    hits = index.similar("we got 8 units less than we ordered", k=2)
    assert hits[0].case_id == "C-1" and hits[0].resolution == "credit note"
    vector = encoder.encode(["double billing on one delivery"])[0]
    assert index.similar(vector, k=1)[0].to_contract().exception_type == "duplicate_invoice"
    assert [h.case_id for h in index.similar(vector, k=2, exclude_case_id="C-2")] == ["C-1"]


def test_case_index_stores_redacted_text(chroma_config: ChromaConfig, encoder: Encoder) -> None:
    index = CaseIndex(open_client(chroma_config), encoder, redactor=Redactor())
    index.add_resolved("C-9", "mail me at jane.doe@example.com about order 113542617735902")
    hit = index.similar("order question", k=1)[0]
    assert "jane.doe" not in hit.text and "<EMAIL_1>" in hit.text
    assert "113542617735902" in hit.text


def test_empty_index_returns_nothing(kb: KnowledgeBase, encoder: Encoder) -> None:
    assert kb.search("anything") == []
    assert kb.search_vectors(np.zeros((0, encoder.dim), dtype=np.float32)) == []


def test_reopened_store_survives_copy(
    kb: KnowledgeBase,
    knowledge_dir: Path,
    tmp_path: Path,
    chroma_config: ChromaConfig,
    encoder: Encoder,
) -> None:
    kb.ingest([knowledge_dir / "returns-policy.md"])
    copy = tmp_path / "copy"
    shutil.copytree(chroma_config.path, copy)
    again = KnowledgeBase(open_client(ChromaConfig(path=copy)), encoder)
    assert again.ingest([knowledge_dir / "returns-policy.md"]).unchanged == 1


def test_reindex_switches_the_encoder(
    kb: KnowledgeBase, knowledge_dir: Path, chroma_config: ChromaConfig, encoder: Encoder
) -> None:
    kb.ingest([knowledge_dir])
    client = open_client(chroma_config)
    CaseIndex(client, encoder).add_resolved("C-1", "pallet crushed in transit", {}, "credited")
    other = HashingEncoder(n_features=512)
    with pytest.raises(EncoderError):
        KnowledgeBase(client, other)
    chunks = kb.count()
    assert KnowledgeBase.reindex(client, other) == chunks
    assert CaseIndex.reindex(client, other) == 1
    switched = KnowledgeBase(client, other)
    assert switched.stats().encoder == other.fingerprint
    # Same vectors as a fresh ingest with the new encoder, hence the same ranking.
    fresh = KnowledgeBase(open_client(ChromaConfig(path=chroma_config.path.parent / "f")), other)
    fresh.ingest([knowledge_dir])
    query = "the pallet arrived crushed and wet"
    assert [p.chunk_id for p in switched.search(query, k=5)] == [
        p.chunk_id for p in fresh.search(query, k=5)
    ]
    assert switched.ingest([knowledge_dir]).unchanged == 11  # metadata survived
    assert CaseIndex(client, other).similar("crushed pallet", k=1)[0].resolution == "credited"
    with pytest.raises(EncoderError):
        KnowledgeBase(client, encoder)


def test_chroma_default_onnx_embedding_is_never_used(
    monkeypatch: pytest.MonkeyPatch,
    chroma_config: ChromaConfig,
    encoder: Encoder,
    knowledge_dir: Path,
) -> None:
    """Chroma's default embedding downloads an ONNX model at first use: it must never run."""
    from chromadb.api import types
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse_init(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default ONNX embedding was built")

    def refuse_call(self: object, input: object) -> None:  # Chroma checks this signature
        raise AssertionError("Chroma's default embedding was called")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__init__", refuse_init)
    monkeypatch.setattr(types.DefaultEmbeddingFunction, "__call__", refuse_call)
    kb = KnowledgeBase(open_client(chroma_config), encoder)
    kb.ingest([knowledge_dir / "shortage-sop.md"])
    again = KnowledgeBase(open_client(chroma_config), encoder)
    assert again.search("missing units", k=1)[0].doc_id == "SOP-SHT-001"
    index = CaseIndex(open_client(chroma_config), encoder)
    index.add_resolved("C-1", "short delivery", {}, "reshipped")
    assert index.similar("short delivery", k=1)[0].case_id == "C-1"


def test_a_collection_created_by_another_process_meanwhile_is_opened(
    chroma_config: ChromaConfig, encoder: Encoder
) -> None:
    """Two workers start at once against one Chroma server: both list no collection, one
    creates it, the other's create answers "already exists" and must open it instead."""
    from retrieval.store import open_collection

    client = open_client(chroma_config)
    first = open_collection(client, "similar_cases", encoder)

    class LateLister:
        """The second worker's view: its listing was taken before the first one created."""

        def __getattr__(self, attr: str) -> object:
            return getattr(client, attr)

        def list_collections(self) -> list[object]:
            return []

    second = open_collection(LateLister(), "similar_cases", encoder)  # type: ignore[arg-type]
    assert second.id == first.id
    with pytest.raises(EncoderError, match="re-index"):  # the fingerprint check still holds
        open_collection(LateLister(), "similar_cases", HashingEncoder(n_features=256))  # type: ignore[arg-type]
