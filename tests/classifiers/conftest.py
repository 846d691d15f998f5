"""Fixtures for classifier tests: a small stratified slice of the shipped Bitext fixture and a
synthetic case data set whose labels follow known rules (so the tests know the answers)."""

from __future__ import annotations

import csv
import random
from typing import Any

import pytest

from classifiers.case_model import CaseModel
from classifiers.data import BITEXT_FIXTURE
from classifiers.features import CASE_FEATURE_SPEC, FeatureSpec

BITEXT = BITEXT_FIXTURE


def bitext_rows(per_intent: int, seed: int = 0) -> list[dict[str, Any]]:
    """``per_intent`` rows of each of the 27 intents (deterministic)."""
    with BITEXT.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_intent: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_intent.setdefault(row["intent"], []).append(row)
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for intent in sorted(by_intent):
        out.extend(rng.sample(by_intent[intent], per_intent))
    rng.shuffle(out)
    return out


EXCEPTIONS = {
    # exception type -> (category, queue, words in the message)
    "shortage": ("inventory", "warehouse", ["missing units", "short shipped", "fewer cartons"]),
    "pricing_mismatch": ("billing", "finance", ["price differs", "invoice price", "wrong rate"]),
    "carrier_delay": (
        "transport",
        "carrier_desk",
        ["late delivery", "truck delayed", "eta missed"],
    ),
    "damaged_goods": ("quality", "claims", ["broken boxes", "damaged pallet", "crushed items"]),
}


def synthetic_cases(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Case records whose category/queue follow the exception type and whose priority follows
    the customer tier and amount: rules the model must learn from text and structure."""
    rng = random.Random(seed)
    kinds = sorted(EXCEPTIONS)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        category, queue, phrases = EXCEPTIONS[kind]
        tier = rng.choice(["A", "B", "C"])
        amount = rng.choice([50.0, 120.0, 5_000.0, 20_000.0])
        priority = "high" if tier == "A" or amount >= 5_000 else "normal"
        text = f"{rng.choice(phrases)} on order {rng.randint(1000, 9999)} {rng.choice(phrases)}"
        out.append(
            {
                "text": text,
                "exception_type": kind,
                "customer_tier": tier,
                "warehouse_id": rng.choice(["WH1", "WH2"]),
                "carrier_id": rng.choice(["DHL", "UPS", None]),
                "source_kind": "erp",
                "amount": amount,
                "qty_gap_ratio": rng.random() if kind == "shortage" else 0.0,
                "price_gap_ratio": rng.random() if kind == "pricing_mismatch" else 0.0,
                "line_count": rng.randint(1, 9),
                "category": category,
                "queue": queue,
                "priority": priority,
            }
        )
    return out


@pytest.fixture(scope="session")
def case_records() -> list[dict[str, Any]]:
    return synthetic_cases(400)


@pytest.fixture(scope="session")
def case_model(case_records: list[dict[str, Any]]) -> CaseModel:
    return CaseModel(spec=CASE_FEATURE_SPEC, cv=3).fit(case_records)


@pytest.fixture(scope="session")
def bitext_small() -> list[dict[str, Any]]:
    return bitext_rows(20)


@pytest.fixture(scope="session")
def bitext_model(bitext_small: list[dict[str, Any]]) -> CaseModel:
    return CaseModel(
        spec=FeatureSpec(text_columns=("text",)), targets=("triage_category",), cv=3
    ).fit(bitext_small)
