"""Loading prompt files from the ``prompts`` package.

Contract:
- A prompt file is TOML with exactly the keys ``id``, ``version``, ``description``,
  ``variables``, ``system`` and ``user`` (unknown keys are refused). Placeholders use
  ``string.Template`` syntax (``${name}``); the declared ``variables`` must equal the
  placeholders used, so a typo fails at load time, not in production.
- :meth:`PromptTemplate.render` fails with :class:`PromptError` on a missing or an undeclared
  variable. Values are inserted verbatim: untrusted text must be wrapped by the caller
  (:func:`retrieval.injection.wrap_untrusted`) before it is passed in.
- ``sha256`` is the hash of the file's bytes; it is recorded with every call so an auditor can
  tell exactly which prompt produced a suggestion.
- The offline message file (``offline_messages.toml``) has ``[templates.<exception type>]``
  tables with ``message`` and ``next_steps``; loaded by :func:`load_message_templates`.
"""

from __future__ import annotations

import hashlib
import tomllib
from functools import lru_cache
from importlib import resources
from string import Template

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrieval.errors import PromptError


def _placeholders(text: str) -> set[str]:
    names: set[str] = set()
    for match in Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
        elif match.group("invalid") is not None:
            raise PromptError(
                f"invalid placeholder near {text[match.start() : match.start() + 20]!r}"
            )
    return names


class RenderedPrompt(BaseModel):
    model_config = ConfigDict(frozen=True)

    system: str
    user: str


class PromptTemplate(BaseModel):
    """One versioned prompt file (see module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    variables: list[str]
    system: str
    user: str
    sha256: str = ""

    @model_validator(mode="after")
    def _declared_equals_used(self) -> PromptTemplate:
        used = _placeholders(self.system) | _placeholders(self.user)
        declared = set(self.variables)
        if used != declared:
            raise ValueError(
                f"prompt {self.id}: placeholders used {sorted(used)} != declared {sorted(declared)}"
            )
        return self

    def render(self, **values: object) -> RenderedPrompt:
        missing = set(self.variables) - values.keys()
        extra = values.keys() - set(self.variables)
        if missing or extra:
            raise PromptError(
                f"prompt {self.id}@{self.version}: missing {sorted(missing)}, "
                f"undeclared {sorted(extra)}"
            )
        strs = {k: str(v) for k, v in values.items()}
        return RenderedPrompt(
            system=Template(self.system).substitute(strs),
            user=Template(self.user).substitute(strs),
        )


def parse_prompt(data: bytes, source: str = "<bytes>") -> PromptTemplate:
    """Parse and validate prompt file bytes."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"{source}: not valid TOML ({exc})") from exc
    if "sha256" in raw:
        raise PromptError(f"{source}: 'sha256' is computed, not written in the file")
    try:
        return PromptTemplate(**raw, sha256=hashlib.sha256(data).hexdigest())
    except ValidationError as exc:
        raise PromptError(f"{source}: {exc}") from exc


def _read(name: str) -> bytes:
    try:
        return resources.files("prompts").joinpath(name).read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise PromptError(f"prompt file {name!r} not found in the prompts package") from exc


@lru_cache(maxsize=16)
def load_prompt(name: str) -> PromptTemplate:
    """Load ``prompts/<name>`` (e.g. ``advisor_suggest.toml``); cached per process."""
    return parse_prompt(_read(name), name)


class MessageTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str
    next_steps: list[str]


class MessageTemplates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    version: str
    description: str = ""
    templates: dict[str, MessageTemplate]
    sha256: str = ""

    def render(self, exception_type: str, **values: object) -> tuple[str, list[str]]:
        """(message, next steps) for ``exception_type``; falls back to ``other``."""
        tpl = self.templates.get(exception_type) or self.templates["other"]
        try:
            message = Template(tpl.message).substitute({k: str(v) for k, v in values.items()})
        except (KeyError, ValueError) as exc:
            raise PromptError(f"{self.id}@{self.version}/{exception_type}: missing {exc}") from exc
        return message, list(tpl.next_steps)


@lru_cache(maxsize=4)
def load_message_templates(name: str = "offline_messages.toml") -> MessageTemplates:
    data = _read(name)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
        templates = MessageTemplates(**raw, sha256=hashlib.sha256(data).hexdigest())
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise PromptError(f"{name}: {exc}") from exc
    if "other" not in templates.templates:
        raise PromptError(f"{name}: needs a [templates.other] fallback")
    return templates
