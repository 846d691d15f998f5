"""Reading knowledge documents (Markdown, plain text, PDF) and cutting them into chunks.

Contract:
- A Markdown file may start with front matter between ``---`` lines holding ``key: value``
  pairs; ``id``, ``title`` and ``version`` are used, other keys are kept as metadata. Without
  front matter the id is the file stem, the title the first heading (or the stem) and the
  version ``sha-<first 8 hex of the content hash>``.
- Markdown is split at headings first (a chunk never spans two sections), then long sections at
  paragraph boundaries, so a chunk reads as one coherent piece of procedure. Each chunk carries
  its heading path ("Shortage handling SOP > Resolve"), which is also prepended to the text that
  is embedded: a paragraph alone often lacks its topic.
- Plain text and PDF (text layer via pypdf, page by page) are split at paragraph boundaries.
- ``chunk_hash`` is the sha256 of the chunk text; ``chunk_id`` is ``<doc id>:<position>:<hash
  prefix>``, stable as long as the document does not change.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import IngestError

SUPPORTED_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".pdf"})
# A knowledge document is a procedure or policy, not an archive: a longer PDF is refused.
MAX_PDF_PAGES = 2_000
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


@dataclass(frozen=True)
class SourceDocument:
    """One knowledge document as read from disk."""

    doc_id: str
    title: str
    version: str
    source_path: str
    kind: str
    body: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    pages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document."""

    chunk_id: str
    doc_id: str
    title: str
    version: str
    heading: str
    text: str
    chunk_hash: str
    source_path: str
    position: int
    page: int | None = None

    @property
    def embed_text(self) -> str:
        """What the encoder sees: heading path plus text."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def _parse_front_matter(raw: str) -> tuple[dict[str, str], str]:
    match = _FRONT_MATTER.match(raw)
    if not match:
        return {}, raw
    meta: dict[str, str] = {}
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if ":" not in line:
            raise IngestError(f"front matter line is not 'key: value': {line!r}")
        key, value = line.split(":", 1)
        meta[key.strip()] = value.strip().strip("\"'")
    return meta, raw[match.end() :]


def load_document(path: Path) -> SourceDocument:
    """Read one file; raises :class:`IngestError` on unsupported or unreadable input."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(f"{path}: unsupported file type {suffix!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror})") from exc
    return parse_document(str(path), data)


def parse_document(source: str, data: bytes) -> SourceDocument:
    """A Markdown, plain-text or PDF document from its bytes; ``source`` is its file name or
    path (its suffix says how to read it, its stem is the document id unless Markdown front
    matter sets ``id``; it is recorded as the chunks' ``source_path``). Raises
    :class:`IngestError`, prefixed ``source:``, for another suffix, text that is not UTF-8, a
    PDF that cannot be read (damaged, encrypted, over :data:`MAX_PDF_PAGES` pages) or no text
    at all (a scanned PDF without a text layer)."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(f"{source}: unsupported file type {suffix!r}")
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".pdf":
        body, pages = _read_pdf(source, data)
        if not body.strip():
            raise IngestError(
                f"{source}: the PDF has no text layer (a scanned document? run OCR first)"
            )
        return _document(path, "pdf", body, digest, {}, pages)
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{source}: not valid UTF-8 text") from exc
    raw = raw.replace("\r\n", "\n")
    markdown = suffix in {".md", ".markdown"}
    meta, body = _parse_front_matter(raw) if markdown else ({}, raw)
    kind = "markdown" if markdown else "text"
    return _document(path, kind, body, digest, meta, ())


def _document(
    path: Path,
    kind: str,
    body: str,
    digest: str,
    meta: dict[str, str],
    pages: tuple[str, ...],
) -> SourceDocument:
    if not body.strip():
        raise IngestError(f"{path}: no text to ingest")
    title = meta.pop("title", "") or _first_heading(body) or path.stem.replace("-", " ")
    doc_id = meta.pop("id", "") or path.stem
    version = meta.pop("version", "") or f"sha-{digest[:8]}"
    return SourceDocument(
        doc_id=doc_id,
        title=title,
        version=str(version),
        source_path=str(path),
        kind=kind,
        body=body,
        sha256=digest,
        metadata=meta,
        pages=pages,
    )


def _read_pdf(source: str, data: bytes) -> tuple[str, tuple[str, ...]]:
    """The text layer of a PDF, page by page. Reads from memory (an upload never touches the
    disk); pypdf's own limits cap what a compressed stream may expand to."""
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        raise IngestError(f"{source}: not a PDF file (it does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestError(f"{source}: the PDF is password-protected; remove the password")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise IngestError(
                f"{source}: the PDF has {len(reader.pages)} pages, more than {MAX_PDF_PAGES}"
            )
        pages = tuple((page.extract_text() or "").strip() for page in reader.pages)
    except IngestError:
        raise
    except Exception as exc:
        # pypdf raises many types on a damaged or hostile file (PdfReadError, KeyError,
        # TypeError, RecursionError, ...): every one of them means "cannot read this PDF",
        # never a server error.
        raise IngestError(f"{source}: cannot read the PDF ({type(exc).__name__}: {exc})") from exc
    return "\n\n".join(pages), pages


