"""Classifier commands: ``train``, ``evaluate`` and the ``models`` sub-app.

Mounted by ``cli/main.py`` as ``triage train``, ``triage evaluate`` and ``triage models ...``.
Every deliberate failure (bad file, unknown version, tampered artifact) exits with code 2 and a
one-line ``error: ...`` message on stderr, never a traceback. Progress goes to stderr so that
``--json`` output on stdout stays machine-readable.

The model directory given to ``--out`` / ``--model`` / ``--registry`` is a model registry root
(see ``classifiers.registry``); ``--model`` also accepts one version's directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from classifiers.data import file_sha256, load_records, parse_label_precision
from classifiers.errors import ClassifierError
from classifiers.options import DEFAULT_CLASS_WEIGHT, ClassWeight
from retrieval.defaults import DEFAULT_ENCODER
from retrieval.errors import RetrievalError

if TYPE_CHECKING:  # pragma: no cover
    from classifiers.registry import ModelRegistry

# The model code (scikit-learn, scipy, skops) is imported inside the commands that use it, so
# that every other `triage` command starts without it.

SIGNING_KEY_ENV = "TRIAGE_MODEL_SIGNING_KEY"

models_app = typer.Typer(
    help="List, inspect, activate and roll back classifier model versions; list, cancel and "
    "prune model jobs (training, retraining, evaluation).",
    no_args_is_help=True,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def progress_printer() -> Callable[[str], None]:
    """A progress callback printing each message on stderr after the seconds since it was made
    (``[  12.3s] message``), as ``triage train``, ``evaluate`` and ``retrain`` show it."""
    started = time.perf_counter()

    def say(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:6.1f}s] {message}", err=True)

    return say


def _key(value: str | None) -> bytes | None:
    return value.encode() if value else None


def _registry(root: Path | None, signing_key: str | None) -> ModelRegistry:
    """The registry at ``root`` (``None``: the deployment's, see :func:`_root`)."""
    from classifiers.registry import ModelRegistry

    return ModelRegistry(_root(root), _key(signing_key))


TextColumns = Annotated[
    list[str],
    typer.Option("--text-column", help="Text column; repeat to concatenate several."),
]
LabelColumns = Annotated[
    list[str],
    typer.Option("--label-column", help="Label column; repeat for a multi-target model."),
]
SigningKey = Annotated[
    str | None,
    typer.Option(
        envvar=SIGNING_KEY_ENV,
        help="HMAC key: sign new versions / require valid signatures when loading.",
        show_default=False,
    ),
]


def train(
    data: Annotated[Path, typer.Option(help="Labelled CSV or JSONL file.")],
    text_column: TextColumns,
    label_column: LabelColumns,
    out: Annotated[Path, typer.Option(help="Model registry directory (created if missing).")],
    feature_columns: Annotated[
        list[str] | None,
        typer.Option(
            "--feature-columns",
            help="Structured column; repeat. Numeric if every value parses as a number, "
            "else categorical.",
        ),
    ] = None,
    target_precision: Annotated[
        float,
        typer.Option(
            help="Precision each label's threshold must reach on validation, in (0.5, 1)."
        ),
    ] = 0.95,
    label_precision: Annotated[
        list[str] | None,
        typer.Option(help="Per-label target, TARGET:LABEL=PRECISION; repeatable."),
    ] = None,
    group_near_duplicates: Annotated[
        bool,
        typer.Option(help="Keep near-identical texts in one validation fold (templated data)."),
    ] = True,
    base: Annotated[str, typer.Option(help="Linear model: svc or logreg.")] = "svc",
    c: Annotated[float, typer.Option("--c", help="Inverse regularisation strength.")] = 1.0,
    cv: Annotated[int, typer.Option(help="Folds for calibration and thresholds.")] = 5,
    class_weight: Annotated[
        ClassWeight,
        typer.Option(
            help="balanced (the default): weight each label inversely to its frequency (rare "
            "labels gain recall and macro-F1); none: train unweighted.",
        ),
    ] = DEFAULT_CLASS_WEIGHT,
    threshold_pooling: Annotated[
        bool,
        typer.Option(
            help="A label with too few validation predictions to earn its own threshold "
            "borrows the one all labels earn together, unless its own predictions fall short "
            "(--no-threshold-pooling: such labels always abstain).",
        ),
    ] = True,
    encoder: Annotated[
        str,
        typer.Option(
            envvar="TRIAGE_ENCODER",
            help="Text encoder whose vectors join the features: builtin:minilm-static-v2 "
            "(default), minilm (optional extra), another encoder name or folder, or 'none'.",
        ),
    ] = DEFAULT_ENCODER,
    activate: Annotated[bool, typer.Option(help="Activate the new version.")] = True,
    signing_key: SigningKey = None,
) -> None:
    """Train a calibrated classifier on FILE and register it as a new version in --out
    (audited when --out is the deployment's registry, <data_dir>/models)."""
    from triage.classification import train_model  # also installs the classifiers' embedder

    say = progress_printer()
    registry = _registry(out, signing_key)
    try:
        records = load_records(data)
        # registered inactive: the activation goes with the audit event (see _audited)
        version, model = train_model(
            records,
            registry=registry,
            text_columns=text_column,
            label_columns=label_column,
            feature_columns=list(feature_columns or []),
            encoder=encoder,
            activate=False,
            training_data_sha256=file_sha256(data),
            training_data_name=data.name,
            source=data.name,
            progress=say,
            target_precision=target_precision,
            label_precision=parse_label_precision(label_precision or []),
            base=base,
            C=c,
            cv=cv,
            class_weight=class_weight,
            threshold_pooling=threshold_pooling,
            group_near_duplicates=group_near_duplicates,
        )

        def go() -> dict[str, Any]:
            if activate:
                registry.activate(version)
            return {
                "version": version,
                "activated": activate,
                "n_records": len(records),
                "encoder": model.feature_spec().embedding_encoder,
                "source": data.name,
                "validation": {t: model.validation_[t] for t in model.targets},
            }

        _audited(registry, "model.trained", go, version)
    except (ClassifierError, RetrievalError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for target in model.targets:
        v = model.validation_[target]
        precision = "n/a" if v["precision"] is None else f"{v['precision']:.4f}"
        typer.echo(
            f"{target}: {len(model.classes_[target])} labels; held-out accuracy "
            f"{v['accuracy']:.4f}, macro-F1 {v['macro_f1']:.4f}, coverage {v['coverage']:.4f} "
            f"at precision {precision}"
        )
    typer.echo(f"registered {version} in {out}{' (active)' if activate else ''}")


def evaluate(
    model: Annotated[Path, typer.Option(help="Model registry (active version) or version dir.")],
    data: Annotated[Path, typer.Option(help="Labelled CSV or JSONL file.")],
    text_column: TextColumns,
    label_column: LabelColumns,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Report directory (default: <model>/reports/<version>-<data>)."),
    ] = None,
    drift_tolerance: Annotated[
        float, typer.Option(help="Precision drop that counts as drift.")
    ] = 0.02,
    signing_key: SigningKey = None,
) -> None:
    """Evaluate a registered model on a labelled FILE; print metrics and write a report."""
    from classifiers.evaluation import align_columns, evaluate_model, format_table, write_report
    from classifiers.registry import open_model
    from triage import classification  # noqa: F401  (installs the classifiers' embedder)

    say = progress_printer()
    try:
        loaded = open_model(model, _key(signing_key))
        records = load_records(data)
        aligned, targets = align_columns(
            records, loaded.model, text_column, label_column, source=data.name
        )
        say(f"evaluating {loaded.version} on {len(records)} records")
        result = evaluate_model(
            loaded.model, aligned, targets=targets, drift_tolerance=drift_tolerance, progress=say
        )
        result["model_version"] = loaded.version
        report_dir = report or (model / "reports" / f"{loaded.version}-{data.stem}")
        path = write_report(result, report_dir, model_version=loaded.version, data_name=data.name)
        say(f"report written to {path}")
    except (ClassifierError, RetrievalError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if json_output:
        compact = {
            **{k: v for k, v in result.items() if k != "targets"},
            "targets": {
                t: {k: v for k, v in m.items() if k not in ("reliability",)}
                for t, m in result["targets"].items()
            },
            "report": str(path),
        }
        typer.echo(json.dumps(compact))
    else:
        typer.echo(f"model {loaded.version}")
        typer.echo(format_table(result))
        typer.echo(f"report: {path}")


RegistryDir = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        envvar="TRIAGE_MODEL_REGISTRY",
        help="Model registry directory (default: the deployment's, <data_dir>/models, "
        "TRIAGE_DATA_DIR or var). Changes to the deployment's registry are audited.",
        show_default=False,
    ),
]


