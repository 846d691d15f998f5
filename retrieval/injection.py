"""Untrusted case text: wrapping it as data and flagging instructions hidden in it.

Contract:
- :func:`wrap_untrusted` puts text between ``<<<UNTRUSTED {name}>>>`` and ``<<<END UNTRUSTED
  {name}>>>`` markers; marker look-alikes inside the text are defused first, so a message cannot
  close its own block and continue as instructions. The system prompt tells the model that
  everything in such blocks is data.
- :func:`detect_injection` returns one :class:`Flag` per matched rule kind (deduplicated), after
  normalising the text (Unicode NFKC, zero-width characters and soft hyphens removed, Cyrillic
  and Greek look-alike letters folded to Latin, whitespace collapsed, lower-cased) so trivial
  obfuscation does not slip through. Base64-looking tokens that decode to readable text are
  checked too (their flags carry a ``base64:`` excerpt). Rules cover English and the common
  phrasings in German, French, Spanish, Dutch and Italian. It is a tripwire, not the defence:
  the defence is that nothing the model outputs can approve or execute anything (suggestions are
  advice; the policy layer and people decide). Flags are reported on the suggestion and audited.
- Flag kinds: ``override_instructions``, ``reveal_prompt``, ``role_play``, ``approve_action``,
  ``payment_details``, ``reroute``, ``markup``.
- :func:`prompt_leaks` is the output side: it names every prose field of a model's answer that
  repeats ``LEAK_WORDS`` consecutive words of a prompt template (placeholders excluded), so an
  answer that obeyed "reveal your system prompt" is a contract violation, not a draft.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_MARKER = re.compile(r"<<<|>>>")
# Cyrillic and Greek letters that look like Latin ones ("\u0456gn\u043er\u0435" reads "ignore").
# Folding them only affects matching; real Cyrillic or Greek text is not what the rules target.
_HOMOGLYPHS = str.maketrans(
    "аеёіїјосрухѕһԁԛԝкмтвнАВЕЁІЇЈКМНОРСТХЅαοιυνρτκχεΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeeiijocpyxshdqwkmtbhABEEIIJKMHOPCTXSaoiuvptkxeABEZHIKMNOPTYX",
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_MAX_BASE64_TOKENS = 20


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
            r"payment|write[- ]off|reimbursement|compensation)\b[^.\n]{0,40}\b(immediately|"
            r"now\b(?! that)|"
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
        # Comments a human reader never sees, addressed to the model.
        ("markup", r"<!--[^>]{0,200}?\b(assistant|ai|system|model|llm|gpt|chatbot)\b"),
        ("markup", r"\[//\]:\s*#"),
        # Gaps the injection corpus (tests/data/injection_corpus.jsonl) showed.
        (
            "override_instructions",
            r"\b(previous|prior|above|earlier|original|all)\b (rules|instructions|guidelines|"
            r"policies|constraints)\b[^.\n]{0,20}\b(no longer apply|do not apply|don't apply|"
            r"are (void|cancell?ed|suspended|lifted))",
        ),
        (
            "override_instructions",
            r"\b(decode|base64)\b[^.\n]{0,40}\b(and )?(follow|execute|obey|run|do what)\b",
        ),
        (
            "reveal_prompt",
            r"\b(copy|paste|include|dump|give me|send me|quote)\b[^.\n]{0,30}\b(system prompt|"
            r"your prompt|your (initial |hidden |original )?instructions|developer message)",
        ),
        (
            "reveal_prompt",
            r"\b(rules|instructions|guidelines) you (were|have been|'ve been) given\b",
        ),
        (
            "reveal_prompt",
            r"\b(affiche[rz]?|montre[rz]?|r[ée]v[ée]le[rz]?|zeigen?|gib|muestra|revela|mostra|"
            r"rivela|toon)\b[^.\n]{0,30}\b(system ?prompt|prompt|systemprompt)\b",
        ),
        (
            "payment_details",
            r"\b(iban|bank (details|account)|account (number|details)|remittance details|"
            r"payment details|beneficiary)\b[^.\n]{0,20}\b(ha(s|ve) )?(changed|been updated|"
            r"is now|are now)\b",
        ),
        (
            "payment_details",
            r"\bsend (it|the money|the payment|payment|the refund|refunds?) to\b[^.\n]{0,20}"
            r"\b(account|iban)\b",
        ),
        (
            "payment_details",
            r"\b(wijzig(en)?|verander(en)?)\b[^.\n]{0,30}\b(rekeningnummer|bankrekening|iban|"
            r"bankgegevens)\b|\b(cambi(a|en|e|ar)|actualic(en|e)|actualiza)\b[^.\n]{0,30}\b("
            r"cuenta bancaria|datos bancarios|iban)\b|\b(modifie[rz]?|change[rz]?)\b[^.\n]{0,30}"
            r"\b(coordonn[ée]es bancaires|rib|iban)\b|\b(cambia(te)?|modifica(te)?|aggiorna(te)?)"
            r"\b[^.\n]{0,30}\b(coordinate bancarie|conto corrente|iban)\b|\b([äa]ndern|aendern|"
            r"aktualisieren)\b[^.\n]{0,30}\b(bankverbindung|kontonummer|iban|bankdaten)\b",
        ),
        (
            "reroute",
            r"\b(route|assign|move|send|forward|transfer|escalate|put)\b[^.\n]{0,40}\b(to|into|"
            r"in)\b[^.\n]{0,30}\bqueue\b",
        ),
        ("reroute", r"\b(set|change|switch|update)\b[^.\n]{0,20}\bqueue\b\s*(to|=|:|into)\s*\w"),
        (
            "reroute",
            r"\b(sposta|assegna|verschieben?|weisen?|mueve|mover|asigna|d[ée]place[rz]?|verplaats"
            r"|wijs)\b[^.\n]{0,40}\b(coda|warteschlange|queue|cola|file d'attente|wachtrij)\b",
        ),
        (
            "approve_action",
            r"\b(gutschrift|erstattung|r[üu]ckerstattung|zahlung|auszahlung)\b[^.\n]{0,30}\b("
            r"freigeben|genehmigen|auszahlen|anweisen)\b|\bgenehmigung (ist )?(nicht (n[öo]tig|"
            r"erforderlich)|bereits erteilt)",
        ),
        (
            "approve_action",
            r"\b(approuve[rz]?|valide[rz]?|[ée]mette[rz]?|effectue[rz]?)\b[^.\n]{0,30}\b("
            r"remboursement|avoir|paiement|virement)\b[^.\n]{0,30}(imm[ée]diatement|maintenant|"
            r"tout de suite|sans (validation|v[ée]rification|contr[ôo]le))",
        ),
        (
            "approve_action",
            r"\b(aprueb[ae]n?|autoriz[ae]n?|autoricen|emit[ae]n?|proces[ae]n?)\b[^.\n]{0,30}\b("
            r"reembolso|abono|nota de cr[ée]dito|pago)\b[^.\n]{0,30}\b(ahora|ya|inmediatamente|"
            r"de inmediato|sin (aprobaci[óo]n|revisi[óo]n))",
        ),
        (
            "approve_action",
            r"\bkeur\b[^.\n]{0,40}\b(terugbetaling|creditnota|betaling|vergoeding)\b[^.\n]{0,30}"
            r"\bgoed\b|\b(approva(te)?|autorizza(te)?|emetti|esegui)\b[^.\n]{0,30}\b(rimborso|"
            r"nota di credito|pagamento|accredito)\b[^.\n]{0,30}\b(subito|ora|immediatamente|"
            r"senza (approvazione|verifica))",
        ),
    )
)


def _fold(char: str) -> str:
    # Accented Greek letters (e.g. U+1F30) decompose to a base letter the table knows.
    if "\u0370" <= char <= "\u03ff" or "\u1f00" <= char <= "\u1fff":
        return unicodedata.normalize("NFD", char)[0]
    return char


def normalise(text: str) -> str:
    """NFKC, zero-width characters removed, look-alike letters folded to Latin, whitespace
    collapsed, lower-case."""
    text = unicodedata.normalize("NFKC", text)
    text = _ZERO_WIDTH.sub("", text)
    text = "".join(map(_fold, text)).translate(_HOMOGLYPHS)
    return re.sub(r"\s+", " ", text).strip().lower()


def _decoded_payloads(text: str) -> list[str]:
    """Readable text hidden in base64 tokens of ``text`` (at most a few tokens are tried)."""
    out = []
    for token in _BASE64.findall(text)[:_MAX_BASE64_TOKENS]:
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
            plain = decoded.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        printable = sum(c.isprintable() for c in plain)
        if " " in plain and printable >= 0.9 * len(plain):
            out.append(plain)
    return out


def detect_injection(text: str | None, field: str = "text") -> list[Flag]:
    """Flags for instructions hidden in ``text`` (see module docstring); [] when clean."""
    if not text:
        return []
    sources = [("", normalise(text))]
    sources += [("base64: ", normalise(p)) for p in _decoded_payloads(text)]
    flags: list[Flag] = []
    seen: set[str] = set()
    for prefix, norm in sources:
        for kind, pattern in _RULES:
            match = pattern.search(norm)
            if match and kind not in seen:
                seen.add(kind)
                flags.append(Flag(kind=kind, field=field, excerpt=(prefix + match.group(0))[:120]))
    return flags


def wrap_untrusted(name: str, text: str | None) -> str:
    """Wrap untrusted ``text`` in marked data blocks (see module docstring)."""
    body = _MARKER.sub(lambda m: "< < <" if m.group(0) == "<<<" else "> > >", text or "")
    body = re.sub(r"(?i)end untrusted", "end-untrusted", body)
    return f"<<<UNTRUSTED {name}>>>\n{body}\n<<<END UNTRUSTED {name}>>>"


LEAK_WORDS = 8
_WORD = re.compile(r"\w+")
_PLACEHOLDER = re.compile(r"\$\{\w+\}")


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(normalise(text))
    return {tuple(words[i : i + LEAK_WORDS]) for i in range(len(words) - LEAK_WORDS + 1)}


def prompt_leaks(prose: Mapping[str, str], templates: Iterable[str]) -> list[str]:
    """``"prompt_leak at <field>: ..."`` for each field of ``prose`` that repeats
    ``LEAK_WORDS`` consecutive words of one of the prompt ``templates``; [] when none does."""
    known: set[tuple[str, ...]] = set()
    for template in templates:
        for part in _PLACEHOLDER.split(template):  # no run spans a rendered variable
            known |= _shingles(part)
    out = []
    for field, text in prose.items():
        hit = next((sh for sh in _shingles(text or "") if sh in known), None)
        if hit is not None:
            out.append(f"prompt_leak at {field}: repeats the prompt ({' '.join(hit)!r})")
    return out
