"""``triage policy``: validate, test and explain governance policies.

Mounted by cli/main.py as ``app.add_typer(policy_app, name="policy")``:

    triage policy validate policies/default            # or a manifest.toml or a draft .cedar file
    triage policy test policies/default [TESTS]        # table-driven cases, like `opa test`
    triage policy explain --type issue_credit_note --amount 12400 --currency EUR --tier B \\
        --case CASE-1 --customer CUST-1 --requested-by u-agent --arg invoice_id=INV-1 \\
        --arg reason_code=SHORTAGE
    triage policy explain --type refund --amount 3000 --currency USD --tier A --fx USD=0.92
    triage policy explain --input action.json          # {"action": {...}, "context": {...}}

Exit codes: 0 success, 1 validation or test failure, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from policies import (
    DEFAULT_POLICY_DIR,
    ActionRequest,
    DecisionContext,
    PolicyError,
    PolicyLoadError,
    PolicySet,
    evaluate,
    load_policy_set,
)
from policies.testing import PolicyTestFileError, TestReport, run_policy_tests

policy_app = typer.Typer(
    name="policy",
    help="Validate, test and explain the governance policies (Cedar).",
    no_args_is_help=True,
)


def load_for_cli(path: Path) -> PolicySet:
    """Load a bundle directory, a manifest file, or a draft ``.cedar`` file.

    A ``.cedar`` file is validated with the bundle of its own directory when that directory
    holds a manifest, otherwise with the default bundle's manifest, schema and catalogue.
    """
    if path.suffix == ".cedar":
        bundle = path.parent if (path.parent / "manifest.toml").is_file() else DEFAULT_POLICY_DIR
        return load_policy_set(bundle, policy_file=path)
    return load_policy_set(path)


def format_report(report: TestReport, *, verbose: bool = False) -> str:
    """``opa test``-style output: failures always, passes with ``verbose``, then a summary."""
    lines = []
    for r in report.results:
        if r.passed:
            if verbose:
                lines.append(f"PASS  {r.name}  ->  {r.summary}")
            continue
        lines.append(f"FAIL  {r.name}")
        lines += [f"        {f}" for f in r.failures]
        if r.summary:
            lines.append(f"        got: {r.summary}")
    total = len(report.results)
    lines.append("-" * 60)
    lines.append(f"{'PASS' if report.ok else 'FAIL'}: {report.passed}/{total}")
    return "\n".join(lines)


@policy_app.command("validate")
def validate_cmd(
    path: Annotated[Path, typer.Argument(help="Bundle directory, manifest.toml or .cedar file.")],
) -> None:
    """Parse and validate a policy bundle against its Cedar schema and catalogue."""
    try:
        policy = load_for_cli(path)
    except PolicyLoadError as exc:
        typer.echo(f"INVALID {exc.source}", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"OK {policy.id} {policy.version}: {len(policy.rules)} rules, "
        f"{len(policy.actions)} action types, digest {policy.digest[:16]}"
    )


@policy_app.command("test")
def run_tests_cmd(
    policy_path: Annotated[Path, typer.Argument(metavar="POLICY", help="Bundle or .cedar file.")],
    tests: Annotated[
        Path | None,
        typer.Argument(help="Tests file (.yaml/.json/.toml); default: the bundle's tests_file."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list passes.")] = False,
) -> None:
    """Run table-driven policy tests; exit 1 if any case fails."""
    try:
        policy = load_for_cli(policy_path)
    except PolicyLoadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    tests_path = tests or policy.tests_path
    if tests_path is None:
        typer.echo("no tests file given and the bundle declares none", err=True)
        raise typer.Exit(2)
    try:
        report = run_policy_tests(policy, tests_path)
    except PolicyTestFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(format_report(report, verbose=verbose))
    if not report.ok:
        raise typer.Exit(1)


def _parse_args(pairs: list[str], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} expects key=value, got {pair!r}")
        out[key] = value
    return out


@policy_app.command("explain")
def explain_cmd(
    policy_path: Annotated[
        Path, typer.Option("--policy", "-p", help="Bundle directory or .cedar file.")
    ] = DEFAULT_POLICY_DIR,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help='JSON file: {"action": {...}, "context": {...}}.'),
    ] = None,
    action_type: Annotated[str | None, typer.Option("--type", help="Action type.")] = None,
    amount: Annotated[str | None, typer.Option(help="Amount (decimal string).")] = None,
    currency: Annotated[str | None, typer.Option(help="ISO 4217 code.")] = None,
    tier: Annotated[str, typer.Option(help="Customer tier A, B or C.")] = "C",
    case_id: Annotated[str, typer.Option("--case", help="Case id.")] = "CASE-CLI",
    customer_id: Annotated[str, typer.Option("--customer", help="Customer id.")] = "CUST-CLI",
    requested_by: Annotated[str, typer.Option(help="Requesting user id.")] = "cli-user",
    arg: Annotated[list[str] | None, typer.Option(help="Action argument key=value.")] = None,
    fx: Annotated[
        list[str] | None,
        typer.Option(help="FX rate CUR=RATE (base units per unit), valid on the as-of date."),
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Decision time (ISO 8601); default now.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Decide one action and print the outcome with every reason."""
    try:
        policy = load_for_cli(policy_path)
    except PolicyLoadError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    try:
        if input_file is not None:
            doc = json.loads(input_file.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise typer.BadParameter("the input file must hold a JSON object")
            action_doc = doc.get("action", doc)
            context_doc = doc.get("context") or {}
        else:
            if action_type is None:
                raise typer.BadParameter("give --input FILE or at least --type")
            action_doc = {
                "action_type": action_type,
                "arguments": _parse_args(arg or [], "--arg"),
                "amount": Decimal(amount) if amount is not None else None,
                "currency": currency.upper() if currency else None,
                "case_id": case_id,
                "customer_id": customer_id,
                "customer_tier": tier.upper(),
                "requested_by": requested_by,
            }
            context_doc = {}
        when = as_of or datetime.now(UTC).isoformat()
        if fx:
            day = datetime.fromisoformat(when).date().isoformat()
            context_doc["fx"] = {
                "base_currency": policy.base_currency,
                "rates": [
                    {"currency": cur.upper(), "rate": rate, "valid_from": day}
                    for cur, rate in _parse_args(fx, "--fx").items()
                ],
            }
        # The CLI is the one place where "now" is a sensible default; the evaluator never
        # reads the clock itself.
        context_doc.setdefault("as_of", when)
        action = ActionRequest.model_validate(action_doc)
        context = DecisionContext.model_validate(context_doc)
        decision = evaluate(action, context, policy)
    except PolicyError as exc:  # before ValueError: PolicyInputError is also a ValueError
        typer.echo(f"cannot decide: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError, ValidationError) as exc:
        typer.echo(f"bad input: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(decision.model_dump_json(indent=2))
    else:
        typer.echo(decision.explain())
        typer.echo(f"action hash:   {decision.action_hash}")
        typer.echo(f"decision hash: {decision.decision_hash}")