def _root(registry: Path | None) -> Path:
    """``--registry``, or the deployment's registry directory when it is not given."""
    if registry is not None:
        return registry
    from triage.settings import get_settings

    return get_settings().model_registry_dir


def _audited(
    reg: ModelRegistry,
    action: str,
    change: Callable[[], dict[str, Any]],
    registered: str | None = None,
) -> dict[str, Any]:
    """Run ``change`` (a registry step returning its audit payload) and return the payload.

    On the deployment's registry (``<data_dir>/models``, where the API reads its model) the step
    runs inside a database transaction that appends its audit event as the CLI admin, as the
    API and the console do: the database is reached before the step, and a step that fails
    writes no event. Any other registry (a folder of ``triage train --out`` experiments) has no
    audit trail, and the step simply runs. Exit 2 when the database cannot be reached; the
    message names ``registered``, a version the command registered (inactive) before this."""
    from triage.settings import get_settings

    root = reg.root
    if root.resolve() != get_settings().model_registry_dir.resolve():
        return change()
    from cli.actors import on_deployment_trail

    kept = f" ({registered} stays registered, inactive)" if registered else ""
    return on_deployment_trail(
        action,
        change,
        target=f"{root} is the deployment's model registry",
        nothing=f"nothing was activated{kept}",
    )


