"""The classifier stage: the registry's active model behind the pipeline's ``Classifier`` seam,
the default demo model, reviewer feedback and retraining.

The model registry lives in ``<data_dir>/models``. Next to it, ``base_training.jsonl`` and
``eval.jsonl`` hold the labelled records the default model was trained on and the fixed
evaluation set that ``triage retrain`` must not get worse on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import case as sql_case
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import classifiers
from classifiers import (
    CASE_FEATURE_SPEC,
    DEFAULT_CLASS_WEIGHT,
    CaseModel,
    ClassWeight,
    DataError,
    FeatureSpec,
    LoadedModel,
    ModelRegistry,
    RetrainResult,
    retrain,
)
from classifiers.data import infer_numeric_columns, load_records, validate_training_data
from classifiers.explain import MAX_TOP
from contracts.case import CaseIn
from contracts.suggestion import (
    CaseExplanation,
    ClassifierView,
    LabelProfile,
    ModelProfile,
    Prediction,
    ProfileItem,
)
from retrieval.embeddings import (
    DEFAULT_ENCODER,
    EncoderConfig,
    EncoderError,
    builtin_encoders,
    load_encoder,
)
from triage import audit, cases
from triage.audit import Actor
from triage.common import now_ts
from triage.db import Database
from triage.errors import Conflict, NotFound, ValidationFailed
from triage.lifecycle import Status
from triage.models import Case, LabelFeedback
from triage.pipeline import RuleClassifier
from triage.settings import PRIORITIES, Settings
from triage.simulator import SimConfig, Simulator, bitext_messages

log = logging.getLogger("triage.classification")

TARGETS = ("category", "queue", "priority")

# Real customer messages (Bitext sample, CDLA-Sharing-1.0, shipped with the classifiers package)
# mixed into the simulated history the demo model learns from.
BITEXT_SAMPLE = Path(classifiers.__file__).parent / "fixtures" / "bitext" / "bench_train_2023.csv"


def _embed(name: str, texts: Sequence[str]) -> tuple[np.ndarray, str]:
    """The classifiers' embedder: the retrieval encoder ``name`` (loaded once per process)."""
    encoder = load_encoder(EncoderConfig(name=name))
    return encoder.encode(list(texts)), encoder.fingerprint


def _split_words(name: str, text: str) -> tuple[list[str], np.ndarray, str] | None:
    """The classifiers' word splitter: the encoder's per-word vectors, for encoders whose
    text vector is a normalised sum over words (the static tables); ``None`` for others."""
    encoder = load_encoder(EncoderConfig(name=name))
    split = getattr(encoder, "word_vectors", None)
    if split is None:
        return None
    words, vectors = split(text)
    return words, vectors, encoder.fingerprint


classifiers.set_embedder(_embed)
classifiers.set_word_splitter(_split_words)


def embedding_spec(spec: FeatureSpec, encoder_name: str | None) -> FeatureSpec:
    """``spec`` with the named encoder's vectors as features (``None``/"none": without)."""
    if encoder_name in (None, "", "none"):
        return replace(spec, embedding_dim=None, embedding_encoder=None, embedding_fingerprint=None)
    encoder = load_encoder(EncoderConfig(name=encoder_name))
    return replace(
        spec,
        embedding_dim=encoder.dim,
        embedding_encoder=encoder_name,
        embedding_fingerprint=encoder.fingerprint,
    )


