"""Personal-data redaction before text leaves for an external LLM or the embedder.

Contract:
- :meth:`Redactor.redact` replaces e-mail addresses, phone numbers, IBANs, payment card numbers
  (Luhn-checked) and IP addresses with placeholders such as ``<EMAIL_1>``; the same value gets
  the same placeholder within one :class:`RedactionSession`, so an LLM can still tell that two
  mentions are the same person. :meth:`RedactionSession.restore` puts the originals back into
  text shown to the agent (the draft), never into text sent out.
- Detection uses Microsoft Presidio's pattern recognizers (kept library, checksum validation)
  without any NLP model: no spaCy model, and the e-mail recognizer's top-level-domain check runs
  on tldextract's bundled public-suffix snapshot (``suffix_list_urls=()``): nothing is fetched.
- Order, purchase, invoice and tracking numbers must survive: long digit runs are Luhn-valid
  one time in ten, so a card hit counts only when it is written like a card (groups of 4) or
  a card word is near, and no hit counts right after an order/invoice/tracking keyword.
  Measured on Bitext in docs/retrieval.md.
- Disabled (``RedactionConfig.enabled=False``) the redactor returns text unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SUPPORTED_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD", "IP_ADDRESS")
_PLACEHOLDER_NAMES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "IBAN_CODE": "IBAN",
    "CREDIT_CARD": "CARD",
    "IP_ADDRESS": "IP",
}
_REFERENCE_CONTEXT = re.compile(
    r"\b(order|purchase|invoice|inv|tracking|shipment|delivery|reference|ref|po|sku|case|"
    r"ticket|transaction|parcel|consignment)\s*(number|no\.?|nr\.?|id|#)?\s*[:#.]?\s*$",
    re.IGNORECASE,
)
_PHONE_CONTEXT = re.compile(
    r"\b(phone|tel|telephone|mobile|cell|call|ring|fax|whatsapp|sms|text me|reach me)\b",
    re.IGNORECASE,
)
_PHONE_SHAPED = re.compile(r"^\+|[\s().-]")
_CARD_CONTEXT = re.compile(r"(card|visa|mastercard|amex|credit|debit|cc)\b", re.IGNORECASE)
_CARD_GROUPED = re.compile(r"^\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}$")
_GATES = {
    "EMAIL_ADDRESS": re.compile(r"@"),
    "PHONE_NUMBER": re.compile(r"\d(?:[\s().+/-]*\d){5,}"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}\s?\d{2}"),
    "CREDIT_CARD": re.compile(r"\d(?:[\s-]*\d){11,}"),
    "IP_ADDRESS": re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|:[0-9a-fA-F]*:"),
}
"""A recognizer runs only when its gate matches: each gate is looser than the recognizer's
own patterns, so a gate never hides an entity the recognizer would have found."""
_PLACEHOLDER = re.compile(r"<(EMAIL|PHONE|IBAN|CARD|IP)_\d+>")


_PHONE_LEAD = re.compile(r"[+(]$")
_PHONE_EXTENSION = re.compile(r"\s*(?:;|#|x\b|ext|extension|doorkiesnummer|durchwahl)", re.I)


def _phone_possible(text: str) -> bool:
    """False when no phone hit could survive :meth:`Redactor._is_reference`.

    Without a phone word anywhere in the text, a hit is kept only if it is phone-shaped (a
    leading ``+`` or a separator inside it). Every hit's digits lie in a gate run, so if no run
    carries a separator, none is led by ``+`` or ``(`` and none is followed by an extension
    marker, the costly matcher (one pass per region) would find nothing we keep. Case text is
    full of bare order and invoice numbers, which this lets through unparsed; a test checks the
    redactions are unchanged on real and synthetic case text.
    """
    if _PHONE_CONTEXT.search(text):
        return True
    for m in _GATES["PHONE_NUMBER"].finditer(text):
        if not m.group(0).isdigit():
            return True
        if _PHONE_LEAD.search(text, 0, m.start()) or _PHONE_EXTENSION.match(text, m.end()):
            return True
    return False


class RedactionConfig(BaseModel):
    """Per-deployment redaction settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    entities: tuple[str, ...] = SUPPORTED_ENTITIES
    phone_regions: tuple[str, ...] = ("DE", "GB", "US", "NL", "FR", "BE", "IT", "ES", "PL", "AT")
    min_score: float = Field(default=0.4, ge=0, le=1)


class RedactionSession:
    """Placeholder <-> original mapping shared by all texts of one case."""

    def __init__(self) -> None:
        self.by_value: dict[tuple[str, str], str] = {}
        self.originals: dict[str, str] = {}
        self._counters: dict[str, int] = {}

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self.by_value:
            name = _PLACEHOLDER_NAMES.get(entity, entity)
            self._counters[name] = self._counters.get(name, 0) + 1
            token = f"<{name}_{self._counters[name]}>"
            self.by_value[key] = token
            self.originals[token] = value
        return self.by_value[key]

    def restore(self, text: str) -> str:
        """Put originals back for every placeholder this session issued (others stay)."""
        return _PLACEHOLDER.sub(lambda m: self.originals.get(m.group(0), m.group(0)), text)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counters)