@models_app.command("list")
def models_list(registry: RegistryDir = None, signing_key: SigningKey = None) -> None:
    """List registered versions, oldest first; the active one is marked with '*'."""
    reg = _registry(registry, signing_key)
    active = reg.active_version()
    versions = reg.versions()
    if not versions:
        typer.echo(f"no model versions in {reg.root}")
        return
    for meta in versions:
        mark = "*" if meta["version"] == active else " "
        targets = ", ".join(
            f"{t}({len(labels)})" for t, labels in meta.get("label_sets", {}).items()
        )
        typer.echo(
            f"{mark} {meta['version']}  {meta.get('created_at', '?')}  "
            f"{meta.get('training_data_name') or '-'}  {targets}"
        )


@models_app.command("show")
def models_show(
    registry: RegistryDir = None,
    version: Annotated[str | None, typer.Argument(help="Version id (default: active).")] = None,
    signing_key: SigningKey = None,
) -> None:
    """Print a version's metadata as JSON, after verifying its integrity."""
    reg = _registry(registry, signing_key)
    try:
        chosen = version or reg.active_version()
        if chosen is None:
            raise ClassifierError(f"no active model in {reg.root}")
        meta = reg.verify(chosen)
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({**meta, "active": chosen == reg.active_version()}, indent=2))


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="Version id to activate.")],
    registry: RegistryDir = None,
    signing_key: SigningKey = None,
) -> None:
    """Verify VERSION and make it the active model (audited on the deployment's registry)."""
    reg = _registry(registry, signing_key)

    def go() -> dict[str, Any]:
        return {"version": version, "previous": reg.activate(version)}

    try:
        _audited(reg, "model.activated", go)
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"active: {version}")


@models_app.command("rollback")
def models_rollback(registry: RegistryDir = None, signing_key: SigningKey = None) -> None:
    """Re-activate the version that was active before the current one (audited on the
    deployment's registry)."""
    reg = _registry(registry, signing_key)

    def go() -> dict[str, Any]:
        with reg.exclusive():  # the version replaced, exactly, under concurrent activations
            previous = reg.active_version()
            return {"version": reg.rollback(), "previous": previous}

    try:
        done = _audited(reg, "model.rolled_back", go)
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"rolled back; active: {done['version']}")


@models_app.command("sign")
def models_sign(
    versions: Annotated[
        list[str] | None, typer.Argument(help="Version ids (default: with --all, every one).")
    ] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Sign every registered version.")
    ] = False,
    registry: RegistryDir = None,
    signing_key: SigningKey = None,
) -> None:
    """Sign versions with the signing key, for turning signing on in a registry that holds
    unsigned versions (or rotating the key). Each version's artifact hash is checked first; a
    changed artifact is refused. An existing signature is replaced without being checked:
    signing says you trust the version. Audited on the deployment's registry."""
    if not signing_key:
        raise _fail("signing needs a key: set TRIAGE_MODEL_SIGNING_KEY or --signing-key")
    if bool(versions) == all_versions:
        raise _fail("name the versions to sign, or give --all")
    reg = _registry(registry, signing_key)
    chosen = [m["version"] for m in reg.versions()] if all_versions else list(versions or [])

    def go() -> dict[str, Any]:
        reg.sign(*chosen)  # every hash checked before any is signed: none or all are
        return {"versions": chosen}

    try:
        _audited(reg, "model.signed", go)
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"signed {len(chosen)} version{'' if len(chosen) == 1 else 's'} in {reg.root}")


