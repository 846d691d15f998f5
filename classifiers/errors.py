"""Errors raised by the classifier package.

Every error the package raises on purpose derives from :class:`ClassifierError`, so callers
(the triage pipeline, the CLI, the API) can map them to one user-facing message without catching
broad exceptions. The messages are written for an operator: they name the file, column or
artifact at fault.
"""

from __future__ import annotations


class ClassifierError(Exception):
    """Base class of every deliberate error in ``classifiers``."""


class DataError(ClassifierError):
    """A training or evaluation file cannot be used (missing column, one class, bad encoding...).

    ``field`` names the request field at fault when it is not the data itself: ``text_columns``,
    ``label_columns``, ``feature_columns`` or ``label_precision`` (None: the records).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RegistryError(ClassifierError):
    """The model registry cannot satisfy a request (unknown version, nothing active...)."""


class UnknownVersion(RegistryError):
    """No version with this id is registered (or the id is not a well-formed version id)."""


class IntegrityError(RegistryError):
    """An artifact failed its integrity check (hash mismatch, unknown file, untrusted types)."""


class SignatureError(IntegrityError):
    """A registry that requires signatures met an unsigned or wrongly signed version (its
    artifact may be intact: signing it with the deployment's key is the remedy if trusted)."""