class Redactor:
    """Presidio-based redactor; recognizers are built once per instance (not at import)."""

    def __init__(self, config: RedactionConfig | None = None) -> None:
        self.config = config or RedactionConfig()
        unknown = set(self.config.entities) - set(SUPPORTED_ENTITIES)
        if unknown:
            raise ValueError(f"unsupported entities {sorted(unknown)}; use {SUPPORTED_ENTITIES}")
        self._recognizers: list[Any] = self._build() if self.config.enabled else []

    def _build(self) -> list[Any]:
        import tldextract
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
        )

        # Offline public-suffix list: no URL to fetch, no cache dir, bundled snapshot only.
        extract = tldextract.TLDExtract(
            cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
        )

        class OfflineEmailRecognizer(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return bool(extract(pattern_text).fqdn)

        wanted = set(self.config.entities)
        recognizers: list[Any] = []
        if "EMAIL_ADDRESS" in wanted:
            recognizers.append(OfflineEmailRecognizer())
        if "PHONE_NUMBER" in wanted:
            recognizers.append(PhoneRecognizer(supported_regions=list(self.config.phone_regions)))
        if "IBAN_CODE" in wanted:
            recognizers.append(IbanRecognizer())
        if "CREDIT_CARD" in wanted:
            recognizers.append(CreditCardRecognizer())
        if "IP_ADDRESS" in wanted:
            recognizers.append(IpRecognizer())
        return recognizers

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, entity) spans to redact, in text order."""
        if not self._recognizers or not text:
            return []
        hits: list[tuple[int, int, str, float]] = []
        for rec in self._recognizers:
            # Cheap gates first: most case text holds no candidate at all, and the phone
            # matcher (one pass per region) is the costliest recognizer by far.
            entity = rec.supported_entities[0]
            gate = _GATES.get(entity)
            if gate is not None and not gate.search(text):
                continue
            if entity == "PHONE_NUMBER" and not _phone_possible(text):
                continue
            for res in rec.analyze(text, entities=rec.supported_entities, nlp_artifacts=None):
                if res.score < self.config.min_score:
                    continue
                if self._is_reference(text, res.start, res.end, res.entity_type):
                    continue
                hits.append((res.start, res.end, res.entity_type, res.score))
        # Longest, most certain first; then drop spans overlapping an accepted one.
        hits.sort(key=lambda h: (-(h[1] - h[0]), -h[3]))
        accepted: list[tuple[int, int, str]] = []
        for start, end, entity, _ in hits:
            if all(end <= a or start >= b for a, b, _ in accepted):
                accepted.append((start, end, entity))
        return sorted(accepted)

    @staticmethod
    def _is_reference(text: str, start: int, end: int, entity: str) -> bool:
        if entity not in {"PHONE_NUMBER", "CREDIT_CARD"}:
            return False
        value = text[start:end]
        before = text[max(0, start - 30) : start]
        near = text[max(0, start - 40) : min(len(text), end + 20)]
        if _REFERENCE_CONTEXT.search(before):
            return True  # "order 1135...": the keyword right before the number decides
        if entity == "CREDIT_CARD":
            return not (_CARD_CONTEXT.search(near) or _CARD_GROUPED.match(value))
        # A bare digit run is a phone number only when the text says so; customers misspell
        # "order" ("ordedr 370795561790"), so keyword lists alone do not protect references.
        return not (_PHONE_CONTEXT.search(near) or _PHONE_SHAPED.search(value))

    def redact(self, text: str, session: RedactionSession | None = None) -> str:
        """Replace every detected identifier with its session placeholder."""
        session = session if session is not None else RedactionSession()
        spans = self.find(text)
        if not spans:
            return text
        out: list[str] = []
        cursor = 0
        for start, end, entity in spans:
            out.append(text[cursor:start])
            out.append(session.placeholder(entity, text[start:end]))
            cursor = end
        out.append(text[cursor:])
        return "".join(out)

    def redact_text(self, text: str) -> str:
        """Redact with a throw-away session (for the embedder, where nothing is restored)."""
        return self.redact(text, RedactionSession())