def train_model(
    records: Sequence[dict[str, Any]],
    *,
    registry: ModelRegistry,
    text_columns: Sequence[str],
    label_columns: Sequence[str],
    feature_columns: Sequence[str] = (),
    encoder: str | None = DEFAULT_ENCODER,
    activate: bool = True,
    training_data_sha256: str | None = None,
    training_data_name: str | None = None,
    source: str = "data",
    progress: Callable[[str], None] | None = None,
    class_weight: ClassWeight | str = DEFAULT_CLASS_WEIGHT,
    **params: Any,
) -> tuple[str, CaseModel]:
    """Validate ``records``, train a calibrated CaseModel on them and register it; returns the
    new version id and the model. Shared by ``triage train`` and ``POST /v1/models/train``.
    ``class_weight`` is a :class:`ClassWeight` or its value (``"none"``, ``"balanced"``).

    Raises ``classifiers.DataError`` (bad records), ``ClassifierError`` / ``ValueError`` (bad
    parameters) or ``RetrievalError`` (unknown encoder) before anything is written.
    ``params`` go to :class:`CaseModel` (target_precision, label_precision, base, C, cv, ...).
    """
    say = progress or (lambda _message: None)
    validate_training_data(
        records,
        text_columns=text_columns,
        label_columns=label_columns,
        feature_columns=feature_columns,
        source=source,
        label_precision=params.get("label_precision"),
        target_precision=params.get("target_precision"),
    )
    numeric = infer_numeric_columns(list(records), list(feature_columns))
    spec = embedding_spec(
        FeatureSpec(
            text_columns=tuple(text_columns),
            categorical_columns=tuple(c for c in feature_columns if c not in numeric),
            numeric_columns=tuple(numeric),
        ),
        encoder,
    )
    say(f"read {len(records)} records from {source}")
    if spec.embedding_encoder:
        say(f"embedding features: {spec.embedding_encoder} ({spec.embedding_dim} dims)")
    model = CaseModel(
        spec=spec,
        targets=tuple(label_columns),
        class_weight=ClassWeight(class_weight).estimator_value,
        **params,
    )
    model.fit(list(records), progress=progress)
    say("saving the model version")
    version = registry.save(
        model,
        training_data_sha256=training_data_sha256 or records_sha256(records),
        training_data_name=training_data_name or source,
        n_training_records=len(records),
        activate=activate,
    )
    return version, model


def records_sha256(records: Sequence[dict[str, Any]]) -> str:
    """A stable hash of records (canonical JSON) for data uploaded without a file."""
    digest = hashlib.sha256()
    for row in records:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def encoder_choices(settings: Settings) -> list[str]:
    """The encoders an API or console user may train with: ``none``, the deployment's own and
    the built-in ones (no folders: see :func:`checked_encoder`)."""
    out = ["none", settings.encoder]
    out += [f"builtin:{n}" for n in builtin_encoders() if f"builtin:{n}" not in out]
    return out


def checked_encoder(settings: Settings, name: str | None) -> str | None:
    """The encoder an API caller may name for training: the deployment's own (``None``),
    ``"none"`` or a built-in one. Folders are refused: an API caller must not make the server
    load files from paths of its choosing."""
    if name is None:
        return settings.encoder
    choices = encoder_choices(settings)
    if name in choices:
        return name
    raise ValidationFailed(
        f"unknown encoder {name!r}", fields={"encoder": f"use one of {', '.join(choices)}"}
    )


def case_record(case: CaseIn) -> dict[str, Any]:
    """The flat record the case model reads (``classifiers.CASE_FEATURE_SPEC``).

    ``text`` is the retrieval query text (exception type, title, message, notes, error: see
    ``retrieval.advice.query_text``), so the vector the pipeline computes once per case for
    retrieval is the vector of the text the model's embedding features were trained on.
    """
    text = case.text
    parts = [
        case.exception_type.value.replace("_", " "),
        case.title,
        text.customer_message,
        text.operator_notes,
        text.integration_error,
    ]
    ordered = shipped = Decimal(0)
    price_gap = Decimal(0)
    for line in case.lines:
        ordered += line.ordered_qty
        got = line.delivered_qty if line.delivered_qty is not None else line.shipped_qty
        shipped += got if got is not None else line.ordered_qty
        if line.unit_price and line.invoiced_unit_price and line.unit_price.amount > 0:
            gap = (
                line.invoiced_unit_price.amount - line.unit_price.amount
            ) / line.unit_price.amount
            price_gap = max(price_gap, gap)
    return {
        "text": "\n".join(p for p in parts if p),
        "exception_type": case.exception_type.value,
        "customer_tier": case.references.customer.tier.value,
        "warehouse_id": case.references.warehouse_id or "",
        "carrier_id": case.references.carrier_id or "",
        "source_kind": case.source.kind.value,
        "amount": float(case.amount_in_dispute.amount) if case.amount_in_dispute else 0.0,
        "qty_gap_ratio": float(1 - shipped / ordered) if ordered > 0 else 0.0,
        "price_gap_ratio": float(price_gap),
        "line_count": len(case.lines),
    }


