"""The LLM advisor: LangChain ``ChatOpenAI`` against any OpenAI-compatible endpoint.

Contract (beyond :class:`~retrieval.advice.Advisor`):
- Case free text is redacted (placeholders) and wrapped as untrusted data before it is put in
  the prompt; placeholders are restored in the texts shown to the agent.
- At most ``LLMConfig.concurrency`` calls run at once per advisor (semaphore). Each HTTP call
  has ``timeout_s``; 429, 5xx, timeouts and connection errors are retried up to
  ``max_retries`` times with exponential backoff and jitter (``Retry-After`` honoured, capped);
  other HTTP errors are not retried.
- The model must answer with :class:`AdvisorDraft` as structured output. A parse failure,
  a refusal, an empty tool call (function-calling mode can yield ``None`` without an error) or
  a contract violation counts as a violation. Violations get exactly one repair call with the
  violations fed back; if that answer still fails, or the endpoint fails, the offline engine
  answers and ``provenance`` records ``fallback_reason``, the violations and
  ``repair_attempted``. An unchecked model answer is never returned.
- ``provenance`` carries prompt id, version and sha256, model, summed token usage over the
  calls made and the total model latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from contracts.suggestion import (
    Citation,
    ProposedAction,
    Provenance,
    Routing,
    Suggestion,
)
from retrieval.advice import AdviceRequest, AdvisorConfig, case_flags
from retrieval.contract import Violation, check_suggestion
from retrieval.facts import extract_facts
from retrieval.injection import prompt_leaks, wrap_untrusted
from retrieval.offline import OfflineAdvisor
from retrieval.prompts import PromptTemplate, load_prompt
from retrieval.redaction import RedactionSession, Redactor

if TYPE_CHECKING:
    import httpx
    from langchain_core.messages import BaseMessage

ACTION_TYPES = (
    "issue_credit_note, write_off, adjust_inventory, rebill, refund, reship, contact_carrier, "
    "notify_customer, escalate"
)


_SHARD = 32  # connections per HTTP client; see LLMAdvisor.__init__
_QTY_FIELDS = ("ordered_qty", "picked_qty", "shipped_qty", "delivered_qty", "invoiced_qty")


def _error_label(exc: BaseException) -> str:
    """A stable, vendor-neutral label for a retryable failure (goes into provenance)."""
    import openai

    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection error"
    if isinstance(exc, openai.RateLimitError):
        return "rate limited (HTTP 429)"
    return f"server error (HTTP {status})" if status else type(exc).__name__


class LLMConfig(BaseModel):
    """Connection and behaviour of the LLM advisor (OpenAI, Azure OpenAI, vLLM, Ollama,
    llama.cpp: anything speaking the chat-completions API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    model: str
    api_key: SecretStr = SecretStr("not-needed")
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    concurrency: int = Field(default=8, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(default=1500, ge=1)
    structured_method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema"
    prompt_file: str = "advisor_suggest.toml"
    repair_prompt_file: str = "advisor_repair.toml"


class AdvisorDraft(BaseModel):
    """What the model must return (the pipeline adds provenance, classifier view, etc.)."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(description="Factual summary of the case, at most 100 words.")
    queue: str | None = Field(description="One of the allowed queues, or null.")
    routing_rationale: str = Field(description="Why this queue, in one or two sentences.")
    proposed_actions: list[ProposedAction] = Field(
        description="Typed actions grounded in the case facts and the cited procedures."
    )
    next_steps: list[str] = Field(description="Short imperative steps for the agent.")
    customer_message: str = Field(description="Draft message to the customer.")
    citations: list[str] = Field(description="chunk_id values of the passages relied on.")


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's per-field ``title`` keys: they repeat the property names, cost prompt
    tokens on every call and CPU in the SDK's request transform."""
    if isinstance(node, dict):
        return {
            k: _strip_titles(v)
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


@lru_cache(maxsize=1)
def advisor_draft_schema() -> dict[str, Any]:
    """The JSON schema the model must follow (named for function/json_schema modes)."""
    schema = _strip_titles(AdvisorDraft.model_json_schema())
    schema["title"] = "AdvisorDraft"
    schema["description"] = "A grounded triage suggestion for one case."
    return schema


@dataclass
class _CallOutcome:
    draft: AdvisorDraft | None = None
    raw_text: str = ""
    problem: str | None = None  # violation text when the answer is unusable
    refusal: bool = False
    transport_error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    model_name: str | None = None
    attempts: int = 0


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    model_name: str | None = None
    calls: list[str] = field(default_factory=list)

    def add(self, outcome: _CallOutcome) -> None:
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens
        self.latency_ms += outcome.latency_ms
        self.model_name = outcome.model_name or self.model_name


def _fmt_money(value: Decimal | None, currency: str | None) -> str:
    return f"{currency} {value}" if value is not None and currency else "n/a"


def render_case_facts(request: AdviceRequest) -> str:
    """The trusted part of the case as compact text (ids, lines, money, dates)."""
    case = request.case
    refs = case.references
    lines = [
        f"case_id: {request.case_id}",
        f"exception_type: {case.exception_type.value}",
        f"customer: id={refs.customer.id} name={refs.customer.name or 'n/a'} "
        f"tier={refs.customer.tier.value} country={refs.customer.country or 'n/a'}",
    ]
    for label, value in (
        ("order_id", refs.order_id),
        ("shipment_id", refs.shipment_id),
        ("invoice_id", refs.invoice_id),
        ("warehouse_id", refs.warehouse_id),
        ("carrier_id", refs.carrier_id),
        ("tracking_number", refs.tracking_number),
        ("purchase_order", refs.purchase_order),
    ):
        if value:
            lines.append(f"{label}: {value}")
    for key, value in sorted(case.attributes.items()):
        if isinstance(value, str | int | float) and len(str(value)) <= 80:
            lines.append(f"attribute {key}: {value}")
    for line in case.lines[:50]:
        qty = ", ".join(
            f"{name}={getattr(line, name)}"
            for name in (
                "ordered_qty",
                "picked_qty",
                "shipped_qty",
                "delivered_qty",
                "invoiced_qty",
            )
            if getattr(line, name) is not None
        )
        price = (
            f" unit_price={_fmt_money(line.unit_price.amount, line.unit_price.currency)}"
            if line.unit_price
            else ""
        )
        inv = (
            f" invoiced_unit_price={line.invoiced_unit_price.amount}"
            if line.invoiced_unit_price
            else ""
        )
        lines.append(f"line sku={line.sku} uom={line.uom} {qty}{price}{inv}")
    if case.amount_in_dispute:
        lines.append(
            "amount_in_dispute: "
            + _fmt_money(case.amount_in_dispute.amount, case.amount_in_dispute.currency)
        )
    lines.append(f"occurred_at: {case.occurred_at.date().isoformat()}")
    return "\n".join(lines)


def render_passages(request: AdviceRequest) -> str:
    if not request.passages:
        return "(none retrieved)"
    return "\n\n".join(
        f"[chunk_id: {p.chunk_id}] {p.title} v{p.version} - {p.heading} (score {p.score:.2f})\n"
        f"{p.text}"
        for p in request.passages
    )


def render_similar(request: AdviceRequest) -> str:
    cases = request.similar_contract()
    if not cases:
        return "(none)"
    return "\n".join(
        f"- {c.case_id} ({c.exception_type or 'n/a'}, score {c.score:.2f}): "
        f"{(c.resolution or 'no resolution recorded')[:300]}"
        for c in cases
    )


def render_classifier(request: AdviceRequest) -> str:
    cv = request.classifier
    if cv is None:
        return "(no classifier view)"
    parts = []
    for p in (cv.category, cv.queue, cv.priority):
        if p.abstained:
            parts.append(f"{p.target}: abstained ({p.abstain_reason})")
        else:
            parts.append(f"{p.target}: {p.label} (confidence {p.confidence:.2f})")
    return f"model {cv.model_version}: " + "; ".join(parts)


class LLMAdvisor:
    """Advisor backed by an OpenAI-compatible chat model, with contract checks and fallback."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        advisor_config: AdvisorConfig | None = None,
        offline: OfflineAdvisor | None = None,
        redactor: Redactor | None = None,
        prompt: PromptTemplate | None = None,
        repair_prompt: PromptTemplate | None = None,
        http_async_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        from langchain_openai import ChatOpenAI

        self.config = config
        self.advisor_config = advisor_config or AdvisorConfig()
        self.offline = offline or OfflineAdvisor(self.advisor_config)
        self.redactor = redactor
        self.prompt = prompt or load_prompt(config.prompt_file)
        self.repair_prompt = repair_prompt or load_prompt(config.repair_prompt_file)
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(config.concurrency)
        kwargs: dict[str, Any] = {
            "model": config.model,
            "api_key": config.api_key,
            "timeout": config.timeout_s,
            # Retries are ours (backoff, Retry-After cap, accounting), not the SDK's.
            "max_retries": 0,
            "temperature": config.temperature,
        }
        if config.base_url:
            kwargs["base_url"] = config.base_url
        if config.max_tokens:
            kwargs["max_tokens"] = config.max_tokens
        if http_async_client is not None:
            clients = [http_async_client]
        else:
            import httpx

            # httpcore's pool scans all its connections for every request (quadratic in the
            # number of connections: ~25 ms of CPU per call at 128 in flight). Shards of at
            # most _SHARD connections, used round-robin, keep that scan short.
            shards = -(-config.concurrency // _SHARD)
            per_shard = -(-config.concurrency // shards)
            clients = [
                httpx.AsyncClient(
                    limits=httpx.Limits(
                        max_connections=per_shard, max_keepalive_connections=per_shard
                    ),
                    timeout=config.timeout_s,
                )
                for _ in range(shards)
            ]
        # A JSON-schema dict (built once) rather than the pydantic class: with the class, the
        # SDK regenerates the schema on every call (~7 ms of CPU per case) and raises on bad
        # output; with the dict, LangChain hands back the raw JSON and we validate it below.
        self._structured = [
            ChatOpenAI(**kwargs, http_async_client=client).with_structured_output(
                advisor_draft_schema(), method=config.structured_method, include_raw=True
            )
            for client in clients
        ]
        self._next_shard = 0

    # -- public ----------------------------------------------------------------------------
    async def advise(self, request: AdviceRequest) -> Suggestion:
        session = RedactionSession()
        messages = self._messages(request, session)
        usage = _Usage()
        async with self._semaphore:
            first = await self._call(messages)
        usage.add(first)
        if first.transport_error:
            return self._fallback(request, f"llm_unavailable: {first.transport_error}", [], usage)
        if first.refusal:
            return self._fallback(request, "llm_refused", [first.problem or "refusal"], usage)
        suggestion, violations = self._evaluate(first, request, session)
        if suggestion is not None and not violations:
            return self._finish(suggestion, usage, [], repair=False)

        # One repair attempt with the violations fed back.
        from langchain_core.messages import AIMessage, HumanMessage

        rendered = self.repair_prompt.render(
            violations="\n".join(f"- {v}" for v in violations),
            previous_answer=first.raw_text[:6000] or "(no parseable answer)",
        )
        # One user turn (not a second system message: several OpenAI-compatible servers
        # accept a system message only at the start of the conversation).
        repair_messages = [
            *messages,
            AIMessage(content=first.raw_text or "(empty)"),
            HumanMessage(content=f"{rendered.system}\n\n{rendered.user}"),
        ]
        async with self._semaphore:
            second = await self._call(repair_messages)
        usage.add(second)
        if second.transport_error:
            return self._fallback(
                request, f"llm_unavailable: {second.transport_error}", violations, usage, True
            )
        repaired, violations2 = (None, [second.problem or "refusal"])
        if not second.refusal:
            repaired, violations2 = self._evaluate(second, request, session)
        if repaired is not None and not violations2:
            return self._finish(repaired, usage, violations, repair=True)
        return self._fallback(
            request, "contract_violation", violations + violations2, usage, repair_attempted=True
        )

    # -- internals -------------------------------------------------------------------------
    def _messages(self, request: AdviceRequest, session: RedactionSession) -> list[BaseMessage]:
        from langchain_core.messages import HumanMessage, SystemMessage

        case = request.case

        def red(text: str | None) -> str | None:
            if text is None or self.redactor is None:
                return text
            return self.redactor.redact(text, session)

        untrusted = "\n".join(
            wrap_untrusted(name, red(value))
            for name, value in (
                ("title", case.title),
                ("customer_message", case.text.customer_message),
                ("operator_notes", case.text.operator_notes),
                ("integration_error", case.text.integration_error),
            )
            if value
        )
        rendered = self.prompt.render(
            max_summary_words=100,
            queues=", ".join(request.queues),
            case_facts=render_case_facts(request),
            untrusted_text=untrusted or "(none)",
            passages=render_passages(request),
            similar_cases=render_similar(request),
            classifier_view=render_classifier(request),
            action_types=ACTION_TYPES,
        )
        return [SystemMessage(content=rendered.system), HumanMessage(content=rendered.user)]

    async def _call(self, messages: list[BaseMessage]) -> _CallOutcome:
        import openai

        outcome = _CallOutcome()
        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        for attempt in range(self.config.max_retries + 1):
            outcome.attempts = attempt + 1
            start = time.perf_counter()
            try:
                runnable = self._structured[self._next_shard % len(self._structured)]
                self._next_shard += 1
                result = await asyncio.wait_for(
                    runnable.ainvoke(messages), timeout=self.config.timeout_s * 2
                )
            except retryable as exc:
                outcome.latency_ms += (time.perf_counter() - start) * 1000
                label = _error_label(exc)
                if attempt >= self.config.max_retries:
                    outcome.transport_error = f"{label} after {attempt + 1} attempts"
                    return outcome
                await self._sleep(self._backoff(attempt, exc))
                continue
            except TimeoutError:
                outcome.latency_ms += (time.perf_counter() - start) * 1000
                if attempt >= self.config.max_retries:
                    outcome.transport_error = f"timeout after {attempt + 1} attempts"
                    return outcome
                await self._sleep(self._backoff(attempt, None))
                continue
            except openai.APIStatusError as exc:
                outcome.latency_ms += (time.perf_counter() - start) * 1000
                outcome.transport_error = f"HTTP {exc.status_code} ({type(exc).__name__})"
                return outcome
            except (
                ValidationError,
                ValueError,
                openai.LengthFinishReasonError,
                openai.ContentFilterFinishReasonError,
            ) as exc:
                # The SDK's own parse step (json_schema mode) raises on malformed or cut output.
                outcome.latency_ms += (time.perf_counter() - start) * 1000
                usage = getattr(getattr(exc, "completion", None), "usage", None)
                if usage is not None:  # a cut-off answer still cost its tokens
                    outcome.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
                    outcome.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
                first_lines = " ".join(str(exc).splitlines()[:2])[:300]
                outcome.problem = f"malformed_output: {type(exc).__name__}: {first_lines}"
                if "refus" in str(exc).lower():
                    outcome.refusal = True
                return outcome
            outcome.latency_ms += (time.perf_counter() - start) * 1000
            self._read_result(result, outcome)
            return outcome
        return outcome  # pragma: no cover - loop always returns

    def _backoff(self, attempt: int, exc: BaseException | None) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * (2**attempt))
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = min(self.config.backoff_max_s, max(delay, float(retry_after)))
        return delay + random.uniform(0, self.config.backoff_base_s)

    @staticmethod
    def _read_result(result: Any, outcome: _CallOutcome) -> None:
        raw = result.get("raw") if isinstance(result, dict) else None
        if raw is not None:
            usage = getattr(raw, "usage_metadata", None) or {}
            outcome.prompt_tokens = int(usage.get("input_tokens", 0) or 0)
            outcome.completion_tokens = int(usage.get("output_tokens", 0) or 0)
            meta = getattr(raw, "response_metadata", {}) or {}
            outcome.model_name = meta.get("model_name") or meta.get("model")
            content = raw.content if isinstance(raw.content, str) else json.dumps(raw.content)
            tool_calls = getattr(raw, "tool_calls", None) or []
            invalid = getattr(raw, "invalid_tool_calls", None) or []
            outcome.raw_text = content or json.dumps(
                [tc.get("args") for tc in tool_calls] + [tc.get("args") for tc in invalid],
                default=str,
            )
            refusal = (getattr(raw, "additional_kwargs", {}) or {}).get("refusal")
            if refusal:
                outcome.refusal = True
                outcome.problem = f"refusal: {str(refusal)[:200]}"
                return
        parsed = result.get("parsed") if isinstance(result, dict) else result
        error = result.get("parsing_error") if isinstance(result, dict) else None
        if error is not None:
            outcome.problem = f"malformed_output: {type(error).__name__}: {str(error)[:300]}"
        elif parsed is None:
            outcome.problem = "malformed_output: the model returned no structured output"
        elif isinstance(parsed, AdvisorDraft):
            outcome.draft = parsed
        else:
            try:
                outcome.draft = AdvisorDraft.model_validate(parsed)
            except ValidationError as exc:
                outcome.problem = f"malformed_output: {str(exc)[:300]}"

    def _evaluate(
        self, outcome: _CallOutcome, request: AdviceRequest, session: RedactionSession
    ) -> tuple[Suggestion | None, list[str]]:
        if outcome.draft is None:
            return None, [outcome.problem or "malformed_output"]
        draft = outcome.draft
        by_id = {p.chunk_id: p for p in request.passages}
        citations = [
            by_id[c].citation() if c in by_id else Citation(chunk_id=c) for c in draft.citations
        ]
        try:
            suggestion = Suggestion(
                summary=session.restore(draft.summary),
                routing=Routing(
                    queue=draft.queue,
                    rationale=draft.routing_rationale[:1000],
                    source="advisor",
                    confidence=None,
                ),
                category=request.classifier.category.label if request.classifier else None,
                priority=request.classifier.priority.label if request.classifier else None,
                proposed_actions=draft.proposed_actions,
                next_steps=[session.restore(s) for s in draft.next_steps][:20],
                customer_message=session.restore(draft.customer_message),
                citations=citations[:20],
                similar_cases=request.similar_contract(),
                classifier=request.classifier,
                injection_flags=[str(f) for f in case_flags(request.case)],
                provenance=Provenance(
                    engine="llm", retrieved_chunk_ids=request.retrieved_chunk_ids
                ),
            )
        except ValidationError as exc:
            return None, [
                f"schema: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            ]
        violations: list[Violation] = check_suggestion(
            suggestion,
            request.case,
            retrieved_chunk_ids=request.retrieved_chunk_ids,
            queues=request.queues,
            facts=extract_facts(request.case),
        )
        # An answer that repeats its own instructions obeyed a "reveal your prompt" attack.
        leaks = prompt_leaks(
            {
                "summary": suggestion.summary,
                "routing.rationale": suggestion.routing.rationale,
                "customer_message": suggestion.customer_message or "",
                **{f"next_steps[{i}]": t for i, t in enumerate(suggestion.next_steps)},
            },
            [p.system + "\n" + p.user for p in (self.prompt, self.repair_prompt)],
        )
        return suggestion, [str(v) for v in violations] + leaks

    def _provenance(
        self,
        engine: Literal["llm", "offline"],
        usage: _Usage,
        request: AdviceRequest | None = None,
    ) -> Provenance:
        return Provenance(
            engine=engine,
            prompt_id=self.prompt.id,
            prompt_version=self.prompt.version,
            prompt_sha256=self.prompt.sha256,
            llm_model=usage.model_name or self.config.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=round(usage.latency_ms, 1),
            retrieved_chunk_ids=request.retrieved_chunk_ids if request else [],
        )

    def _finish(
        self, suggestion: Suggestion, usage: _Usage, violations: list[str], *, repair: bool
    ) -> Suggestion:
        prov = self._provenance("llm", usage).model_copy(
            update={
                "contract_violations": violations,
                "repair_attempted": repair,
                "retrieved_chunk_ids": suggestion.provenance.retrieved_chunk_ids,
            }
        )
        return suggestion.model_copy(update={"provenance": prov})

    def _fallback(
        self,
        request: AdviceRequest,
        reason: str,
        violations: list[str],
        usage: _Usage,
        repair_attempted: bool = False,
    ) -> Suggestion:
        return self.offline.suggest(
            request,
            fallback_reason=reason,
            prior_violations=violations,
            repair_attempted=repair_attempted,
            llm_provenance=self._provenance("llm", usage, request),
        )