def _chosen(reg: ModelRegistry, version: str | None) -> str:
    chosen = version or reg.active_version()
    if chosen is None:
        raise ClassifierError(f"no active model in {reg.root}; name a version")
    return chosen


@models_app.command("operating-points")
def models_operating_points(
    version: Annotated[str | None, typer.Argument(help="Version id (default: active).")] = None,
    registry: RegistryDir = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    signing_key: SigningKey = None,
) -> None:
    """Show a version's operating points: per target and label, the confidence threshold,
    its target precision and the held-out coverage and precision it gave ("never": the label
    always abstains). Read from the verified metadata; the model is not loaded."""
    from classifiers.rethresholding import (
        format_operating_points,
        parent_version,
        recorded_operating_points,
        recorded_settings,
    )

    reg = _registry(registry, signing_key)
    try:
        chosen = _chosen(reg, version)
        meta = reg.verify(chosen)
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    points = recorded_operating_points(meta)
    settings = recorded_settings(meta)
    if json_output:
        typer.echo(
            json.dumps({"version": chosen, "settings": settings.to_dict(), "targets": points})
        )
        return
    parent = parent_version(meta)
    typer.echo(f"model {chosen}{f' (operating points re-chosen from {parent})' if parent else ''}")
    pooling = "on" if settings.threshold_pooling else "off"
    typer.echo(
        f"target precision {settings.target_precision}; per-label targets "
        f"{settings.label_precision or 'none'}; pooling {pooling}"
    )
    typer.echo(format_operating_points(points))


@models_app.command("rethreshold")
def models_rethreshold(
    version: Annotated[str | None, typer.Argument(help="Version id (default: active).")] = None,
    registry: RegistryDir = None,
    target_precision: Annotated[
        float | None,
        typer.Option(help="New default target precision, in (0.5, 1) (default: the version's)."),
    ] = None,
    label_precision: Annotated[
        list[str] | None,
        typer.Option(
            help="Per-label target, TARGET:LABEL=PRECISION; repeatable. Replaces the version's "
            "per-label targets as a whole (default: keep them).",
        ),
    ] = None,
    clear_label_precision: Annotated[
        bool, typer.Option(help="Drop the version's per-label targets.")
    ] = False,
    threshold_pooling: Annotated[
        bool | None,
        typer.Option(
            "--threshold-pooling/--no-threshold-pooling",
            help="Let labels too thin for their own threshold borrow the pooled one "
            "(default: the version's setting).",
            show_default=False,
        ),
    ] = None,
    activate: Annotated[bool, typer.Option(help="Activate the new version.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Show what each label would get; register nothing.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    signing_key: SigningKey = None,
) -> None:
    """Re-choose a version's thresholds under other target precisions or pooling, without
    retraining, and register the result as a new version derived from it (the original is
    kept, so `models rollback` undoes an activation). Uses the held-out predictions stored in
    the version; takes seconds (loading and saving the artifact). Prints each label's
    threshold, held-out coverage and precision, old -> new ('*' marks a changed label)."""
    from classifiers.rethresholding import format_operating_points, rethreshold

    if label_precision and clear_label_precision:
        raise _fail("give --label-precision or --clear-label-precision, not both")
    reg = _registry(registry, signing_key)
    activated = False
    try:
        per_label = parse_label_precision(label_precision) if label_precision else None
        out = rethreshold(
            reg,
            _chosen(reg, version),
            target_precision=target_precision,
            label_precision={} if clear_label_precision else per_label,
            threshold_pooling=threshold_pooling,
            dry_run=dry_run,
        )
        derived = out.version
        if derived is not None:
            # registered inactive; activated (when asked) together with the audit event, as
            # over the API: a failed step leaves an inactive version no case uses

            def go() -> dict[str, Any]:
                previous = reg.activate(derived) if activate else reg.active_version()
                return out.audit_payload(activated=activate, previous_active=previous)

            activated = _audited(reg, "model.rethresholded", go, derived)["activated"]
    except ClassifierError as exc:
        raise _fail(str(exc)) from None
    if json_output:
        typer.echo(json.dumps({**out.as_dict(activated=activated), "dry_run": dry_run}))
        return
    typer.echo(format_operating_points(out.points, before=out.parent_points))
    if out.version is None:
        typer.echo(f"dry run: nothing registered (from {out.parent})")
    else:
        state = " (active)" if activated else ""
        typer.echo(f"registered {out.version}{state}, derived from {out.parent}")


def standalone_app() -> typer.Typer:
    """The commands as one app (for tests and ``python -m cli.classifier``)."""
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.add_typer(models_app, name="models")
    return app


if __name__ == "__main__":
    standalone_app()()