class ModelClassifier:
    """A registry model behind the ``Classifier`` seam. Abstentions are passed through as is."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.version = loaded.version

    def classify(self, case: CaseIn) -> ClassifierView:
        return self.classify_many([case])[0]

    @property
    def vector_fingerprint(self) -> str | None:
        """Fingerprint of the encoder whose vectors the model takes (``None``: takes none)."""
        spec = self.loaded.model.feature_spec()
        return spec.embedding_fingerprint if spec.embedding_dim is not None else None

    def classify_many(
        self, cases: Sequence[CaseIn], vectors: np.ndarray | None = None
    ) -> list[ClassifierView]:
        """One model call for the batch (the text transform is vectorised).

        ``vectors`` (one row per case) are reused as the model's embedding features; the caller
        passes them only when their encoder's fingerprint equals :attr:`vector_fingerprint`.
        Without them a model trained with embeddings encodes the cases itself.
        """
        preds = self.loaded.model.predict([case_record(c) for c in cases], embeddings=vectors)
        rules = RuleClassifier()
        out = []
        for case, pred in zip(cases, preds, strict=True):
            fallback = rules.classify(case)
            view: dict[str, Prediction] = {}
            for target in TARGETS:
                # A target the model was not trained for keeps the rule-based answer.
                view[target] = pred.get(target) or getattr(fallback, target)
            out.append(ClassifierView(model_version=self.version, **view))
        return out


class ClassifierProvider:
    """Hands the pipeline the active model and reloads it when the registry's pointer moves.

    Reload is cheap to check (one small file read) and happens at most every ``check_seconds``.
    """

    def __init__(self, settings: Settings, check_seconds: float = 5.0) -> None:
        self.registry = registry(settings)
        self.check_seconds = check_seconds
        self._lock = threading.Lock()
        self._current: ModelClassifier | None = None
        self._refusal: classifiers.RegistryError | None = None  # why the active one is refused
        self._checked = 0.0

    def warm_up(self) -> None:
        """Load the active model now (seconds), not on the first case's clock."""
        self.current()

    def classify(self, case: CaseIn) -> ClassifierView:
        return self.current().classify(case)

    def vector_fingerprint(self) -> str | None:
        """Which encoder's vectors the active model takes, if any (see ModelClassifier)."""
        current = self.current()
        return current.vector_fingerprint if isinstance(current, ModelClassifier) else None

    def classify_many(
        self, cases: Sequence[CaseIn], vectors: np.ndarray | None = None
    ) -> list[ClassifierView]:
        current = self.current()
        if isinstance(current, ModelClassifier):
            return current.classify_many(cases, vectors)
        return [current.classify(c) for c in cases]

    def current(self) -> ModelClassifier | RuleClassifier:
        """The active model (the rules when none is active).

        Raises :class:`ModelUnusable` while the active version is refused by the registry,
        on every call until the pointer moves or the version verifies (re-checked every
        ``check_seconds``), never falling back to an older model or the rules in between:
        a refused artifact is an operator's matter, and the pipeline retries the stage.
        """
        import time

        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            with self._lock:
                self._checked = now
                self._refusal = None
                active = self.registry.active_version()
                if active is None:
                    self._current = None
                elif self._current is None or self._current.version != active:
                    try:
                        loaded = self.registry.load(active)
                    except classifiers.RegistryError as exc:
                        self._refusal = exc
                        log.error("classifier model %s refused: %s", active, exc)
                    else:
                        self._current = ModelClassifier(loaded)
                        _remember(self.registry.root, loaded)
                        log.info("classifier model %s loaded", active)
        refusal = self._refusal
        if refusal is not None:
            raise ModelUnusable.refused(refusal) from refusal
        return self._current if self._current is not None else RuleClassifier()


def check_active_model(settings: Settings) -> str | None:
    """Verify the deployment's active model version before a server or worker starts.

    Returns the active version (``None``: no model is active and the rules classify). Raises
    :class:`ModelUnusable` when the active version is refused (unknown, unsigned or wrongly
    signed while ``TRIAGE_MODEL_SIGNING_KEY`` is set, modified artifact), naming the step that
    mends it: the pipeline would fail every case's classify stage on it, so it is better not
    to start. Hashes the artifact (a fraction of a second), does not load it.
    """
    models = registry(settings)
    active = models.active_version()
    if active is None:
        return None
    try:
        models.verify(active)
    except classifiers.RegistryError as exc:
        raise ModelUnusable.refused(exc) from exc
    return active