def _first_heading(body: str) -> str | None:
    for line in body.splitlines():
        m = _HEADING.match(line)
        if m:
            return m.group(2)
    return None


def _paragraph_windows(text: str, max_chars: int) -> list[str]:
    """Greedy packing of paragraphs into windows of at most ``max_chars`` (a longer paragraph
    is cut at sentence ends, then hard)."""
    pieces: list[str] = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if len(para) <= max_chars:
            pieces.append(para)
            continue
        sentence_buf = ""
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            while len(sentence) > max_chars:
                pieces.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            if sentence_buf and len(sentence_buf) + 1 + len(sentence) > max_chars:
                pieces.append(sentence_buf)
                sentence_buf = sentence
            else:
                sentence_buf = f"{sentence_buf} {sentence}".strip()
        if sentence_buf:
            pieces.append(sentence_buf)
    windows: list[str] = []
    buf = ""
    for piece in pieces:
        if buf and len(buf) + 2 + len(piece) > max_chars:
            windows.append(buf)
            buf = piece
        else:
            buf = f"{buf}\n\n{piece}" if buf else piece
    if buf:
        windows.append(buf)
    return windows


def _markdown_sections(doc: SourceDocument) -> list[tuple[str, str]]:
    """(heading path, section text) pairs in document order."""
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    buf: list[str] = []

    def flush() -> None:
        text = "\n".join(buf).strip()
        if text:
            path = " > ".join([doc.title] + [h for _, h in stack if h != doc.title])
            sections.append((path, text))
        buf.clear()

    for line in doc.body.splitlines():
        m = _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            stack = [(lvl, h) for lvl, h in stack if lvl < level]
            stack.append((level, m.group(2)))
        else:
            buf.append(line)
    flush()
    return sections


def chunk_document(doc: SourceDocument, max_chars: int = 1200) -> list[Chunk]:
    """Cut a document into chunks; see the module docstring for the rules."""
    raw: list[tuple[str, str, int | None]] = []
    if doc.kind == "markdown":
        for heading, text in _markdown_sections(doc):
            raw.extend((heading, w, None) for w in _paragraph_windows(text, max_chars))
    elif doc.kind == "pdf" and doc.pages:
        for number, page_text in enumerate(doc.pages, start=1):
            raw.extend((doc.title, w, number) for w in _paragraph_windows(page_text, max_chars))
    else:
        raw.extend((doc.title, w, None) for w in _paragraph_windows(doc.body, max_chars))
    chunks: list[Chunk] = []
    for position, (heading, text, page) in enumerate(raw):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        chunks.append(
            Chunk(
                chunk_id=f"{doc.doc_id}:{position}:{digest[:10]}",
                doc_id=doc.doc_id,
                title=doc.title,
                version=doc.version,
                heading=heading,
                text=text,
                chunk_hash=digest,
                source_path=doc.source_path,
                position=position,
                page=page,
            )
        )
    return chunks
