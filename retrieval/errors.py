"""Errors raised by the retrieval package.

One small hierarchy so the lead can map it in one place (the triage core wraps these into its
own ``TriageError`` family; retrieval cannot import triage).
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class for every error this package raises on purpose."""


class EncoderError(RetrievalError):
    """An encoder could not be built, loaded or does not match a collection."""


class IngestError(RetrievalError):
    """A document could not be read or parsed."""


class PromptError(RetrievalError):
    """A prompt file is invalid, or rendering it lacks a variable."""


class StoreError(RetrievalError):
    """The vector store is unreachable or a collection is inconsistent."""