class ModelUnusable(RuntimeError):
    """The registry's active version cannot be used (see :func:`check_active_model`)."""

    @classmethod
    def refused(cls, exc: classifiers.RegistryError) -> ModelUnusable:
        """The error for a refused active version, with the operator's remedy."""
        if isinstance(exc, classifiers.SignatureError):
            remedy = (
                "TRIAGE_MODEL_SIGNING_KEY is set: sign the versions you trust with `triage "
                "models sign VERSION` (or `--all`) or activate a signed version"
            )
        else:
            remedy = (
                "activate a version that verifies (`triage models list`, then `triage models "
                "activate VERSION`), or `triage models rollback`"
            )
        return cls(f"the active model version is refused: {exc}. {remedy}.")


def registry(settings: Settings) -> ModelRegistry:
    """The deployment's model registry, ``<data_dir>/models``, signing and requiring
    signatures when ``model_signing_key`` is set (an empty key counts as none)."""
    key = settings.model_signing_key.get_secret_value() if settings.model_signing_key else ""
    return ModelRegistry(settings.model_registry_dir, key.encode() or None)


# -- why a prediction --------------------------------------------------------------------------
# Recently explained model versions, so that a reviewer paging through cases does not reload a
# model (seconds) per page. Two: the active version and the one before it cover nearly all cases.
_EXPLAIN_CACHE_SIZE = 2
_explain_cache: dict[tuple[str, str], LoadedModel] = {}
_explain_lock = threading.Lock()
# stored probabilities are rounded to 6 places; a recomputation that differs by more than this
# did not come from the same model and inputs
REPRODUCE_TOLERANCE = 1e-4


def _remember(root: Path, loaded: LoadedModel) -> None:
    """Keep ``loaded`` for explanations (the pipeline's provider shares its active model)."""
    with _explain_lock:
        _explain_cache[(str(root.resolve()), loaded.version)] = loaded
        while len(_explain_cache) > _EXPLAIN_CACHE_SIZE:
            _explain_cache.pop(next(iter(_explain_cache)))


def _explain_model(settings: Settings, version: str) -> LoadedModel:
    models = registry(settings)
    try:
        # the small metadata file first, also for a cached model: a version deleted from the
        # registry reads as gone whatever this process still holds in memory
        models.metadata(version)
        with _explain_lock:
            loaded = _explain_cache.get((str(models.root.resolve()), version))
        if loaded is None:
            loaded = models.load(version)
            _remember(models.root, loaded)
    except classifiers.UnknownVersion as exc:
        raise Conflict(
            f"model version {version} that classified this case is no longer in the registry",
            field="model_version",
        ) from exc
    except classifiers.IntegrityError as exc:
        raise Conflict(
            f"model version {version} that classified this case was refused: {exc}",
            field="model_version",
        ) from exc
    return loaded


def explain_case(settings: Settings, db: Database, case_id: str, *, top: int) -> CaseExplanation:
    """Explain the classifier behind ``case_id``'s current suggestion.

    Raises ``NotFound`` for an unknown case, ``Conflict`` when the case has no classified
    suggestion yet or its model version can no longer be loaded, ``ValidationFailed`` for a
    ``top`` outside 1..``classifiers.explain.MAX_TOP``.
    """
    if not 1 <= top <= MAX_TOP:
        raise ValidationFailed(
            f"top must be between 1 and {MAX_TOP}", fields={"top": f"use 1 to {MAX_TOP}"}
        )
    with db.read() as s:
        row = cases.get(s, case_id)
        suggestion = cases.current_suggestion(s, row)
        body = suggestion.body if suggestion is not None else None
        payload, status = row.payload, row.status
    view_data = (body or {}).get("classifier")
    if view_data is None:
        raise Conflict(
            f"case {case_id} has no classification yet (status {status})", field="case_id"
        )
    return explain_classification(settings, case_id, payload, view_data, top=top)


