"""Untrusted case text: wrapping it as data and flagging instructions hidden in it.

Contract:
- :func:`wrap_untrusted` puts text between ``<<<UNTRUSTED {name}>>>`` and ``<<<END UNTRUSTED
  {name}>>>`` markers; marker look-alikes inside the text are defused first, so a message cannot
  close its own block and continue as instructions. The system prompt tells the model that
  everything in such blocks is data.
- :func:`detect_injection` returns one :class:`Flag` per matched rule (deduplicated), after
  normalising the text (Unicode NFKC, zero-width characters removed, whitespace collapsed,
  lower-cased) so trivial obfuscation does not slip through. It is a tripwire, not the defence:
  the defence is that nothing the model outputs can approve or execute anything (suggestions are
  advice; the policy layer and people decide). Flags are reported on the suggestion and audited.
- Flag kinds: ``override_instructions``, ``reveal_prompt``, ``role_play``, ``approve_action``,
  ``payment_details``, ``reroute``, ``markup``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_MARKER = re.compile(r"<<<|>>>")


@dataclass(frozen=True)
class Flag:
    """One suspected injected instruction."""

    kind: str
    field: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.kind}@{self.field}: {self.excerpt}"


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        (
            "override_instructions",
            r"\b(ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}\b(previous|prior|"
            r"above|earlier|preceding|all|any|your|the|system|safety|these)\b[^.\n]{0,30}\b"
            r"(instructions?|prompts?|rules|guidelines|directives|policies|polic(y|ies)|context)",
        ),
        ("override_instructions", r"\bnew (instructions|rules|task)\s*:"),
        ("override_instructions", r"\bfrom now on,? (you|the assistant)\b"),
        (
            "override_instructions",
            r"\b(ignoriere|vergiss|ignorez|oubliez|ignora|olvida|negeer|vergeet)\b.{0,40}"
            r"\b(anweisungen|instructions|istruzioni|instrucciones|instructies|regeln)\b",
        ),
        (
            "reveal_prompt",
            r"\b(reveal|print|show|repeat|output|display|leak|tell me|what (is|are))\b[^.\n]{0,30}"
            r"\b(system prompt|your prompt|your instructions|initial instructions|hidden "
            r"instructions|developer message|the prompt above)",
        ),
        (
            "role_play",
            r"\b(you are now|act as|pretend (to be|you are)|roleplay as|you're now)\b[^.\n]{0,40}"
            r"\b(admin|administrator|developer|dan|unrestricted|jailbroken|system|supervisor|"
            r"manager|approver|root)\b",
        ),
        ("role_play", r"\b(developer mode|jailbreak|do anything now|dan mode)\b"),
        (
            "approve_action",
            r"\b(approve|authori[sz]e|execute|process|issue|grant|release|pay out|payout)\b"
            r"[^.\n]{0,30}\b(the |a |my |this |full |immediate )*(refund|credit note|credit|"
            r"payment|write[- ]off|reimbursement|compensation)\b[^.\n]{0,40}\b(immediately|now|"
            r"without (approval|review|checks?|verification)|automatically|right away|no "
            r"questions)",
        ),
        (
            "approve_action",
            r"\b(auto[- ]?approve|mark (it |this )?(as )?approved|approval (is )?(not needed|"
            r"granted|already given)|skip (the )?approval|pre-?approved by)\b",
        ),
        (
            "payment_details",
            r"\b(change|update|replace|switch|send (it|the money|the payment|payment) to|new|"
            r"correct|different)\b[^.\n]{0,40}\b(iban|bank (details|account)|account number|"
            r"beneficiary|sort code|swift code|bic|routing number|payment details|"
            r"bankverbindung|kontonummer)\b",
        ),
        (
            "payment_details",
            r"\b(neue|new|andere|nouvel|nuevo)\s+(iban|bankverbindung|kontonummer|bank account)\b|"
            r"\b(bankverbindung|kontonummer|iban)\b[^.\n]{0,20}\b(ändern|aendern|aktualisieren)\b",
        ),
        (
            "reroute",
            r"\b(route|assign|move|send|forward|transfer|escalate|set)\b[^.\n]{0,30}\b(this|the) "
            r"(case|ticket|request)\b[^.\n]{0,30}\b(to|into)\b[^.\n]{0,40}\bqueue\b",
        ),
        (
            "reroute",
            r"\b(set|change|mark)\b[^.\n]{0,20}\b(priority|queue|status)\b[^.\n]{0,10}\b(to|as)\b"
            r"[^.\n]{0,20}\b(urgent|critical|resolved|closed|approved|high|p1)\b",
        ),
        (
            "markup",
            r"(<\|?(im_start|im_end|system|assistant|user)\|?>|\[/?inst\]|###\s*(system|"
            r"instruction|assistant)\b|</?(system|instructions?)>|\bend untrusted\b|<<<)",
        ),
    )
)


def normalise(text: str) -> str:
    """NFKC, zero-width characters removed, whitespace collapsed, lower-case."""
    text = unicodedata.normalize("NFKC", text)
    text = _ZERO_WIDTH.sub("", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def detect_injection(text: str | None, field: str = "text") -> list[Flag]:
    """Flags for instructions hidden in ``text`` (see module docstring); [] when clean."""
    if not text:
        return []
    norm = normalise(text)
    flags: list[Flag] = []
    seen: set[str] = set()
    for kind, pattern in _RULES:
        match = pattern.search(norm)
        if match and kind not in seen:
            seen.add(kind)
            flags.append(Flag(kind=kind, field=field, excerpt=match.group(0)[:120]))
    return flags


def wrap_untrusted(name: str, text: str | None) -> str:
    """Wrap untrusted ``text`` in marked data blocks (see module docstring)."""
    body = _MARKER.sub(lambda m: "< < <" if m.group(0) == "<<<" else "> > >", text or "")
    body = re.sub(r"(?i)end untrusted", "end-untrusted", body)
    return f"<<<UNTRUSTED {name}>>>\n{body}\n<<<END UNTRUSTED {name}>>>"
