"""The facade the pipeline holds: encode once, retrieve, advise, learn from resolved cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.llm import LLMAdvisor, LLMConfig
from retrieval.offline import OfflineAdvisor
from retrieval.service import RetrievalConfig, RetrievalService
from retrieval.store import ChromaConfig
from tests.retrieval.retrieval_case_factory import QUEUES, make_case


@pytest.fixture
def service(tmp_path: Path, knowledge_dir: Path) -> RetrievalService:
    svc = RetrievalService(RetrievalConfig(chroma=ChromaConfig(path=tmp_path / "chroma")))
    svc.kb.ingest([knowledge_dir])
    return svc


@pytest.mark.anyio
async def test_encode_once_retrieve_and_advise(service: RetrievalService) -> None:
    case = make_case(
        "damaged_goods",
        text={"customer_message": "10 units arrived crushed. Call me on +44 20 7946 0958."},
    )
    vector = service.encode_case(case)
    assert vector.shape == (service.encoder.dim,)
    assert "7946" not in service.case_text(case)  # the embedder never sees the phone number
    retrieved = service.retrieve(case, vector=vector)
    assert len(retrieved.passages) == 4 and retrieved.similar == []
    assert retrieved.passages[0].doc_id == "SOP-DMG-002"
    suggestion = await service.advise(case, "case-1", None, QUEUES, retrieved)
    assert isinstance(service.advisor, OfflineAdvisor)
    assert suggestion.provenance.engine == "offline"
    assert suggestion.provenance.retrieved_chunk_ids == [p.chunk_id for p in retrieved.passages]


@pytest.mark.anyio
async def test_resolved_cases_come_back_as_similar(service: RetrievalService) -> None:
    first = make_case("shortage")
    service.cases.add_resolved(
        "case-1",
        service.case_text(first),
        {"exception_type": "shortage"},
        "Reshipped 8 units",
        vector=service.encode_case(first),
    )
    again = make_case("shortage", text={"customer_message": "8 units short on our delivery"})
    suggestion = await service.advise(again, "case-2", None, QUEUES)
    assert [s.case_id for s in suggestion.similar_cases] == ["case-1"]
    assert suggestion.similar_cases[0].resolution == "Reshipped 8 units"
    # A case is never its own similar case.
    own = await service.advise(first, "case-1", None, QUEUES)
    assert own.similar_cases == []


def test_batch_retrieval_matches_single(service: RetrievalService) -> None:
    cases = [make_case(t) for t in ("shortage", "pricing_mismatch", "address_issue")]
    vectors = service.encode_cases(cases)
    assert np.allclose(vectors[1], service.encode_case(cases[1]), atol=1e-5)
    batch = service.retrieve_many(cases, vectors)
    for case, got in zip(cases, batch, strict=True):
        single = service.retrieve(case)
        assert [p.chunk_id for p in got.passages] == [p.chunk_id for p in single.passages]


def test_an_llm_config_selects_the_llm_advisor(tmp_path: Path) -> None:
    config = RetrievalConfig(
        chroma=ChromaConfig(path=tmp_path / "c"),
        llm=LLMConfig(base_url="http://llm.test/v1", model="m", api_key="k"),  # type: ignore[arg-type]
    )
    service = RetrievalService(config)
    assert isinstance(service.advisor, LLMAdvisor)
    assert service.advisor.offline is service.offline