def explain_classification(
    settings: Settings,
    case_id: str,
    payload: dict[str, Any],
    classifier_view: dict[str, Any],
    *,
    top: int,
) -> CaseExplanation:
    """:func:`explain_case` for a case payload and its suggestion's stored ``classifier`` view
    already read (the console's case page has both). Raises ``Conflict`` as it does."""
    view = ClassifierView.model_validate(classifier_view)
    case = CaseIn.model_validate(payload)
    if view.model_version == RuleClassifier.version:
        return CaseExplanation(
            case_id=case_id,
            model_version=view.model_version,
            source="rules",
            rules=RuleClassifier.reasons(case),
        )
    model = _explain_model(settings, view.model_version).model
    trained = [t for t in TARGETS if t in model.estimators_]
    try:
        explained = model.explain([case_record(case)], targets=trained, top=top)[0]
    except (ValueError, OSError, EncoderError) as exc:
        # e.g. the encoder behind the model's embedding features changed since it was trained:
        # the model cannot score this case again, and says so instead of guessing
        raise Conflict(
            f"model version {view.model_version} cannot recompute this case now: {exc}",
            field="model_version",
        ) from exc
    reproduced = {}
    for target, exp in explained.items():
        stored = getattr(view, target).probabilities
        reproduced[target] = all(
            abs(stored.get(label, -1.0) - p) <= REPRODUCE_TOLERANCE
            for label, p in ((exp.label, exp.probability), (exp.versus, exp.versus_probability))
        )
    untrained = [t for t in TARGETS if t not in explained]
    fallback = RuleClassifier.reasons(case) if untrained else {}
    return CaseExplanation(
        case_id=case_id,
        model_version=view.model_version,
        source="model",
        targets=explained,
        reproduced=reproduced,
        # a target the model was not trained for kept the rule-based answer (ModelClassifier)
        rules={t: fallback[t] for t in untrained},
    )


# -- what a model relied on -------------------------------------------------------------------
PROFILE_MAX_CASES = 1000
PROFILE_DEFAULT_CASES = 200
PROFILE_DEFAULT_TOP = 10


def model_profile(
    settings: Settings,
    db: Database,
    version: str,
    *,
    limit: int = PROFILE_DEFAULT_CASES,
    top: int = PROFILE_DEFAULT_TOP,
) -> ModelProfile:
    """The evidence ``version`` relied on, per target and label, over the ``limit`` most
    recent cases it classified: each case is explained exactly (:func:`explain_case`'s
    breakdown, top label against that case's runner-up) and the evidence is summed per label.
    Numbers are grouped by field, fields by field and value, words and phrases by text.

    Raises ``ValidationFailed`` for ``limit`` outside 1..``PROFILE_MAX_CASES`` or ``top``
    outside 1..``MAX_TOP``; ``NotFound`` for a version the registry does not hold or the
    rules (nothing learnt); ``Conflict`` when the version cannot be loaded or cannot score its
    cases again (its encoder changed). A version with no cases yet has an empty profile.
    """
    fields: dict[str, str] = {}
    if not 1 <= limit <= PROFILE_MAX_CASES:
        fields["limit"] = f"use 1 to {PROFILE_MAX_CASES}"
    if not 1 <= top <= MAX_TOP:
        fields["top"] = f"use 1 to {MAX_TOP}"
    if fields:
        raise ValidationFailed("invalid profile request", fields=fields)
    try:
        registry(settings).metadata(version)
    except classifiers.UnknownVersion as exc:
        raise NotFound(f"no model version {version!r} in the registry") from exc
    except classifiers.IntegrityError as exc:
        raise Conflict(f"model version {version} was refused: {exc}", field="version") from exc
    loaded = _explain_model(settings, version)
    model = loaded.model
    trained = [t for t in TARGETS if t in model.estimators_]
    predicted = [getattr(Case, f"predicted_{t}") for t in trained]
    with db.read() as s:
        rows = s.execute(
            select(Case.payload, *predicted)
            .where(Case.model_version == version)
            .order_by(Case.created_at.desc(), Case.id.desc())
            .limit(limit)
        ).all()
    if not rows:
        return ModelProfile(model_version=version, cases=0)
    records = [case_record(CaseIn.model_validate(row[0])) for row in rows]
    try:
        explained = model.explain(records, targets=trained, top=MAX_TOP)
    except (ValueError, OSError, EncoderError) as exc:
        raise Conflict(
            f"model version {version} cannot recompute its cases now: {exc}",
            field="version",
        ) from exc
    targets: dict[str, list[LabelProfile]] = {}
    for t_index, target in enumerate(trained):
        per_label: dict[str, dict[str, Any]] = {}
        for row, per_case in zip(rows, explained, strict=True):
            exp = per_case[target]
            acc = per_label.setdefault(
                exp.label, {"cases": 0, "abstained": 0, "probability": 0.0, "items": {}}
            )
            acc["cases"] += 1
            acc["abstained"] += row[1 + t_index] is None  # predicted_* is empty on abstention
            acc["probability"] += exp.probability
            for e in exp.evidence:
                key = (e.kind, e.feature, e.value if e.kind == "field" else None)
                total, seen = acc["items"].get(key, (0.0, 0))
                acc["items"][key] = (total + e.weight, seen + 1)
        profiles = []
        for label, acc in per_label.items():
            ranked = sorted(
                ((k, v) for k, v in acc["items"].items() if v[0] > 0), key=lambda kv: -kv[1][0]
            )[:top]
            profiles.append(
                LabelProfile(
                    label=label,
                    cases=acc["cases"],
                    abstained=acc["abstained"],
                    mean_probability=round(acc["probability"] / acc["cases"], 6),
                    evidence=[
                        ProfileItem(
                            kind=kind,
                            feature=feature,
                            value=value,
                            weight=round(total, 6),
                            mean_weight=round(total / seen, 6),
                            cases=seen,
                        )
                        for (kind, feature, value), (total, seen) in ranked
                    ],
                )
            )
        targets[target] = sorted(profiles, key=lambda p: (-p.cases, p.label))
    return ModelProfile(model_version=version, cases=len(rows), targets=targets)


