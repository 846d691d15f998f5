"""False positives of redaction and injection detection on real customer text.

Bitext and BANKING77 requests hold order, purchase, invoice and account numbers but no real
personal data and no prompt injections, so every redaction or injection flag on them is a
false positive. Redaction is measured twice: Presidio's recognizers as shipped (offline TLD
check) and the product's :class:`~retrieval.redaction.Redactor` (reference guards, gates).

    nice .venv/bin/python bench/retrieval_untrusted_text.py \
        [--bitext ../shared/data/bitext/bench_train_2023.csv] \
        [--banking ../shared/data/banking77/train.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.injection import detect_injection  # noqa: E402
from retrieval.redaction import Redactor  # noqa: E402


def raw_presidio_hits(texts: list[str]) -> tuple[int, Counter[str], list[str]]:
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmail(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extract(pattern_text).fqdn)

    recognizers = [
        OfflineEmail(),
        PhoneRecognizer(),
        IbanRecognizer(),
        CreditCardRecognizer(),
        IpRecognizer(),
    ]
    n = 0
    kinds: Counter[str] = Counter()
    examples: list[str] = []
    for text in texts:
        found = [
            (r.entity_type, text[r.start : r.end])
            for rec in recognizers
            for r in rec.analyze(text, entities=rec.supported_entities, nlp_artifacts=None)
            if r.score >= 0.4
        ]
        if found:
            n += 1
            kinds.update(k for k, _ in found)
            if len(examples) < 5:
                examples.append(f"{text!r} -> {found}")
    return n, kinds, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bitext", type=Path, default=ROOT.parent / "shared/data/bitext/bench_train_2023.csv"
    )
    parser.add_argument(
        "--banking", type=Path, default=ROOT.parent / "shared/data/banking77/train.csv"
    )
    args = parser.parse_args()
    corpora: dict[str, list[str]] = {}
    for name, path in (("bitext", args.bitext), ("banking77", args.banking)):
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                corpora[name] = [row["text"] for row in csv.DictReader(fh)]
    redactor = Redactor()
    for name, texts in corpora.items():
        digits = sum(any(ch.isdigit() for ch in t) for t in texts)
        print(f"\n## {name}: {len(texts)} texts, {digits} with digits")
        n_raw, kinds, examples = raw_presidio_hits(texts)
        print(
            f"Presidio recognizers as shipped: {n_raw} texts with a hit "
            f"({n_raw / len(texts):.2%}) {dict(kinds)}"
        )
        for ex in examples:
            print(f"   e.g. {ex}")
        start = time.perf_counter()
        hits = [t for t in texts if redactor.find(t)]
        took = time.perf_counter() - start
        print(
            f"product Redactor: {len(hits)} texts redacted ({len(hits) / len(texts):.2%}); "
            f"{len(texts) / took:.0f} texts/s"
        )
        for t in hits[:5]:
            print(f"   e.g. {t!r} -> {redactor.redact_text(t)!r}")
        flagged = [(t, detect_injection(t)) for t in texts]
        flagged = [(t, f) for t, f in flagged if f]
        print(f"injection flags: {len(flagged)} texts flagged ({len(flagged) / len(texts):.2%})")
        for t, f in flagged[:5]:
            print(f"   e.g. {t!r} -> {[str(x) for x in f]}")


if __name__ == "__main__":
    main()