def _labelled_records(sim_records: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for rec in sim_records:
        row = case_record(CaseIn.model_validate(rec.case))
        row.update(rec.labels)
        row["case_id"] = rec.case["source"]["case_id"]
        out.append(row)
    return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def base_data_path(settings: Settings) -> Path:
    return settings.model_registry_dir / "base_training.jsonl"


def eval_data_path(settings: Settings) -> Path:
    return settings.model_registry_dir / "eval.jsonl"


def train_default_model(
    settings: Settings,
    n_train: int = 3000,
    n_eval: int = 1000,
    progress: Callable[..., Any] | None = None,
) -> str:
    """Train the demo model on simulated operator history and activate it; returns the version.

    Training and evaluation cases come from different simulator seeds (different customers,
    orders and message choices), so the stored evaluation figures are not training-set figures.
    """
    real = bitext_messages(BITEXT_SAMPLE) if BITEXT_SAMPLE.exists() else {}
    # Disjoint halves of the real messages for training and evaluation: no sentence is seen in
    # both, so the stored figures are not memorisation.
    train_real = {k: v[0::2] for k, v in real.items()}
    eval_real = {k: v[1::2] for k, v in real.items()}
    train = _labelled_records(
        Simulator(SimConfig(seed=101, real_messages=train_real)).cases(n_train)
    )
    held_out = _labelled_records(
        Simulator(SimConfig(seed=202, real_messages=eval_real)).cases(n_eval)
    )
    _write_jsonl(base_data_path(settings), train)
    _write_jsonl(eval_data_path(settings), held_out)
    model = CaseModel(
        spec=embedding_spec(CASE_FEATURE_SPEC, settings.encoder),
        targets=TARGETS,
        labels={"queue": settings.queues, "priority": list(PRIORITIES)},
    )
    # One group per case: simulated cases share message templates by design, so grouping
    # near-duplicate texts would hold out whole root causes and calibrate against a task the
    # model never faces (its real test is the next cases from the same flow: eval.jsonl).
    model.fit(train, groups=list(range(len(train))), progress=progress)
    from classifiers import evaluate_model

    metrics = evaluate_model(model, held_out)
    return registry(settings).save(
        model,
        training_data_name="simulator seed 101 + Bitext messages (even rows)",
        n_training_records=len(train),
        metrics={
            t: {
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "ece": m["ece"],
                "coverage_at_precision": m["coverage_at_precision"]["coverage"],
                "realized_precision": m["coverage_at_precision"]["realized_precision"],
                "eval_set": "simulator seed 202 + Bitext messages (odd rows)",
            }
            for t, m in metrics["targets"].items()
        },
        activate=True,
    )


# ---------------------------------------------------------------- reviewer feedback


def override(
    session: Session,
    case_id: str,
    *,
    actor: Actor,
    reason: str,
    settings: Settings,
    category: str | None = None,
    queue: str | None = None,
    priority: str | None = None,
) -> Case:
    """An agent sets the final category, queue or priority; each change becomes a label.

    The label row keeps who, why, what the model said and which model said it, so
    ``triage retrain`` can learn from it and the override rate can be tracked per model.
    """
    if not reason.strip():
        raise ValidationFailed("an override needs a reason", fields={"reason": "required"})
    changes = {
        k: v
        for k, v in (("category", category), ("queue", queue), ("priority", priority))
        if v is not None
    }
    if not changes:
        raise ValidationFailed(
            "nothing to override: give category, queue or priority",
            fields={"category": "one of category, queue, priority"},
        )
    if queue is not None and queue not in settings.queues:
        raise ValidationFailed(
            f"unknown queue {queue!r}", fields={"queue": f"one of {', '.join(settings.queues)}"}
        )
    if priority is not None and priority not in PRIORITIES:
        raise ValidationFailed(
            f"unknown priority {priority!r}", fields={"priority": f"one of {', '.join(PRIORITIES)}"}
        )
    row = cases.get(session, case_id)
    if row.status in (Status.received.value, Status.triaging.value, Status.resolved.value):
        raise ValidationFailed(
            f"a case in status {row.status} cannot be overridden", fields={"status": row.status}
        )
    predicted = _predicted(session, row)
    for target, value in changes.items():
        session.add(
            LabelFeedback(
                case_id=case_id,
                target=target,
                predicted=predicted.get(target),
                final=value,
                model_version=row.model_version,
                actor_id=actor.id,
                reason=reason,
                created_at=now_ts(),
            )
        )
    before = {t: getattr(row, t) for t in changes}
    if "priority" in changes:
        cases.reprioritise(session, row, changes.pop("priority"), settings)
    for target, value in changes.items():
        setattr(row, target, value)
    if row.abstain_reasons:
        # an agent's value replaces the abstention it answered
        row.abstain_reasons = {t: r for t, r in row.abstain_reasons.items() if t not in before}
        row.abstain_reasons = row.abstain_reasons or None
    row.version += 1
    row.updated_at = now_ts()
    session.flush()
    audit.append(
        session,
        actor,
        "case.overridden",
        {
            "changes": {
                t: {"from": before[t], "to": v}
                for t, v in {
                    **changes,
                    **({"priority": row.priority} if "priority" in before else {}),
                }.items()
            },
            "model_version": row.model_version,
            "reason": reason,
        },
        case_id=case_id,
    )
    return row


def _predicted(session: Session, row: Case) -> dict[str, str | None]:
    sugg = cases.current_suggestion(session, row)
    clf = (sugg.body or {}).get("classifier") if sugg else None
    if not clf:
        return {}
    return {t: (clf.get(t) or {}).get("label") for t in TARGETS}


@dataclass(frozen=True)
class ModelStats:
    model_version: str
    classified: int
    overridden_cases: int
    override_rate: float | None
    closed: int
    precision_at_close: dict[str, float | None]


def model_stats(session: Session) -> list[ModelStats]:
    """Per model version: how often agents overrode it, and how often it was right at close.

    Precision-at-close for a target = share of resolved, non-abstained predictions whose label
    equals the case's final value. Two aggregate queries over the cases' narrow columns (the
    classifier's labels are kept on the case row, ``predicted_*``), never the suggestion
    bodies: the console's models page and ``GET /v1/models`` read this on every load.
    """
    resolved = Case.status == Status.resolved.value
    predicted = {t: getattr(Case, f"predicted_{t}") for t in TARGETS}
    final = {t: getattr(Case, t) for t in TARGETS}

    def count_if(condition: Any) -> Any:
        return func.coalesce(func.sum(sql_case((condition, 1), else_=0)), 0)

    columns = [Case.model_version, func.count(), count_if(resolved)]
    for t in TARGETS:
        made = resolved & predicted[t].is_not(None)
        columns += [count_if(made), count_if(made & (predicted[t] == final[t]))]
    rows = session.execute(
        select(*columns).where(Case.model_version.is_not(None)).group_by(Case.model_version)
    ).all()
    overridden: dict[Any, Any] = dict(
        session.execute(
            select(Case.model_version, func.count(func.distinct(Case.id)))
            .join(
                LabelFeedback,
                (LabelFeedback.case_id == Case.id)
                & (LabelFeedback.model_version == Case.model_version),
            )
            .group_by(Case.model_version)
        ).all()
    )
    out = []
    row: Any
    for row in sorted(rows, key=lambda r: str(r[0])):
        version, classified, closed, *per_target = row
        over = int(overridden.get(version, 0))
        precision: dict[str, float | None] = {}
        for i, t in enumerate(TARGETS):
            made, hit = int(per_target[2 * i]), int(per_target[2 * i + 1])
            precision[t] = hit / made if made else None
        out.append(
            ModelStats(
                version,
                int(classified),
                over,
                over / classified if classified else None,
                int(closed),
                precision,
            )
        )
    return out


def case_texts(session: Session, limit: int) -> list[str]:
    """The classifier's text (``case_record(...)["text"]``) of the ``limit`` most recently
    created stored cases, newest first: what the model and similar-case retrieval encode, so
    an encoder refined on them (``triage kb distil-encoder --from-cases``) fits the
    operator's own wording. Texts only; no labels, no structured fields."""
    rows: Iterable[dict[str, Any]] = session.scalars(
        select(Case.payload)
        .order_by(Case.created_at.desc(), Case.id.desc())
        .limit(limit)
        .execution_options(yield_per=1000)
    )
    return [case_record(CaseIn.model_validate(payload))["text"] for payload in rows]


def feedback_count(session: Session) -> int:
    """Reviewer labels stored so far (one per overridden target; a case may have several)."""
    return int(session.scalar(select(func.count()).select_from(LabelFeedback)) or 0)


def feedback_records(session: Session) -> list[dict[str, Any]]:
    """Reviewer labels as training records: the case's features plus the labels people gave.

    A target counts as labelled when an agent overrode it (the latest override wins) or, on a
    resolved case, when the agent closed the case with that value. Unlabelled targets stay
    missing (the model trains each target on the rows that have it) rather than being filled
    with the model's own guesses.
    """
    latest: dict[str, dict[str, str]] = {}
    for cid, target, final in session.execute(
        select(LabelFeedback.case_id, LabelFeedback.target, LabelFeedback.final).order_by(
            LabelFeedback.id
        )
    ).all():
        latest.setdefault(cid, {})[target] = final
    out = []
    for cid, labels in latest.items():
        row = session.get(Case, cid)
        if row is None:
            continue
        rec = case_record(CaseIn.model_validate(row.payload))
        if row.status == Status.resolved.value:
            rec.update({t: getattr(row, t) for t in TARGETS if getattr(row, t)})
        rec.update(labels)
        rec["case_id"] = cid
        out.append(rec)
    return out


def retrain_work(
    settings: Settings, db: Database, base: Path | None = None, eval_path: Path | None = None
) -> Callable[[Callable[[str], None]], dict[str, Any]]:
    """The retrain job's work (``model_jobs.RETRAINING``, API and CLI alike): retrain from
    feedback with the job's progress callable and return the outcome as the job records and
    audits it."""

    def work(progress: Callable[[str], None]) -> dict[str, Any]:
        result = retrain_from_feedback(settings, db, base, eval_path, progress=progress)
        return {
            "candidate_version": result.candidate_version,
            "previous_version": result.active_version,
            "activated": result.activated,
            "reason": result.reason,
            "checks": list(result.checks),
            "n_base": result.n_base,
            "n_feedback": result.n_feedback,
            "candidate_metrics": result.candidate_metrics,
            "active_metrics": result.active_metrics,
        }

    return work


def retrain_from_feedback(
    settings: Settings,
    db: Database,
    base: Path | None = None,
    eval_path: Path | None = None,
    progress: Callable[..., Any] | None = None,
) -> RetrainResult:
    """Train on base data + reviewer labels; activate only if not worse on the fixed eval set.

    ``base`` and ``eval_path`` default to the files ``triage demo`` / ``train_default_model``
    store beside the registry; a DataError says what is missing and how to provide it. The
    reviewer labels are read in one short read transaction; training (minutes with a
    transformer encoder) runs outside any, so no connection sits idle in a transaction, where
    PostgreSQL's ``idle_in_transaction_session_timeout`` would end it and fail the retrain."""
    base = base or base_data_path(settings)
    eval_path = eval_path or eval_data_path(settings)
    for path, what in ((base, "base training data"), (eval_path, "fixed evaluation set")):
        if not path.is_file():
            raise DataError(
                f"no {what} at {path}: retraining combines the case records the model was "
                "trained on with reviewer labels and compares on a fixed evaluation set; the "
                "demo set-up writes both, otherwise run `triage retrain --base FILE --eval FILE`"
            )
    base_rows = load_records(base)
    eval_rows = load_records(eval_path)
    with db.read() as session:
        feedback = feedback_records(session)
    return retrain(
        base_rows,
        feedback,
        eval_rows,
        registry(settings),
        id_key="case_id",
        training_data_name=f"base + {len(feedback)} reviewer labels",
        progress=progress,
    )
